"""Activation checkpointing of the image encoder's blocks: keep block inputs, recompute the rest.

Each transformer block's forward is re-run during backward instead of keeping its internal
activations (attention maps, MLP hidden states), trading about one extra encoder forward for most
of the encoder's activation memory. It has no effect where the encoder runs without gradients.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_encoder_blocks(image_encoder: nn.Module) -> int:
    """Wrap every block of ``image_encoder`` (``.blocks``) in non-reentrant checkpointing.

    Wrapping happens on the instances (their ``forward``), so wrapped layers inside a block (LoRA,
    PARSER...) are checkpointed too. Idempotent. Returns the number of blocks wrapped.
    """
    wrapped = 0
    for block in image_encoder.blocks:
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
