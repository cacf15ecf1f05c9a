"""``galore``: MedSAGa — GaLore on the image encoder's 2-D linear weights, full tuning of the decoder.

GaLore keeps every encoder weight trainable but stores Adam's moments in a rank-``r`` projection
of each 2-D weight's gradient (``(r, n)`` instead of ``(m, n)``), so the optimizer state of the
encoder shrinks by ``m / r``. Where it applies: the blocks' linear weights, by role (the encoder's
:class:`~medsaga.model.backbone.Backbone` says which they are): ``qkv``, ``proj``, ``lin1`` (MLP
in) and ``lin2`` (MLP out) — ``attn.qkv``, ``attn.proj``, ``mlp.lin1``, ``mlp.lin2`` of every ViT
block, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` of every TinyViT attention block.
Everything else that trains — patch embedding, convolutions (the neck, TinyViT's MBConvs and patch
mergings), relative-position tables or attention biases, norms, biases, the absolute position
embedding, and the whole mask decoder — uses plain AdamW in a second group of the same optimizer.

Defaults follow the MedSAGa code (:mod:`medsaga.optim.defaults`): rank 8 (4 to 8 is the useful
range), a projection refresh every 200 steps, scale 0.25, lr 5e-3 with warm-up and poly decay.
One deliberate difference: the refresh uses the seeded randomized SVD by default (42x faster than
the full SVD for a 768 x 3072 weight on our CPU, subspace overlap > 0.999); ``svd="full"``
restores galore-torch's exact behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsaga.methods.base import (MethodOptions, TuningMethod, encoder_backbone, freeze, image_encoder, unfreeze,
                                  unfreeze_mask_decoder, with_decoder_lr)
from medsaga.methods.options import boolean, check_fields, integer, names, one_of, real
from medsaga.methods.registry import register
from medsaga.model.backbone import LINEAR_ROLES
from medsaga.optim import GaLoreAdamW, defaults


@dataclass(frozen=True)
class GaLoreOptions(MethodOptions):
    """GaLore's options.

    Attributes:
        rank: rank of the gradient projection of each targeted weight.
        update_proj_gap: steps between projection refreshes.
        scale: factor on the projected-back update.
        svd: ``"randomized"`` (seeded range finder) or ``"full"`` (exact, as galore-torch).
        layerwise: apply each weight's update in its gradient hook during backward and free the
            gradient at once (no gradient accumulation, no global clipping in this mode).
        targets: roles of the encoder blocks' linear layers that GaLore projects, among the
            backbone's :data:`~medsaga.model.backbone.LINEAR_ROLES` (``qkv``, ``proj``, ``lin1``:
            the MLP's first, ``lin2``: its second); default all of them.
    """

    rank: int = defaults.DEFAULT_RANK
    update_proj_gap: int = defaults.DEFAULT_UPDATE_PROJ_GAP
    scale: float = defaults.DEFAULT_SCALE
    svd: str = "randomized"
    layerwise: bool = False
    targets: tuple[str, ...] = LINEAR_ROLES

    def __post_init__(self) -> None:
        # JSON gives lists back, -o gives one string: a tuple of roles, in the order given.
        check_fields(self, rank=integer(at_least=1), update_proj_gap=integer(at_least=1), scale=real(above=0),
                     svd=one_of(defaults.SVD_METHODS), layerwise=boolean(), targets=names(LINEAR_ROLES))


@register
class GaLoreMethod(TuningMethod[GaLoreOptions]):
    """MedSAGa: GaLore on the encoder blocks' linear weights, AdamW on the rest and the decoder.

    Default lr 5e-3 (MedSAGa's base learning rate).
    """

    name = "galore"
    options_type = GaLoreOptions
    default_lr = defaults.DEFAULT_LR
    # Layer-wise: each gradient is consumed and freed inside backward, so the gradients of all
    # encoder weights are never alive at once (ViT-B 256 px, batch 2: 466 -> 132 MiB tensor peak
    # together with activation checkpointing).
    lean_options = {"layerwise": True}

    @classmethod
    def lean_conflict(cls, option: str, value: Any, *, grad_accum: int) -> str | None:
        if option == "layerwise" and value and grad_accum > 1:
            return (f"layer-wise GaLore updates each weight inside backward, so it cannot accumulate "
                    f"gradients over --grad-accum {grad_accum} micro-batches")
        return None

    def prepare(self, model: nn.Module) -> None:
        freeze(model)
        unfreeze(image_encoder(model))
        unfreeze_mask_decoder(model)

    def projected_weights(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``(name in model, weight)`` of the encoder blocks' targeted 2-D linear weights, in order."""
        encoder, backbone = encoder_backbone(model)
        targeted = {id(module.weight) for _, role, module in backbone.linear_layers(encoder)
                    if isinstance(module, nn.Linear) and role in self.options.targets}
        return [(name, parameter) for name, parameter in model.named_parameters() if id(parameter) in targeted]

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        projected = self.projected_weights(model)
        projected_ids = {id(parameter) for _, parameter in projected}
        others = [(name, p) for name, p in model.named_parameters()
                  if p.requires_grad and id(p) not in projected_ids]
        return [
            {"params": projected, "rank": self.options.rank, "update_proj_gap": self.options.update_proj_gap,
             "scale": self.options.scale, "proj_type": defaults.DEFAULT_PROJ_TYPE, "svd": self.options.svd,
             "lr": lr, "weight_decay": weight_decay},
            {"params": others, "lr": lr, "weight_decay": weight_decay},
        ]

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float, *,
                        decoder_lr: float | None = None) -> torch.optim.Optimizer:
        groups = with_decoder_lr(self.param_groups(model, lr, weight_decay), model, decoder_lr)
        return GaLoreAdamW(groups, lr=lr, weight_decay=weight_decay, layerwise=self.options.layerwise)
