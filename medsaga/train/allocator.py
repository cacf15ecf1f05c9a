"""Keep glibc's malloc from hoarding freed tensor memory, so a CPU's peak RSS is the tensors' own.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves a request of at least
``M_MMAP_THRESHOLD`` bytes (128 KiB at start) with a private ``mmap`` that ``free`` unmaps at
once. That threshold is *dynamic*: freeing an mmapped chunk raises it to the chunk's size (up to
32 MiB), and the heap's trim threshold to twice that. After the first large tensor is freed,
every later tensor below that size comes from a heap instead, which gives memory back only from
its top: freed activations, batches and gradients stay resident as scattered free chunks, and the
heap grows step after step. Measured with ``mallinfo2`` on the ``tiny`` model at 256 px (60 GaLore
steps of the CLI): bytes in use stayed at 190-300 MiB while the heap's free chunks grew from 20
to 310 MiB; an 825-step run ended 5.2 GB above its baseline for ~140 MiB of counted tensors.

:func:`tune_malloc` fixes the thresholds with ``mallopt``, which also switches the dynamic
adjustment off: ``M_MMAP_THRESHOLD`` = 2 MiB, so every tensor of 2 MiB or more is mapped and
unmapped on its own, and ``M_TRIM_THRESHOLD`` = 128 KiB (glibc's start value), so free space at
a heap's top goes back too. The price is fresh, zeroed pages for each large tensor. Measured per
training step (1 thread, batch 4 at 256 px, CPU seconds; ``tiny`` and ``vit_b``):

===============  ===========  ==========  ==============================================
mmap threshold   tiny step    vit_b step  tiny's heap over 60 CLI steps
===============  ===========  ==========  ==============================================
dynamic (glibc)  0.25-0.27 s  12.5-13 s   free chunks grow from 20 to 310 MiB, still rising
128 KiB          0.44-0.49 s  -           flat
1 MiB            0.31-0.38 s  16.4 s      flat (free chunks ~35 MiB)
2 MiB (chosen)   0.28-0.30 s  16.1 s      +36 MiB in the first minute, then flat
4 MiB            0.28-0.32 s  -           grows as with the dynamic threshold
===============  ===========  ==========  ==============================================

2 MiB is the largest value tried that stops the growth of the tiny model's runs (its batches and
label maps are 2-3 MiB), where it costs ~10 % per step; ``vit_b``'s activations are all above
it, so its steps cost ~24 % more CPU time for a peak RSS 40 % lower (1.48 instead of 2.44 GiB
after 7 steps). 150 CLI steps of the ``tiny`` model (MALF, 2 shots, 256 px): peak RSS above the
baseline 826 -> 355 MiB with GaLore, 1,250 -> 340 MiB with full fine-tuning. On a GPU the
training tensors are not malloc's and nothing changes.

It acts only on glibc (Linux), in the calling process (call it early: memory already fragmented
is not given back), and leaves alone a setting the user chose through glibc's own environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``).

Whether a run tunes is the image encoder's choice (:attr:`Backbone.tune_cpu_malloc
<medsaga.model.backbone.Backbone.tune_cpu_malloc>`, see :func:`malloc_wanted`): yes for SAM's
ViT, no for LiteMedSAM's TinyViT, whose full-resolution stage 0 makes tensors of 2-64 MiB by the
hundred per step: with the fixed threshold every one of them is fresh zeroed pages, which
doubled its training step on our CPU (GaLore at 256 px, batch 2: 0.18 against 0.36-0.50 slices/s)
for a peak RSS 21 % lower (3.8 against 4.8 GiB). ``MEDSAGA_TUNE_MALLOC=0`` switches it off
everywhere, ``MEDSAGA_TUNE_MALLOC=1`` on everywhere.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024

# mallopt parameter numbers (glibc's malloc.h), the value each is fixed at, glibc's own variable.
_SETTINGS = {
    "M_MMAP_THRESHOLD": (-3, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
    "M_TRIM_THRESHOLD": (-1, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
}
DISABLE_VARIABLE = "MEDSAGA_TUNE_MALLOC"

_applied: dict[str, int] = {}


def _glibc() -> Any | None:
    """The C library of this process if it is glibc (it has ``gnu_get_libc_version``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc() -> dict[str, int]:
    """Fix glibc's mmap and trim thresholds (module docstring) in this process; idempotent.

    Returns:
        The settings now in force that this call or an earlier one made, ``{name: bytes}``; empty
        (false) where nothing was done: not glibc, switched off with ``MEDSAGA_TUNE_MALLOC=0``, or
        every setting already chosen by the user's environment.
    """
    if os.environ.get(DISABLE_VARIABLE, "").strip() == "0":
        return {}
    libc = _glibc()
    if libc is None:
        return {}
    for name, (number, value, variable) in _SETTINGS.items():
        if name in _applied or _chosen_by_user(variable):
            continue
        if libc.mallopt(number, value) == 1:
            _applied[name] = value
    return dict(_applied)


def malloc_wanted(encoder_default: bool) -> bool:
    """Whether to call :func:`tune_malloc`: ``MEDSAGA_TUNE_MALLOC`` (``1``/``0``) if set, else the
    image encoder's default."""
    setting = os.environ.get(DISABLE_VARIABLE, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return encoder_default


def _chosen_by_user(variable: str) -> bool:
    tunable = "glibc.malloc." + variable.removeprefix("MALLOC_").rstrip("_").lower()  # glibc.malloc.mmap_threshold
    return variable in os.environ or tunable in os.environ.get("GLIBC_TUNABLES", "")


def release_free_memory() -> bool:
    """Give the free memory inside glibc's heaps back to the system (``malloc_trim(0)``).

    Returns whether it ran (glibc only). Used before a peak-RSS baseline, so that memory freed
    while loading (still resident) does not sit in the baseline and hide training's own growth.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def malloc_settings() -> dict[str, int]:
    """What :func:`tune_malloc` has set in this process so far (empty if it has not run or did nothing)."""
    return dict(_applied)
