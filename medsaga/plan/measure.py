"""One profiled training step of a configuration, through the training loop itself.

The step runs :func:`medsaga.train.loop.train` (the code ``finetune`` runs, with the same wrapping:
fast attention, activation checkpointing, the embedding cache, layer-wise GaLore) for two steps on
random slices; the second is profiled (the first made the optimizer state). Memory does not depend
on the weights' or the pixels' values, so a randomly initialised model of the same architecture
and random slices give the bytes of the real run.

On a CPU the in-step bytes come from the profiler's allocation events
(:class:`~medsaga.train.memory.StepTensorPeak`); on CUDA from ``max_memory_allocated``. The
embedding cache lives in host RAM (batches are moved to the device per step), so it is not part of
the device's peak.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsaga.plan.extrapolate import StepMeasurement

PROFILED_STEPS = 2  # the first makes the optimizer state, the second is measured


@dataclass(frozen=True)
class TrainingConfig:
    """What decides a step's memory besides batch and image size.

    Attributes:
        method: the ``--method``.
        method_options: its options, the memory profile's included.
        activation_checkpointing: recompute encoder blocks in backward.
        cache: train on the embedding cache (methods with a cacheable frozen part).
        precision: ``fp32`` or ``bf16``.
    """

    method: str
    method_options: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False
    cache: bool = False
    precision: str = "fp32"

    def key(self) -> tuple[Any, ...]:
        """Equal for configurations that allocate the same (measured once)."""
        return (self.method, tuple(sorted(self.method_options.items())), self.activation_checkpointing,
                self.cache, self.precision)


def random_slices(count: int, image_size: int, num_classes: int, seed: int = 0) -> list[Any]:
    """``count`` random slices ``(3, S, S)`` in [0, 1] with labels in ``0..num_classes``, as one case."""
    from medsaga.train.data import CaseStack

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes + 1, (count, image_size, image_size), generator=generator)
    return [CaseStack("random", images, labels)]


def measure_step(config: TrainingConfig, *, model_type: str, image_size: int, batch_size: int,
                 num_classes: int, device: torch.device, seed: int = 0) -> StepMeasurement:
    """Build ``model_type`` at ``image_size`` with random weights, prepare the method, and profile
    its second training step at ``batch_size`` on ``device``."""
    from medsaga.methods import create_method
    from medsaga.model.load import load_segmenter
    from medsaga.train.augment import AugmentSettings, Augmenter
    from medsaga.train.data import TrainingSlices
    from medsaga.train.loop import LoopSettings, SilentObserver, train

    torch.manual_seed(seed)
    method = create_method(config.method, config.method_options)
    model = load_segmenter(model_type, num_classes=num_classes, image_size=image_size, random_init=True).model
    method.prepare(model)
    data = TrainingSlices(random_slices(PROFILED_STEPS * batch_size, image_size, num_classes, seed), image_size)
    settings = LoopSettings(steps=PROFILED_STEPS, batch_size=batch_size, lr=method.default_lr,
                            weight_decay=method.default_weight_decay, seed=seed, precision=config.precision,
                            activation_checkpointing=config.activation_checkpointing,
                            cache_views=1 if config.cache else 0, tensor_peak_step=PROFILED_STEPS - 1)
    # train() writes its metrics into the run folder: a scratch one.
    with tempfile.TemporaryDirectory(prefix="medsaga-plan-") as run_dir:
        result = train(model, method, data, settings, Path(run_dir), SilentObserver(),
                       Augmenter(AugmentSettings(enabled=False), seed), device=device, save_state=False)
    peak = result.tensor_peak or {}
    if not peak.get("measured"):
        raise RuntimeError("this torch build does not report allocations: the step's memory cannot be measured")
    optimizer = result.memory.optimizer_state
    if device.type == "cuda":  # max_memory_allocated above the model: the optimizer state is in it
        in_step = int(peak["bytes"]) - optimizer
    else:
        in_step = int(peak["in_step_bytes"])
    return StepMeasurement(image_size, batch_size, result.memory.frozen_parameters + result.memory.trainable_parameters,
                           optimizer, in_step)
