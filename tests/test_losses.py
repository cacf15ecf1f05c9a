"""The 0.2·CE + 0.8·Dice loss on low-resolution logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsaga.losses import labels_to_logit_size, segmentation_loss, soft_dice_loss


def test_perfect_prediction_has_zero_dice_loss() -> None:
    labels = torch.randint(0, 3, (2, 8, 8))
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, labels).item() < 1e-4
    assert segmentation_loss(logits, labels).item() < 1e-4


def test_wrong_prediction_costs_more_than_a_right_one() -> None:
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    right = F.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 5
    wrong = F.one_hot(1 - labels, 2).permute(0, 3, 1, 2).float() * 5
    assert segmentation_loss(wrong, labels) > segmentation_loss(right, labels) + 1.0


def test_loss_is_taken_at_the_logit_resolution() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 2
    small = labels_to_logit_size(labels, (4, 4))
    assert small.shape == (1, 4, 4) and small.dtype == torch.int64
    assert set(small.unique().tolist()) == {0, 2}
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, labels)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    expected_ce = F.cross_entropy(torch.zeros(1, 3, 4, 4), small)
    assert torch.isclose(loss, 0.2 * expected_ce + 0.8 * soft_dice_loss(torch.zeros(1, 3, 4, 4), small))
