"""GaLore AdamW: AdamW whose moments live in a low-rank projection of each 2-D gradient.

Same updates as ``galore_torch.GaLoreAdamW`` (galore-torch 1.0) for the projection types we
support, with three additions: the state is plain tensors (safe ``torch.load``), the projection
can be refreshed with a seeded randomized SVD, and a layer-wise mode updates each weight as soon
as its gradient is ready.

Parameter groups
----------------
A group that carries ``rank`` is a GaLore group; every parameter in it must be 2-D. Its keys (the
galore-torch names, so its param groups carry over unchanged; missing ones take the defaults of
:mod:`medsaga.optim.defaults`):

- ``rank`` (int): projection rank r.
- ``update_proj_gap`` (int): refresh the projection when the parameter's step count (before the
  increment) is a multiple of it, i.e. at steps 0, gap, 2*gap, ...
- ``scale`` (float): factor on the projected-back update.
- ``proj_type`` (str): ``"std"`` (default), ``"reverse_std"``, ``"left"``, ``"right"``.
- ``svd`` (str, ours): ``"full"`` (default, exact) or ``"randomized"``; with ``svd_niter``,
  ``svd_oversample``, ``svd_seed``.

A group without ``rank`` gets plain AdamW, with galore-torch's (Hugging Face) AdamW arithmetic, not
torch.optim.AdamW's. All groups take ``lr``, ``betas``, ``eps``, ``weight_decay``,
``correct_bias``.

The update of one parameter at step t (counted from 1), G its gradient::

    g = project(G)                    # GaLore groups only; (m, r) or (r, n)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g²
    u = m / (sqrt(v) + eps)           # eps before bias correction
    u = scale * project_back(u)       # GaLore groups only; (m, n)
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * u    # lr alone when correct_bias is False
    w -= lr * weight_decay * w        # decoupled, after the update, on the full weight

The moments are NOT reset or rotated when the projection is refreshed (galore-torch's behaviour).

State layout (per parameter, all ``torch.load(weights_only=True)``-safe)
-----------------------------------------------------------------------
- ``step`` (int): updates done. A Python int, not a tensor: the bias correction is computed in
  float64 Python arithmetic as galore-torch does (a float32 tensor step would round differently).
- ``exp_avg``, ``exp_avg_sq``: (m, r) or (r, n) in GaLore groups, the parameter's shape otherwise.
- ``projection`` (GaLore groups): the basis, (r, n) for the right side, (m, r) for the left side,
  in the parameter's dtype. Restored on resume, never recomputed off-schedule.

Layer-wise mode (``layerwise=True``)
------------------------------------
Each trainable parameter gets a post-accumulate-grad hook that applies its update during
``backward()`` and sets ``p.grad = None``, so the whole set of gradients is never alive at once.
The training loop then reads::

    loss = compute_loss(model, batch)
    loss.backward()          # every parameter is updated here, its gradient freed
    optimizer.step()         # a no-op (no gradients left); keep it so LambdaLR does not warn
    scheduler.step()         # still once per iteration: the hooks read group["lr"] live
    optimizer.zero_grad()    # harmless

Consequences: every ``backward()`` is an optimizer step, so gradient accumulation over several
micro-batches is impossible, and so are global-norm gradient clipping and AMP's GradScaler
(they need all gradients before any update); call :func:`check_layerwise_compatible` with the loop's
settings to refuse them clearly. Run evaluation under ``torch.no_grad()``: a backward pass
anywhere updates the weights. The updates and the state are identical to the normal mode.

Under DDP the hooks fire before DDP's bucketed all-reduce (galore-torch refuses the combination
for that reason). Set ``reduce_gradient`` (the training loop does, under torchrun) and each hook
averages its gradient over the ranks first, so every rank updates, and projects, from the same
all-reduced gradient. One all-reduce per parameter: slower than DDP's buckets, the price of never
holding all gradients at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from medsaga.optim import defaults as D
from medsaga.optim.lowrank import top_singular_basis
from medsaga.optim.projector import project, project_back, projection_side

GALORE_GROUP_DEFAULTS: dict[str, Any] = {
    "update_proj_gap": D.DEFAULT_UPDATE_PROJ_GAP,
    "scale": D.DEFAULT_SCALE,
    "proj_type": D.DEFAULT_PROJ_TYPE,
    "svd": D.DEFAULT_SVD,
    "svd_niter": D.DEFAULT_SVD_NITER,
    "svd_oversample": D.DEFAULT_SVD_OVERSAMPLE,
    "svd_seed": D.DEFAULT_SVD_SEED,
}
"""Keys filled into a group that has ``rank`` but not these (galore-torch would raise KeyError)."""


class GaLoreAdamW(Optimizer):
    """AdamW with GaLore gradient projection for param groups that carry ``rank``.

    Args:
        params: parameters or param-group dicts (see the module docstring for the group keys).
            ``(name, parameter)`` pairs are accepted (torch stores the names in
            ``group["param_names"]``) and make the shape errors name the parameter.
        lr: learning rate.
        betas: Adam's (beta1, beta2).
        eps: added to sqrt(v) before bias correction.
        weight_decay: decoupled decay, applied after the update (``w -= lr * wd * w``).
        correct_bias: Adam bias correction, folded into the step size.
        layerwise: update each parameter from a post-accumulate-grad hook during ``backward()``
            and free its gradient (see the module docstring for the training loop).

    Raises:
        ValueError: a bad hyper-parameter, or a parameter that is not 2-D in a ``rank`` group.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = D.DEFAULT_LR,
        betas: tuple[float, float] = D.DEFAULT_BETAS,
        eps: float = D.DEFAULT_EPS,
        weight_decay: float = D.DEFAULT_WEIGHT_DECAY,
        correct_bias: bool = True,
        *,
        layerwise: bool = False,
    ) -> None:
        _check_adam_hyperparameters(lr, betas, eps, weight_decay)
        # Set before Optimizer.__init__, which calls add_param_group for each group.
        self.layerwise = layerwise
        self._hook_handles: list[RemovableHandle] = []
        self._group_index: dict[int, int] = {}
        # Layer-wise mode under DDP: called on each complete gradient, in its hook, before the
        # update (medsaga.distributed.average_gradient_). None: use the gradient as it is.
        self.reduce_gradient: Callable[[Tensor], None] | None = None
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "correct_bias": correct_bias,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copied / unpickled optimizer has no hooks: it starts in the normal mode.
        super().__setstate__(state)
        self.layerwise = False
        self._hook_handles = []
        self.reduce_gradient = None
        self._group_index = {
            id(p): index for index, group in enumerate(self.param_groups) for p in group["params"]
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state (resume). ``Optimizer.load_state_dict`` goes through ``__setstate__``,
        which is for copies without hooks; this optimizer keeps its hooks, its layer-wise mode
        and its gradient reducer."""
        layerwise, handles, reduce_gradient = self.layerwise, self._hook_handles, self.reduce_gradient
        super().load_state_dict(state_dict)
        self.layerwise, self._hook_handles, self.reduce_gradient = layerwise, handles, reduce_gradient

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; complete and check its GaLore keys; hook its parameters if layer-wise."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        if "rank" in group:
            _complete_galore_group(group)
        for p in group["params"]:
            # An index, not the dict: load_state_dict replaces the group dicts but keeps the order.
            self._group_index[id(p)] = index
            if self.layerwise and p.requires_grad:
                self._hook_handles.append(p.register_post_accumulate_grad_hook(self._hook))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return the closure's loss, if any.

        In layer-wise mode the gradients were consumed during backward, so this updates nothing.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def remove_layerwise_hooks(self) -> None:
        """Leave layer-wise mode: remove the hooks; ``step()`` updates the parameters again."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()
        self.layerwise = False

    def _hook(self, p: Tensor) -> None:
        """Post-accumulate-grad hook: update ``p`` from its complete gradient, then free it."""
        if p.grad is None:
            return
        with torch.no_grad():
            if self.reduce_gradient is not None:  # DDP's role under torchrun (medsaga.distributed)
                self.reduce_gradient(p.grad)
            self._update(p, self.param_groups[self._group_index[id(p)]])
        p.grad = None

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        """One AdamW (GaLore in rank groups) update of ``p`` from ``p.grad``; see module doc."""
        grad = p.grad
        assert grad is not None
        if grad.is_sparse:
            raise RuntimeError("GaLoreAdamW does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        galore = "rank" in group
        if galore:
            side = projection_side(tuple(p.shape), group["proj_type"])
            # Refresh on the count *before* this step's increment: steps 0, gap, 2*gap, ...
            if "projection" not in state or state["step"] % group["update_proj_gap"] == 0:
                state["projection"] = top_singular_basis(
                    grad,
                    group["rank"],
                    side,
                    method=group["svd"],
                    # Seeded from the step, so a resumed run draws the same sketch.
                    seed=group["svd_seed"] + state["step"],
                    niter=group["svd_niter"],
                    oversample=group["svd_oversample"],
                )
            grad = project(grad, state["projection"], side)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"]

        # The exact sequence of in-place ops of galore-torch (mul_/add_, not lerp_), so that the
        # two optimizers agree to the last bit.
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size = step_size * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        update = exp_avg / denom
        if galore:
            update = project_back(update, state["projection"], side, group["scale"])
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0.0:
            # Decoupled decay of the already-updated weight; add_(p, alpha) rather than
            # mul_(1 - lr * wd) to round as galore-torch does.
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def check_layerwise_compatible(
    grad_accum_steps: int = 1, max_grad_norm: float | None = None, grad_scaler: bool = False
) -> None:
    """Refuse training-loop settings that need all gradients before any update.

    Raises:
        ValueError: if ``grad_accum_steps > 1``, ``max_grad_norm`` is set, or ``grad_scaler`` is
            True, naming the setting and the way out (drop it or turn off layer-wise mode).
    """
    problems = []
    if grad_accum_steps > 1:
        problems.append(
            f"gradient accumulation over {grad_accum_steps} micro-batches (every backward() is "
            "an optimizer step)"
        )
    if max_grad_norm is not None:
        problems.append("global gradient-norm clipping (the norm needs every gradient at once)")
    if grad_scaler:
        problems.append("AMP GradScaler (unscaling and inf checks need every gradient at once)")
    if problems:
        raise ValueError(
            "layer-wise GaLore updates each weight during backward() and cannot be combined with "
            + "; ".join(problems)
            + ". Drop the setting or turn layer-wise mode off."
        )


def galore_param_groups(
    galore_params: Iterable[Any],
    other_params: Iterable[Any] = (),
    *,
    rank: int = D.DEFAULT_RANK,
    update_proj_gap: int = D.DEFAULT_UPDATE_PROJ_GAP,
    scale: float = D.DEFAULT_SCALE,
    proj_type: str = D.DEFAULT_PROJ_TYPE,
    svd: str = D.DEFAULT_SVD,
) -> list[dict[str, Any]]:
    """Param groups for :class:`GaLoreAdamW`: one GaLore group, one plain AdamW group.

    Args:
        galore_params: 2-D weights to project (parameters or ``(name, parameter)`` pairs).
        other_params: everything else that trains (biases, norms, the decoder...).
        rank, update_proj_gap, scale, proj_type, svd: the GaLore group's keys.

    Returns:
        The non-empty groups, GaLore first.
    """
    galore_list, other_list = list(galore_params), list(other_params)
    groups: list[dict[str, Any]] = []
    if galore_list:
        groups.append(
            {
                "params": galore_list,
                "rank": rank,
                "update_proj_gap": update_proj_gap,
                "scale": scale,
                "proj_type": proj_type,
                "svd": svd,
            }
        )
    if other_list:
        groups.append({"params": other_list})
    return groups


def _check_adam_hyperparameters(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float
) -> None:
    if lr < 0.0:
        raise ValueError(f"invalid learning rate {lr}: must be >= 0")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
    if eps < 0.0:
        raise ValueError(f"invalid eps {eps}: must be >= 0")
    if weight_decay < 0.0:
        raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")


def _complete_galore_group(group: dict[str, Any]) -> None:
    """Fill a rank group's missing keys, check them, and check that every parameter is 2-D."""
    for key, value in GALORE_GROUP_DEFAULTS.items():
        group.setdefault(key, value)
    if not isinstance(group["rank"], int) or group["rank"] < 1:
        raise ValueError(f"GaLore rank must be a positive int, got {group['rank']!r}")
    if not isinstance(group["update_proj_gap"], int) or group["update_proj_gap"] < 1:
        raise ValueError(
            f"GaLore update_proj_gap must be a positive int, got {group['update_proj_gap']!r}"
        )
    if group["proj_type"] not in D.PROJ_TYPES:
        raise ValueError(
            f"unsupported GaLore proj_type {group['proj_type']!r}: expected one of {D.PROJ_TYPES}"
            " ('full', the two-sided projection, is not implemented)"
        )
    if group["svd"] not in D.SVD_METHODS:
        raise ValueError(f"unknown GaLore svd {group['svd']!r}: expected one of {D.SVD_METHODS}")
    names = group.get("param_names") or group.get("names")
    for position, p in enumerate(group["params"]):
        if p.dim() != 2:
            name = f" {names[position]!r}" if names and position < len(names) else ""
            raise ValueError(
                f"GaLore group (rank={group['rank']}) holds parameter{name} of shape "
                f"{tuple(p.shape)}: GaLore projects 2-D weight matrices only; put it in a group "
                "without 'rank' (plain AdamW)"
            )
