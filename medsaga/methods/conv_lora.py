"""``conv-lora``: Conv-LoRA (Zhong et al., ICLR 2024) on the image encoder's ``qkv``; decoder tuned fully.

LoRA adds ``ΔW·x = s · B A x`` beside a frozen linear layer (``A: (r, C)``, ``B: (out, r)``,
``s = alpha / r``). Conv-LoRA reshapes the bottleneck ``z = A x`` of the tokens back into maps
``(r, h, w)`` and adds a mixture of small convolution experts inside it
(:mod:`medsaga.methods.conv_lora_moe`)::

    z = A x                       (N, h, w, C) → (N, r, h, w)
    z = z + MoEConv(z)            one expert per map, chosen by noisy top-1 gating; expert i works
                                  at i× the grid (upsample, 3×3 conv, GELU, back to h × w)
    qkv[target] += s · B z        (N, h, w, C_target)

Where it applies: the fused ``attn.qkv`` linear of every image-encoder attention layer (the
encoder's :class:`~medsaga.model.backbone.Backbone` lists them), replaced by
:class:`ConvLoRAQKV`, which keeps the frozen weight and bias under their own names
(``…attn.qkv.weight``) so checkpoints still fit. SAM calls ``qkv`` on whatever its block attends
over: the ``(B, H/16, W/16, C)`` grid in global-attention blocks, but ``(B·windows, 14, 14, C)``
zero-padded windows in windowed blocks (TinyViT: ``(B·windows, w, w, C)`` windows of 7 or 14
tokens in every block). The experts and the gate see exactly that, as in the authors' code
(AutoGluon wraps the same ``qkv`` layer of the HF SAM port): in windowed blocks each window is a
"sample" with its own expert. Where the ``qkv`` output is not ``[q | k | v]`` (TinyViT's is
head-major) each branch's update is added onto the rows that hold its part.

Targets: ``("q", "v")`` by default — one branch (own ``A``, experts, gate, ``B``) for each of the
query and value thirds of the ``qkv`` output, as SAMed's LoRA and as AutoGluon's preset asks
(``lora.filter: ["q", "v"]``). That filter is a regular expression matched against the child name
``qkv``, so in AutoGluon it actually selects the whole fused layer once: one branch whose ``B``
spans all of ``q``, ``k`` and ``v``. ``targets=("qkv",)`` reproduces that exactly.

Defaults, from the authors' code (AutoGluon ``examples/automm/Conv-LoRA/run_semantic_segmentation.py``
and the ``semantic_segmentation`` preset in ``multimodal/presets.py``): rank 3, 8 experts,
``alpha = 32``, balancing-loss coefficient 1e-2, learning rate 1e-4 (the preset's and the example
script's default; it uses 3e-4 for two of its six data sets). The mask decoder trains fully
(the preset's ``extra_trainable_params: [".*mask_decoder"]``); the prompt encoder stays frozen.

Parameters per branch: ``r·C + C_target·r`` (LoRA) ``+ E·(9r² + r)`` (experts) ``+ 2·r·E``
(gate and noise weights; ``r·E`` without noisy gating); for vit_b with the defaults 5,328, so
127,872 over 12 blocks × 2 targets, next to the 3.93 M of the mask decoder.

The balancing loss: every wrapped layer keeps the loss of its latest call (summed over its
branches), made only in training mode with gradients enabled; :meth:`ConvLoRAMethod.auxiliary_loss`
sums them over the layers and clears them. So it is the loss of the *current* forward, never an
accumulation across steps; after an eval-mode or ``no_grad`` forward (validation, prediction),
or when already collected, it is ``None``. The loss is differentiable in the gate weights only
through the noisy load estimate, so with ``noisy_gating=False`` it is a constant (the gate then
never learns, as in the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.methods.base import MethodOptions, TuningMethod, encoder_backbone, freeze, unfreeze_mask_decoder
from medsaga.methods.conv_lora_moe import MoEConv
from medsaga.methods.options import boolean, check_fields, integer, names, real
from medsaga.methods.registry import register
from medsaga.model.backbone import QKV_PARTS, AttentionLayer

FUSED_TARGET = "qkv"


@dataclass(frozen=True)
class ConvLoRAOptions(MethodOptions):
    """Conv-LoRA's options (defaults from the authors' AutoGluon code).

    Attributes:
        rank: LoRA rank ``r``, also the channel count of the expert convolutions (3).
        alpha: LoRA scale numerator; the branch output is multiplied by ``alpha / rank`` (32).
        experts: number of conv experts ``E``; expert ``i`` works at ``i``× the token grid (8).
        balance_loss_coef: weight of each branch's load-balancing loss
            ``cv²(importance) + cv²(load)`` (1e-2).
        targets: which thirds of each encoder block's ``qkv`` output get a branch, ``("q", "v")``:
            any of ``"q"``, ``"k"``, ``"v"`` (one branch each), or ``("qkv",)`` alone: one branch
            over the whole fused output, which is what AutoGluon's code ends up doing. A single
            name is a one-element list (``-o targets=qkv``: the fused branch).
        noisy_gating: add learned-scale Gaussian noise to the gate logits while training, which
            makes the balancing loss differentiable (true).
    """

    rank: int = 3
    alpha: float = 32.0
    experts: int = 8
    balance_loss_coef: float = 1e-2
    targets: tuple[str, ...] = ("q", "v")
    noisy_gating: bool = True

    def __post_init__(self) -> None:
        # JSON gives lists and ints back; keep the dataclass hashable and equal after a reload.
        check_fields(self, rank=integer(at_least=1), alpha=real(above=0), experts=integer(at_least=1),
                     balance_loss_coef=real(at_least=0), targets=names((*QKV_PARTS, FUSED_TARGET)),
                     noisy_gating=boolean())
        if FUSED_TARGET in self.targets and len(self.targets) > 1:
            raise ValueError(f"targets must be distinct names among {', '.join(QKV_PARTS)}, or {FUSED_TARGET} "
                             f"alone; got {self.targets!r}")


class ConvLoRABranch(nn.Module):
    """One Conv-LoRA branch: tokens ``(N, h, w, C)`` → update ``(N, h, w, out_features)`` and its loss."""

    def __init__(self, in_features: int, out_features: int, options: ConvLoRAOptions,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        rank = options.rank
        self.scaling = options.alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        # B = 0: the wrapped model starts exactly as the pre-trained one.
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)  # nn.Linear's default, as LoRA
        self.moe = MoEConv(rank, options.experts, noisy=options.noisy_gating,
                           loss_coef=options.balance_loss_coef, device=device, dtype=dtype)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bottleneck = (tokens @ self.lora_A.T).permute(0, 3, 1, 2)  # (N, r, h, w)
        experts, loss = self.moe(bottleneck)
        bottleneck = (bottleneck + experts).permute(0, 2, 3, 1)  # residual, as the reference
        return (bottleneck @ self.lora_B.T) * self.scaling, loss


class ConvLoRAQKV(nn.Module):
    """SAM's ``attn.qkv`` linear ``C → 3C`` (frozen) plus Conv-LoRA branches on chosen thirds.

    ``weight`` and ``bias`` are the original layer's parameters (same objects, same names), so
    the wrapped model's state dict still holds ``…attn.qkv.weight``/``bias``. Input and output are
    channels-last token maps: ``(N, h, w, C)`` → ``(N, h, w, 3C)``. ``layer`` (the encoder's
    description of the attention layer) places the updates where its output is not ``[q | k | v]``;
    ``None`` means it is.
    """

    def __init__(self, base: nn.Linear, options: ConvLoRAOptions, layer: AttentionLayer | None = None) -> None:
        super().__init__()
        if base.out_features != 3 * base.in_features:
            raise ValueError(f"expected a qkv layer C → 3C, got {base.in_features} → {base.out_features}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        width = base.in_features
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        # "qkv" updates the whole fused output; "q", "k", "v" one third each.
        self.branches = nn.ModuleDict({
            target: ConvLoRABranch(width, self.out_features if target == FUSED_TARGET else width, options,
                                   **factory)
            for target in options.targets})
        self._balance_loss: torch.Tensor | None = None
        head_major = layer is not None and layer.head_major
        # Non-persistent: the layout is the encoder's, rebuilt with the layer (None: [q | k | v]).
        for part in QKV_PARTS:
            self.register_buffer(f"rows_{part}", layer.part_rows(part).to(base.weight.device) if head_major else None,
                                 persistent=False)
        order = layer.part_major_order() if head_major and layer is not None else None
        self.register_buffer("row_order", None if order is None else order.to(base.weight.device), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 4:
            raise ValueError(f"Conv-LoRA needs channels-last token maps (N, h, w, C), got {tuple(tokens.shape)}")
        output = F.linear(tokens, self.weight, self.bias)
        losses = []
        if FUSED_TARGET in self.branches:
            update, loss = self.branches[FUSED_TARGET](tokens)
            output = output + (update if self.row_order is None else update[..., self.row_order])
            losses.append(loss)
        elif self.row_order is not None:
            for target, branch in self.branches.items():
                update, loss = branch(tokens)
                output = output.index_add(-1, getattr(self, f"rows_{target}"), update)
                losses.append(loss)
        else:
            parts = list(output.split(self.in_features, dim=-1))
            for target, branch in self.branches.items():
                update, loss = branch(tokens)
                index = QKV_PARTS.index(target)
                parts[index] = parts[index] + update
                losses.append(loss)
            output = torch.cat(parts, dim=-1)
        # Overwritten by every call: only the current forward's loss is ever handed out.
        self._balance_loss = torch.stack(losses).sum() if self.training and torch.is_grad_enabled() else None
        return output

    def pop_balance_loss(self) -> torch.Tensor | None:
        """The balancing loss of the latest training forward (``None`` if none), then forget it."""
        loss, self._balance_loss = self._balance_loss, None
        return loss


def conv_lora_layers(model: nn.Module) -> list[ConvLoRAQKV]:
    """The wrapped ``qkv`` layers of a prepared model, in forward order."""
    return [module for module in model.modules() if isinstance(module, ConvLoRAQKV)]


@register
class ConvLoRAMethod(TuningMethod[ConvLoRAOptions]):
    """Conv-LoRA on every encoder block's ``qkv`` plus the full mask decoder.

    Default lr 1e-4: the authors' (AutoGluon's semantic-segmentation preset and Conv-LoRA example).
    """

    name = "conv-lora"
    options_type = ConvLoRAOptions
    default_lr = 1e-4

    def prepare(self, model: nn.Module) -> None:
        options = self.options
        freeze(model)
        encoder, backbone = encoder_backbone(model)
        for index, layer in enumerate(backbone.attention_layers(encoder)):
            qkv = layer.module.qkv
            if isinstance(qkv, ConvLoRAQKV):
                raise ValueError(f"block {index} already has Conv-LoRA: prepare a model only once")
            if not isinstance(qkv, nn.Linear):
                raise TypeError(f"block {index}: attn.qkv is {type(qkv).__name__}, expected nn.Linear")
            layer.module.qkv = ConvLoRAQKV(qkv, options, layer)  # its new parameters require gradients
        unfreeze_mask_decoder(model)

    def auxiliary_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Sum of the layers' balancing losses from the latest forward, then cleared.

        ``None`` when that forward ran in eval mode or without gradients, or was already collected.
        """
        losses = [loss for layer in conv_lora_layers(model) if (loss := layer.pop_balance_loss()) is not None]
        return torch.stack(losses).sum() if losses else None
