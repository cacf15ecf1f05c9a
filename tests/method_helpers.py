"""A tiny SAM and a minimal training step shared by the method tests."""

from __future__ import annotations

import torch

from medsaga.losses import segmentation_loss
from medsaga.methods.base import TuningMethod
from medsaga.model.build import build_sam
from medsaga.model.segmenter import SamSegmenter


def tiny_segmenter(num_classes: int = 3, image_size: int = 64, seed: int = 0) -> SamSegmenter:
    """The ``tiny`` SAM with a prompt-free head, randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    return SamSegmenter(build_sam("tiny", num_classes=num_classes, image_size=image_size))


def lite_segmenter(num_classes: int = 3, image_size: int = 64, seed: int = 0) -> SamSegmenter:
    """LiteMedSAM's architecture (TinyViT) with a prompt-free head, randomly initialised from ``seed``.

    At 64 px every stage's windows are padded (stage 1: 32 x 32 tokens in windows of 7; stage 2:
    16 x 16 in windows of 14; stage 3: 16 x 16 in windows of 7), and the BatchNorm statistics are
    set away from their (0, 1) start so that folding them and keeping them frozen is visible.
    """
    torch.manual_seed(seed)
    model = SamSegmenter(build_sam("litemedsam", num_classes=num_classes, image_size=image_size))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def synthetic_batch(image_size: int = 64, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, S, S)`` in [0, 1] with bright squares labelled 1..3, labels ``(B, S, S)``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, image_size, image_size, generator=generator) * 0.2
    labels = torch.zeros(batch, image_size, image_size, dtype=torch.long)
    quarter = image_size // 4
    for value in (1, 2, 3):
        top = (value - 1) * quarter
        labels[:, top:top + quarter, quarter:2 * quarter] = value
        images[:, :, top:top + quarter, quarter:2 * quarter] += 0.25 * value
    return images, labels


def train_steps(model: SamSegmenter, method: TuningMethod, images: torch.Tensor, labels: torch.Tensor,
                steps: int, lr: float | None = None) -> list[float]:
    """``steps`` optimizer steps on one batch through the method interface; returns the losses."""
    optimizer = method.build_optimizer(model, lr or method.default_lr, method.default_weight_decay)
    losses = []
    for _ in range(steps):
        if method.encoder_frozen:
            with torch.no_grad():
                embeddings = model.encode(images)
            logits = model.decode(embeddings)
        else:
            logits = model(images)
        loss = segmentation_loss(logits, labels)
        auxiliary = method.auxiliary_loss(model)
        if auxiliary is not None:
            loss = loss + auxiliary
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
