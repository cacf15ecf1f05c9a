"""Reporters that show nothing and record what the commands report, one per reporting protocol:
training (:class:`QuietReporter`, which can also stop a run as a crash would), training and
prediction (:class:`QuietPredictReporter`), the benchmark (:class:`QuietBenchmarkReporter`)."""

from __future__ import annotations


class Interrupt(Exception):
    """Raised by :class:`QuietReporter` at its ``stop_at`` step."""


class QuietReporter:
    """Records what the loop reports; can stop the run at a given step (as a crash would)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.messages: list[str] = []
        self.losses: list[float] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def on_case_loaded(self, case_id: str, done: int, total: int) -> None:
        pass

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None:
        self.first_step = first_step

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        if self.stop_at is not None and step == self.stop_at:
            raise Interrupt(step)
        self.losses.append(loss)

    def on_validation(self, epoch: int, mean_dice: float) -> None:
        pass


class QuietPredictReporter:
    """Records what training and prediction report."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self.progress: list[tuple[str, int, int]] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def on_case_loaded(self, *args) -> None: ...

    def on_start(self, *args) -> None: ...

    def on_step(self, *args) -> None: ...

    def on_validation(self, *args) -> None: ...

    def on_slices(self, case, done: int, total: int) -> None:
        self.progress.append((case.case_id, done, total))

    def on_case_done(self, result) -> None: ...


class QuietBenchmarkReporter:
    """Records what the benchmark reports."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.done: list[dict] = []

    def info(self, message: str) -> None:
        self.messages.append(message)

    def on_entry_start(self, index: int, total: int, label: str) -> None:
        pass

    def on_entry_done(self, index: int, total: int, record: dict) -> None:
        self.done.append(record)
