"""MedSAGa on real data: 50 GaLore steps of the tiny SAM on MALF brain MR slices lower the loss."""

from __future__ import annotations

import numpy as np
import torch

from medsaga.data.resize import letterbox_images, letterbox_labels
from medsaga.data.slices import volume_to_slices
from medsaga.io import read_volume
from medsaga.losses import segmentation_loss
from medsaga.methods import create_method
from tests.data_paths import SHARED_DATA, need_shared
from tests.method_helpers import tiny_segmenter

MALF = SHARED_DATA / "malf-brain-t1"


def _malf_slices(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` axial slices of MALF_1000 with > 10 % foreground, letterboxed to ``size``."""
    image = read_volume(MALF / "imagesTr" / "MALF_1000_0000.nii.gz")
    label = read_volume(MALF / "labelsTr" / "MALF_1000.nii.gz")
    slices = volume_to_slices(image, label, presets="mr")
    assert slices.labels is not None
    foreground = np.flatnonzero((slices.labels > 0).mean(axis=(1, 2)) > 0.1)
    chosen = foreground[np.linspace(0, len(foreground) - 1, count).round().astype(int)]
    images, box = letterbox_images(torch.from_numpy(slices.images[chosen]), size)
    return images, letterbox_labels(torch.from_numpy(slices.labels[chosen]), box)


def test_50_galore_steps_on_malf_slices_lower_the_loss() -> None:
    need_shared(MALF)
    images, labels = _malf_slices(count=8, size=256)
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}
    model = tiny_segmenter(num_classes=3, image_size=256)
    method = create_method("galore")  # defaults: rank 8, gap 200, scale 0.25, lr 5e-3
    method.prepare(model)
    qkv_before = model.sam.image_encoder.blocks[0].attn.qkv.weight.detach().clone()
    optimizer = method.build_optimizer(model, method.default_lr, method.default_weight_decay)
    losses = []
    for step in range(50):
        batch = torch.arange(4) + 4 * (step % 2)
        loss = segmentation_loss(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    print(f"GaLore tiny SAM on MALF: loss {first:.3f} (steps 1-5) -> {last:.3f} (steps 46-50)")
    assert last < 0.6 * first, losses
    # GaLore really updated the encoder through its projection: weights moved, moments are rank 8.
    qkv = model.sam.image_encoder.blocks[0].attn.qkv.weight
    assert not torch.equal(qkv, qkv_before)
    assert 8 in optimizer.state[qkv]["exp_avg"].shape
