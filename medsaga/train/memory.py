"""Where training memory goes, measured the same way on any device.

The breakdown counts bytes of tensors, so it is the same on a laptop CPU and on a GPU:

- frozen parameters, *with the model's buffers* (persistent or not: SAM-PARSER's bases ``U`` and
  ``V``, SAM's pixel mean and std, the prompt encoder's Gaussian matrix), and trainable parameters;
- gradients: the most gradient bytes alive at once (after backward; inside the gradient hooks for
  layer-wise GaLore, which frees each gradient as soon as it is used);
- optimizer state (Adam moments, GaLore projections);
- saved activations: the most bytes autograd keeps for backward during one forward pass, counted
  with ``torch.autograd.graph.saved_tensors_hooks``. Tensors that live in the model's own storage
  (parameters, buffers, or views of either) are already counted above and are left out; views of
  one storage count once.

The categories peak at different moments (saved activations at the end of a forward pass,
gradients after backward), so their sum, ``sum_of_peaks``, is an upper bound on the bytes of these
tensors alive at any one time, not a measured total. It is not a bound on the process's memory
either: temporaries autograd does not save, the allocator's own overhead and the data are not in it.

The peak memory of the process is device-specific: CUDA's ``max_memory_allocated``, or on a CPU the
peak resident set size above the level measured once the model was loaded (see :class:`PeakMemory`).
A CPU's RSS also holds what the C allocator keeps after ``free`` (fragmentation), so on a CPU
:class:`StepTensorPeak` adds the figure CUDA's counter would give: the most tensor bytes alive at
once during one training step, from the profiler's allocation events.
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn

from medsaga.train.allocator import malloc_settings, release_free_memory


@dataclass
class MemoryBreakdown:
    """Bytes, per category (see the module docstring); ``frozen_parameters`` includes the buffers."""

    frozen_parameters: int = 0
    trainable_parameters: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    saved_activations: int = 0

    @property
    def sum_of_peaks(self) -> int:
        """The categories added up: each at its own peak, so an upper bound of what is alive at once."""
        return (self.frozen_parameters + self.trainable_parameters + self.gradients + self.optimizer_state
                + self.saved_activations)

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "sum_of_peaks": self.sum_of_peaks}


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _storage_pointer(tensor: torch.Tensor) -> int:
    """Address of the storage under ``tensor`` (shared by all its views); 0 where it has none."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return 0


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """``(frozen, trainable)`` bytes of the model's own tensors.

    ``frozen`` holds the parameters that do not train *and every buffer* (no buffer is trained by
    an optimizer); a buffer that shares a parameter's storage is not counted twice.
    """
    frozen = trainable = 0
    parameter_storages = set()
    for parameter in model.parameters():
        parameter_storages.add(_storage_pointer(parameter))
        if parameter.requires_grad:
            trainable += _size(parameter)
        else:
            frozen += _size(parameter)
    for buffer in model.buffers():
        pointer = _storage_pointer(buffer)
        if pointer == 0 or pointer not in parameter_storages:
            frozen += _size(buffer)
    return frozen, trainable


