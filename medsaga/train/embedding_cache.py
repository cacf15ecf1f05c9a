"""Cached encoder embeddings: the frozen part of the encoder runs once per training image, not per step.

For a method whose image encoder is frozen (``decoder``), or holds a frozen part that reads only the
image (``adapter``: the ViT beside the trained CNN), that part's output is a fixed function of the
training image. Computing it at every step is what makes those methods slow: the ViT costs far more
than the mask decoder or a small CNN. The MedSAM maintainers' advice for small GPUs is to
precompute the image embeddings; this module makes that automatic.

Augmentation would change the image, hence the embedding, at every step. So with the cache each
training slice gets ``V`` **fixed views** instead of a fresh augmentation per step:

* view 0 is the slice as it is (letterboxed); view ``v >= 1`` is the slice augmented with the
  transforms' random state seeded from ``(seed, slice, v)`` (:func:`~medsaga.train.augment.view_seed`);
  with augmentation off there is one view;
* the run computes the views **its steps read** once (:func:`plan_cache`: the batch order and the
  view schedule follow from the seed, so the (slice, view) pairs that steps ``k .. S-1`` read are
  known before the first step), runs the method's frozen part
  (:meth:`~medsaga.methods.base.TuningMethod.frozen_encoder`) on them under ``torch.inference_mode``
  (:func:`encode_groups`), and keeps in RAM: the frozen outputs, the views' labels and, when the
  method reads the image besides the frozen output (``cache_needs_images``: the adapter), the
  views' images (one channel of them when the three are equal, as for one modality repeated).
  A 2-step run of batch 4 encodes 8 slice-views, not every slice in every view;
* each training step then picks (slice, view) pairs: the slices exactly as without the cache (a
  fresh permutation per epoch, from ``(seed, epoch)``), and for each slice the view given by
  :func:`view_schedule` (from ``(seed, epoch)``: every view once per ``V`` epochs, in a seeded
  order). Nothing depends on a running random state, so a resumed run encodes the same batches
  its remaining steps read and continues exactly as the uninterrupted run;
* the method finishes the forward pass from the cached output
  (:meth:`~medsaga.methods.base.TuningMethod.forward_from_frozen`): an epoch costs decoder (and
  adapter) time, not encoder time.

Which batches the encoder sees matters to the last bit (a row's output depends, to float
rounding, on the other rows of its batch), so the grouping is fixed by the seed too: a run that
reads every pair encodes them in the blocks the whole cache was always built in
(:func:`block_groups`: the same embeddings, so the same trained weights, as before the cache
encoded only what is read); a shorter run groups them by the micro-batch that first reads them.

The cost is paid before the first step and reported: the build's seconds (one frozen forward
pass per encoded slice-view plus the augmentations), how many of the ``N·V`` slice-views it
encoded and why, and the cache's bytes go to report.json, and the throughput including the build
beside the throughput of the steps. A ``--time-budget`` run does not know its steps in advance:
its cache is ``lazy`` (each step encodes the pairs it reads that are not held yet, timed apart from
the step; :mod:`medsaga.train.time_budget` projects that encoding when it fixes the total). Storage
is float32 by default; ``fp16``/``bf16`` halve it (the images are then kept in float16, whose
11-bit mantissa loses under 5e-4 on [0, 1]).

``medsaga finetune --cache-embeddings auto`` (the default) turns the cache on for a method with a
cacheable part under the lean memory profile (a cached step never runs the frozen part on the
device), and under ``--speed`` when the run trains on at least as many slices as the cache holds
views (:func:`use_cache`); the benchmark's ``@cache`` flag forces it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medsaga import distributed
from medsaga.methods.base import TuningMethod
from medsaga.train.augment import Augmenter, view_seed
# What the cache encodes, and when (re-exported: the names callers know from here).
from medsaga.train.cache_plan import (BLOCKS, ENCODE_MODES, FIRST_READ, CachePlan, Pair, StepReads,  # noqa: F401
                                      block_groups, distinct_reads, plan_cache, view_schedule)
from medsaga.train.data import TrainingSlices

DEFAULT_VIEWS = 4
CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CACHE_MODES = ("auto", "on", "off")

# Called as progress(images encoded so far, images in all) while the cache is built.
Progress = Callable[[int, int], None]


_Made = list[tuple[list[int], torch.Tensor | None, torch.Tensor | None, torch.Tensor]]
"""Per encoded group: its entries, frozen outputs (``None`` where another rank encoded it), images, labels."""


class EmbeddingCache:
    """Fixed views of the training slices and the frozen encoder part's output on each: the
    entries the run encoded (:attr:`encoded` of ``count · views``).

    Entry ``e = slice * views + view``. Tensors live on the CPU, in the storage dtype, in chunks
    (one per encoded group, or one per build under torchrun).

    Attributes:
        count: training slices ``N``.
        views: views per slice ``V``.
        dtype: ``fp32``, ``fp16`` or ``bf16``, the storage of the frozen outputs (images: float32
            with ``fp32``, else float16).
        frozen_module: where the frozen part lives in the model (``sam.image_encoder``...).
        build_seconds: seconds spent making views and encoding them (the build before the first
            step, plus any encoding inside the steps of a ``lazy`` cache).
        order: how entries were grouped into encoder batches (:data:`BLOCKS` or :data:`FIRST_READ`,
            see :func:`plan_cache`).
        keeps_frozen: ``False`` for views kept without the encoder's outputs (the reference the
            cache is tested against: the whole model then runs on the stored views every step).
        keeps_images: whether the views' images are kept (the adapter reads them; always without
            ``keeps_frozen``): one channel per entry when its three are equal (one modality
            repeated: a third of the memory), else three; :meth:`batch` hands out three either way.
    """

    def __init__(self, count: int, views: int, dtype: str, frozen_module: str, *, keeps_frozen: bool,
                 keeps_images: bool, order: str = BLOCKS) -> None:
        self.count = count
        self.views = views
        self.dtype = dtype
        self.frozen_module = frozen_module
        self.keeps_frozen = keeps_frozen
        self.keeps_images = keeps_images
        self.order = order
        self.build_seconds = 0.0
        self.label_dtype = torch.uint8  # new_cache() widens it where a class value does not fit a byte
        self._frozen: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._where: dict[int, tuple[int, int]] = {}  # entry -> (chunk, row)

    @property
    def entries(self) -> int:
        """Entries the cache could hold: ``count · views``."""
        return self.count * self.views

    @property
    def encoded(self) -> int:
        """Entries held."""
        return len(self._where)

    def holds(self, pair: Pair) -> bool:
        return pair[0] * self.views + pair[1] in self._where

    def add(self, entries: Sequence[int], frozen: torch.Tensor | None, images: torch.Tensor | None,
            labels: torch.Tensor) -> None:
        """One chunk: ``entries`` and their rows of frozen outputs, images and labels."""
        chunk = len(self._labels)
        self._labels.append(labels)
        if frozen is not None:
            self._frozen.append(frozen)
        if images is not None:
            self._images.append(images)
        for row, entry in enumerate(entries):
            self._where[entry] = (chunk, row)

    def batch(self, samples: Sequence[Pair]) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """``(slice, view)`` pairs → frozen outputs, images (float32) or ``None``, labels (int64)."""
        places = []
        for position, view in samples:
            place = self._where.get(position * self.views + view)
            if place is None:
                raise RuntimeError(f"embedding cache: slice {position} view {view} was not encoded (the cache plan "
                                   "missed a pair this step reads)")
            places.append(place)
        frozen = torch.stack([self._frozen[c][r] for c, r in places]) if self._frozen else None
        images = (torch.stack([self._images[c][r].float().expand(3, -1, -1) for c, r in places])
                  if self._images else None)
        return frozen, images, torch.stack([self._labels[c][r] for c, r in places]).long()

    def _rows(self, chunks: list[torch.Tensor]) -> torch.Tensor | None:
        if not chunks:
            return None
        rows = [chunks[c][r] for _, (c, r) in sorted(self._where.items())]
        if any(row.shape != rows[0].shape for row in rows):  # one- and three-channel image chunks
            rows = [row.expand(3, -1, -1) for row in rows]
        return torch.stack(rows)

    @property
    def frozen(self) -> torch.Tensor | None:
        """Frozen outputs of the held entries, in entry order ``(encoded, ...)`` (a copy)."""
        return self._rows(self._frozen)

    @property
    def images(self) -> torch.Tensor | None:
        """Images of the held entries, in entry order ``(encoded, 1 or 3, S, S)`` (a copy)."""
        return self._rows(self._images)

    @property
    def labels(self) -> torch.Tensor:
        """Labels of the held entries, in entry order ``(encoded, S, S)`` (a copy)."""
        rows = self._rows(self._labels)
        assert rows is not None
        return rows

    @property
    def nbytes(self) -> int:
        """Bytes held: frozen outputs, images and labels."""
        return sum(_bytes(tensor) for tensor in (*self._frozen, *self._images, *self._labels))

    def describe(self) -> dict[str, Any]:
        """What report.json records about the cache."""
        return {"views": self.views, "slices": self.count, "entries": self.entries, "encoded": self.encoded,
                "order": self.order, "dtype": self.dtype,
                "frozen_module": self.frozen_module, "stores_images": bool(self._images),
                "bytes": self.nbytes, "frozen_output_bytes": sum(map(_bytes, self._frozen)),
                "image_bytes": sum(map(_bytes, self._images)), "label_bytes": sum(map(_bytes, self._labels)),
                "build_seconds": self.build_seconds}


def check_cache_mode(mode: str, method: TuningMethod) -> None:
    """Raises ValueError (a user-facing message) for an unknown mode, or ``on`` for a method that
    trains its whole encoder. Needs no data: runs before any work."""
    if mode not in CACHE_MODES:
        raise ValueError(f"--cache-embeddings must be auto, on or off, got {mode!r}")
    if mode == "on" and not method.encoder_cacheable:
        raise ValueError(f"--cache-embeddings on: method {method.name!r} trains its image encoder, so there is no "
                         "frozen encoder output to cache (the methods that have one: decoder, adapter)")


def use_cache(mode: str, method: TuningMethod, *, samples: int, entries: int, cache_bytes: int = 0,
              memory_budget: int | None = None, lean: bool = False) -> bool:
    """Whether to train on the cache: ``on``/``off`` as told; ``auto`` when the method has a
    cacheable part, the cache (``cache_bytes``) fits in ``memory_budget`` (``None``: no limit),
    and either ``lean`` (the lean memory profile: a cached step never runs the frozen part on the
    device, whatever the run's length) or the run trains on at least as many samples as the cache
    holds entries.

    Why that threshold under ``--speed``: the cache encodes only the pairs the steps read
    (:func:`plan_cache`), so it never costs more encoder passes than the plain loop; but a run
    shorter than that reads nearly every pair once, saves next to nothing, and would trade the
    fresh augmentation of every step for fixed views: a short run (a smoke test of a few steps)
    keeps the plain loop. Why the budget: a LiteMedSAM
    embedding is 64 × 64 × 256 floats (4 MiB), so 5 shots of brain MRI with 4 views each would
    ask for ~13 GiB of RAM; ``auto`` never risks running the machine out of memory.
    """
    check_cache_mode(mode, method)
    if mode == "auto":
        fits = memory_budget is None or cache_bytes <= memory_budget
        return method.encoder_cacheable and (lean or samples >= entries) and fits
    return mode == "on"


def cache_entry_bytes(embedding_shape: tuple[int, ...], image_size: int, dtype: str, needs_images: bool) -> int:
    """Bytes one cache entry holds: the frozen output, the (one-channel) image if kept, the labels."""
    size = torch.empty((), dtype=CACHE_DTYPES[dtype]).element_size()
    frozen = size
    for side in embedding_shape:
        frozen *= side
    images = image_size * image_size * (4 if dtype == "fp32" else 2) if needs_images else 0
    return frozen + images + image_size * image_size


def available_memory_bytes() -> int | None:
    """The memory the system could give this process now (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_cache_settings(views: int, dtype: str) -> None:
    """Raises ValueError (a user-facing message) for a bad view count or storage dtype."""
    if views < 1:
        raise ValueError(f"--cache-views must be at least 1, got {views}")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"--cache-dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")


def effective_views(views: int, augment: bool) -> int:
    """Without augmentation every view would be the same slice: one view then."""
    return views if augment else 1


def frozen_module_name(model: nn.Module, method: TuningMethod) -> str:
    """The frozen part's name in ``model`` (``sam.image_encoder``, ``sam.image_encoder.vit``)."""
    frozen = method.frozen_encoder(model)
    if frozen is None:
        raise ValueError(f"method {method.name!r} has no cacheable frozen encoder part")
    return next((name for name, module in model.named_modules() if module is frozen), type(frozen).__name__)


def new_cache(model: nn.Module, method: TuningMethod, data: TrainingSlices, *, views: int, dtype: str = "fp32",
              encode: bool = True, order: str = BLOCKS) -> EmbeddingCache:
    """An empty cache for ``data`` (see :func:`encode_groups`); ``encode=False`` keeps the views only."""
    check_cache_settings(views, dtype)
    if encode and method.frozen_encoder(model) is None:
        raise ValueError(f"method {method.name!r} has no cacheable frozen encoder part")
    cache = EmbeddingCache(len(data), views, dtype, frozen_module_name(model, method) if encode else "",
                           keeps_frozen=encode, keeps_images=not encode or method.cache_needs_images, order=order)
    # Labels are classes 0..C: one byte each unless there are more than 255 classes.
    cache.label_dtype = torch.uint8 if max((int(stack.labels.max()) for stack in data.stacks if stack.labels.numel()),
                                           default=0) < 256 else torch.int64
    return cache


def encode_groups(cache: EmbeddingCache, model: nn.Module, method: TuningMethod, data: TrainingSlices,
                  augmenter: Augmenter, groups: Sequence[Sequence[Pair]], *, device: torch.device,
                  autocast: contextlib.AbstractContextManager[Any] | None = None,
                  progress: Progress | None = None) -> tuple[float, int]:
    """Make the views of ``groups`` and, when the cache keeps them, run the frozen part on each
    group as one batch; add them to ``cache``. Returns (seconds, entries added).

    A group is one encoder batch: the frozen part's output on a row depends (to float rounding) on
    the other rows of its batch, so the grouping is part of what makes a run repeatable
    (:func:`plan_cache` fixes it from the seed). ``model`` must be prepared by ``method`` and already
    on ``device``; its train/eval mode is left as it is (the frozen part is deterministic either
    way). ``autocast`` is the training precision's context (bf16 autocast, or none), so the cached
    outputs are what the uncached steps would compute.

    Under torchrun each rank encodes every N-th group only, and the shares are summed into every
    rank's copy (each row is non-zero on exactly one rank, so the sum is exact): the encoder's work
    is done once over all ranks, not once per rank. The views (cheap) are made on every rank.
    """
    rank = distributed.current()
    started = time.perf_counter()
    frozen_part = method.frozen_encoder(model) if cache.keeps_frozen else None
    image_dtype = torch.float32 if cache.dtype == "fp32" else torch.float16
    storage = CACHE_DTYPES[cache.dtype]
    total = sum(len(group) for group in groups)
    made: _Made = []
    done = 0
    for index, group in enumerate(groups):
        positions = [position for position, _ in group]
        images, labels = data.batch(positions)
        augmented = [row for row, (_, view) in enumerate(group) if view > 0]
        if augmented:  # each view from its own seed: the same images in any group
            views, view_labels = augmenter.apply(images[augmented], labels[augmented],
                                                 [view_seed(augmenter.seed, *group[row]) for row in augmented])
            images, labels = images.clone(), labels.clone()
            images[augmented], labels[augmented] = views, view_labels
        entries = [position * cache.views + view for position, view in group]
        kept = None
        if cache.keeps_images:  # one channel while the three are equal (single-modality data, the usual case)
            kept = (images[:, :1] if _channels_equal(images) else images).to(image_dtype)
        output = None
        if frozen_part is not None and index % rank.world_size == rank.rank:
            with torch.inference_mode(), autocast or contextlib.nullcontext():
                output = frozen_part(model.normalize(images.to(device)))  # type: ignore[operator]
            # Copied out of inference mode into an ordinary tensor training may read.
            output = output.to(device="cpu", dtype=storage).clone()
        made.append((entries, output, kept, labels.to(cache.label_dtype)))
        done += len(group)
        if progress is not None:
            progress(done, total)
    if frozen_part is not None and rank.distributed and made:
        made = _share_encoded(made, storage)
    for entries, output, kept, labels in made:
        cache.add(entries, output, kept, labels)
    seconds = time.perf_counter() - started
    cache.build_seconds += seconds
    return seconds, total


def build_cache(model: nn.Module, method: TuningMethod, data: TrainingSlices, augmenter: Augmenter, *, views: int,
                batch_size: int, device: torch.device, dtype: str = "fp32",
                autocast: contextlib.AbstractContextManager[Any] | None = None, encode: bool = True,
                progress: Progress | None = None, groups: Sequence[Sequence[Pair]] | None = None,
                order: str = BLOCKS) -> EmbeddingCache:
    """A cache of ``groups`` (default: every entry, :func:`block_groups`), built now: see
    :func:`encode_groups`. ``encode=False`` keeps the views (images always) without running the
    encoder."""
    cache = new_cache(model, method, data, views=views, dtype=dtype, encode=encode, order=order)
    encode_groups(cache, model, method, data, augmenter,
                  block_groups(len(data), views, batch_size) if groups is None else groups,
                  device=device, autocast=autocast, progress=progress)
    return cache


def _share_encoded(made: _Made, storage: torch.dtype) -> _Made:
    """Every rank's encoded groups in every rank's cache: one tensor of all the groups' rows, zero
    where a rank did not encode, summed over the ranks as integers of the same width (exact in any
    float dtype, and gloo need not support bf16); handed back as one view of it per group."""
    shapes = [shape for shape in distributed.gather_objects(
        next((tuple(output.shape[1:]) for _, output, _, _ in made if output is not None), None)) if shape is not None]
    rows = sum(len(entries) for entries, _, _, _ in made)
    shared = torch.zeros((rows, *shapes[0]), dtype=storage)
    offsets = []
    offset = 0
    for entries, output, _, _ in made:
        if output is not None:
            shared[offset:offset + len(entries)] = output
        offsets.append(offset)
        offset += len(entries)
    as_integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[shared.element_size()]
    distributed.cpu_all_reduce_(shared.view(as_integers))
    return [(entries, shared[start:start + len(entries)], kept, labels)
            for (entries, _, kept, labels), start in zip(made, offsets)]


def _channels_equal(images: torch.Tensor) -> bool:
    return bool(torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2]))


def _bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
