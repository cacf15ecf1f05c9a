"""What ``finetune`` asks of the memory planner its caller hands it.

``finetune`` predicts its own run's GPU peak before any long work, and refuses a ``--gpu-memory``
the prediction does not fit. The prediction is :mod:`medsaga.plan`'s (profiled steps, a fitted
peak model), and :mod:`medsaga.plan` runs training steps to profile them: it imports
:mod:`medsaga.train`, so :mod:`medsaga.train` must not import it back. The caller (``medsaga
finetune``: :mod:`cli.finetune_cmd`) passes :func:`medsaga.plan.own_run.plan_own_run`, a
:data:`MemoryPlanner`; this module holds only the question and the answer's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from medsaga.train.memory_profile import MemoryProfile


@dataclass(frozen=True)
class MemoryPlanRequest:
    """The run about to start, as the planner needs it.

    Attributes:
        method: the tuning method's name.
        profile: the memory profile the options resolved to.
        model_type: the built model's type (a registry name).
        num_classes: foreground classes.
        image_size: the input size in pixels.
        batch_size: the global batch (each of ``world_size`` processes holds its share).
        world_size: processes sharing each batch.
        device: where the run trains.
        precision: ``fp32`` or ``bf16``.
        cache_allowed: ``--cache-embeddings`` is not ``off``.
        gpu_memory: ``--gpu-memory`` in bytes, or ``None``.
        gpu_memory_text: ``--gpu-memory`` as the user wrote it (for the messages).
    """

    method: str
    profile: MemoryProfile
    model_type: str
    num_classes: int
    image_size: int
    batch_size: int
    world_size: int
    device: torch.device
    precision: str
    cache_allowed: bool
    gpu_memory: int | None
    gpu_memory_text: str | None


@dataclass(frozen=True)
class MemoryPlan:
    """A planner's answer: ``record`` goes to report.json (``memory_plan``), ``summary`` is printed
    after ``memory plan: ``."""

    record: dict[str, Any]
    summary: str


# Raises InputError when --gpu-memory is given and the predicted peak does not fit.
MemoryPlanner = Callable[[MemoryPlanRequest], MemoryPlan]
