"""Our GaLoreAdamW on its own: it projects, resumes exactly, runs layer-wise, refuses bad groups."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import medsaga.optim.galore as galore_module
from medsaga.optim import (
    GaLoreAdamW,
    check_layerwise_compatible,
    galore_param_groups,
    randomized_svd,
    top_singular_basis,
    warmup_poly_lr,
)


def tiny_mlp(seed: int) -> nn.Sequential:
    """Weights (40, 12) tall, (40, 40) square, (6, 40) wide; three biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 6)
    )


def make_optimizer(model: nn.Module, svd: str = "full", gap: int = 7, **kwargs) -> GaLoreAdamW:
    named = list(model.named_parameters())
    groups = galore_param_groups(
        [(n, p) for n, p in named if p.dim() == 2],
        [(n, p) for n, p in named if p.dim() != 2],
        rank=4, update_proj_gap=gap, scale=0.25, svd=svd,
    )
    return GaLoreAdamW(groups, lr=1e-2, **kwargs)


def backward(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(16, 12, generator=generator), torch.randn(16, 6, generator=generator)
    (model(x) - y).square().mean().backward()


def train(model: nn.Module, optimizer: GaLoreAdamW, steps: range) -> None:
    for step in steps:
        optimizer.zero_grad()
        backward(model, step)
        optimizer.step()


# --- it really projects ------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "moment_shape", "basis_shape"),
                         [((64, 128), (4, 128), (64, 4)), ((128, 64), (128, 4), (4, 64))])
def test_moments_live_in_the_projected_space(shape, moment_shape, basis_shape) -> None:
    weight = nn.Parameter(torch.randn(*shape))
    bias = nn.Parameter(torch.randn(shape[0]))
    optimizer = GaLoreAdamW([{"params": [weight], "rank": 4}, {"params": [bias]}])
    weight.grad, bias.grad = torch.randn(*shape), torch.randn(shape[0])
    optimizer.step()
    state = optimizer.state[weight]
    assert state["exp_avg"].shape == moment_shape
    assert state["exp_avg_sq"].shape == moment_shape
    assert state["projection"].shape == basis_shape
    assert optimizer.state[bias]["exp_avg"].shape == (shape[0],)  # plain AdamW: full shape


def test_reverse_std_with_rank_at_least_rows_of_a_wide_weight() -> None:
    """galore-torch 1.0 crashes here (it picks the way back from the low-rank shape); we don't."""
    weight = nn.Parameter(torch.randn(3, 10))
    optimizer = GaLoreAdamW([{"params": [weight], "rank": 5, "proj_type": "reverse_std"}])
    weight.grad = torch.randn(3, 10)
    optimizer.step()
    assert optimizer.state[weight]["projection"].shape == (3, 10)  # right side, r = 3
    assert optimizer.state[weight]["exp_avg"].shape == (3, 3)


