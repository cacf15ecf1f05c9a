"""What a fine-tuning run folder tells the report: its settings, its curves, its measurements.

A run folder (written by ``medsaga finetune``) holds ``config.json`` (the settings), ``metrics.jsonl``
(one line per training step: ``step``, ``loss``, ``lr``, ``seconds``) and, once training ended,
``report.json`` (memory, throughput, the validation Dice after each validation). Any of them may be
missing or unreadable (a run still going, a folder copied in part): the record then says so in
:attr:`RunRecord.problems` and the page shows what there is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class RunRecord:
    """A run folder's contents, as read.

    Attributes:
        folder: the run folder.
        config: config.json, or ``None`` when absent or unreadable.
        report: report.json, or ``None`` (training not finished, or unreadable).
        steps: ``(S,)`` int64, the steps of metrics.jsonl in file order.
        losses: ``(S,)`` float64, their losses (NaN where a line had none).
        problems: one sentence per file that was missing or unreadable.
    """

    folder: Path
    config: dict[str, Any] | None
    report: dict[str, Any] | None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    problems: tuple[str, ...] = ()

    @property
    def validation_dice(self) -> list[float]:
        """The validation Dice after each validation (report.json), in order."""
        values = (self.report or {}).get("validation_dice") or []
        return [float(v) if v is not None else math.nan for v in values]

    def validation_steps(self) -> list[int]:
        """The step after which each of :attr:`validation_dice` was measured.

        The loop validates at each epoch's end and after the last step; an epoch is
        ``training_slices / (batch_size * grad_accum)`` steps (config.json). A resumed run's report
        lists only the validations since it resumed: the last ones of the schedule. Without the
        numbers to place them, validations are numbered 1, 2, ...
        """
        count = len(self.validation_dice)
        training = (self.config or {}).get("training") or {}
        slices = ((self.config or {}).get("dataset") or {}).get("training_slices")
        total = (self.report or {}).get("steps") or training.get("steps")
        try:
            per_epoch = float(slices) / (int(training["batch_size"]) * int(training.get("grad_accum") or 1))
            total = int(total)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return list(range(1, count + 1))
        step = np.arange(1, total + 1)
        ends = (np.floor(step / per_epoch) > np.floor((step - 1) / per_epoch)) | (step == total)
        scheduled = step[ends].tolist()
        if len(scheduled) < count:
            return list(range(1, count + 1))
        return scheduled[len(scheduled) - count:] if count else []


def find_run_folder(path: Path | None) -> Path | None:
    """The run folder ``path`` names: a folder holding config.json and metrics.jsonl or report.json
    (a RUN_DIR given as ``--labels``), or such a folder's config.json; else ``None``."""
    if path is None:
        return None
    folder = path if path.is_dir() else path.parent if path.name == CONFIG_FILE else None
    if folder is None or not (folder / CONFIG_FILE).is_file():
        return None
    if (folder / METRICS_FILE).is_file() or (folder / REPORT_FILE).is_file():
        return folder
    return None


def read_run(folder: Path) -> RunRecord:
    """Read a run folder; missing or broken files become :attr:`RunRecord.problems`, not errors."""
    problems: list[str] = []
    config = _read_json(folder / CONFIG_FILE, problems, "the run's settings")
    report = _read_json(folder / REPORT_FILE, problems, "the memory and throughput report (written when "
                                                        "training ends)")
    steps, losses = _read_metrics(folder / METRICS_FILE, problems)
    return RunRecord(folder, config, report, steps, losses, tuple(problems))


def _read_json(path: Path, problems: list[str], what: str) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path.name} is absent: no {what}.")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path.name} could not be read ({error}).")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} does not hold a JSON object.")
        return None
    return data


def _read_metrics(path: Path, problems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """metrics.jsonl → steps ``(S,)`` and losses ``(S,)``; a torn last line (a run killed while
    writing) is skipped, as the loop's own resume does."""
    steps: list[int] = []
    losses: list[float] = []
    if not path.is_file():
        problems.append(f"{path.name} is absent: no training curve.")
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        problems.append(f"{path.name} could not be read ({error}).")
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    skipped = 0
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            skipped += bool(line.strip())
            continue
        loss = record.get("loss")
        steps.append(step)
        losses.append(float(loss) if isinstance(loss, (int, float)) else math.nan)
    if skipped:
        problems.append(f"{path.name}: {skipped} line(s) could not be read and are left out.")
    return np.asarray(steps, np.int64), np.asarray(losses, np.float64)


__all__ = ["CONFIG_FILE", "METRICS_FILE", "REPORT_FILE", "RunRecord", "find_run_folder", "read_run"]
