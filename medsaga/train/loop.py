"""The training loop: the same code path for every method (it never asks a method's name).

What it asks a method: its optimizer, whether the encoder runs without gradients, and an optional
auxiliary loss. Everything random in a step (batch order, augmentation, noise inside a method) is
seeded from (seed, step), so a run resumed from a checkpoint at step k continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from medsaga.losses import segmentation_loss
from medsaga.methods.base import TuningMethod, count_parameters, image_encoder
from medsaga.model.activation_checkpointing import checkpoint_encoder_blocks
from medsaga.optim import check_layerwise_compatible, warmup_poly_lr
from medsaga.train.augment import Augmenter
from medsaga.train.data import TrainingSlices
from medsaga.train.memory import (GradientMeter, MemoryBreakdown, PeakMemory, SavedActivationMeter,
                                  optimizer_state_bytes, parameter_bytes)
from medsaga.train.resume import load_training_state, save_training_state

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class LoopSettings:
    """How long and how to train.

    Attributes:
        steps: optimizer steps in all.
        batch_size: slices per forward pass.
        grad_accum: forward/backward passes per optimizer step.
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warm-up, then polynomial (0.9) decay to 0 at the last step.
        seed: seeds batch order, augmentation and any noise inside the model.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        activation_checkpointing: recompute encoder blocks in backward instead of storing them.
        checkpoint_every: write a resumable checkpoint every this many steps (0: only at the end).
    """

    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0
    seed: int = 0
    precision: str = "fp32"
    activation_checkpointing: bool = False
    checkpoint_every: int = 0


class TrainingObserver(Protocol):
    """What the loop reports while it runs (the CLI draws a progress bar from it)."""

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None: ...

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None: ...

    def on_validation(self, epoch: int, mean_dice: float) -> None: ...


@dataclass
class TrainResult:
    """What a run measured (goes to report.json)."""

    steps: int
    first_step: int
    slices_seen: int
    wall_seconds: float
    slices_per_second: float
    final_loss: float
    trainable_parameters: int
    total_parameters: int
    memory: MemoryBreakdown
    peak_memory: dict[str, Any]
    validation_dice: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = self.memory.to_json()
        return data


Validator = Any  # a callable model -> mean Dice, see medsaga.train.validation


def train(model: nn.Module, method: TuningMethod, data: TrainingSlices, settings: LoopSettings, run_dir: Path,
          observer: TrainingObserver, augmenter: Augmenter, *, device: torch.device,
          resume: bool = False, validator: Validator | None = None) -> TrainResult:
    """Train ``model`` (already prepared by ``method``) on ``data``; write metrics and checkpoints.

    Returns the measurements; the caller saves the trained state and the report.
    """
    if settings.activation_checkpointing and not method.encoder_frozen:
        checkpoint_encoder_blocks(image_encoder(model))
    model.to(device)
    optimizer = method.build_optimizer(model, settings.lr, settings.weight_decay)
    if getattr(optimizer, "layerwise", False):
        check_layerwise_compatible(settings.grad_accum, None, None)
    scheduler = warmup_poly_lr(optimizer, settings.steps, settings.warmup_steps)
    first_step = 0
    metrics_path = run_dir / METRICS_FILE
    if resume:
        first_step = load_training_state(run_dir, method=method, model=model, optimizer=optimizer, scheduler=scheduler)
        _truncate_metrics(metrics_path, first_step)

    slices_per_step = settings.batch_size * settings.grad_accum
    steps_per_epoch = len(data) / slices_per_step
    observer.on_start(settings.steps, first_step, steps_per_epoch)
    autocast = _autocast(device, settings.precision)
    activations = SavedActivationMeter(model)
    gradients = GradientMeter(model)
    peak = PeakMemory(device)
    validation: list[float] = []
    model.train()
    started = time.perf_counter()
    loss_value = math.nan
    with open(metrics_path, "a", encoding="utf-8") as metrics:
        for step in range(first_step, settings.steps):
            step_started = time.perf_counter()
            torch.manual_seed(_mix(settings.seed, step))  # noise inside methods (Conv-LoRA's gate)
            optimizer.zero_grad(set_to_none=True)
            loss_total = 0.0
            for micro in range(settings.grad_accum):
                positions = _positions(len(data), settings.seed, step, micro, settings.batch_size, settings.grad_accum)
                images, labels = augmenter(*data.batch(positions), step=step * settings.grad_accum + micro)
                images, labels = images.to(device), labels.to(device)
                with autocast, activations.measure():
                    logits = _forward(model, method, images)
                    loss = segmentation_loss(logits, labels)
                    auxiliary = method.auxiliary_loss(model)
                    if auxiliary is not None:
                        loss = loss + auxiliary
                (loss / settings.grad_accum).backward()
                loss_total += loss.item() / settings.grad_accum
            optimizer.step()
            scheduler.step()
            loss_value = loss_total
            elapsed = time.perf_counter() - step_started
            lr = optimizer.param_groups[0]["lr"]
            metrics.write(json.dumps({"step": step + 1, "loss": round(loss_value, 6), "lr": lr,
                                      "seconds": round(elapsed, 4)}) + "\n")
            observer.on_step(step + 1, loss_value, lr, slices_per_step / max(elapsed, 1e-9))
            epoch_done = math.floor((step + 1) / steps_per_epoch) > math.floor(step / steps_per_epoch)
            if validator is not None and (epoch_done or step + 1 == settings.steps):
                dice = validator(model)
                validation.append(dice)
                observer.on_validation(len(validation), dice)
                model.train()
            if settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
                metrics.flush()
                save_training_state(run_dir, step=step + 1, method=method, model=model, optimizer=optimizer,
                                    scheduler=scheduler)
    wall = time.perf_counter() - started
    save_training_state(run_dir, step=settings.steps, method=method, model=model, optimizer=optimizer,
                        scheduler=scheduler)
    gradients.remove()
    frozen, trainable_bytes = parameter_bytes(model)
    trainable, total = count_parameters(model)
    slices = (settings.steps - first_step) * slices_per_step
    memory = MemoryBreakdown(frozen, trainable_bytes, gradients.peak, optimizer_state_bytes(optimizer),
                             activations.peak)
    return TrainResult(settings.steps, first_step, slices, wall, slices / max(wall, 1e-9), loss_value, trainable,
                       total, memory, peak.describe(), validation)


def _forward(model: nn.Module, method: TuningMethod, images: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C+1, S/4, S/4)``; a frozen encoder runs without building a graph."""
    if method.encoder_frozen:
        with torch.no_grad():
            embeddings = model.encode(images)
        return model.decode(embeddings)
    return model(images)


def _positions(count: int, seed: int, step: int, micro: int, batch_size: int, grad_accum: int) -> list[int]:
    """Slice positions of one micro-batch: a fresh permutation of all slices every epoch."""
    first = (step * grad_accum + micro) * batch_size
    positions = []
    for sample in range(first, first + batch_size):
        epoch, offset = divmod(sample, count)
        positions.append(int(_epoch_order(count, seed, epoch)[offset]))
    return positions


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    key = (count, seed, epoch)
    if key not in _ORDER_CACHE:
        if len(_ORDER_CACHE) > 8:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(count)
    return _ORDER_CACHE[key]


def _mix(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**63)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines an interrupted run wrote after its last checkpoint (they will be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
