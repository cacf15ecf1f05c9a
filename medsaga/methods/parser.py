"""``parser``: SAM-PARSER — tune only the singular values of the image encoder's weights.

SAM-PARSER (Peng et al., AAAI 2024) keeps SAM's parameter space and re-weights its bases: each
chosen encoder weight is written once as ``W = U · diag(S) · Vᵀ`` (its SVD) and only the
coefficients ``S`` train; the bases ``U``, ``V`` stay frozen. A linear layer ``(out, in)`` thus
trains ``min(out, in)`` numbers instead of ``out · in``. Convolutions are flattened to
``(out, in/groups · kh · kw)`` matrices first. The mask decoder trains fully; the rest of the
encoder (norms, biases, position embeddings, the neck's LayerNorms) and the prompt encoder are
frozen. The released code decomposes only the convolutions and, through a bug, trains the whole
neck; here only the ``S`` vectors of the encoder train, for linear and conv layers alike.

Numerics and reproducibility (why the run saves ``S`` only, not ``U``/``V``):

* The SVD is computed in float64 on the CPU, then ``U``, ``S``, ``V`` are cast to the weight's
  dtype. The recomposed float32 weight then differs from the original only by the float32 rounding
  of the factors (relative ~5e-7, against ~3e-6 for a float32 SVD), so at full rank the model's
  output is unchanged at initialisation to ~1e-6 (tested < 1e-4).
* ``U``/``V`` are as large as the weight itself (1.3x the encoder's linear weights at full rank),
  so saving them would make a run as big as full fine-tuning. They are recomputed from the base
  checkpoint instead, deterministically: MKL's SVD result depends on the thread count (tens of
  float32 elements of a 768 x 2304 ``U`` differ between 1 and 2 threads), so the SVD runs on one
  thread; and each pair ``(u_i, v_i)`` is flipped so that the largest-magnitude entry of ``u_i``
  is positive. The same checkpoint on the same CPU and LAPACK build therefore gives bit-identical
  bases, and a reloaded run equals the trained one bit for bit (``U``/``V`` are persistent buffers,
  so a state-dict comparison checks this). Another LAPACK build or CPU may round a few elements one
  ulp apart: outputs then move at rounding level, as any matmul does across machines, while the
  order and signs of the bases (what ``S`` means) stay the same. The sign choice cannot change the
  output anyway: flipping ``u_i`` and ``v_i`` together leaves ``U · diag(S) · Vᵀ`` exact.

Cost: the weight is recomposed once per forward call, ``(U * S) @ Vᵀ`` (``out · in · k``
multiply-adds, shared by the batch), and kept for the backward as the original weight would be.
``prepare`` (also run when a trained run is loaded) costs one single-threaded float64 SVD per layer:
well under a second for the ``tiny`` model, 1 to 2.5 minutes for vit_b (149 s measured on a busy
shared CPU). On the ``meta`` device only shapes are made (for parameter counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.errors import InputError
from medsaga.methods.base import (MethodOptions, TuningMethod, base_image_encoder, encoder_backbone, freeze,
                                  unfreeze_mask_decoder)
from medsaga.methods.options import check_fields, names, optional, real
from medsaga.methods.registry import register
from medsaga.model.fast_attention import TOKENWISE_ATTRIBUTE


@dataclass(frozen=True)
class ParserOptions(MethodOptions):
    """SAM-PARSER's options.

    Attributes:
        layers: which image-encoder layers are reconstructed, as shell-style patterns
            (``fnmatch``, case-sensitive, ``*`` also crosses dots) on the module names inside the
            image encoder. Only ``nn.Linear`` and ``nn.Conv2d`` modules are considered; every
            pattern must match at least one. Default ``None``: the encoder's own list
            (:meth:`Backbone.decomposable_patterns <medsaga.model.backbone.Backbone.decomposable_patterns>`):
            for SAM's ViT ``qkv``, ``proj``, ``lin1``, ``lin2`` of every block, ``patch_embed.proj``
            and the neck's two convolutions (``neck.0``, ``neck.2``); for TinyViT every
            convolution and linear.
        rank_fraction: keep the top ``ceil(rank_fraction · min(out, in))`` singular values of each
            weight (at least one), in (0, 1]. 1.0 keeps them all, so the model's output is
            unchanged at initialisation. Below 1.0 the dropped singular directions are gone for
            good: the output changes at initialisation and training can only re-weight the kept
            directions (in exchange ``U``/``V`` and the trainable count shrink).
    """

    layers: tuple[str, ...] | None = None
    rank_fraction: float = 1.0

    def __post_init__(self) -> None:
        # JSON gives lists back, a command line may give one string: keep a tuple of patterns.
        check_fields(self, layers=optional(names()), rank_fraction=real(above=0, at_most=1))


def kept_rank(full_rank: int, rank_fraction: float) -> int:
    """How many singular values a weight of rank ``full_rank`` keeps: ``ceil(fraction · rank)``, >= 1.

    The small tolerance keeps products like ``0.3 · 10 = 3.0000000000000004`` at 3.
    """
    return max(1, min(full_rank, math.ceil(rank_fraction * full_rank - 1e-9)))


@contextmanager
def _one_thread() -> Iterator[None]:
    # MKL's SVD rounds differently with different thread counts: pin one thread so the bases
    # recomputed at reload equal the trained ones bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def decompose(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated SVD ``matrix (m, n) ≈ U (m, r) · diag(S (r,)) · V (n, r)ᵀ``, deterministic.

    Computed in float64 on the CPU on one thread, signs fixed (largest-magnitude entry of each
    column of ``U`` positive), returned in ``matrix``'s dtype and on its device. A ``meta`` matrix
    gives ``meta`` factors of the right shapes (no SVD).
    """
    m, n = matrix.shape
    if matrix.is_meta:
        return (torch.empty(m, rank, dtype=matrix.dtype, device="meta"),
                torch.empty(rank, dtype=matrix.dtype, device="meta"),
                torch.empty(n, rank, dtype=matrix.dtype, device="meta"))
    with _one_thread():
        u, s, vh = torch.linalg.svd(matrix.detach().to("cpu", torch.float64), full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].mT
    pivots = u.abs().argmax(dim=0, keepdim=True)  # (1, r): first index on ties
    signs = torch.where(u.gather(0, pivots) < 0, -1.0, 1.0).to(torch.float64)
    u, v = u * signs, v * signs

    def back(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=matrix.device, dtype=matrix.dtype).contiguous()

    return back(u), back(s), back(v)


