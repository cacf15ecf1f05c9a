"""``adapter``: a convolutional adapter in parallel with SAM's frozen image encoder (the seed paper).

A small CNN (:class:`~medsaga.methods.adapter_net.ConvAdapter`) reads the input image and its
FFT high-pass component and produces a ``(B, 256, g, g)`` map (the embedding's grid, ``S`` over
the encoder's :attr:`~medsaga.model.backbone.Backbone.embedding_stride`: ``S/16`` for SAM's ViT,
``S/4`` for LiteMedSAM's TinyViT) that is added, scaled, to
the frozen ViT's image embedding: ``embedding + scale * tanh(adapter(x))``. The adapter and the
mask decoder train; the ViT and the prompt encoder stay frozen. Because the adapter sits *beside*
the ViT rather than inside it, no gradient has to flow through the ViT: its activations are never
stored, which is what makes the method as light as decoder-only tuning plus a small CNN.

How it fits the method interface (one choice, and why):

* :meth:`AdapterMethod.prepare` replaces ``sam.image_encoder`` (through the segmenter's
  ``replace_image_encoder``) with a :class:`~medsaga.methods.adapter_net.ParallelAdaptedEncoder`
  whose forward runs the original ViT under ``torch.no_grad()`` and the adapter with gradients.
  The ViT's parameters therefore move to ``sam.image_encoder.vit.*`` after ``prepare``, the
  adapter's live in ``sam.image_encoder.adapter.*``; ``prepare`` builds the same names every time.
* ``encoder_frozen`` is therefore **False**: the loop simply calls ``model(images)`` and needs no
  branch on the method. If it were True, the loop would run the adapter under ``no_grad`` and it
  would never learn. The memory guarantee does not depend on the loop: the no-grad region lives
  inside the encoder itself.
* The ViT's half *is* cacheable (``encoder_cacheable``): :meth:`AdapterMethod.frozen_encoder` is
  ``sam.image_encoder.vit``, whose output depends on the image alone, and
  :meth:`AdapterMethod.forward_from_frozen` finishes the pass from that output and the image
  (``cache_needs_images``): ``decode(vit_embedding + scale * adapter(normalize(image)))``, the same
  :meth:`~medsaga.methods.adapter_net.ParallelAdaptedEncoder.adapt` that ``forward`` uses. With the
  embedding cache a training step then costs the adapter and the decoder, not the ViT.
* The adapter reads the *normalised* SAM input, because that is what the image encoder is handed
  (the reference divides each raw channel by its maximum instead). Its high-pass component is the
  [0, 1] image's high-pass times ``255 / pixel_std``: the mean is a DC term and is filtered out.
* BatchNorm running statistics are trained state: :meth:`trained_state` saves them (and
  ``num_batches_tracked``) beside the trainable parameters. ``SamSegmenter.train()/.eval()``
  reaches the adapter: batch statistics (and running-stat updates) in train mode, the running
  statistics in eval mode. Anything that runs the model in train mode, even under ``no_grad``,
  updates them.

Reference: Kyyle2114/Convolutional-Adapter-for-Segment-Anything (written anew from its description).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medsaga.methods.adapter_net import ConvAdapter, ParallelAdaptedEncoder
from medsaga.methods.base import (MethodOptions, TuningMethod, encoder_backbone, freeze, image_encoder,
                                  unfreeze_mask_decoder)
from medsaga.methods.options import check_fields, integer, real
from medsaga.methods.registry import register
# Not the embedding grid (the backbone's embedding_stride is): the step of the input sizes.
from medsaga.model.build import PATCH_SIZE as IMAGE_SIZE_STEP  # every model's side is a multiple of it


@dataclass(frozen=True)
class AdapterOptions(MethodOptions):
    """The convolutional adapter's options.

    Attributes:
        width: channels of the adapter's convolutions (256 as the reference: then no output
            projection; any other width adds a 1 × 1 convolution to the embedding's 256 channels).
        num_blocks: residual blocks (3x3 dilated conv, BatchNorm, LeakyReLU, 2x average pooling);
            each block's output is pooled onto the embedding grid and the results summed.
        tau: side of the zeroed low-frequency square of the FFT high-pass input, as a fraction of
            the image side (0 feeds the image itself instead of its high-pass component).
        scale: weight of the adapter's tanh output added to the frozen ViT's embedding.
        downsample: the adapter reads the image average-pooled by this factor (2: the reference's
            512-pixel adapter input beside the 1024-pixel ViT); ``downsample * 2**num_blocks``
            must divide 16, the step of the image sizes every model is built at
            (:func:`~medsaga.model.build.check_image_size`), so that every block's output is a
            whole grid at every such size and pools (or upsamples) evenly onto the embedding grid,
            whatever the encoder's embedding stride (its backbone's, 16 or 4).
    """

    width: int = 256
    num_blocks: int = 3
    tau: float = 0.25
    scale: float = 0.1
    downsample: int = 2

    def __post_init__(self) -> None:
        check_fields(self, width=integer(at_least=1), num_blocks=integer(at_least=1),
                     downsample=integer(at_least=1), tau=real(at_least=0, below=1), scale=real(at_least=0))
        if IMAGE_SIZE_STEP % self.reduction:
            raise ValueError(f"downsample * 2**num_blocks must divide {IMAGE_SIZE_STEP}, got "
                             f"{self.downsample} * 2**{self.num_blocks}")

    @property
    def reduction(self) -> int:
        """How many input pixels one cell of the adapter's last block covers: ``downsample * 2**num_blocks``."""
        return self.downsample * 2 ** self.num_blocks


