"""The training loop's memory meters, in one object (:class:`MemoryMeters`).

Three meters watch a run (:mod:`medsaga.train.memory`): the process's peak above a baseline
(:class:`~medsaga.train.memory.PeakMemory`: started before the embedding cache is built, which
counts toward it), the bytes autograd saves for backward and the gradients alive at once (hooks on
the model, attached once the optimizer exists), and, on a CPU, the tensor bytes of one profiled
step (:class:`~medsaga.train.memory.StepTensorPeak`; on CUDA the peak is tensor bytes already).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsaga import distributed
from medsaga.train.memory import (GradientMeter, MemoryBreakdown, PeakMemory, SavedActivationMeter, StepTensorPeak,
                                  optimizer_state_bytes, parameter_bytes)


class MemoryMeters:
    """Construct when everything that is not training is in memory (model, optimizer, data): the
    peak's baseline is taken then. :meth:`attach` starts the model's hooks; :meth:`finish` reads
    every meter once training is done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = PeakMemory(device)
        self.activations: SavedActivationMeter | None = None
        self.gradients: GradientMeter | None = None
        self.profiled_step: int | None = None
        self.tensor_peak: dict[str, Any] | None = None

    def attach(self, model: nn.Module, profiled_step: int) -> None:
        """Hook the saved-activation and gradient meters on ``model``; on a CPU, profile the tensor
        bytes of the 0-based step ``profiled_step``."""
        self.activations = SavedActivationMeter(model)
        self.gradients = GradientMeter(model)
        self.profiled_step = profiled_step

    def step_begins(self) -> None:
        """The step's gradients were just set to ``None``."""
        assert self.gradients is not None
        self.gradients.gradients_freed()

    def measure_saved(self) -> contextlib.AbstractContextManager[None]:
        """Around each forward pass: the bytes autograd saves for backward."""
        assert self.activations is not None
        return self.activations.measure()

    @contextlib.contextmanager
    def around_step(self, step: int, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Around the whole 0-based ``step``: on a CPU, the profiled step's tensor peak."""
        if step != self.profiled_step or self.device.type == "cuda":  # on CUDA the peak is tensor bytes already
            yield
            return
        # The embedding cache is not counted: it lives in host memory on every device (the
        # cached rows a step uses are, as the copies it makes of them), so on a GPU it would
        # not be in max_memory_allocated either; report.json gives its bytes apart.
        meter = StepTensorPeak(optimizer_state_bytes(optimizer))
        with meter:
            yield
        self.tensor_peak = meter.describe(step + 1)

    def finish(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> MeterReadings:
        """Remove the hooks and read every meter (every rank takes part under torchrun)."""
        assert self.activations is not None and self.gradients is not None
        self.gradients.remove()
        frozen_bytes, trainable_bytes = parameter_bytes(model)
        memory = MemoryBreakdown(frozen_bytes, trainable_bytes, self.gradients.peak, optimizer_state_bytes(optimizer),
                                 self.activations.peak)
        peak_memory = self.peak.describe()
        tensor_peak = self.tensor_peak
        if self.device.type == "cuda":  # max_memory_allocated counts tensor bytes already
            tensor_peak = {"kind": "cuda max_memory_allocated", "bytes": peak_memory["peak_above_baseline_bytes"],
                           "measured": True}
        rank = distributed.current()
        per_rank = None
        if rank.distributed:
            per_rank = {**rank.to_json(), "ranks": distributed.gather_objects(
                {"rank": rank.rank, "peak_memory": peak_memory, "tensor_peak": tensor_peak})}
        return MeterReadings(memory, peak_memory, tensor_peak, per_rank)


@dataclass(frozen=True)
class MeterReadings:
    """What :meth:`MemoryMeters.finish` read: the breakdown, the peak, the tensor peak, and under
    torchrun each rank's."""

    memory: MemoryBreakdown
    peak_memory: dict[str, Any]
    tensor_peak: dict[str, Any] | None
    per_rank: dict[str, Any] | None
