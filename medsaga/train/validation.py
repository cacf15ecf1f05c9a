"""Validation during training: mean Dice of the held-out cases' slices, per epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medsaga.train.data import CaseStack, TrainingSlices


class SliceDiceValidator:
    """Mean over cases of the mean per-class Dice, computed on each case's kept slices.

    A class absent from both the prediction and the reference of a case is skipped for that case
    (neither right nor wrong); absent from one of them, it scores 0. Slices are compared in the
    model's letterboxed space, which is enough to follow training; the volume metrics in
    millimetres belong to ``medsaga evaluate``.
    """

    def __init__(self, stacks: Sequence[CaseStack], image_size: int, num_classes: int, batch_size: int,
                 device: torch.device) -> None:
        self.cases = [TrainingSlices([stack], image_size) for stack in stacks]
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.device = device

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        model.eval()
        scores = []
        for case in self.cases:
            intersection = torch.zeros(self.num_classes + 1)
            predicted = torch.zeros(self.num_classes + 1)
            reference = torch.zeros(self.num_classes + 1)
            for start in range(0, len(case), self.batch_size):
                images, labels = case.batch(range(start, min(start + self.batch_size, len(case))))
                prediction = model.predict(images.to(self.device)).cpu()
                classes = torch.arange(self.num_classes + 1)[:, None, None, None]
                pred_masks, ref_masks = prediction[None] == classes, labels[None] == classes
                intersection += (pred_masks & ref_masks).sum(dim=(1, 2, 3))
                predicted += pred_masks.sum(dim=(1, 2, 3))
                reference += ref_masks.sum(dim=(1, 2, 3))
            present = (predicted[1:] + reference[1:]) > 0
            dice = 2 * intersection[1:] / (predicted[1:] + reference[1:]).clamp(min=1)
            if present.any():
                scores.append(float(dice[present].mean()))
        return sum(scores) / len(scores) if scores else float("nan")
