"""What each step reads, from (seed, step) alone: the batch order, the cached view, the step's seed.

A fresh permutation of all slices every epoch; the epoch also picks each slice's cached view
(:func:`~medsaga.train.cache_plan.view_schedule`). Nothing here holds state a resumed run
could lose: step k of a resumed run reads what step k of the uninterrupted run read.
"""

from __future__ import annotations

import numpy as np

from medsaga.train.cache_plan import Pair, view_schedule

_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def batch_samples(count: int, seed: int, step: int, micro: int, batch_size: int,
                  grad_accum: int) -> list[tuple[int, int]]:
    """``(epoch, slice position)`` of each sample of one micro-batch: a fresh permutation of all
    slices every epoch (the epoch also picks the cached view, :func:`view_schedule`)."""
    first = (step * grad_accum + micro) * batch_size
    samples = []
    for sample in range(first, first + batch_size):
        epoch, offset = divmod(sample, count)
        samples.append((epoch, int(epoch_order(count, seed, epoch)[offset])))
    return samples


def cached_view(count: int, views: int, seed: int, epoch: int, position: int) -> int:
    """The cached view slice ``position`` is trained on in ``epoch``."""
    return int(view_schedule(count, views, seed, epoch)[position])


def step_pairs(count: int, views: int, settings, step: int) -> list[list[Pair]]:  # noqa: ANN001 (LoopSettings)
    """The (slice, view) pairs each micro-batch of ``step`` reads from the cache (the global batch);
    ``settings``: the run's :class:`~medsaga.train.loop.LoopSettings`."""
    return [[(position, cached_view(count, views, settings.seed, epoch, position))
             for epoch, position in batch_samples(count, settings.seed, step, micro, settings.batch_size,
                                                  settings.grad_accum)]
            for micro in range(settings.grad_accum)]


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the ``count`` slices in ``epoch`` (the last few epochs' orders kept)."""
    key = (count, seed, epoch)
    if key not in _ORDER_CACHE:
        if len(_ORDER_CACHE) > 8:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(count)
    return _ORDER_CACHE[key]


def step_seed(seed: int, step: int) -> int:
    """The torch seed of ``step`` (noise inside a method: Conv-LoRA's gate)."""
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**63)
