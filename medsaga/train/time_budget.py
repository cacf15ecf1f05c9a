"""Training for a wall-clock budget (``medsaga finetune --time-budget 20m``): the decisions, no I/O.

A user on a CPU knows how long they can wait, not how many steps that buys. The budget counts
from the start of the fine-tuning (reading the cases, building the model and the embedding cache
all count: they are part of the user's wait). The loop trains :data:`DEFAULT_PROBE_STEPS` steps (fewer if
they take more than :data:`PROBE_FRACTION` of the budget), then :meth:`StepBudget.step_done` divides what is left of the budget (less a small reserve for
writing the trained weights and the report) by the measured time of a step, and fixes the total.
From then on the learning rate follows the very warm-up/poly schedule a ``--steps`` run of that
total would (:func:`medsaga.optim.warmup_poly_lr`), so it reaches its end value (0) at the last
step, when the budget runs out. The resolved total is recorded in config.json, and ``--resume``
continues with it (it does not re-time anything).

The embedding cache of a budgeted run is lazy (:mod:`medsaga.train.embedding_cache`): a step
first encodes the (slice, view) pairs it reads that are not cached yet. That encoding is timed
apart (``encode_seconds`` of :meth:`StepBudget.step_done`): the probe's seconds a step are the
steps' own, and the encoding is projected separately, at the seconds per slice-view the probe
measured, for exactly the slice-views the remaining steps will encode (``future_encodes``: the
order is fixed by the seed). The probe's steps are the ones that encode the most (at first every
pair is new); counting that in a step's time would make later steps look several times dearer
than they are and leave most of the budget unused.

During the probe steps the total is not known yet: they train on a provisional warm-up ramp
``(t + 1) / PROBE_RAMP_STEPS``, a small learning rate, as the first steps of a warm-up do.

Everything here takes its clock as an argument, so the tests drive it with a fake one.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from medsaga.errors import InputError

DEFAULT_PROBE_STEPS = 5
"""Steps timed before the total is fixed: the first is discarded (it builds the optimizer state)."""

PROBE_RAMP_STEPS = 100
"""The provisional warm-up's length: the probe steps' learning rate is (t + 1) / 100 of the peak."""

RESERVE_FRACTION = 0.03
"""Of the budget kept back for what follows the last step (saving the weights, the report)."""

PROBE_FRACTION = 0.1
"""Slow steps end the probe early: once the steps so far took this share of the budget."""

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"20m"``, ``"90s"``, ``"1h30m"``, ``"1h"``, or plain seconds (``"600"``).

    Raises:
        InputError: anything else, or a duration of zero.
    """
    value = text.strip().lower()
    seconds: float | None = None
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.match(value)
        if match and any(match.groupdict().values()):
            parts = {key: float(number) for key, number in match.groupdict().items() if number is not None}
            seconds = parts.get("h", 0.0) * 3600 + parts.get("m", 0.0) * 60 + parts.get("s", 0.0)
    if seconds is None or not math.isfinite(seconds):
        raise InputError(f"--time-budget must be a duration such as 20m, 90s, 1h30m or plain seconds, got {text!r}")
    if seconds <= 0:
        raise InputError(f"--time-budget must be more than 0 seconds, got {text!r}")
    return seconds


def steps_for_budget(budget_seconds: float, elapsed_seconds: float, seconds_per_step: float, steps_done: int,
                     reserve_seconds: float, *, encodes: Iterable[int] | None = None,
                     seconds_per_entry: float = 0.0) -> int:
    """The run's total steps: those done, plus as many more as fit in what is left of the budget.

    ``encodes``: the slice-views each following step will encode first (a lazy embedding cache),
    ending when nothing is left to encode; each costs ``seconds_per_entry`` on top of its step.
    Never fewer than ``steps_done`` (a budget already spent stops at once).
    """
    left = budget_seconds - elapsed_seconds - reserve_seconds
    if seconds_per_step <= 0 or left <= 0:
        return steps_done
    more = 0
    if encodes is not None and seconds_per_entry > 0:
        for count in encodes:
            cost = seconds_per_step + count * seconds_per_entry
            if cost > left:
                return steps_done + more
            left -= cost
            more += 1
    return steps_done + more + max(0, math.floor(left / seconds_per_step))


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    """Warm-up steps of a run of ``total_steps`` (as ``finetune`` rounds them), kept below the total."""
    return min(max(0, total_steps - 1), int(round(warmup_fraction * total_steps)))


