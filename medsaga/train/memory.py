"""Where training memory goes, measured the same way on any device.

The breakdown counts bytes of tensors, so it is the same on a laptop CPU and on a GPU:

- frozen and trainable parameters;
- gradients: the most gradient bytes alive at once (after backward; inside the gradient hooks for
  layer-wise GaLore, which frees each gradient as soon as it is used);
- optimizer state (Adam moments, GaLore projections);
- saved activations: the tensors autograd keeps for backward during one forward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks``; parameters saved for backward are not activations
  and are left out; views of one storage count once.

The peak memory of the process is device-specific: CUDA's ``max_memory_allocated``, or on a CPU the
peak resident set size above the level measured once the model was loaded.
"""

from __future__ import annotations

import resource
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn


@dataclass
class MemoryBreakdown:
    """Bytes, per category (see the module docstring)."""

    frozen_parameters: int = 0
    trainable_parameters: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    saved_activations: int = 0

    @property
    def total(self) -> int:
        return (self.frozen_parameters + self.trainable_parameters + self.gradients + self.optimizer_state
                + self.saved_activations)

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """``(frozen, trainable)`` bytes of the parameters."""
    frozen = trainable = 0
    for parameter in model.parameters():
        size = parameter.numel() * parameter.element_size()
        if parameter.requires_grad:
            trainable += size
        else:
            frozen += size
    return frozen, trainable


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in the optimizer state."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value))


class SavedActivationMeter:
    """Counts the bytes autograd saves for backward inside :meth:`measure` blocks; keeps the peak."""

    def __init__(self, model: nn.Module) -> None:
        self._parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.peak = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        seen: set[int] = set()
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            storage = tensor.untyped_storage()
            pointer = storage.data_ptr()
            if pointer not in self._parameter_storages and pointer not in seen:
                seen.add(pointer)
                total += storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        self.peak = max(self.peak, total)


class GradientMeter:
    """The most gradient bytes alive at once, watched from each parameter's gradient hook.

    Works whether gradients pile up until the optimizer step (normal mode) or are freed one by one
    during backward (layer-wise mode): at each hook the parameter's own gradient is counted even if
    an earlier hook on it has already consumed and freed it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.peak = 0
        self._parameters = [p for p in model.parameters() if p.requires_grad]
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self._parameters]

    def _hook(self, parameter: torch.Tensor) -> None:
        own = parameter.numel() * parameter.element_size()
        others = sum(p.grad.numel() * p.grad.element_size() for p in self._parameters
                     if p is not parameter and p.grad is not None)
        self.peak = max(self.peak, own + others)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    ``VmHWM`` from ``/proc/self/status`` rather than ``getrusage``'s ``ru_maxrss``: a child process
    inherits its parent's ``ru_maxrss``, which would make a benchmark worker report the peak of the
    process that started it.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory above a baseline taken at construction: CUDA allocator or CPU RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device)
        else:
            self.baseline = current_rss_bytes()

    def peak_above_baseline(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.baseline)
        # ru_maxrss never decreases: a peak reached before the baseline (say, while reading a
        # checkpoint) would hide a lower training peak; max(0, ...) keeps the figure honest.
        return max(0, peak_rss_bytes() - self.baseline)

    def describe(self) -> dict[str, Any]:
        kind = "cuda max_memory_allocated" if self.device.type == "cuda" else "peak RSS"
        return {"kind": kind, "baseline_bytes": self.baseline, "peak_above_baseline_bytes": self.peak_above_baseline()}
