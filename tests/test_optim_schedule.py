"""The SAMed / MedSAGa learning-rate schedule: linear warm-up, then (1 - progress) ** 0.9."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsaga.optim import GaLoreAdamW, warmup_poly_lr


def lrs_over(total: int, warmup: int, base_lr: float = 0.005) -> list[float]:
    """The lr each of ``total`` optimizer steps runs with."""
    weight = nn.Parameter(torch.zeros(3, 3))
    optimizer = GaLoreAdamW([{"params": [weight], "rank": 2}], lr=base_lr)
    scheduler = warmup_poly_lr(optimizer, total_steps=total, warmup_steps=warmup)
    seen = []
    for _ in range(total + 2):
        seen.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.ones(3, 3)
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_then_polynomial_decay_values() -> None:
    lrs = lrs_over(total=14, warmup=4)
    assert lrs[:4] == pytest.approx([0.005 * k / 4 for k in (1, 2, 3, 4)])
    assert lrs[4] == pytest.approx(0.005)  # first step after warm-up: full rate
    assert lrs[9] == pytest.approx(0.005 * (1 - 5 / 10) ** 0.9)
    assert lrs[13] == pytest.approx(0.005 * (1 - 9 / 10) ** 0.9)
    assert lrs[14] == 0.0 and lrs[15] == 0.0  # clamped at the end, never negative or complex


def test_without_warmup_it_is_samed_decay() -> None:
    lrs = lrs_over(total=10, warmup=0, base_lr=1.0)
    assert lrs[:10] == pytest.approx([(1 - t / 10) ** 0.9 for t in range(10)])


def test_schedule_refuses_bad_lengths() -> None:
    optimizer = GaLoreAdamW([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_poly_lr(optimizer, total_steps=5, warmup_steps=5)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_poly_lr(optimizer, total_steps=0)
