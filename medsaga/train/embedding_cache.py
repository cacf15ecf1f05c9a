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
* :func:`build_cache` computes every view once, runs the method's frozen part
  (:meth:`~medsaga.methods.base.TuningMethod.frozen_encoder`) on each under ``torch.inference_mode``
  in batches of the training batch size, and keeps in RAM, as one tensor each: the frozen outputs
  ``(N·V, ...)``, the views' labels ``(N·V, S, S)`` and, when the method reads the image besides
  the frozen output (``cache_needs_images``: the adapter), the views' images (one channel of them
  when the three are equal, as for one modality repeated);
* each training step then picks (slice, view) pairs: the slices exactly as without the cache (a
  fresh permutation per epoch, from ``(seed, epoch)``), and for each slice the view given by
  :func:`view_schedule` (from ``(seed, epoch)``: every view once per ``V`` epochs, in a seeded
  order). Nothing depends on a running random state, so a resumed run rebuilds the same cache and
  continues exactly as the uninterrupted run;
* the method finishes the forward pass from the cached output
  (:meth:`~medsaga.methods.base.TuningMethod.forward_from_frozen`): an epoch costs decoder (and
  adapter) time, not encoder time.

The cost is paid up front and reported: the build's seconds (``N·V`` frozen forward passes plus
the augmentations) and the cache's bytes go to report.json, and the throughput including the
build beside the throughput of the steps. Storage is float32 by default; ``fp16``/``bf16`` halve
it (the images are then kept in float16, whose 11-bit mantissa loses under 5e-4 on [0, 1]).

``medsaga finetune --cache-embeddings auto`` (the default) turns the cache on for a method with a
cacheable part when the run trains on at least as many slices as the cache holds views
(:func:`use_cache`): from there on it saves encoder passes; a short smoke-test run keeps the plain
loop. The benchmark's ``@cache`` flag forces it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medsaga import distributed
from medsaga.methods.base import TuningMethod
from medsaga.train.augment import Augmenter, view_seed
from medsaga.train.data import TrainingSlices

DEFAULT_VIEWS = 4
CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CACHE_MODES = ("auto", "on", "off")

# Called as progress(images encoded so far, images in all) while the cache is built.
Progress = Callable[[int, int], None]


@dataclass
class EmbeddingCache:
    """Fixed views of the training slices and the frozen encoder part's output on each.

    Entry ``e = slice * views + view``. Tensors live on the CPU, in the storage dtype.

    Attributes:
        count: training slices ``N``.
        views: views per slice ``V``.
        frozen: frozen-part outputs ``(N·V, ...)`` (SAM's embeddings ``(N·V, 256, S/16, S/16)``);
            ``None`` for views kept without the encoder's outputs (the reference the cache is
            tested against: the whole model then runs on the stored views every step).
        images: the views' images in [0, 1], or ``None`` when not needed: ``(N·V, 1, S, S)`` when
            the three channels of every view are equal (one modality repeated: a third of the
            memory), else ``(N·V, 3, S, S)``; :meth:`batch` hands out three channels either way.
        labels: the views' labels ``(N·V, S, S)`` (uint8 when the classes fit).
        dtype: ``fp32``, ``fp16`` or ``bf16``, the storage of ``frozen`` (``images``: float32 with
            ``fp32``, else float16).
        frozen_module: where the frozen part lives in the model (``sam.image_encoder``...).
        build_seconds: wall time of :func:`build_cache`.
    """

    count: int
    views: int
    frozen: torch.Tensor | None
    images: torch.Tensor | None
    labels: torch.Tensor
    dtype: str
    frozen_module: str
    build_seconds: float = 0.0

    def batch(self, samples: Sequence[tuple[int, int]]) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                                 torch.Tensor]:
        """``(slice, view)`` pairs → frozen outputs, images (float32) or ``None``, labels (int64)."""
        entries = torch.tensor([position * self.views + view for position, view in samples], dtype=torch.long)
        frozen = self.frozen.index_select(0, entries) if self.frozen is not None else None
        images = (self.images.index_select(0, entries).float().expand(-1, 3, -1, -1)
                  if self.images is not None else None)
        return frozen, images, self.labels.index_select(0, entries).long()

    @property
    def nbytes(self) -> int:
        """Bytes held: frozen outputs, images and labels."""
        return sum(_bytes(tensor) for tensor in (self.frozen, self.images, self.labels))

    def describe(self) -> dict[str, Any]:
        """What report.json records about the cache."""
        return {"views": self.views, "slices": self.count, "entries": self.count * self.views, "dtype": self.dtype,
                "frozen_module": self.frozen_module, "stores_images": self.images is not None,
                "bytes": self.nbytes, "frozen_output_bytes": _bytes(self.frozen), "image_bytes": _bytes(self.images),
                "label_bytes": _bytes(self.labels), "build_seconds": self.build_seconds}


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

    Why that threshold: the build runs the frozen part once per entry (``slices × views``), the
    uncached loop once per sample trained (``steps × slices per step``); the cached steps cost
    the rest of the model either way. So the cache costs less in all from there on, and a short
    run (a smoke test of a few steps) keeps the plain loop. Why the budget: a LiteMedSAM
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