def model_storages(model: nn.Module) -> set[int]:
    """Storage addresses of every parameter and buffer of ``model`` (a view shares its base's)."""
    return {pointer for tensor in itertools.chain(model.parameters(), model.buffers())
            if (pointer := _storage_pointer(tensor)) != 0}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor held in the optimizer state."""
    return sum(_size(value) for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value))


class SavedActivationMeter:
    """Counts the bytes autograd saves for backward inside :meth:`measure` blocks; keeps the peak.

    A saved tensor is counted by its whole storage, once per block however many views of it are
    saved; storages of the model's parameters and buffers (looked up anew at each block, so a
    model moved or re-wrapped after construction is still recognised) are not counted.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self.peak = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        excluded = model_storages(self._model)
        seen: set[int] = set()
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # no plain storage: count the tensor itself
                total += _size(tensor)
                return tensor
            pointer = storage.data_ptr()
            if pointer not in excluded and pointer not in seen:
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
    an earlier hook on it has already consumed and freed it. Gradients seen alive are kept in a
    running total (constant work per hook, not a pass over every parameter: that made a cached
    decoder-only step ~10 % slower); call :meth:`gradients_freed` whenever gradients are dropped
    outside backward (``optimizer.zero_grad``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.peak = 0
        self._parameters = [p for p in model.parameters() if p.requires_grad]
        self._alive: dict[int, int] = {}  # id(parameter) -> gradient bytes, seen alive at its hook
        self._alive_bytes = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self._parameters]

    def _hook(self, parameter: torch.Tensor) -> None:
        own = _size(parameter)
        key = id(parameter)
        if parameter.grad is not None and key not in self._alive:
            self._alive[key] = own
            self._alive_bytes += own
        others = self._alive_bytes - self._alive.get(key, 0)
        self.peak = max(self.peak, own + others)

    def gradients_freed(self) -> None:
        """Every gradient was just set to None (the start of a step)."""
        self._alive.clear()
        self._alive_bytes = 0

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


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (``VmHWM``) back to its current RSS; whether that worked.

    Linux >= 4.0: writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark and nothing else.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory above a baseline taken at construction: CUDA allocator or CPU RSS.

    Construct it when everything that is not training is in memory (model, optimizer, data) and
    nothing of training is. On a CPU the baseline is made honest in two ways first: free memory
    that glibc still holds from loading is handed back (``malloc_trim``; otherwise training would
    reuse it without its RSS growing, and the figure would read low), and the peak RSS is reset to
    the current RSS, so that a higher peak reached earlier (reading a checkpoint, the volumes) is
    not reported as training's. Where the reset is impossible (not Linux), the peak is measured
    since the process started and ``describe()`` says so (``peak_reset_at_baseline``: false).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_reset = True
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device)
        else:
            release_free_memory()
            self.baseline = current_rss_bytes()
            self.peak_reset = reset_peak_rss()

    def peak_above_baseline(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.baseline)
        # Should the reset have failed, a peak reached before the baseline shows through; max(0, ...)
        # at least keeps a figure below the baseline from going negative.
        return max(0, peak_rss_bytes() - self.baseline)

    def describe(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {"kind": "cuda max_memory_allocated", "baseline_bytes": self.baseline,
                    "peak_above_baseline_bytes": self.peak_above_baseline()}
        # The allocator's settings change a CPU's peak RSS severalfold (medsaga.train.allocator).
        return {"kind": "peak RSS", "baseline_bytes": self.baseline,
                "peak_above_baseline_bytes": self.peak_above_baseline(),
                "peak_reset_at_baseline": self.peak_reset, "malloc": malloc_settings()}


class StepTensorPeak:
    """The most tensor bytes alive at once during one CPU training step, above the model: ``with meter: step()``.

    What CUDA's ``max_memory_allocated`` minus the model reads (on CUDA, :class:`PeakMemory` is that
    figure already), measured on a CPU whose RSS also holds the C allocator's free memory:

    * ``held_bytes``: tensors the run holds between steps (given by the caller: optimizer state,
      the embedding cache);
    * ``in_step_bytes``: the peak of the bytes allocated inside the step and not yet freed
      (activations, gradients, temporaries, the optimizer's work), from the profiler's allocation
      events: their ``total_allocated`` counts only what was allocated while profiling, so tensors
      from before the step never lower it (their release is not credited: an upper bound).

    ``bytes`` is their sum. The profiled step runs ~5-10 % slower. ``measured`` stays ``False``
    where the profiler's allocation events are unavailable.
    """

    def __init__(self, held_bytes: int) -> None:
        self.held_bytes = held_bytes
        self.in_step_bytes = 0
        self.measured = False
        self._profiler: Any = None

    def __enter__(self) -> StepTensorPeak:
        from torch.profiler import ProfilerActivity, profile

        self._quiet = _NativeStderrSilenced()
        self._quiet.__enter__()
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._profiler.__exit__(*exc_info)
        finally:
            self._quiet.__exit__()
        if exc_info[0] is None:
            peak = _allocation_peak(self._profiler)
            self.measured = peak is not None
            self.in_step_bytes = peak or 0
        self._profiler = None

    @property
    def bytes(self) -> int:
        return self.held_bytes + self.in_step_bytes

    def describe(self, step: int) -> dict[str, Any]:
        """For report.json: ``step`` is the 1-based step that was profiled."""
        return {"kind": "profiler allocations", "step": step, "measured": self.measured,
                "bytes": self.bytes if self.measured else None, "held_bytes": self.held_bytes,
                "in_step_bytes": self.in_step_bytes if self.measured else None}


class _NativeStderrSilenced:
    """File descriptor 2 sent to ``/dev/null`` meanwhile (restored on exit, whatever happens inside).

    Why: the profiler's native code logs to it directly: kineto's stage lines and c10's warning
    about blocks allocated before profiling started (every step frees some), noise in the middle
    of a user's progress bar. Python exceptions are unaffected; a progress refresh that falls in
    the profiled step is lost.
    """

    def __enter__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        sink = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink, 2)
        os.close(sink)

    def __exit__(self, *exc_info: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _allocation_peak(profiler: Any) -> int | None:
    """The most bytes allocated during a profiler's session and alive at once (None: unavailable).

    Replays its CPU allocation events in time order: an allocation adds its size, a free subtracts
    it only when that block was allocated in this session (a tensor from before it, freed now,
    was never counted). Not the events' ``total_allocated``: that counter outlives the session
    and keeps blocks a past session allocated but did not see freed. The events live in the
    profiler's event tree (``torch._C._profiler``, not public API): if a torch release moves them,
    the figure is reported as not measured instead of as zero.
    """
    try:
        from torch._C._profiler import _EventType

        stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    except (AttributeError, ImportError, RuntimeError):
        return None
    events: list[tuple[int, int, int]] = []  # (time, pointer, signed size)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            fields = node.extra_fields
            events.append((node.start_time_ns, int(fields.ptr), int(fields.alloc_size)))
        stack.extend(node.children)
    if not events:
        return None
    events.sort(key=lambda event: event[0])  # stable: a free and a reuse at one time keep their order
    alive: dict[int, int] = {}
    live = peak = 0
    for _, pointer, size in events:
        if size > 0:
            alive[pointer] = size
            live += size
            peak = max(peak, live)
        elif pointer in alive:
            live -= alive.pop(pointer)
    return peak