@register
class AdapterMethod(TuningMethod[AdapterOptions]):
    """Convolutional adapter beside the frozen ViT, mask decoder fully tuned.

    Default lr 2e-4: the reference code's AdamW learning rate (``run_cad.sh``: ``--lr 2e-4``, batch 4,
    cosine annealing), used there for the adapter and the mask decoder together, as here.
    """

    name = "adapter"
    options_type = AdapterOptions
    default_lr = 2e-4
    encoder_frozen = False  # the adapter needs gradients; the ViT's no_grad is inside the encoder
    encoder_cacheable = True  # ... but the ViT's output can be cached (module docstring)
    cache_needs_images = True  # the adapter reads the (augmented) image every step

    def prepare(self, model: nn.Module) -> None:
        freeze(model)
        vit = image_encoder(model)
        if isinstance(vit, ParallelAdaptedEncoder):
            raise ValueError("this model already has a convolutional adapter")
        options = self.options
        reference = next(vit.parameters())
        _, backbone = encoder_backbone(model)
        # Built on the encoder's device ("meta" included, so counting vit_b allocates nothing).
        with torch.device(reference.device):
            adapter = ConvAdapter(width=options.width, num_blocks=options.num_blocks, tau=options.tau,
                                  downsample=options.downsample, embedding_stride=backbone.embedding_stride)
        adapter.to(dtype=reference.dtype)
        adapter.train(vit.training)
        model.replace_image_encoder(ParallelAdaptedEncoder(vit, adapter, options.scale))
        unfreeze_mask_decoder(model)

    def trained_buffers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's BatchNorm buffers (running mean/var, batch count)."""
        return _adapter_buffers(model)

    def frozen_encoder(self, model: nn.Module) -> nn.Module:
        """The frozen ViT beside the adapter (its output is the cacheable half of the encoder's)."""
        return _adapted_encoder(model).vit

    def forward_from_frozen(self, model: nn.Module, frozen_output: torch.Tensor,
                            images: torch.Tensor | None) -> torch.Tensor:
        """``decode(vit_embedding + scale * adapter(normalize(images)))``: ``model(images)`` with the
        ViT's output given (cached) instead of computed."""
        if images is None:
            raise ValueError("the adapter reads the image: forward_from_frozen needs it")
        embedding = _adapted_encoder(model).adapt(frozen_output, model.normalize(images))  # type: ignore[operator]
        return model.decode(embedding)  # type: ignore[operator, no-any-return]


def _adapted_encoder(model: nn.Module) -> ParallelAdaptedEncoder:
    encoder = image_encoder(model)
    if not isinstance(encoder, ParallelAdaptedEncoder):
        raise ValueError("the model has no convolutional adapter: call prepare first")
    return encoder


def _adapter_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's persistent buffers (BatchNorm statistics) by their name in ``model``."""
    encoder = _adapted_encoder(model)
    prefix = next(name for name, module in model.named_modules() if module is encoder.adapter)
    return {f"{prefix}.{name}": buffer for name, buffer in encoder.adapter.named_buffers()}
