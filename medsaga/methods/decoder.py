"""``decoder``: the image encoder frozen (and run without gradients), the mask decoder tuned fully.

The cheapest method: no encoder activations or gradients are stored, and its outputs can be
cached across epochs (the whole image encoder is its :meth:`frozen_encoder`, the mask decoder on
the cached embeddings its :meth:`forward_from_frozen`: the base class's defaults; see
:mod:`medsaga.train.embedding_cache`). The reference point for what encoder tuning adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medsaga.methods.base import MethodOptions, TuningMethod, freeze, unfreeze_mask_decoder
from medsaga.methods.registry import register


@dataclass(frozen=True)
class DecoderOptions(MethodOptions):
    """No options: the whole mask decoder trains."""


@register
class DecoderMethod(TuningMethod[DecoderOptions]):
    """Mask decoder only; the encoder is frozen and runs without gradients.

    Default lr 5e-3: SAMed's base learning rate.
    """

    name = "decoder"
    options_type = DecoderOptions
    default_lr = 5e-3
    encoder_frozen = True
    encoder_cacheable = True  # the whole encoder: cache its embeddings, train the decoder on them

    def prepare(self, model: nn.Module) -> None:
        freeze(model)
        unfreeze_mask_decoder(model)
