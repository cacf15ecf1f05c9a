"""Our GaLoreAdamW against galore-torch 1.0's, step by step (galore-torch: test-only reference)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from medsaga.optim import GaLoreAdamW

with warnings.catch_warnings():
    # galore-torch pulls in transformers and bitsandbytes, which warn at import on a CPU machine.
    warnings.simplefilter("ignore")
    galore_torch = pytest.importorskip("galore_torch")


def tiny_mlp(seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Weights (40, 12) tall, (40, 40) square, (6, 40) wide; three biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 6)
    ).to(dtype)


def param_groups(model: nn.Module, rank: int, gap: int, proj_type: str) -> list[dict]:
    weights = [p for p in model.parameters() if p.dim() == 2]
    biases = [p for p in model.parameters() if p.dim() == 1]
    galore_group = {
        "params": weights, "rank": rank, "update_proj_gap": gap, "scale": 0.25,
        "proj_type": proj_type,
    }
    return [galore_group, {"params": biases}]


def batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 12, generator=generator)
    y = torch.randn(16, 6, generator=generator)
    return x.to(dtype), y.to(dtype)


def backward(model: nn.Module, step: int, dtype: torch.dtype) -> None:
    x, y = batch(step, dtype)
    loss = (model(x) - y).square().mean()
    loss.backward()


@pytest.mark.parametrize(
    ("proj_type", "correct_bias", "weight_decay"),
    [("std", True, 0.1), ("std", False, 0.0), ("reverse_std", True, 0.1), ("left", True, 0.0),
     ("right", True, 0.1)],
)
def test_same_weights_as_galore_torch_at_every_step(
    proj_type: str, correct_bias: bool, weight_decay: float
) -> None:
    ours_model = tiny_mlp(0)
    ref_model = copy.deepcopy(ours_model)
    hyper = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": weight_decay,
             "correct_bias": correct_bias}
    ours = GaLoreAdamW(param_groups(ours_model, 4, 5, proj_type), **hyper)
    ref = galore_torch.GaLoreAdamW(
        param_groups(ref_model, 4, 5, proj_type), no_deprecation_warning=True, **hyper
    )
    for step in range(20):  # refreshes at steps 0, 5, 10, 15
        for model, optimizer in ((ours_model, ours), (ref_model, ref)):
            optimizer.zero_grad()
            backward(model, step, torch.float32)
            optimizer.step()
        for (name, mine), theirs in zip(ours_model.named_parameters(), ref_model.parameters()):
            diff = (mine - theirs).abs().max().item()
            assert diff < 1e-6, f"step {step}, {name}: max |dw| = {diff:.3g}"
    moved = max((p - q).abs().max().item()
                for p, q in zip(ours_model.parameters(), tiny_mlp(0).parameters()))
    assert moved > 1e-2  # the comparison is not vacuous


def test_bfloat16_matches_galore_torch_dtype_handling() -> None:
    """The SVD runs in float32, the basis and the moments stay in the parameter's dtype."""
    ours_model = tiny_mlp(1, torch.bfloat16)
    ref_model = copy.deepcopy(ours_model)
    ours = GaLoreAdamW(param_groups(ours_model, 4, 3, "std"), lr=1e-2)
    ref = galore_torch.GaLoreAdamW(
        param_groups(ref_model, 4, 3, "std"), lr=1e-2, weight_decay=0.1, eps=1e-6,
        no_deprecation_warning=True,
    )
    for step in range(6):
        for model, optimizer in ((ours_model, ours), (ref_model, ref)):
            optimizer.zero_grad()
            backward(model, step, torch.bfloat16)
            optimizer.step()
    for mine, theirs in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(mine, theirs)
    weight = ours_model[0].weight
    assert ours.state[weight]["projection"].dtype == torch.bfloat16
    assert ours.state[weight]["exp_avg"].dtype == torch.bfloat16


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 24),
    cols=st.integers(1, 24),
    rank=st.integers(1, 30),
    proj_type=st.sampled_from(["std", "left", "right"]),
)
def test_any_shape_and_rank_match_one_refresh_cycle(
    rows: int, cols: int, rank: int, proj_type: str
) -> None:
    """Includes rank >= min(rows, cols), vectors-as-matrices and square weights."""
    generator = torch.Generator().manual_seed(rows * 100 + cols)
    start = torch.randn(rows, cols, generator=generator)
    grads = torch.randn(4, rows, cols, generator=generator)
    weights = []
    for make in (GaLoreAdamW, galore_torch.GaLoreAdamW):
        weight = nn.Parameter(start.clone())
        group = {"params": [weight], "rank": rank, "update_proj_gap": 2, "scale": 0.5,
                 "proj_type": proj_type}
        extra = {"no_deprecation_warning": True} if make is galore_torch.GaLoreAdamW else {}
        optimizer = make([group], lr=1e-2, weight_decay=0.1, eps=1e-6, **extra)
        for grad in grads:
            weight.grad = grad.clone()
            optimizer.step()
        weights.append(weight.detach())
    assert (weights[0] - weights[1]).abs().max().item() < 1e-6
