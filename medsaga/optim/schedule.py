"""Learning-rate schedule of SAMed / MedSAGa: linear warm-up, then polynomial decay.

The factor applied to each group's base lr before optimizer step ``t`` (t = 0, 1, ...; the
scheduler is stepped once after every optimizer step)::

    t <  W:  (t + 1) / W                          # linear warm-up, reaches 1 at t = W - 1
    t >= W:  (1 - (t - W) / (T - W)) ** power     # power 0.9; 0 at t = T, and after

SAMed and MedSAGa divide by the total T rather than by T - W, so their lr ends at
``(W / T) ** 0.9`` of the base instead of 0; the two agree when there is no warm-up.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DEFAULT_POWER: float = 0.9
"""The exponent SAMed and MedSAGa use."""


def warmup_poly_lr(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, power: float = DEFAULT_POWER
) -> LambdaLR:
    """A ``LambdaLR`` with linear warm-up over ``warmup_steps`` then ``(1 - progress) ** power``.

    Args:
        optimizer: its groups' current ``lr`` become the base rates.
        total_steps: optimizer steps in the run (T); the factor is 0 from step T on.
        warmup_steps: W, 0 for none; must be < ``total_steps``.
        power: exponent of the decay.

    Raises:
        ValueError: if the step counts or the power are out of range.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
        )
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    decay_steps = total_steps - warmup_steps

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return (1.0 - progress) ** power

    return LambdaLR(optimizer, factor)
