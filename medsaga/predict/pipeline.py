"""``medsaga predict`` as a library call: a run and input paths in, label maps on disk, timings out.

Order matters for the user: everything that can fail on bad input and needs no heavy work comes
first (options, the run's config.json, the input names and channels, the output paths), then the
checkpoint hash and the model, then the cases one by one: read, predict, write. A case that fails
(an unreadable file, a grid the run cannot slice) is reported and the others go on; the outcome
lists the failures. Every file is written atomically, so a case on disk is whole.

Under ``torchrun`` (a cohort: ``torchrun --nproc-per-node N -m medsaga predict ...``) every rank
builds the model on its own device and predicts every N-th case; rank 0 gathers the results. With
``skip_existing`` the cases whose outputs are all on disk are skipped: an interrupted cohort run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from medsaga import distributed
from medsaga.errors import InputError
from medsaga.io.volume import Volume
from medsaga.predict.dicom_seg import (SEG_TYPES, Segment, dicom_seg_problem, dicom_seg_substitutions,
                                      write_dicom_seg)
from medsaga.predict.inputs import PredictCase, find_cases
from medsaga.predict.outputs import (PROBABILITIES_FOLDER, CaseOutputs, is_complete, plan_outputs,
                                     write_probabilities)
from medsaga.predict.run import RunConfig, TrainedRun, load_model, read_run_config, verify_checkpoint
from medsaga.predict.temporaries import interruptible, remove_stale_temporaries

if TYPE_CHECKING:
    from medsaga.predict.infer import Prediction


@dataclass(frozen=True)
class PredictOptions:
    """Everything ``medsaga predict`` takes (see ``medsaga predict --help``)."""

    run_dir: Path
    inputs: tuple[Path, ...]
    out: Path
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    checkpoint: Path | None = None
    largest_component: bool = False
    probabilities: bool = False
    seg_type: str = "binary"
    series_uid: str | None = None
    force: bool = False
    skip_existing: bool = False


class PredictReporter(Protocol):
    """What the command shows while predicting."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def on_start(self, cases: Sequence[PredictCase]) -> None: ...

    def on_slices(self, case: PredictCase, done: int, total: int) -> None: ...

    def on_case_done(self, result: "CaseResult") -> None: ...


