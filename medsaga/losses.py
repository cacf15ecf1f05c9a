"""The training loss of SAMed and MedSAGa: 0.2 · cross-entropy + 0.8 · soft Dice, on low-res logits.

The loss is computed at the decoder's own resolution (1/4 of the input): the labels are
down-sampled by nearest neighbour, not the logits up-sampled, which is cheaper and is what both
papers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsaga.distributed import global_sum

CE_WEIGHT = 0.2
DICE_WEIGHT = 0.8


def labels_to_logit_size(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer labels ``(B, H, W)`` to ``(B, h, w)`` (int64)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].long()


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 − mean over classes of the soft Dice between softmax(logits) and one-hot labels.

    Args:
        logits: ``(B, C+1, h, w)`` raw scores.
        labels: ``(B, h, w)`` int64 in ``[0, C]``.

    Every class, background included, counts equally (as SAMed's DiceLoss); a class absent from
    both prediction and labels scores a Dice of 1 thanks to ``eps``, so empty slices don't explode.
    """
    num_classes = logits.shape[1]
    probabilities = logits.float().softmax(dim=1)
    one_hot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    dims = (0, 2, 3)
    # Under DDP each rank holds a shard of the batch: the sums run over the whole global batch, so
    # every rank's Dice (and the step's gradient) is the single-process one.
    intersection = global_sum((probabilities * one_hot).sum(dims))
    total = global_sum(probabilities.sum(dims) + one_hot.sum(dims))
    dice = (2 * intersection + eps) / (total + eps)
    return 1 - dice.mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``0.2 · CE + 0.8 · Dice`` of low-res ``logits (B, C+1, h, w)`` against ``labels (B, H, W)``."""
    low_res_labels = labels_to_logit_size(labels, tuple(logits.shape[-2:]))
    cross_entropy = F.cross_entropy(logits.float(), low_res_labels)
    return CE_WEIGHT * cross_entropy + DICE_WEIGHT * soft_dice_loss(logits, low_res_labels)