class ReconstructedWeight(nn.Module):
    """A weight held as frozen bases and trainable coefficients: ``W = U · diag(S) · Vᵀ``.

    Buffers ``U (out, k)`` and ``V (fan_in, k)`` (persistent, never trained), parameter ``S (k,)``
    in the original weight's dtype, and the original ``bias (out,)``, frozen (or ``None``).
    """

    def __init__(self, weight: torch.Tensor, bias: nn.Parameter | None, rank_fraction: float) -> None:
        super().__init__()
        matrix = weight.detach().reshape(weight.shape[0], -1)  # (out, fan_in)
        u, s, v = decompose(matrix, kept_rank(min(matrix.shape), rank_fraction))
        self.register_buffer("U", u)
        self.register_buffer("V", v)
        self.S = nn.Parameter(s)
        if bias is not None:
            bias.requires_grad_(False)
        self.bias = bias

    def weight_matrix(self) -> torch.Tensor:
        """The recomposed weight ``(out, fan_in)``; its gradient reaches ``S`` only."""
        return (self.U * self.S) @ self.V.mT

    def extra_repr(self) -> str:
        return f"out={self.U.shape[0]}, fan_in={self.V.shape[0]}, rank={self.S.shape[0]}"


class ParserLinear(ReconstructedWeight):
    """Drop-in for ``nn.Linear``: ``x (..., in) → (..., out)`` with ``W = U · diag(S) · Vᵀ``.

    Token-wise, as the Linear it replaces: it says so with the ``medsaga_tokenwise`` attribute
    (:data:`~medsaga.model.fast_attention.TOKENWISE_ATTRIBUTE`), so that
    :mod:`medsaga.model.fast_attention` may skip the windows' padding around it.
    """

    def __init__(self, linear: nn.Linear, rank_fraction: float) -> None:
        super().__init__(linear.weight, linear.bias, rank_fraction)
        self.in_features, self.out_features = linear.in_features, linear.out_features  # as nn.Linear's
        setattr(self, TOKENWISE_ATTRIBUTE, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_matrix(), self.bias)


