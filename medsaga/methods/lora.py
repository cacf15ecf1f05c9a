"""``lora``: SAMed — low-rank updates on the query and value projections of the image encoder.

Each encoder attention layer computes its queries, keys and values with one fused Linear ``qkv``
(``C -> 3C``). SAMed leaves that weight frozen and adds a trainable rank-``r`` update to the
query and value parts of its output::

    qkv'(x) = qkv(x) + scaling · [B_q A_q x,  0,  B_v A_v x]        A: (r, C),  B: (C, r)

(written for SAM's ViT, whose ``qkv`` output is ``[q | k | v]``; TinyViT's is head-major, per head
``[q_h, k_h, v_h]``, and the same update lands on the rows that hold q and v there, as the
encoder's :class:`~medsaga.model.backbone.AttentionLayer` says).

``A`` starts as ``nn.Linear``'s default (Kaiming-uniform with ``a = sqrt(5)``, fan-in ``C``) and
``B`` at zero, so the adapted model equals the pre-trained one at step 0. The mask decoder trains
fully; everything else (patch embedding, the rest of each block, neck, prompt encoder) is frozen.
For ViT-B (12 blocks, ``C = 768``) at rank 4 that is 147,456 encoder parameters.

What SAMed does and we keep: rank 4, every block, q and v, no ``alpha / r`` scaling (``alpha``
defaults to the rank, so the factor is 1), AdamW with weight decay 0.1, base lr 0.005 with a linear
warm-up (SAMed ``train.py``: ``--base_lr 0.005``, ``--warmup --warmup_period 250 --AdamW``).

:class:`LoRAQKV` is the layer on its own (reusable by any method that adapts the fused qkv);
:func:`merge` folds every update back into a plain ``nn.Linear`` for export or fast inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.errors import InputError
from medsaga.methods.base import MethodOptions, TuningMethod, encoder_backbone, freeze, unfreeze_mask_decoder
from medsaga.methods.options import check_fields, indexes, integer, names, optional, real
from medsaga.methods.registry import register
from medsaga.model.backbone import QKV_PARTS
from medsaga.model.fast_attention import TOKENWISE_ATTRIBUTE

_QKV_TARGETS = names(QKV_PARTS, canonical_order=True)
"""Targets among q, k, v (one name or several, no repeats), in q, k, v order."""


class LoRAQKV(nn.Module):
    """A fused ``qkv`` Linear ``(C -> 3C)`` plus a trainable low-rank update on chosen thirds.

    ``forward(x)``: ``(..., C) -> (..., 3C)``, equal to ``qkv(x) + scaling · ΔW x`` where ``ΔW``
    ``(3C, C)`` holds ``B_t A_t`` in the rows of each targeted third ``t`` and exact zeros in the
    others (the k third of SAMed's q/v targeting is never touched).

    Tensors:
        weight ``(3C, C)``, bias ``(3C,)`` or ``None``: the wrapped Linear's own Parameters (the
            same objects, not copies), kept under the same names so that the model's state-dict
            keys stay ``….attn.qkv.weight`` / ``….attn.qkv.bias`` and a plain SAM checkpoint still
            fits. Their ``requires_grad`` is left as it was: freezing is the caller's business.
        lora_a ``(T, r, C)``: the down-projections ``A_t``, one per target (T = ``len(targets)``,
            in q, k, v order).
        lora_b ``(T, C, r)``: the up-projections ``B_t``, zero at construction.
        placement ``(3, T)``: non-persistent one-hot buffer, column ``t`` marks target ``t``'s third.
        row_order ``(3C,)`` or ``None``: non-persistent; where the output's rows are not
            ``[q | k | v]`` (TinyViT's head-major qkv), output row ``i`` is row ``row_order[i]`` of
            that layout.

    Token-wise (each token's output depends on that token alone): it says so with the
    ``medsaga_tokenwise`` attribute (:data:`~medsaga.model.fast_attention.TOKENWISE_ATTRIBUTE`),
    so that :mod:`medsaga.model.fast_attention` may skip the windows' padding around it.

    Args:
        qkv: the Linear to adapt; ``out_features`` must be ``3 · in_features``.
        rank: ``r``.
        targets: which of ``"q"``, ``"k"``, ``"v"`` get an update.
        scaling: factor on the update (``alpha / rank`` in LoRA's notation; SAMed uses 1).
        row_order: the layout of ``qkv``'s output (:meth:`AttentionLayer.part_major_order
            <medsaga.model.backbone.AttentionLayer.part_major_order>`); ``None``: ``[q | k | v]``.
    """

    def __init__(self, qkv: nn.Linear, rank: int, targets: Sequence[str] = ("q", "v"),
                 scaling: float = 1.0, row_order: torch.Tensor | None = None) -> None:
        super().__init__()
        if qkv.out_features != 3 * qkv.in_features:
            raise ValueError(f"not a fused qkv Linear: {qkv.in_features} -> {qkv.out_features}")
        if rank < 1:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_features, self.out_features = qkv.in_features, qkv.out_features
        self.rank, self.scaling = int(rank), float(scaling)
        self.targets: tuple[str, ...] = _QKV_TARGETS("targets", targets)
        setattr(self, TOKENWISE_ATTRIBUTE, True)  # the update is a per-token linear map too
        self.weight = qkv.weight
        self.bias = qkv.bias  # a Parameter or None; either registers under "bias"
        width, count = qkv.in_features, len(self.targets)
        factory = {"dtype": qkv.weight.dtype, "device": qkv.weight.device}
        self.lora_a = nn.Parameter(torch.empty(count, self.rank, width, **factory))
        self.lora_b = nn.Parameter(torch.empty(count, width, self.rank, **factory))
        thirds = [QKV_PARTS.index(target) for target in self.targets]
        self.register_buffer("placement", torch.eye(3, **factory)[:, thirds], persistent=False)
        self.row_order: torch.Tensor | None
        self.register_buffer("row_order", None if row_order is None else row_order.to(qkv.weight.device),
                             persistent=False)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A_t`` as SAMed (Kaiming-uniform, ``a = sqrt(5)``: bound ``1/sqrt(C)``), ``B_t = 0``."""
        with torch.no_grad():
            # One (r, C) slice at a time: on the stacked (T, r, C) tensor the fan-in would be r·C.
            for down in self.lora_a:
                nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            self.lora_b.zero_()

    def down_projection(self) -> torch.Tensor:
        """All ``A_t`` stacked: ``(T·r, C)``."""
        return self.lora_a.flatten(0, 1)

    def up_projection(self) -> torch.Tensor:
        """``scaling · B`` placed into the targeted rows: ``(3C, T·r)``, exactly zero in the others."""
        count, width, rank = self.lora_b.shape
        placed = torch.einsum("jt,tcr->jctr", self.placement, self.lora_b)  # (3, C, T, r)
        placed = placed.reshape(3 * width, count * rank) * self.scaling
        return placed if self.row_order is None else placed[self.row_order]

    def delta_weight(self) -> torch.Tensor:
        """The update as a dense matrix ``ΔW = up · down``: ``(3C, C)``."""
        return self.up_projection() @ self.down_projection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., 3C)``: the frozen projection plus the low-rank path.

        The update goes through the rank-``T·r`` bottleneck, never through the dense ``ΔW``:
        a dense ``ΔW`` would need a full ``(3C, C)`` weight gradient in backward.
        """
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.down_projection()),
                                                               self.up_projection())

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function: weight ``W + ΔW``, the same bias.

        The new Parameters are detached from the LoRA factors and keep ``weight``'s and
        ``bias``'s ``requires_grad``.
        """
        # Built on "meta": its own random initialisation would be thrown away at once.
        merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            merged.weight = nn.Parameter(self.weight + self.delta_weight(),
                                         requires_grad=self.weight.requires_grad)
            if self.bias is not None:
                merged.bias = nn.Parameter(self.bias.clone(), requires_grad=self.bias.requires_grad)
        return merged

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"targets={self.targets}, scaling={self.scaling}")


def merge(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRAQKV` inside ``model`` into a plain ``nn.Linear``, in place.

    For prediction and export: afterwards ``model`` holds only segment-anything's own modules,
    its state-dict keys are those of an unadapted SAM (``….attn.qkv.weight`` = ``W + ΔW``), and
    its outputs equal the LoRA model's up to float rounding (one matmul instead of three: also
    slightly faster). The LoRA factors are gone, so training cannot continue from the result and
    :meth:`LoRAMethod.trained_state` no longer applies: save the trained state first.

    Returns:
        ``model`` itself (or the merged Linear when ``model`` is itself a :class:`LoRAQKV`).
    """
    if isinstance(model, LoRAQKV):
        return model.merged_linear()
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRAQKV)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.merged_linear())
    return model


@dataclass(frozen=True)
class LoRAOptions(MethodOptions):
    """SAMed's LoRA options.

    Attributes:
        rank: rank ``r`` of each low-rank update (SAMed: 4). Each adapted projection adds
            ``2·r·C`` trainable parameters (``C`` = encoder width, 768 for ViT-B).
        alpha: the update is scaled by ``alpha / rank``. Default ``None`` means ``alpha = rank``,
            a factor of 1 at any rank, as SAMed (which has no scaling). Give a number for the usual
            LoRA convention, e.g. ``alpha = 2·rank`` doubles the update's step size.
        targets: which thirds of each block's fused qkv projection are adapted, among ``"q"``,
            ``"k"``, ``"v"`` (SAMed: q and v); a single name is accepted.
        blocks: indexes of the encoder's attention layers to adapt (0-based, in forward order: a
            ViT's blocks; TinyViT's 10 attention blocks); default ``None``: all of them, as SAMed.
            A single index is accepted.
    """

    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] = ("q", "v")
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # JSON gives lists back; keep the dataclass hashable, comparable and in one canonical form
        # (targets in q, k, v order, blocks sorted). A single name or index is a one-element list
        # (``-o targets=v``, ``-o blocks=11`` on the CLI).
        check_fields(self, rank=integer(at_least=1), alpha=optional(real(above=0)),
                     targets=_QKV_TARGETS, blocks=optional(indexes()))

    @property
    def scaling(self) -> float:
        """The factor on every update: ``alpha / rank``, 1 when ``alpha`` is not given."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


@register
class LoRAMethod(TuningMethod[LoRAOptions]):
    """SAMed: LoRA on the encoder's q and v projections, full mask decoder.

    Default lr 0.005: SAMed's ``--base_lr`` (its ``train.py``), meant with linear warm-up
    (250 iterations there) and AdamW with weight decay 0.1, then poly decay.
    """

    name = "lora"
    options_type = LoRAOptions
    default_lr = 0.005

    def prepare(self, model: nn.Module) -> None:
        """Freeze ``model``, wrap the chosen attention layers' ``qkv`` in :class:`LoRAQKV`, unfreeze
        the mask decoder. Deterministic in structure (same names on every call); ``A`` draws from
        the global torch RNG.

        Raises:
            InputError: ``blocks`` names an attention layer the encoder does not have.
        """
        options = self.options
        freeze(model)
        encoder, backbone = encoder_backbone(model)
        layers = backbone.attention_layers(encoder)
        chosen = options.blocks if options.blocks is not None else range(len(layers))
        outside = [index for index in chosen if index >= len(layers)]
        if outside:
            raise InputError(f"lora blocks {outside} do not exist: the image encoder has {len(layers)} "
                             f"attention blocks (0 to {len(layers) - 1})")
        for index in chosen:
            layer = layers[index]
            attention = layer.module
            if isinstance(attention.qkv, LoRAQKV):
                raise ValueError(f"block {index} already carries LoRA: prepare the model only once")
            attention.qkv = LoRAQKV(attention.qkv, options.rank, options.targets, options.scaling,
                                    row_order=layer.part_major_order())
        unfreeze_mask_decoder(model)

    def merge(self, model: nn.Module) -> nn.Module:
        """:func:`merge`: a plain SAM with the updates folded into the qkv weights."""
        return merge(model)