@dataclass
class CaseResult:
    """One predicted case: what was written and how long each part took (seconds)."""

    case_id: str
    shape: tuple[int, int, int]
    slices: int
    read_seconds: float
    inference_seconds: float
    write_seconds: float
    outputs: list[Path] = field(default_factory=list)
    label_voxels: dict[int, int] = field(default_factory=dict)  # dataset label value → voxels
    rank: int = 0  # the process that predicted it (torchrun)

    @property
    def total_seconds(self) -> float:
        return self.read_seconds + self.inference_seconds + self.write_seconds

    @property
    def slices_per_second(self) -> float:
        """Inference throughput (slicing, model, un-slicing), reading and writing excluded."""
        return self.slices / self.inference_seconds if self.inference_seconds > 0 else float("inf")


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be predicted: its first input and the one-line reason."""

    case_id: str
    path: Path
    reason: str
    rank: int = 0


@dataclass
class PredictOutcome:
    """What a prediction did, over every rank (rank 0's view; another rank's holds its own cases).

    Attributes:
        run: the run as this process loaded it.
        results: the cases predicted and written, in input order.
        skipped: case ids whose outputs were all on disk already (``skip_existing``).
        failures: the cases that failed, in input order.
        world_size: processes that shared the cases.
    """

    run: TrainedRun
    results: list[CaseResult]
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    world_size: int = 1


def predict(options: PredictOptions, reporter: PredictReporter) -> PredictOutcome:
    """Predict every case of ``options.inputs`` with the run ``options.run_dir`` into ``options.out``."""
    # --- checks that need no heavy work (nor torch: a mistyped path fails in a blink) -------------
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.seg_type not in SEG_TYPES:
        raise InputError(f"--seg-type must be one of {', '.join(SEG_TYPES)}, got {options.seg_type!r}")
    if options.force and options.skip_existing:
        raise InputError("--force replaces existing outputs, --skip-existing keeps them: give one")
    config = read_run_config(options.run_dir)
    cases = find_cases(options.inputs, config.channel_names)
    plans = plan_outputs(cases, options.out, probabilities=options.probabilities, force=options.force,
                         skip_existing=options.skip_existing)
    # From here on SIGINT/SIGTERM unwind (every atomic write removes its temporary) and the
    # temporaries of this process's outputs are swept on the way out: see medsaga.predict.temporaries.
    started = time.time()
    own_outputs: list[Path] = []  # filled once this process knows its cases
    with interruptible(own_outputs, started):
        return _predict(options, config, cases, plans, reporter, started, own_outputs)


def _predict(options: PredictOptions, config: RunConfig, cases: list[PredictCase], plans: dict[str, CaseOutputs],
             reporter: PredictReporter, started: float, own_outputs: list[Path]) -> PredictOutcome:
    """:func:`predict` after the checks: the model, then the cases one by one."""
    from medsaga.device import resolve_device, resolve_precision

    rank = distributed.init_from_environment(options.device)
    if not rank.is_main:
        reporter = _QuietReporter()
    else:
        out = Path(options.out).expanduser()
        stale = remove_stale_temporaries([out, out / PROBABILITIES_FOLDER, *(path.parent for plan in plans.values()
                                                                            for path in plan.paths())], started)
        if stale:
            reporter.info(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted run")
    device = distributed.device_for(rank, resolve_device(options.device))
    precision = resolve_precision(options.precision, device)
    skipped = [case.case_id for case in cases if options.skip_existing and is_complete(plans[case.case_id])]
    todo = [case for case in cases if case.case_id not in skipped]
    mine = todo[rank.rank::rank.world_size]  # round robin: neighbouring cases of a cohort are alike in size
    own_outputs.extend(path for case in mine for path in plans[case.case_id].paths())

    # --- the model (hashes the base checkpoint first) --------------------------------------------
    checkpoint = verify_checkpoint(config, options.checkpoint)
    run = TrainedRun(config, load_model(config, checkpoint).to(device), device, precision, checkpoint)
    reporter.info(f"run {config.run_dir}: {config.method} on {config.model_type} at {config.image_size} px, "
                  f"{config.num_classes} classes ({', '.join(config.class_names[1:])}), {config.plane} slices; "
                  f"{device.type}, {precision}"
                  + (f"; {rank.world_size} processes share {len(todo)} cases" if rank.distributed else ""))
    if skipped:
        reporter.info(f"--skip-existing: {len(skipped)} case(s) already written, {len(todo)} to predict")
    reporter.on_start(mine)
    results: list[CaseResult] = []
    failures: list[CaseFailure] = []
    for case in mine:
        try:
            results.append(_predict_case(run, case, plans[case.case_id], options, reporter, rank.rank))
        except Exception as error:  # noqa: BLE001 -- one bad scan must not stop a cohort
            # Recorded, not reported here: the command prints each failure once, rank 0 for all ranks.
            failures.append(_failure(case, error, rank.rank))
    order = {case.case_id: index for index, case in enumerate(cases)}
    results = sorted((r for part in distributed.gather_objects(results) for r in part), key=lambda r: order[r.case_id])
    failures = sorted((f for part in distributed.gather_objects(failures) for f in part),
                      key=lambda f: order[f.case_id])
    return PredictOutcome(run, results, skipped, failures, rank.world_size)


def _failure(case: PredictCase, error: Exception, rank: int) -> CaseFailure:
    """One line for a failed case; the traceback of an unexpected error stays out of the way."""
    path = case.images[0]
    if isinstance(error, InputError):
        path, reason = error.path or path, error.message
    else:
        reason = f"{type(error).__name__}: {error}"
    return CaseFailure(case.case_id, path, reason.splitlines()[0] if reason else type(error).__name__, rank)


class _QuietReporter:
    """What a rank other than 0 shows: its warnings only (rank 0 shows the progress, the table and
    every rank's failures)."""

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        import sys

        print(f"warning: {message}", file=sys.stderr)

    def on_start(self, cases: Sequence[PredictCase]) -> None:
        pass

    def on_slices(self, case: PredictCase, done: int, total: int) -> None:
        pass

    def on_case_done(self, result: CaseResult) -> None:
        pass


def _predict_case(run: TrainedRun, case: PredictCase, plan: CaseOutputs, options: PredictOptions,
                  reporter: PredictReporter, rank: int = 0) -> CaseResult:
    from medsaga.io import read_volume
    from medsaga.predict.infer import segment_case
    from medsaga.predict.postprocess import keep_largest_component

    started = time.perf_counter()
    volumes = [read_volume(path, options.series_uid if case.kind == "dicom" else None) for path in case.images]
    read_seconds = time.perf_counter() - started

    prediction = segment_case(run, volumes, batch_size=options.batch_size, probabilities=options.probabilities,
                              progress=lambda done, total: reporter.on_slices(case, done, total))

    started = time.perf_counter()
    classes = prediction.classes
    if options.largest_component:
        classes = classes.with_array(keep_largest_component(classes.array))
    outputs = _write_outputs(run.config, case, volumes[0], classes, prediction, plan, options, reporter)
    values = np.asarray(run.config.class_values)
    counts = np.bincount(classes.array.ravel(), minlength=len(values))
    result = CaseResult(
        case_id=case.case_id, shape=volumes[0].shape, slices=prediction.slices, read_seconds=read_seconds,
        inference_seconds=prediction.seconds, write_seconds=time.perf_counter() - started, outputs=outputs,
        label_voxels={int(values[c]): int(n) for c, n in enumerate(counts) if n}, rank=rank,
    )
    reporter.on_case_done(result)
    return result


def _write_outputs(config: RunConfig, case: PredictCase, grid: Volume, classes: Volume, prediction: Prediction,
                   plan: CaseOutputs, options: PredictOptions, reporter: PredictReporter) -> list[Path]:
    from medsaga.io import write_label_map

    # --skip-existing redoes a case found with only some of its files (interrupted between two).
    replace = options.force or options.skip_existing
    # Class indices → the dataset's label values, in one lookup.
    values = np.asarray(config.class_values)
    labels = classes.with_array(values[classes.array])
    written = [write_label_map(labels, plan.nifti, overwrite=replace)]
    if plan.nrrd is not None:
        written.append(write_label_map(labels, plan.nrrd, overwrite=replace))
    if plan.seg is not None:
        problem = dicom_seg_problem(grid)
        if problem is None:
            segments = [Segment(c, config.class_names[c], int(config.class_values[c]))
                        for c in range(1, config.num_classes + 1)]
            written.append(write_dicom_seg(
                classes, grid, segments, plan.seg, segmentation_type=options.seg_type, overwrite=replace,
                algorithm_parameters={"method": config.method, "model": config.model_type,
                                      "image_size": str(config.image_size), "run": str(config.run_dir)},
                device_serial_number=_run_fingerprint(config),
                series_description=f"medsaga {config.method} prediction"))
            substitutions = dicom_seg_substitutions(grid)
            if substitutions is not None:
                reporter.warning(f"{case.images[0]}: DICOM-SEG for case {case.case_id}: {substitutions}")
        else:
            reporter.warning(f"{case.images[0]}: no DICOM-SEG for case {case.case_id}: {problem}; wrote "
                             f"{plan.nifti.name} only")
    if plan.probabilities is not None and prediction.probabilities is not None:
        names = ",".join(config.class_names)
        written.append(write_probabilities(prediction.probabilities, grid, plan.probabilities,
                                           description=f"medsaga p(class) 0..{config.num_classes}: {names}",
                                           overwrite=replace))
    return written


def _run_fingerprint(config: RunConfig) -> str:
    """16 hex digits of the SHA-256 of config.json: names the trained run in the SEG's equipment."""
    return hashlib.sha256((config.run_dir / "config.json").read_bytes()).hexdigest()[:16]
