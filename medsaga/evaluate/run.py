"""Evaluate predicted label maps against reference label maps: check everything, then measure.

Two passes over the cases. The first reads every pair and checks it (same grid, integer labels,
values declared by ``--labels``), so that a wrong file stops the run before the slow surface
distances; it also finds the classes present when ``--labels`` does not fix them. The second
computes each case's metrics, one class at a time on the class's bounding box, so memory stays
at two label maps plus two boolean crops whatever the number of classes.

Nothing is printed here: progress goes to the ``progress`` callback the caller hands in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsaga.errors import InputError
from medsaga.evaluate.classes import ClassSet, EvalClass, classes_from_values, dataset_class_set, load_class_set
from medsaga.evaluate.matching import CasePair, Matching, match_cases
from medsaga.evaluate.metrics import ClassMetrics, binary_metrics, empty_case_metrics
from medsaga.evaluate.summary import ClassSummary, summarise_class
from medsaga.io import Volume, read_volume

# progress(stage, cases done, cases in all): stage is "checking" or "evaluating".
Progress = Callable[[str, int, int], None]
DEFAULT_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class CaseResult:
    """The metrics of one case.

    Attributes:
        case_id: the case.
        prediction, ground_truth: the two label-map files.
        spacing: voxel size in mm along ``i, j, k`` (the distances' unit).
        metrics: class value → its metrics, for every evaluated class.
    """

    case_id: str
    prediction: Path
    ground_truth: Path
    spacing: tuple[float, float, float]
    metrics: dict[int, ClassMetrics]


@dataclass(frozen=True)
class Evaluation:
    """Everything ``medsaga evaluate`` reports.

    Attributes:
        classes: the evaluated classes.
        cases: one result per matched case, sorted by id.
        summaries: one per class, in class order.
        tolerance_mm: the NSD tolerance.
        matching: the pairs, and the cases found on one side only.
    """

    classes: ClassSet
    cases: tuple[CaseResult, ...]
    summaries: tuple[ClassSummary, ...]
    tolerance_mm: float
    matching: Matching


def present_classes(evaluation: Evaluation) -> list[EvalClass]:
    """The classes held by some reference or prediction: a class absent from every case (common
    when a dataset.json declares many) would only add rows of 'both empty' to a table."""
    return [s.eval_class for s in evaluation.summaries if s.both_empty < s.cases]


@dataclass(frozen=True)
class CheckedPairs:
    """The outcome of the checking pass: the pairs, the classes to evaluate, and the last pair
    read (its prediction and reference), which the evaluation uses first instead of reading it
    again: a single-case evaluation reads each file once."""

    matching: Matching
    classes: ClassSet
    last_read: tuple[CasePair, Volume, Volume] | None = None


def evaluate(prediction: str | Path, reference: str | Path, *, labels: str | Path | None = None,
             tolerance_mm: float = DEFAULT_TOLERANCE_MM, images: Mapping[str, Path] | None = None,
             progress: Progress | None = None,
             on_case: Callable[[CaseResult, Volume, Volume], None] | None = None) -> Evaluation:
    """Match, check and evaluate ``prediction`` against ``reference`` (files or folders).

    Args:
        prediction: a predicted label map, or a folder of them.
        reference: a reference label map, or a folder (or an nnU-Net / plain-pairs dataset).
        labels: a ``dataset.json``, a RUN_DIR or its ``config.json``: fixes and names the classes.
            Without it, a reference dataset's own ``dataset.json`` is used, or else the values found.
        tolerance_mm: NSD tolerance in mm.
        images: case id → image (for overlays): checked in the first pass to lie on the
            reference's grid, so that a wrong image stops the run before the slow part.
        progress: called as cases are checked and evaluated.
        on_case: called with each case's result and its prediction and reference volumes (for
            overlays), while they are still in memory.

    Raises:
        InputError: unmatched inputs, a grid mismatch (naming both files), non-integer or
            undeclared label values, a bad ``labels`` file.
    """
    checked = check_inputs(prediction, reference, labels=labels, tolerance_mm=tolerance_mm, images=images,
                           progress=progress)
    classes, matching = checked.classes, checked.matching
    results = []
    pairs = matching.pairs
    cases = iter_case_results(pairs, classes, tolerance_mm, checked.last_read)
    del checked  # drop its reference to the cached volumes once they are used
    for index, (result, predicted, truth) in enumerate(cases):
        if on_case is not None:
            on_case(result, predicted, truth)
        results.append(result)
        if progress is not None:
            progress("evaluating", index + 1, len(pairs))
    results.sort(key=lambda r: r.case_id)
    return Evaluation(classes, tuple(results), summarise(results, classes), tolerance_mm, matching)


def check_inputs(prediction: str | Path, reference: str | Path, *, labels: str | Path | None = None,
                 tolerance_mm: float = DEFAULT_TOLERANCE_MM, images: Mapping[str, Path] | None = None,
                 progress: Progress | None = None) -> CheckedPairs:
    """The checking pass: match the cases, read every pair, check grids and label values.

    Raises:
        InputError: see :func:`evaluate`.
    """
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise InputError(f"--tolerance must be a number of mm >= 0, got {tolerance_mm}")
    matching = match_cases(prediction, reference)
    declared = load_class_set(labels) if labels is not None else dataset_class_set(matching.dataset_json)
    found: set[int] = set()
    last_read = None
    for index, pair in enumerate(matching.pairs):
        last_read = None  # free the previous pair before reading the next
        predicted, truth = read_pair(pair)
        for path, volume in ((pair.prediction, predicted), (pair.ground_truth, truth)):
            found |= _checked_values(path, volume, declared)
        if images is not None:
            read_image(images[pair.case_id], truth, pair)
        last_read = (pair, predicted, truth)
        if progress is not None:
            progress("checking", index + 1, len(matching.pairs))
    if declared is None and not found:
        raise InputError("no prediction and no ground truth holds a nonzero label: nothing to evaluate (give "
                         "--labels to score declared classes anyway)", Path(reference))
    return CheckedPairs(matching, declared if declared is not None else classes_from_values(found), last_read)


def read_pair(pair: CasePair) -> tuple[Volume, Volume]:
    """Read a pair's prediction and reference; :class:`InputError` naming both when their grids differ."""
    predicted, truth = read_volume(pair.prediction), read_volume(pair.ground_truth)
    differences = predicted.same_grid(truth)
    if differences:
        raise InputError(f"case {pair.case_id}: prediction grid differs from the ground truth "
                         f"{pair.ground_truth}: {'; '.join(differences)} (nothing is resampled: predict on "
                         f"the reference grid)", pair.prediction)
    return predicted, truth


