"""Prediction: a trained run folder applied to new volumes, label maps written to overlay exactly.

Modules (one step each):

* :mod:`~medsaga.predict.run`: RUN_DIR → checked config, verified base checkpoint, trained model
  (``read_run_config``, ``verify_checkpoint``, ``load_model``, ``load_run``).
* :mod:`~medsaga.predict.inputs`: INPUT paths → cases with their channel files (``find_cases``).
* :mod:`~medsaga.predict.infer`: a case's volumes → class map (and probabilities) on its grid
  (``segment_case``).
* :mod:`~medsaga.predict.postprocess`: ``keep_largest_component``.
* :mod:`~medsaga.predict.outputs`: output layout and checks (``plan_outputs``), probability maps.
* :mod:`~medsaga.predict.dicom_seg`: DICOM-SEG referencing the source series (``write_dicom_seg``).
* :mod:`~medsaga.predict.pipeline`: all of it in order (``predict``), as the CLI runs it.

Importing this package is cheap; torch, nibabel and highdicom load with the modules that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CaseOutputs": "outputs", "plan_outputs": "outputs", "write_probabilities": "outputs",
    "CaseResult": "pipeline", "PredictOptions": "pipeline", "PredictOutcome": "pipeline",
    "PredictReporter": "pipeline", "predict": "pipeline",
    "PredictCase": "inputs", "find_cases": "inputs",
    "Prediction": "infer", "segment_case": "infer",
    "RunConfig": "run", "TrainedRun": "run", "load_model": "run", "load_run": "run", "read_run_config": "run",
    "verify_checkpoint": "run",
    "Segment": "dicom_seg", "dicom_seg_problem": "dicom_seg", "write_dicom_seg": "dicom_seg",
    "keep_largest_component": "postprocess",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from medsaga.predict.dicom_seg import Segment, dicom_seg_problem, write_dicom_seg
    from medsaga.predict.infer import Prediction, segment_case
    from medsaga.predict.inputs import PredictCase, find_cases
    from medsaga.predict.outputs import CaseOutputs, plan_outputs, write_probabilities
    from medsaga.predict.pipeline import CaseResult, PredictOptions, PredictOutcome, PredictReporter, predict
    from medsaga.predict.postprocess import keep_largest_component
    from medsaga.predict.run import RunConfig, TrainedRun, load_model, load_run, read_run_config, verify_checkpoint


def __getattr__(name: str) -> Any:
    """Load a submodule when one of its names is first used (keeps ``import medsaga.predict`` cheap)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medsaga.predict' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"medsaga.predict.{_EXPORTS[name]}"), name)
