"""``full``: every weight of the image encoder and the mask decoder with AdamW — the reference.

Full fine-tuning is what the memory-efficient methods are measured against: it stores the
encoder's gradients and two Adam moments for every weight. The prompt encoder stays frozen, as in
every method: without prompts only its "no mask" embedding would receive a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medsaga.methods.base import (MethodOptions, TuningMethod, freeze, image_encoder, unfreeze,
                                  unfreeze_mask_decoder)
from medsaga.methods.registry import register


@dataclass(frozen=True)
class FullOptions(MethodOptions):
    """No options: encoder and decoder train fully."""


@register
class FullMethod(TuningMethod[FullOptions]):
    """All encoder and decoder weights with AdamW: the reference the other methods are measured against.

    Default lr 1e-4: MedSAM's rate for full fine-tuning (SAMed's 5e-3 is meant for adapters and
    would wreck the pre-trained ViT).
    """

    name = "full"
    options_type = FullOptions
    default_lr = 1e-4

    def prepare(self, model: nn.Module) -> None:
        freeze(model)
        unfreeze(image_encoder(model))
        unfreeze_mask_decoder(model)