@dataclass
class StepBudget:
    """One run's wall-clock budget, from the start of the run to its total steps.

    Attributes:
        seconds: the budget.
        warmup_fraction: of the resolved total spent in linear warm-up.
        clock: seconds, monotonic (``time.perf_counter``; a fake in tests).
        started: ``clock()`` when the run began (the budget counts from there).
        probe_steps: steps timed before the total is fixed (fewer when they take more than
            ``probe_fraction`` of the budget).
        reserve_fraction: of the budget kept for what follows the last step.
    """

    seconds: float
    warmup_fraction: float = 0.05
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None
    probe_steps: int = DEFAULT_PROBE_STEPS
    reserve_fraction: float = RESERVE_FRACTION
    probe_fraction: float = PROBE_FRACTION
    step_seconds: list[float] = field(default_factory=list)
    total_steps: int | None = None
    warmup_steps: int | None = None
    setup_seconds: float | None = None
    resolved_after_seconds: float | None = None
    # Called once, with this budget, when the total is fixed (finetune records it in config.json).
    on_resolved: Callable[["StepBudget"], None] | None = None
    # A lazy embedding cache: next step (0-based) -> the slice-views each step from there will encode.
    future_encodes: Callable[[int], Iterator[int]] | None = None
    encode_seconds: float = 0.0  # encoding inside the timed steps so far (not in step_seconds)
    encoded: int = 0
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()
        if self.probe_steps < 1:
            raise ValueError(f"probe_steps must be at least 1, got {self.probe_steps}")

    @property
    def resolved(self) -> bool:
        return self.total_steps is not None

    def steps_begin(self) -> None:
        """Call when the first step starts (after the embedding cache is built)."""
        self._last = self.clock()
        self.setup_seconds = self._last - self.started

    def step_done(self, steps_done: int, *, encode_seconds: float = 0.0, encoded: int = 0) -> int | None:
        """Call after each optimizer step (``steps_done`` counts this run's steps so far, from 1).

        ``encode_seconds``: of the time since the last call, spent encoding ``encoded`` slice-views
        for a lazy embedding cache (kept out of the step's time, projected apart).
        Returns the total steps once, the call that fixes it; ``None`` otherwise.
        """
        now = self.clock()
        if self._last is None:
            raise RuntimeError("steps_begin() was not called")
        self.step_seconds.append(max(0.0, now - self._last - encode_seconds))
        self.encode_seconds += encode_seconds
        self.encoded += encoded
        self._last = now
        # Slow steps (a big model on a CPU) would spend the budget on the probe: fix the total early.
        slow = sum(self.step_seconds) + self.encode_seconds >= self.probe_fraction * self.seconds
        if self.resolved or (len(self.step_seconds) < self.probe_steps and not slow):
            return None
        timed = self.step_seconds[1:] if len(self.step_seconds) > 1 else self.step_seconds
        per_step = sum(timed) / len(timed)
        elapsed = now - self.started
        encodes = self.future_encodes(steps_done) if self.future_encodes is not None else None
        self.total_steps = steps_for_budget(self.seconds, elapsed, per_step, steps_done,
                                            self.reserve_fraction * self.seconds, encodes=encodes,
                                            seconds_per_entry=self.seconds_per_entry() or 0.0)
        self.warmup_steps = warmup_steps_for(self.total_steps, self.warmup_fraction)
        self.resolved_after_seconds = elapsed
        if self.on_resolved is not None:
            self.on_resolved(self)
        return self.total_steps

    def lr_factor(self, step: int) -> float:
        """The learning rate's factor before optimizer step ``step`` (0-based), as a ``LambdaLR``
        asks: the provisional ramp until the total is fixed, then :func:`warmup_poly_lr`'s own."""
        if not self.resolved:
            return min(1.0, (step + 1) / PROBE_RAMP_STEPS)
        return _poly_factor(self.total_steps, self.warmup_steps or 0)(step)

    def seconds_per_entry(self) -> float | None:
        """Encoding seconds per slice-view measured in the probe (a lazy embedding cache), or ``None``."""
        return self.encode_seconds / self.encoded if self.encoded else None

    def seconds_per_step(self) -> float | None:
        timed = self.step_seconds[1:] if len(self.step_seconds) > 1 else self.step_seconds
        return sum(timed) / len(timed) if timed else None

    def describe(self) -> dict[str, Any]:
        """config.json / report.json's ``time_budget``."""
        per_step = self.seconds_per_step()
        return {"seconds": self.seconds, "resolved_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "probe_steps": self.probe_steps, "setup_seconds": _round(self.setup_seconds),
                "seconds_per_step": _round(per_step), "resolved_after_seconds": _round(self.resolved_after_seconds),
                "probe_encode_seconds": _round(self.encode_seconds), "probe_encoded": self.encoded,
                "reserve_seconds": round(self.reserve_fraction * self.seconds, 3)}


_FACTORS: dict[tuple[int, int], Callable[[int], float]] = {}


def _poly_factor(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """:func:`medsaga.optim.warmup_poly_lr`'s factor for this total (taken from it, not rewritten,
    so a resumed run, which builds that scheduler directly, continues on exactly the same curve)."""
    key = (total_steps, warmup_steps)
    if key not in _FACTORS:
        import torch

        from medsaga.optim import warmup_poly_lr

        scratch = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        _FACTORS[key] = warmup_poly_lr(scratch, total_steps, warmup_steps).lr_lambdas[0]
    return _FACTORS[key]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
