"""Slices ↔ the model's square input: resize the longest side, pad the rest (as SAM does).

SAM was trained on images whose longest side was scaled to the input size and padded at the
bottom and right; doing the same keeps the pixel aspect ratio (no stretched anatomy) and makes
the way back exact: crop the valid region, resize to the slice's own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Letterbox:
    """How slices of size ``original`` sit in a ``size × size`` model input.

    Attributes:
        original: ``(H, W)`` of the slices.
        size: the model's square input side ``S``.
        scaled: ``(h, w)``: the slice after scaling, at the top-left of the input; the rest is 0.
    """

    original: tuple[int, int]
    size: int

    @property
    def scaled(self) -> tuple[int, int]:
        height, width = self.original
        scale = self.size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox_images(images: torch.Tensor, size: int) -> tuple[torch.Tensor, Letterbox]:
    """``(N, C, H, W)`` float → ``(N, C, S, S)`` (bilinear, antialiased when shrinking), and the box."""
    box = Letterbox((int(images.shape[-2]), int(images.shape[-1])), size)
    scaled = F.interpolate(images.float(), size=box.scaled, mode="bilinear", align_corners=False,
                           antialias=box.scaled[0] < box.original[0])
    return _pad(scaled, size), box


def letterbox_labels(labels: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``(N, H, W)`` int labels → ``(N, S, S)`` int64 (nearest: never invents a label; padding is 0)."""
    scaled = F.interpolate(labels[:, None].float(), size=box.scaled, mode="nearest-exact")[:, 0]
    return _pad(scaled, box.size).long()


def unletterbox(logits: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Model-space scores ``(N, K, s, s)`` at any resolution ``s`` → ``(N, K, H, W)`` on the slices.

    Crops the region that holds the slice (scaled to ``s``) and resizes it bilinearly.
    """
    resolution = logits.shape[-1]
    height = max(1, round(box.scaled[0] * resolution / box.size))
    width = max(1, round(box.scaled[1] * resolution / box.size))
    valid = logits[..., :height, :width]
    return F.interpolate(valid.float(), size=box.original, mode="bilinear", align_corners=False)


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dimensions at the bottom and right to ``size × size``."""
    return F.pad(tensor, (0, size - tensor.shape[-1], 0, size - tensor.shape[-2]))