class ParserConv2d(ReconstructedWeight):
    """Drop-in for ``nn.Conv2d``: the kernel ``(out, in/groups, kh, kw)`` is decomposed as the
    matrix ``(out, in/groups · kh · kw)``; ``x (B, in, H, W) → (B, out, H', W')``."""

    def __init__(self, conv: nn.Conv2d, rank_fraction: float) -> None:
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero-padded convolutions are supported, got {conv.padding_mode!r}")
        super().__init__(conv.weight, conv.bias, rank_fraction)
        self.kernel_shape = tuple(conv.weight.shape)
        # nn.Conv2d's attributes, so that code that reads a convolution's hyper-parameters and
        # weight (TinyViT folds its BatchNorms into them) takes this drop-in as it takes the original.
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    @property
    def weight(self) -> torch.Tensor:
        """The recomposed kernel ``(out, in/groups, kh, kw)`` (a fresh tensor: gradients reach ``S``)."""
        return self.weight_matrix().view(self.kernel_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel={self.kernel_shape}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


def select_layers(encoder: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names (inside ``encoder``) of its ``nn.Linear``/``nn.Conv2d`` modules matching any pattern,
    in module order.

    Raises:
        InputError: a pattern matches none of them.
    """
    candidates = [name for name, module in encoder.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    unmatched = [pattern for pattern in patterns if not any(fnmatchcase(name, pattern) for name in candidates)]
    if unmatched:
        raise InputError(f"parser layers {unmatched} match no linear or conv layer of the image encoder "
                         f"(e.g. {', '.join(candidates[:4])}, ..., {candidates[-1]})")
    return [name for name in candidates if any(fnmatchcase(name, pattern) for pattern in patterns)]


def reconstructed_layers(model: nn.Module) -> list[ReconstructedWeight]:
    """The wrapped layers of ``model``'s image encoder, in module order."""
    return [module for module in base_image_encoder(model).modules() if isinstance(module, ReconstructedWeight)]


@register
class ParserMethod(TuningMethod[ParserOptions]):
    """SAM-PARSER: only the singular values of the encoder weights train; the decoder fully.

    Default lr 1e-4, with no weight decay on ``S``.

    The released SAM-PARSER code (SJTU-DeepVisionLab/SAM-PARSER, ``Medical/train.py``) uses Adam at
    1.25e-6 without weight decay, batch 1, box prompts and SAM's pretrained single-mask head. Our
    prompt-free head trains new mask tokens from scratch, for which 1.25e-6 barely moves; 1e-4 is
    the AdamW rate of SALT's singular-value-tuning baseline for SAM on medical data
    (BioMedIA-MBZUAI/SALT, ``model_svdtuning.yml``) and our ``full`` method's rate. Weight decay is
    kept on the decoder (0.1) but not on ``S``: decoupled decay would pull singular values, and so
    the pretrained weights, towards zero rather than towards SAM (the released code uses none).
    """

    name = "parser"
    options_type = ParserOptions
    default_lr = 1e-4

    def prepare(self, model: nn.Module) -> None:
        options = self.options
        freeze(model)
        encoder, backbone = encoder_backbone(model)
        patterns = options.layers if options.layers is not None else backbone.decomposable_patterns()
        # Deterministic: names in module order, so a fresh model prepared alike has the same keys.
        for name in select_layers(encoder, patterns):
            parent_name, _, child_name = name.rpartition(".")
            parent = encoder.get_submodule(parent_name)
            layer = getattr(parent, child_name)
            wrapper = (ParserLinear(layer, options.rank_fraction) if isinstance(layer, nn.Linear)
                       else ParserConv2d(layer, options.rank_fraction))
            setattr(parent, child_name, wrapper)
        unfreeze_mask_decoder(model)

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        coefficients = [layer.S for layer in reconstructed_layers(model) if layer.S.requires_grad]
        coefficient_ids = {id(parameter) for parameter in coefficients}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in coefficient_ids]
        return [{"params": coefficients, "lr": lr, "weight_decay": 0.0},
                {"params": others, "lr": lr, "weight_decay": weight_decay}]
