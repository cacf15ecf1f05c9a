"""FLOPs of a forward pass, and the machine's matmul peak to hold the achieved rate against.

* :func:`count_flops`: ``torch.utils.flop_counter.FlopCounterMode`` over one forward, with the
  formula it lacks for the CPU flash-attention kernel (what ``scaled_dot_product_attention``
  runs on the CPU, so the fast encoder's attention would otherwise count as zero).
* :class:`MatmulPeak` and :func:`measure_matmul_peaks`: the best GFLOP/s of a large square
  matmul in fp32 and bf16, measured in the calling process, so that "x % of peak" compares two
  figures taken under the same load (on a shared machine a peak taken at another time can be far
  off either way).

A multiply-add counts 2 FLOPs throughout (``FlopCounterMode``'s convention).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Square sizes tried per device type and dtype. Big enough to reach the kernels' steady rate,
# small enough to take seconds, not minutes: on CPUs without native bf16 (AVX2) a bf16 product
# runs ~5x slower than fp32 through oneDNN and ~50x slower through torch.mm, so bf16 stays small.
PEAK_SIZES: dict[tuple[str, str], tuple[int, ...]] = {
    ("cpu", "fp32"): (1024, 2048),
    ("cpu", "bf16"): (512, 1024),
    ("cuda", "fp32"): (4096, 8192),
    ("cuda", "bf16"): (4096, 8192),
}


def _cpu_flash_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int],
                     *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``softmax(q kᵀ + mask) v`` for ``q (B, h, L, E)``, ``k (B, h, S, E)``, ``v (B, h, S, Ev)``:
    ``2·B·h·L·S·(E + Ev)``, as torch's own formula for the other SDPA kernels (softmax and mask
    not counted, as there)."""
    batch, heads, queries, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (dim + value_dim)


# Keyed by the op packet (all overloads), as FlopCounterMode looks formulas up.
FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops}


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Floating-point operations of one forward ``model(*inputs)`` without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        model(*inputs)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(run: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Best wall time of ``repeats`` calls of ``run`` after one untimed warm-up call."""
    device = device or torch.device("cpu")
    run()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


class MatmulPeak:
    """The best square-matmul GFLOP/s seen in one dtype on one device, with how it was reached.

    ``torch.mm`` and ``F.linear`` can take different kernels (on the CPU oneDNN serves bf16
    ``linear``, far faster than bf16 ``mm`` without native bf16), so :meth:`sweep` may try both.
    :meth:`probe` times one product of the best size and route found: called between timed runs
    of a model, it samples the machine's state at the same moments as the model (on a shared
    machine the load can change several-fold within minutes, so a model's rate is best held
    against the probes taken beside it).

    Attributes:
        rate: best GFLOP/s so far (0 before any measurement).
        how: ``"linear 2048³"``: route and size of the best product.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self.rate, self.how = 0.0, ""
        self._best: tuple[int, str] = (1024, "linear")

    def sizes(self) -> tuple[int, ...]:
        """The default sizes for this device and dtype (:data:`PEAK_SIZES`)."""
        name = next(name for name, dtype in DTYPES.items() if dtype == self.dtype)
        return PEAK_SIZES[("cuda" if self.device.type == "cuda" else "cpu", name)]

    def sweep(self, sizes: Sequence[int] | None = None, routes: Sequence[str] = ("linear",),
              repeats: int = 3) -> float:
        """Time every size × route (``"linear"``, ``"mm"``), best of ``repeats``; returns :attr:`rate`."""
        for size in sizes or self.sizes():
            for route in routes:
                self._time(size, route, repeats)
        return self.rate

    def probe(self) -> float:
        """One more (single) timing of the best size and route; returns its GFLOP/s (and keeps
        :attr:`rate` the best seen)."""
        return self._time(*self._best, repeats=1)

    def _time(self, size: int, route: str, repeats: int) -> float:
        generator = torch.Generator(self.device).manual_seed(0)
        a, b = (torch.randn(size, size, dtype=self.dtype, device=self.device, generator=generator)
                for _ in range(2))
        run = (lambda: torch.mm(a, b)) if route == "mm" else (lambda: F.linear(a, b))
        with torch.autocast(self.device.type, enabled=False):  # an fp32 peak must stay fp32
            rate = 2 * size ** 3 / best_seconds(run, repeats, self.device) / 1e9
        if rate > self.rate:
            self.rate, self.how, self._best = rate, f"{route} {size}³", (size, route)
        return rate


def measure_matmul_peaks(device: torch.device | str = "cpu", repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of the best large square ``F.linear`` (a model's Linear layers' kernel) per dtype:
    ``{"fp32": …, "bf16": …}``, best of ``repeats`` at each of the default sizes."""
    return {name: MatmulPeak(dtype, device).sweep(repeats=repeats) for name, dtype in DTYPES.items()}


def fractions_of_peak(gflops_per_second: float | None, peaks: dict[str, float]) -> dict[str, float | None]:
    """``gflops_per_second`` as a share of each peak (``0.62`` = 62 %); ``None`` where either is missing."""
    return {name: gflops_per_second / peak if gflops_per_second is not None and peak else None
            for name, peak in peaks.items()}
