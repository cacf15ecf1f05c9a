"""Which cache entries a run encodes, in which encoder batches, and when (:func:`plan_cache`), and
which view of each slice an epoch trains on (:func:`view_schedule`): all of it from the seed and
the batch settings, before the first step. The cache itself is :mod:`medsaga.train.embedding_cache`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Pair = tuple[int, int]
"""A cache entry as the steps name it: ``(slice position, view)``; its entry number is ``slice * views + view``."""

StepReads = Callable[[int], list[list[Pair]]]
"""``step`` (0-based) → the pairs each of its micro-batches reads (the global batch, in order)."""

ENCODE_MODES = ("read", "lazy", "all")
"""What :func:`plan_cache` encodes: ``read``: before the first step, what the run's steps read;
``lazy``: each step, what it reads and is not cached yet (a ``--time-budget`` run, whose total
is not known before its steps); ``all``: every entry before the first step (the cache before
issue 29, kept for reference)."""

BLOCKS = "blocks"
FIRST_READ = "first-read"


class HeldEntries(Protocol):
    """What a plan asks of the cache (:class:`~medsaga.train.embedding_cache.EmbeddingCache`)."""

    @property
    def encoded(self) -> int: ...

    def holds(self, pair: Pair) -> bool: ...


def block_groups(count: int, views: int, batch_size: int) -> list[list[Pair]]:
    """Every entry, grouped as the whole cache has always been built: ``batch_size`` consecutive
    slices in one view, the views of a block one after the other."""
    return [[(position, view) for position in range(first, min(first + batch_size, count))]
            for first in range(0, count, batch_size) for view in range(views)]


class _FirstReads:
    """The pairs in the order the steps from step 0 first read them, grouped by micro-batch: the
    group of a pair is the new pairs of the micro-batch that read it first. It depends on the seed
    and the batch only, not on the run's length or where a resumed run starts, so every run of
    these settings encodes a pair in the same batch."""

    def __init__(self, step_reads: StepReads, entries: int) -> None:
        self.step_reads = step_reads
        self.entries = entries
        self.walked = 0
        self.groups: list[list[Pair]] = []
        self.group_of: dict[Pair, int] = {}

    def walk_to(self, step: int) -> None:
        """Know the groups of every pair steps ``0 .. step - 1`` read."""
        while self.walked < step and len(self.group_of) < self.entries:  # once all are seen, none is new
            for micro in self.step_reads(self.walked):
                new = list(dict.fromkeys(pair for pair in micro if pair not in self.group_of))
                if new:
                    for pair in new:
                        self.group_of[pair] = len(self.groups)
                    self.groups.append(new)
            self.walked += 1
        self.walked = max(self.walked, step)


def distinct_reads(step_reads: StepReads, first: int, last: int, entries: int) -> set[Pair]:
    """The distinct pairs steps ``first .. last - 1`` read (the walk stops once all ``entries`` are seen)."""
    seen: set[Pair] = set()
    for step in range(first, last):
        if len(seen) >= entries:
            break
        for micro in step_reads(step):
            seen.update(micro)
    return seen


@dataclass
class CachePlan:
    """What a run encodes, and in which batches (:func:`plan_cache`).

    Attributes:
        mode: ``read``, ``lazy`` or ``all`` (:data:`ENCODE_MODES`).
        order: :data:`BLOCKS` or :data:`FIRST_READ`.
        groups: encoded before the first step (empty for ``lazy``).
        read: distinct pairs the steps read (``lazy``: ``None`` until the run's length is known).
    """

    mode: str
    order: str
    groups: list[list[Pair]]
    read: int | None
    step_reads: StepReads
    entries: int
    _first_reads: _FirstReads | None = None

    def step_groups(self, step: int, cache: HeldEntries) -> list[list[Pair]]:
        """``lazy``: the groups holding the pairs step ``step`` reads that the cache does not hold yet."""
        assert self._first_reads is not None
        self._first_reads.walk_to(step + 1)
        wanted = dict.fromkeys(self._first_reads.group_of[pair] for micro in self.step_reads(step) for pair in micro
                               if not cache.holds(pair))
        return [self._first_reads.groups[index] for index in wanted]

    def future_encodes(self, next_step: int, cache: HeldEntries) -> Iterator[int]:
        """``lazy``: the entries steps ``next_step``, ``next_step + 1``, ... will encode, one count a
        step; ends once every entry would be held (what the time budget projects the run's encoding from)."""
        assert self._first_reads is not None
        held = cache.encoded
        encoded: set[int] = set()
        step = next_step
        while held < self.entries:
            self._first_reads.walk_to(step + 1)
            count = 0
            for micro in self.step_reads(step):
                for pair in micro:
                    group = self._first_reads.group_of[pair]
                    if group not in encoded and not cache.holds(pair):
                        encoded.add(group)
                        count += len(self._first_reads.groups[group])
            held += count
            yield count
            step += 1

    def summary(self, steps: int, slices_per_step: int, encoded: int) -> str:
        """What the cache encoded and why, one phrase: ``8 of 640 slice-views encoded (what 2 steps
        x 4 slices read)``."""
        read = self.read if self.read is not None else encoded
        run = f"{steps} step{'s' * (steps != 1)} x {slices_per_step} slices"
        if self.mode == "all":
            what = "every one, built before the first step"
        elif read == self.entries:
            what = f"{run} read every one"
        else:
            what = f"what {run} read" + (f": {read} distinct" if read != steps * slices_per_step else "")
        if self.mode != "all" and encoded > read:  # a resumed run: whole encoder batches, as the first run made them
            what += f"; {encoded - read} more share an encoder batch with them"
        if self.mode == "lazy":
            what += ", each encoded at the step that first read it"
        return f"{encoded} of {self.entries} slice-views encoded ({what})"


def plan_cache(step_reads: StepReads, *, count: int, views: int, batch_size: int, first_step: int,
               total_steps: int | None, mode: str = "read") -> CachePlan:
    """Which entries a run encodes, grouped into which encoder batches.

    ``read`` (``total_steps`` known): before the first step, the pairs steps ``first_step ..
    total_steps - 1`` read. When the whole run (from step 0) reads every pair, they are grouped as
    the whole cache always was (:func:`block_groups`: the run trains exactly as with the whole cache
    built up front); otherwise by first read (:class:`_FirstReads`: a fresh run encodes exactly the
    pairs it reads, no more). A resumed run encodes the groups that hold a pair its remaining steps
    read: the same batches as the uninterrupted run, so it continues exactly as that run would.

    ``lazy`` (the total is not known: a ``--time-budget`` run): nothing before the first step; each
    step encodes the first-read groups of its pairs not yet held (:meth:`CachePlan.step_groups`).

    ``all``: every entry, in blocks, before the first step.
    """
    if mode not in ENCODE_MODES:
        raise ValueError(f"cache encode mode must be one of {', '.join(ENCODE_MODES)}, got {mode!r}")
    entries = count * views
    blocks = block_groups(count, views, batch_size)
    if mode == "all":
        return CachePlan(mode, BLOCKS, blocks, entries, step_reads, entries)
    if mode == "lazy":
        return CachePlan(mode, FIRST_READ, [], None, step_reads, entries, _FirstReads(step_reads, entries))
    if total_steps is None:
        raise ValueError("cache encode mode 'read' needs the run's total steps (use 'lazy')")
    needed = distinct_reads(step_reads, first_step, total_steps, entries)
    if len(distinct_reads(step_reads, 0, total_steps, entries)) == entries:
        return CachePlan(mode, BLOCKS, [group for group in blocks if any(pair in needed for pair in group)],
                         len(needed), step_reads, entries)
    first_reads = _FirstReads(step_reads, entries)
    first_reads.walk_to(total_steps)
    wanted = sorted({first_reads.group_of[pair] for pair in needed})
    return CachePlan(mode, FIRST_READ, [first_reads.groups[index] for index in wanted], len(needed), step_reads,
                     entries, first_reads)


_SCHEDULES: dict[tuple[int, int, int, int], np.ndarray] = {}


def view_schedule(count: int, views: int, seed: int, epoch: int) -> np.ndarray:
    """The view each slice position is trained on during ``epoch``, ``(count,)`` int.

    Epochs come in cycles of ``views``: within a cycle every slice is seen in every view once, in
    an order drawn per slice from ``(seed, cycle)``.
    """
    cycle, turn = divmod(epoch, views)
    key = (count, views, seed, cycle)
    if key not in _SCHEDULES:
        if len(_SCHEDULES) > 8:
            _SCHEDULES.clear()
        rng = np.random.default_rng([seed, cycle, 0xCAC4E])
        _SCHEDULES[key] = rng.permuted(np.tile(np.arange(views), (count, 1)), axis=1)
    return _SCHEDULES[key][:, turn]
