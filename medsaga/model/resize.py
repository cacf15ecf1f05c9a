"""Resample SAM's positional tables from the pretraining grid to another input size.

The official checkpoints were trained at 1024 × 1024 pixels, a 64 × 64 patch grid. At another
input size ``S`` the grid is ``g = S / 16`` and two kinds of table change shape:

* ``image_encoder.pos_embed`` ``(1, 64, 64, C)``: an image over the grid, resized bicubically.
* the global-attention blocks' ``attn.rel_pos_h`` / ``rel_pos_w`` ``(2·64 − 1, head_dim)``: one
  entry per relative offset −63..63, resized linearly along the offset axis to ``2·g − 1``. Linear,
  because that is how segment-anything itself resamples them at run time (``get_rel_pos``).

The windowed blocks' tables are sized by the 14 × 14 window, not by the grid, and never change.
Both functions work on any device, ``meta`` included (shapes only), and compute in float32 so a
half-precision checkpoint resizes as accurately as a float one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, h, w, C)`` → ``(1, grid, grid, C)`` by bicubic interpolation (pixel-centre aligned)."""
    if pos_embed.shape[1:3] == (grid, grid):
        return pos_embed
    channels_first = pos_embed.permute(0, 3, 1, 2).float()
    # align_corners=False maps pixel centres onto pixel centres: the table is a sampled field over
    # the image, not a set of corner values.
    resized = F.interpolate(channels_first, size=(grid, grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, head_dim)`` → ``(length, head_dim)`` by linear interpolation along the offset axis."""
    if rel_pos.shape[0] == length:
        return rel_pos
    # (L, D) → (1, D, L): interpolate treats the last axis as the signal, D as channels.
    as_signal = rel_pos.float().t().unsqueeze(0)
    resized = F.interpolate(as_signal, size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).t().to(rel_pos.dtype).contiguous()
