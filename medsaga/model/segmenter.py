"""Prompt-free multi-class segmentation with SAM (as in SAMed / MedSAGa).

The mask decoder is built with ``num_multimask_outputs = num_classes`` and so owns
``num_classes + 1`` mask tokens. With no points, boxes or masks the prompt encoder yields its
defaults: an empty sparse embedding and the learned ``no_mask_embed`` as dense embedding. The
decoder turns those into one mask per token: channel 0 is background, channel ``c`` class ``c``.

How all ``C + 1`` masks come out: ``MaskDecoder.forward`` slices its masks (``[:, 1:]`` with
``multimask_output=True``, ``[:, :1]`` otherwise) because for SAM token 0 is the single-mask
answer. We need every token, so :meth:`SamSegmenter.decode` calls ``MaskDecoder.predict_masks``,
the official method that ``forward`` wraps, which returns all of them unsliced.

Batching: ``predict_masks`` repeats the image embeddings once per *prompt* (its design is one image,
many prompts). We pass one shared empty prompt (sparse embedding of batch 1): the repeat is then a
no-op and the transformer broadcasts the shared prompt tokens over the B images, so each image's
output depends on that image alone (tested). Expanding the sparse prompts to B would make the
decoder pair every image with every prompt (B² masks). The dense (no-mask) embedding is expanded
to B, a free view.

Shapes: images ``(B, 3, S, S)`` float in [0, 1] → embeddings ``(B, 256, g, g)`` (``g = S/16`` for
SAM's ViT, ``S/4`` for LiteMedSAM's TinyViT) → low-resolution logits ``(B, C+1, 4g, 4g)`` →
:func:`upsample_logits` ``(B, C+1, S, S)`` → :func:`logits_to_labels` ``(B, S, S)`` int64.

The encoder-specific parts (input normalisation, BatchNorm statistics) come from the encoder's
:class:`~medsaga.model.backbone.Backbone`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from medsaga.model.backbone import backbone_of, freeze_statistics

if TYPE_CHECKING:
    from segment_anything.modeling import Sam


class SamSegmenter(nn.Module):
    """SAM with the prompt-free multi-class head: images in, ``C + 1`` mask logits out.

    ``encode`` and ``decode`` are exposed separately so that a method with a frozen image encoder
    can compute the embeddings once and cache them. The image encoder is read through
    :attr:`image_encoder` and replaced only through :meth:`replace_image_encoder` (a method that
    wraps it, as the adapter does): nothing else assigns ``sam.image_encoder``.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam
        freeze_statistics(sam.image_encoder)

    @property
    def image_encoder(self) -> nn.Module:
        """The image encoder (or the wrapper a method put in its place; :func:`~medsaga.model.backbone.base_encoder`
        reaches the encoder inside)."""
        return self.sam.image_encoder

    def replace_image_encoder(self, encoder: nn.Module) -> nn.Module:
        """Put ``encoder`` in the image encoder's place and return the one it replaces.

        ``encoder`` takes the normalised images ``(B, 3, S, S)`` and returns the embeddings of the
        same shape as before; a wrapper keeps the encoder it wraps as ``wrapped_encoder`` so that
        the backbone protocol still finds it. Its BatchNorm statistics stay frozen as the
        original's (:func:`~medsaga.model.backbone.freeze_statistics`).

        Raises:
            TypeError: no registered backbone answers for ``encoder`` (nothing is replaced then).
        """
        freeze_statistics(encoder)  # first: it finds the backbone, or refuses
        previous = self.sam.image_encoder
        self.sam.image_encoder = encoder
        return previous

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C``; the logits have ``C + 1`` channels (channel 0 is background)."""
        return self.sam.mask_decoder.num_mask_tokens - 1

    @property
    def image_size(self) -> int:
        """The square input size ``S`` the image encoder was built for."""
        return self.image_encoder.img_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [0, 1] → what the image encoder takes.

        SAM's ViT: per-channel standardised in 0..255 units (``pixel_mean``/``pixel_std`` are the
        official ImageNet × 255 values). LiteMedSAM: the [0, 1] image as it is. No padding:
        images come at the model's size.
        """
        self._check_images(images)
        return backbone_of(self.image_encoder).normalize(self.sam, images)

    def train(self, mode: bool = True) -> SamSegmenter:
        """Train/eval mode as ``nn.Module.train``, except that the image encoder's BatchNorm layers
        always use their running statistics (see :mod:`medsaga.model.backbone`)."""
        super().train(mode)
        freeze_statistics(self.image_encoder)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` in [0, 1] → image embeddings ``(B, 256, g, g)``."""
        return self.image_encoder(self.normalize(images))

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, 256, g, g)`` → low-resolution logits ``(B, C+1, 4g, 4g)``."""
        prompt_encoder = self.sam.prompt_encoder
        expected = (prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size)
        if embeddings.dim() != 4 or tuple(embeddings.shape[1:]) != expected:
            raise ValueError(f"expected embeddings of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(embeddings.shape)}")
        # No points, boxes or masks: sparse is (1, 0, 256), dense the no-mask embedding (1, 256, h, w).
        sparse, dense = prompt_encoder(points=None, boxes=None, masks=None)
        logits, _iou = self.sam.mask_decoder.predict_masks(
            image_embeddings=embeddings,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,  # batch 1 on purpose: see the module docstring
            dense_prompt_embeddings=dense.expand(embeddings.shape[0], -1, -1, -1),
        )
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` in [0, 1] → low-resolution logits ``(B, C+1, 4g, 4g)``."""
        return self.decode(self.encode(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, S, S)`` in [0, 1] → labels ``(B, S, S)`` int64 in ``0..C`` (no gradients)."""
        return logits_to_labels(self(images), (self.image_size, self.image_size))

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise ValueError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, C+1, h, w)`` → ``(B, C+1, H, W)`` by bilinear interpolation (as SAM's postprocessing)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def logits_to_labels(logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, C+1, h, w)`` logits → labels ``(B, H, W)`` int64: argmax after upsampling to ``size``.

    The logits are upsampled first and the argmax taken at full resolution, which gives smoother
    boundaries than upsampling a label map.
    """
    if size is not None:
        logits = upsample_logits(logits, size)
    return logits.argmax(dim=1)