# --- resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("svd", ["full", "randomized"])
def test_resume_through_safe_load_is_bit_identical(
    svd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gap 7: refreshes at steps 0, 7, 14; the resume point (10) is between two refreshes, so the
    # steps 10-13 must use the restored basis, and step 14 must refresh on schedule.
    reference = tiny_mlp(0)
    reference_opt = make_optimizer(reference, svd)
    train(reference, reference_opt, range(20))

    first = tiny_mlp(0)
    first_opt = make_optimizer(first, svd)
    train(first, first_opt, range(10))
    torch.save({"model": first.state_dict(), "optim": first_opt.state_dict()}, tmp_path / "ck.pt")

    checkpoint = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed = tiny_mlp(123)  # different initial weights: everything must come from the file
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = make_optimizer(resumed, svd)
    resumed_opt.load_state_dict(checkpoint["optim"])
    saved = first_opt.state[first[0].weight]
    restored = resumed_opt.state[resumed[0].weight]
    assert restored["step"] == 10 and isinstance(restored["step"], int)
    assert torch.equal(restored["projection"], saved["projection"])

    refreshed_at: list[int] = []
    real_basis = galore_module.top_singular_basis

    def spy(grad, rank, side, **kwargs):
        refreshed_at.append(kwargs["seed"])
        return real_basis(grad, rank, side, **kwargs)

    monkeypatch.setattr(galore_module, "top_singular_basis", spy)
    train(resumed, resumed_opt, range(10, 20))
    assert refreshed_at == [14, 14, 14]  # the three weights, at step 14 only (svd_seed 0 + step)
    for (name, mine), theirs in zip(resumed.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name


# --- randomized SVD ----------------------------------------------------------------------------


def rank_r_matrix(rows: int, cols: int, rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(rows, rank, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(cols, rank, generator=generator)).Q
    strengths = torch.linspace(10.0, 5.0, rank)
    noise = 0.01 * torch.randn(rows, cols, generator=generator)
    return u @ torch.diag(strengths) @ v.T + noise


@pytest.mark.parametrize(("shape", "side"), [((120, 300), "left"), ((300, 120), "right")])
def test_randomized_basis_spans_the_full_svd_subspace(shape, side) -> None:
    matrix = rank_r_matrix(*shape, rank=4)
    exact = top_singular_basis(matrix, 4, side, method="full")
    approx = top_singular_basis(matrix, 4, side, method="randomized", seed=3)
    # Orient both as (dim, r) with orthonormal columns; |E^T A|_F^2 / r = 1 for equal subspaces.
    if side == "right":
        exact, approx = exact.T, approx.T
    assert torch.allclose(approx.T @ approx, torch.eye(4), atol=1e-5)
    overlap = (exact.T @ approx).square().sum().item() / 4
    assert overlap > 0.999


def test_randomized_svd_is_seeded_and_leaves_the_global_rng_alone() -> None:
    matrix = torch.randn(60, 90, generator=torch.Generator().manual_seed(5))
    rng_before = torch.get_rng_state()
    first = randomized_svd(matrix, 5, niter=2, oversample=4, seed=11)
    again = randomized_svd(matrix, 5, niter=2, oversample=4, seed=11)
    other = randomized_svd(matrix, 5, niter=0, oversample=0, seed=12)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert [t.shape for t in first] == [(60, 5), (5,), (5, 90)]
    exact_singular = torch.linalg.svdvals(matrix)[:5]
    assert torch.allclose(first[1], exact_singular, rtol=0.15)  # a random matrix: flat spectrum


# --- layer-wise mode ---------------------------------------------------------------------------


def test_layerwise_mode_gives_the_same_weights_and_frees_each_gradient() -> None:
    normal = tiny_mlp(0)
    normal_opt = make_optimizer(normal, gap=3)
    normal_sched = warmup_poly_lr(normal_opt, total_steps=10, warmup_steps=2)

    layerwise = tiny_mlp(0)
    params = list(layerwise.parameters())
    alive_counts: list[int] = []
    for p in params:
        # Registered before the optimizer's hooks, so these run first, while p.grad is still set.
        p.register_post_accumulate_grad_hook(
            lambda _: alive_counts.append(sum(q.grad is not None for q in params))
        )
    layerwise_opt = make_optimizer(layerwise, gap=3, layerwise=True)
    layerwise_sched = warmup_poly_lr(layerwise_opt, total_steps=10, warmup_steps=2)

    for step in range(6):
        normal_opt.zero_grad()
        backward(normal, step)
        normal_opt.step()
        normal_sched.step()

        backward(layerwise, step)
        assert all(p.grad is None for p in params)
        layerwise_opt.step()  # nothing left to do
        layerwise_sched.step()
        layerwise_opt.zero_grad()

    assert len(alive_counts) == 6 * len(params)
    assert max(alive_counts) == 1  # only the gradient being consumed
    for (name, mine), theirs in zip(layerwise.named_parameters(), normal.parameters()):
        assert torch.equal(mine, theirs), name
    assert layerwise_opt.state[layerwise[0].weight]["step"] == 6

    layerwise_opt.remove_layerwise_hooks()
    backward(layerwise, 6)
    assert all(p.grad is not None for p in params)  # back to the normal mode


def test_loading_a_state_keeps_layerwise_mode_and_the_gradient_reducer() -> None:
    """Resume loads the optimizer state; the optimizer must stay layer-wise, hooked, and (under
    torchrun) keep averaging each gradient over the ranks: before the fix the reducer was dropped
    and two DDP ranks drifted apart after a resume."""
    model = tiny_mlp(0)
    optimizer = make_optimizer(model, gap=3, layerwise=True)
    seen: list[torch.Size] = []
    optimizer.reduce_gradient = lambda grad: seen.append(grad.shape)
    backward(model, 0)
    state = optimizer.state_dict()
    resumed_model = tiny_mlp(0)
    resumed = make_optimizer(resumed_model, gap=3, layerwise=True)
    resumed.reduce_gradient = optimizer.reduce_gradient
    resumed.load_state_dict(state)
    assert resumed.layerwise and resumed.reduce_gradient is optimizer.reduce_gradient
    count = len(seen)
    backward(resumed_model, 1)
    assert len(seen) == count + len(list(resumed_model.parameters()))  # every gradient went through it
    assert all(p.grad is None for p in resumed_model.parameters())  # and was consumed by its hook
    resumed.remove_layerwise_hooks()  # the handles survived the load
    backward(resumed_model, 2)
    assert all(p.grad is not None for p in resumed_model.parameters())


def test_layerwise_refuses_loops_that_need_all_gradients() -> None:
    check_layerwise_compatible(grad_accum_steps=1)
    with pytest.raises(ValueError, match="gradient accumulation over 4"):
        check_layerwise_compatible(grad_accum_steps=4)
    with pytest.raises(ValueError, match="clipping"):
        check_layerwise_compatible(max_grad_norm=1.0)


# --- bad groups --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_rank_group_refuses_non_matrix_parameters(shape: tuple[int, ...]) -> None:
    weight = nn.Parameter(torch.zeros(4, 4))
    odd = nn.Parameter(torch.zeros(*shape))
    with pytest.raises(ValueError, match=re.escape(f"shape {tuple(shape)}")):
        GaLoreAdamW([{"params": [weight, odd], "rank": 2}])
    with pytest.raises(ValueError, match="'blocks.0.odd'"):
        GaLoreAdamW([{"params": [("w", weight), ("blocks.0.odd", odd)], "rank": 2}])
    GaLoreAdamW([{"params": [weight], "rank": 2}, {"params": [odd]}])  # fine in a plain group


def test_unsupported_group_options_are_refused() -> None:
    weight = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="proj_type 'full'"):
        GaLoreAdamW([{"params": [weight], "rank": 2, "proj_type": "full"}])
    with pytest.raises(ValueError, match="svd 'lanczos'"):
        GaLoreAdamW([{"params": [weight], "rank": 2, "svd": "lanczos"}])
    with pytest.raises(ValueError, match="rank"):
        GaLoreAdamW([{"params": [weight], "rank": 0}])


def test_importing_medsaga_optim_does_not_import_galore_torch() -> None:
    code = (
        "import sys, medsaga.optim; "
        "print('galore_torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
