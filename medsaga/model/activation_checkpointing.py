"""Activation checkpointing of the image encoder's blocks: keep block inputs, recompute the rest.

Each block's forward (what the encoder's :class:`~medsaga.model.backbone.Backbone` calls its
blocks: ViT blocks; TinyViT's patch embedding, MBConvs, attention blocks and patch mergings) is
re-run during backward instead of keeping its internal activations (attention maps, MLP hidden
states), trading about one extra encoder forward for most of the encoder's activation memory. It
has no effect where the encoder runs without gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from torch import nn
from torch.utils.checkpoint import checkpoint

from medsaga.model.backbone import backbone_of, base_encoder


def checkpoint_encoder_blocks(image_encoder: nn.Module) -> int:
    """Wrap every block of ``image_encoder`` (or of the encoder a method's wrapper holds) in
    non-reentrant checkpointing; see :func:`checkpoint_modules`."""
    encoder = base_encoder(image_encoder)
    return checkpoint_modules(backbone_of(encoder).blocks(encoder))


def checkpoint_modules(modules: Iterable[nn.Module]) -> int:
    """Wrap each module's ``forward`` in non-reentrant checkpointing.

    Wrapping happens on the instances (their ``forward``), so wrapped layers inside a block (LoRA,
    PARSER...) are checkpointed too. Idempotent. Returns the number of modules wrapped.
    """
    wrapped = 0
    for block in modules:
        if getattr(block, "_medsaga_checkpointed", False):
            continue
        original = block.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._medsaga_checkpointed = True
        wrapped += 1
    return wrapped
