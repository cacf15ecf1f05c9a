"""Slices to the model's square input and back."""

from __future__ import annotations

import torch

from medsaga.data.resize import letterbox_images, letterbox_labels, unletterbox


def test_letterbox_keeps_aspect_and_pads_bottom_right() -> None:
    images = torch.rand(2, 3, 100, 50)
    boxed, box = letterbox_images(images, 64)
    assert boxed.shape == (2, 3, 64, 64)
    assert box.scaled == (64, 32)
    assert torch.all(boxed[..., :, 32:] == 0) and boxed[..., :, :32].abs().sum() > 0


def test_labels_take_only_existing_values() -> None:
    labels = torch.zeros(1, 30, 45, dtype=torch.long)
    labels[:, 5:20, 10:30] = 3
    labels[:, 22:28, 2:8] = 1
    boxed = letterbox_labels(labels, letterbox_images(torch.zeros(1, 3, 30, 45), 256)[1])
    assert boxed.shape == (1, 256, 256) and boxed.dtype == torch.int64
    assert set(boxed.unique().tolist()) == {0, 1, 3}


def test_round_trip_recovers_labels_from_one_hot_scores() -> None:
    labels = torch.zeros(1, 40, 24, dtype=torch.long)
    labels[:, 8:30, 4:20] = 2
    labels[:, 10:14, 6:10] = 1
    _, box = letterbox_images(torch.zeros(1, 3, 40, 24), 160)
    boxed = letterbox_labels(labels, box)
    scores = torch.nn.functional.one_hot(boxed, 3).permute(0, 3, 1, 2).float()
    back = unletterbox(scores, box).argmax(1)
    assert back.shape == labels.shape
    assert (back == labels).float().mean() > 0.97  # only boundary pixels may move