def build_cache(model: nn.Module, method: TuningMethod, data: TrainingSlices, augmenter: Augmenter, *, views: int,
                batch_size: int, device: torch.device, dtype: str = "fp32",
                autocast: contextlib.AbstractContextManager[Any] | None = None, encode: bool = True,
                progress: Progress | None = None) -> EmbeddingCache:
    """Compute every view of every slice once and, with ``encode``, the frozen part's output on it.

    ``model`` must be prepared by ``method`` and already on ``device``; its train/eval mode is left
    as it is (the frozen part is deterministic either way). ``autocast`` is the training precision's
    context (bf16 autocast, or none), so the cached outputs are what the uncached steps would
    compute. ``encode=False`` keeps the views (images always) without running the encoder.

    Under torchrun each rank encodes its share of the batches only, and the shares are summed into
    every rank's copy (each entry is non-zero on exactly one rank, so the sum is exact): the
    encoder's work is done once over all ranks, not once per rank. The views (cheap) are made on
    every rank.
    """
    rank = distributed.current()
    check_cache_settings(views, dtype)
    frozen_part = method.frozen_encoder(model) if encode else None
    if encode and frozen_part is None:
        raise ValueError(f"method {method.name!r} has no cacheable frozen encoder part")
    started = time.perf_counter()
    count = len(data)
    keep_images = not encode or method.cache_needs_images
    image_dtype = torch.float32 if dtype == "fp32" else torch.float16
    storage = CACHE_DTYPES[dtype]
    frozen: torch.Tensor | None = None
    images_store: torch.Tensor | None = None
    labels_store: torch.Tensor | None = None
    # Labels are classes 0..C: one byte each unless there are more than 255 classes.
    label_dtype = torch.uint8 if max((int(stack.labels.max()) for stack in data.stacks if stack.labels.numel()),
                                  default=0) < 256 else torch.int64
    done = 0
    for first in range(0, count, batch_size):
        encodes_here = (first // batch_size) % rank.world_size == rank.rank
        positions = list(range(first, min(first + batch_size, count)))
        plain_images, plain_labels = data.batch(positions)
        if labels_store is None:
            size = plain_images.shape[-1]
            labels_store = torch.empty((count * views, size, size), dtype=label_dtype)
            if keep_images:  # one channel while the three are equal (single-modality data, the usual case)
                images_store = torch.empty((count * views, 1, size, size), dtype=image_dtype)
        for view in range(views):
            if view == 0:
                images, labels = plain_images, plain_labels
            else:
                images, labels = augmenter.apply(plain_images, plain_labels,
                                                 [view_seed(augmenter.seed, position, view) for position in positions])
            entries = torch.tensor([position * views + view for position in positions], dtype=torch.long)
            labels_store.index_copy_(0, entries, labels.to(label_dtype))
            if images_store is not None:
                if images_store.shape[1] == 1 and not _channels_equal(images):
                    images_store = images_store.expand(-1, 3, -1, -1).clone()
                images_store.index_copy_(0, entries, images[:, :images_store.shape[1]].to(image_dtype))
            if frozen_part is not None and encodes_here:
                with torch.inference_mode(), autocast or contextlib.nullcontext():
                    output = frozen_part(model.normalize(images.to(device)))  # type: ignore[operator]
                # Copied (index_copy_) out of inference mode into an ordinary tensor training may read.
                output = output.to(device="cpu", dtype=storage)
                if frozen is None:
                    frozen = torch.zeros((count * views, *output.shape[1:]), dtype=storage)
                frozen.index_copy_(0, entries, output)
            done += len(positions)
            if progress is not None:
                progress(done, count * views)
    assert labels_store is not None  # TrainingSlices is never empty
    if frozen_part is not None and rank.distributed:
        frozen = _share_encoded(frozen, count * views, storage)
    name = frozen_module_name(model, method) if encode else ""
    return EmbeddingCache(count, views, frozen, images_store, labels_store, dtype, name,
                          time.perf_counter() - started)


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


def _share_encoded(frozen: torch.Tensor | None, entries: int, storage: torch.dtype) -> torch.Tensor:
    """Every rank's encoded entries in every rank's cache: a sum of the ranks' tensors, zero where
    a rank did not encode, summed as integers of the same width (exact in any float dtype, and gloo
    need not support bf16)."""
    shapes = [shape for shape in distributed.gather_objects(None if frozen is None else tuple(frozen.shape))
              if shape is not None]
    if frozen is None:  # this rank had no batch to encode (fewer batches than ranks)
        frozen = torch.zeros(shapes[0], dtype=storage)
    as_integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[frozen.element_size()]
    distributed.cpu_all_reduce_(frozen.view(as_integers))
    return frozen


def _channels_equal(images: torch.Tensor) -> bool:
    return bool(torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2]))


def _bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
