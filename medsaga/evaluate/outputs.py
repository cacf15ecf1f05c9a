"""metrics.csv and metrics.json: what ``medsaga evaluate --out DIR`` writes, atomically.

``metrics.csv``: one row per case and class, columns :data:`CSV_COLUMNS`. An undefined value
(HD95 when a mask is empty) is an empty field, which spreadsheets and pandas read as missing.

``metrics.json``: the settings, the classes, every case's values, the per-class means
(:mod:`medsaga.evaluate.summary`) and the cases found on one side only. Undefined values are
``null`` (JSON has no NaN).

Before any case is read, :func:`check_outputs` checks every file the command will write
(:func:`planned_outputs`): none is an input, none exists unless replacing was asked for, and the
folders are writable.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsaga import __version__
from medsaga.errors import InputError
from medsaga.evaluate.metrics import HD_PERCENTILE, ClassMetrics
from medsaga.evaluate.run import Evaluation
from medsaga.evaluate.summary import ClassSummary, mean_over_classes
from medsaga.io.atomic import atomic_output, write_errors

CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"
OVERLAY_FOLDER = "overlays"  # --overlay's pictures, one PNG per case (medsaga.report.overlay_pngs)
CSV_COLUMNS = ("case_id", "class_value", "class_name", "dice", "hd95_mm", "nsd", "status", "gt_voxels",
               "pred_voxels")
EMPTY_RULE = ("both empty: Dice 1, HD95 0, NSD 1 (status 'both empty'); reference empty, prediction not: Dice 0, "
              "HD95 undefined, NSD 0 ('false positive'); reference not empty, prediction empty: Dice 0, HD95 "
              "undefined, NSD 0 ('missed'). Dice/NSD means: over cases whose reference holds the class; HD95 "
              "mean: over cases where both hold it; the other cases are counted.")


def csv_text(evaluation: Evaluation) -> str:
    """The contents of metrics.csv."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in evaluation.cases:
        for eval_class in evaluation.classes.classes:
            m = case.metrics[eval_class.value]
            writer.writerow([case.case_id, eval_class.value, eval_class.name, _number(m.dice), _number(m.hd95_mm),
                             _number(m.nsd), m.status, m.gt_voxels, m.pred_voxels])
    return buffer.getvalue()


def json_document(evaluation: Evaluation, prediction: Path, reference: Path,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The contents of metrics.json as a JSON-ready dict (NaN → ``None``)."""
    matching = evaluation.matching
    document: dict[str, Any] = {
        "medsaga_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prediction": str(prediction),
        "ground_truth": str(reference),
        "tolerance_mm": evaluation.tolerance_mm,
        "hd_percentile": HD_PERCENTILE,
        "empty_rule": EMPTY_RULE,
        "classes": [{"value": c.value, "name": c.name} for c in evaluation.classes.classes],
        "classes_from": str(evaluation.classes.source) if evaluation.classes.source else "values found in the data",
        "mean": [_summary(s) for s in evaluation.summaries],
        "mean_over_classes": {key: _number(value) for key, value in mean_over_classes(evaluation.summaries).items()},
        "cases": [{
            "case_id": case.case_id,
            "prediction": str(case.prediction),
            "ground_truth": str(case.ground_truth),
            "spacing_mm": list(case.spacing),
            "classes": [{"value": c.value, "name": c.name, **_metrics(case.metrics[c.value])}
                        for c in evaluation.classes.classes],
        } for case in evaluation.cases],
        "unmatched": {
            "predictions_without_ground_truth": list(matching.predictions_without_reference),
            "ground_truth_without_prediction": list(matching.references_without_prediction),
        },
    }
    document.update(extra or {})
    return document


def write_outputs(out: Path, evaluation: Evaluation, prediction: Path, reference: Path,
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``out/metrics.csv`` and ``out/metrics.json`` (each atomically); return their paths."""
    with write_errors(out):  # disk full, read-only: one line naming OUT (atomic_output does the same per file)
        out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / CSV_NAME, out / JSON_NAME
    with atomic_output(csv_path) as temporary:
        temporary.write_text(csv_text(evaluation), encoding="utf-8")
    with atomic_output(json_path) as temporary:
        text = json.dumps(json_document(evaluation, prediction, reference, extra), indent=2, allow_nan=False)
        temporary.write_text(text + "\n", encoding="utf-8")
    return csv_path, json_path


def planned_outputs(out: Path | None, overlay_cases: Sequence[str] = (), report: bool = False) -> list[Path]:
    """The files ``medsaga evaluate --out OUT`` writes: metrics.csv and metrics.json, report.html
    (``report``), and ``overlays/CASE.png`` for each of ``overlay_cases``; none without ``out``."""
    if out is None:
        return []
    from medsaga.io.paths import REPORT_NAME

    return [out / CSV_NAME, out / JSON_NAME] + ([out / REPORT_NAME] if report else []) + \
        [out / OVERLAY_FOLDER / f"{case}.png" for case in overlay_cases]


def check_outputs(outputs: Sequence[Path], force: bool, inputs: Sequence[Path | None]) -> None:
    """Before any work: no output is one of ``inputs`` (:func:`medsaga.io.paths.same_path`: a link
    or hard link to an input counts); an existing output only with ``force``; every output folder
    writable (so a read-only or full ``--out`` stops here, not after every case). Each is an
    :class:`InputError` naming the path."""
    from medsaga.io.paths import ensure_writable_folder, same_path

    for folder in sorted({path.parent for path in outputs}):  # OUT before OUT/overlays
        ensure_writable_folder(folder, "--out", keep=False)  # created when written: an input error leaves none
    given = [Path(path) for path in inputs if path is not None]
    for path in outputs:
        if any(same_path(path, source) for source in given):
            raise InputError("is an input; choose another --out", path)
        if path.exists() and not force:
            raise InputError("already exists; pass --force to replace it", path)


def _metrics(m: ClassMetrics) -> dict[str, Any]:
    return {"dice": _number(m.dice), "hd95_mm": _number(m.hd95_mm), "nsd": _number(m.nsd), "status": m.status,
            "gt_voxels": m.gt_voxels, "pred_voxels": m.pred_voxels}


def _summary(s: ClassSummary) -> dict[str, Any]:
    return {
        "value": s.eval_class.value, "name": s.eval_class.name, "cases": s.cases,
        "dice": _number(s.dice_mean), "nsd": _number(s.nsd_mean), "cases_with_gt": s.reference_cases,
        "hd95_mm": _number(s.hd95_mean_mm), "cases_with_both": s.hd95_cases,
        "missed": s.missed, "false_positive": s.false_positive, "both_empty": s.both_empty,
        "dice_gt_or_pred": _number(s.dice_mean_gt_or_pred),
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
