"""``medsaga predict`` as a library call: a run and input paths in, label maps on disk, timings out.

Order matters for the user: everything that can fail on bad input and needs no heavy work comes
first (options, the run's config.json, the input names and channels, the output paths), then the
checkpoint hash and the model, then the cases one by one: read, predict, write. A case that cannot
be read stops the run with its error; the cases before it are complete on disk (every file is
written atomically).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from medsaga.errors import InputError
from medsaga.io.volume import Volume
from medsaga.predict.dicom_seg import (SEG_TYPES, Segment, dicom_seg_problem, dicom_seg_substitutions,
                                      write_dicom_seg)
from medsaga.predict.inputs import PredictCase, find_cases
from medsaga.predict.outputs import CaseOutputs, plan_outputs, write_probabilities
from medsaga.predict.run import RunConfig, TrainedRun, load_model, read_run_config, verify_checkpoint

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

    @property
    def total_seconds(self) -> float:
        return self.read_seconds + self.inference_seconds + self.write_seconds

    @property
    def slices_per_second(self) -> float:
        """Inference throughput (slicing, model, un-slicing), reading and writing excluded."""
        return self.slices / self.inference_seconds if self.inference_seconds > 0 else float("inf")


@dataclass
class PredictOutcome:
    run: TrainedRun
    results: list[CaseResult]


def predict(options: PredictOptions, reporter: PredictReporter) -> PredictOutcome:
    """Predict every case of ``options.inputs`` with the run ``options.run_dir`` into ``options.out``."""
    # --- checks that need no heavy work (nor torch: a mistyped path fails in a blink) -------------
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.seg_type not in SEG_TYPES:
        raise InputError(f"--seg-type must be one of {', '.join(SEG_TYPES)}, got {options.seg_type!r}")
    config = read_run_config(options.run_dir)
    cases = find_cases(options.inputs, config.channel_names)
    plans = plan_outputs(cases, options.out, probabilities=options.probabilities, force=options.force)

    from medsaga.train.finetune import resolve_device, resolve_precision

    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)

    # --- the model (hashes the base checkpoint first) --------------------------------------------
    checkpoint = verify_checkpoint(config, options.checkpoint)
    run = TrainedRun(config, load_model(config, checkpoint).to(device), device, precision, checkpoint)
    reporter.info(f"run {config.run_dir}: {config.method} on {config.model_type} at {config.image_size} px, "
                  f"{config.num_classes} classes ({', '.join(config.class_names[1:])}), {config.plane} slices; "
                  f"{device.type}, {precision}")
    reporter.on_start(cases)
    results = [_predict_case(run, case, plans[case.case_id], options, reporter) for case in cases]
    return PredictOutcome(run, results)


def _predict_case(run: TrainedRun, case: PredictCase, plan: CaseOutputs, options: PredictOptions,
                  reporter: PredictReporter) -> CaseResult:
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
        label_voxels={int(values[c]): int(n) for c, n in enumerate(counts) if n},
    )
    reporter.on_case_done(result)
    return result


def _write_outputs(config: RunConfig, case: PredictCase, grid: Volume, classes: Volume, prediction: Prediction,
                   plan: CaseOutputs, options: PredictOptions, reporter: PredictReporter) -> list[Path]:
    from medsaga.io import write_label_map

    # Class indices → the dataset's label values, in one lookup.
    values = np.asarray(config.class_values)
    labels = classes.with_array(values[classes.array])
    written = [write_label_map(labels, plan.nifti, overwrite=options.force)]
    if plan.nrrd is not None:
        written.append(write_label_map(labels, plan.nrrd, overwrite=options.force))
    if plan.seg is not None:
        problem = dicom_seg_problem(grid)
        if problem is None:
            segments = [Segment(c, config.class_names[c], int(config.class_values[c]))
                        for c in range(1, config.num_classes + 1)]
            written.append(write_dicom_seg(
                classes, grid, segments, plan.seg, segmentation_type=options.seg_type, overwrite=options.force,
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
                                           overwrite=options.force))
    return written


def _run_fingerprint(config: RunConfig) -> str:
    """16 hex digits of the SHA-256 of config.json: names the trained run in the SEG's equipment."""
    return hashlib.sha256((config.run_dir / "config.json").read_bytes()).hexdigest()[:16]