def read_image(path: Path, reference: Volume, pair: CasePair) -> Volume:
    """Read a case's image for its overlay; :class:`InputError` naming both files when it is not on
    the reference's grid."""
    image = read_volume(path)
    differences = image.same_grid(reference)
    if differences:
        raise InputError(f"case {pair.case_id}: image grid differs from the ground truth {pair.ground_truth}: "
                         f"{'; '.join(differences)}", path)
    return image


def iter_case_results(pairs: Sequence[CasePair], classes: ClassSet, tolerance_mm: float,
                      already_read: tuple[CasePair, Volume, Volume] | None = None,
                      ) -> Iterator[tuple[CaseResult, Volume, Volume]]:
    """Read and evaluate each pair (pairs are assumed checked by :func:`check_inputs`).

    ``already_read``: one pair with its volumes in memory; it is evaluated first, without reading.
    """
    order = list(pairs)
    if already_read is not None:
        order = [already_read[0]] + [pair for pair in order if pair != already_read[0]]
    for pair in order:
        if already_read is not None and pair == already_read[0]:
            (_, predicted, truth), already_read = already_read, None
        else:
            predicted, truth = read_pair(pair)
        sx, sy, sz = (float(s) for s in truth.spacing)
        metrics = case_metrics(predicted.array, truth.array, classes.classes, (sx, sy, sz), tolerance_mm)
        yield CaseResult(pair.case_id, pair.prediction, pair.ground_truth, (sx, sy, sz), metrics), predicted, truth


def case_metrics(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[EvalClass],
                 spacing: Sequence[float], tolerance_mm: float) -> dict[int, ClassMetrics]:
    """Metrics of every class between two label maps ``(I, J, K)`` of non-negative integers.

    Each label map is scanned once for the bounding boxes of all its values (no full-size
    copies); each class is then measured on the union of its two boxes only.
    """
    from scipy.ndimage import find_objects

    pred, ref = _as_labels(prediction), _as_labels(reference)
    top = max((c.value for c in classes), default=0)
    pred_boxes, ref_boxes = find_objects(pred, max_label=top), find_objects(ref, max_label=top)
    metrics: dict[int, ClassMetrics] = {}
    for eval_class in classes:
        v = eval_class.value
        pred_box, ref_box = pred_boxes[v - 1], ref_boxes[v - 1]
        if pred_box is None or ref_box is None:  # the empty-mask rule decides
            pred_n = 0 if pred_box is None else int(np.count_nonzero(pred[pred_box] == v))
            ref_n = 0 if ref_box is None else int(np.count_nonzero(ref[ref_box] == v))
            metrics[v] = empty_case_metrics(ref_n, pred_n)  # type: ignore[assignment]
            continue
        box = _union(pred_box, ref_box, pred.shape)
        metrics[v] = binary_metrics(pred[box] == v, ref[box] == v, spacing, tolerance_mm)
    return metrics


def summarise(results: Sequence[CaseResult], classes: ClassSet) -> tuple[ClassSummary, ...]:
    """One :class:`ClassSummary` per class over ``results``."""
    return tuple(summarise_class(c, [r.metrics[c.value] for r in results]) for c in classes.classes)


def _checked_values(path: Path, volume: Volume, declared: ClassSet | None) -> set[int]:
    """The nonzero values of a label map; :class:`InputError` when they are not fit to compare."""
    from scipy.ndimage import find_objects

    from medsaga.data.labels import label_value_problem

    problem = label_value_problem(np.asarray(volume.array), None)
    if problem is not None:
        raise InputError(problem, path)
    # find_objects: one pass, no copy of an integer map (bincount would copy it to int64).
    present = {value + 1 for value, box in enumerate(find_objects(_as_labels(volume.array))) if box is not None}
    if declared is not None and not present <= declared.values:
        undeclared = sorted(present - declared.values)
        raise InputError(f"label values {undeclared[:10]} are not among the classes of {declared.source} "
                         f"({', '.join(f'{c.value} {c.name}' for c in declared.classes)})", path)
    return present


def _as_labels(array: np.ndarray) -> np.ndarray:
    """Integer view of a checked label map (float maps hold whole numbers; find_objects needs ints)."""
    array = np.asarray(array)
    return array if array.dtype.kind in "iu" else array.astype(np.int64)


def _union(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The box covering both ``find_objects`` boxes, one voxel wider where the image allows
    (the margin that keeps surface voxels on the surface; see ``metrics.union_box``)."""
    boxes = [box for box in (a, b) if box is not None]
    return tuple(slice(max(min(box[d].start for box in boxes) - 1, 0),
                       min(max(box[d].stop for box in boxes) + 1, shape[d])) for d in range(len(shape)))
