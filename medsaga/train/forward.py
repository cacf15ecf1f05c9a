"""The training forward pass: images, or a cached frozen output, to logits; its DDP wrapping; autocast."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from medsaga import distributed
from medsaga.methods.base import TuningMethod


class TrainingForward(nn.Module):
    """Images or cached frozen outputs → logits ``(b, C+1, S/4, S/4)``: the one forward DDP wraps
    (DDP reduces gradients only of what runs through its own ``forward``)."""

    def __init__(self, model: nn.Module, method: TuningMethod) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, images: torch.Tensor | None, cached_output: torch.Tensor | None) -> torch.Tensor:
        if cached_output is not None:
            return self.method.forward_from_frozen(self.model, cached_output, images)
        assert images is not None
        return forward_logits(self.model, self.method, images)


def forward_logits(model: nn.Module, method: TuningMethod, images: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C+1, S/4, S/4)``; a frozen encoder runs without building a graph."""
    if method.encoder_frozen:
        with torch.no_grad():
            embeddings = model.encode(images)
        return model.decode(embeddings)
    return model(images)


def distribute(forward: TrainingForward, optimizer: torch.optim.Optimizer, layerwise: bool,
               device: torch.device) -> nn.Module:
    """The step's forward under torchrun: DDP, or, for a layer-wise optimizer, the bare forward
    with each gradient averaged over the ranks inside the optimizer's hook before its update."""
    from torch.nn.parallel import DistributedDataParallel

    if layerwise:
        # DDP's constructor broadcasts rank 0's weights; without DDP, do the same by hand.
        with torch.no_grad():
            for parameter in forward.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        optimizer.reduce_gradient = distributed.average_gradient_  # type: ignore[attr-defined]
        return forward
    # broadcast_buffers off: the only buffers training changes are BatchNorm statistics, which
    # CrossRankBatchNorm2d keeps equal on every rank; find_unused_parameters because a method may
    # leave trainable parts out of a step (the prompt encoder's unused embeddings, Conv-LoRA's experts).
    return DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, find_unused_parameters=True)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision`` ``bf16``; else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
