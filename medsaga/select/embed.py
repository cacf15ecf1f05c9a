"""One descriptor per scan from the frozen pretrained image encoder, cached by file content.

A scan's descriptor: ``S`` axial slices spread evenly over the slices that hold tissue (the
``(s + 1/2) / S`` quantiles of that range), each normalised as fine-tuning normalises it,
letterboxed to the model's input and encoded; each slice's embedding ``(256, g, g)`` is averaged
over its pixels to ``(256,)``, and the ``S`` vectors are concatenated in slice order, scaled by
``1/sqrt(S)``: ``(S * 256,)``. Keeping the order compares scans anatomy to anatomy (the lowest
sampled slice of one with the lowest of the other), which a mean over slices would blur; the
scale keeps distances comparable whatever ``S`` is.

Why only the encoder: the letterboxed slice keeps each scan's field of view (anatomy drawn
smaller on a wider field) and its contrast after the intensity preset, so the embedding already
differs where field of view or intensity do; hand-made intensity or size features would need
weights against the embedding that nothing here could tune. They are reported beside the picks
instead (:class:`ScanFacts`).

Cache: ``CACHE_DIR/<key>.safetensors``, the key a SHA-256 of the image files' own SHA-256s and
of every setting that changes the descriptor (model and weights, input size, slices, plane,
presets, slice mode, format version): a renamed or moved file is found again, an edited one is
not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medsaga.data.resize import letterbox_images
from medsaga.data.slices import volume_to_slices
from medsaga.data.slicing import plane_spacing, slice_geometry
from medsaga.io.atomic import atomic_output, write_errors
from medsaga.io.volume import Volume

DESCRIPTOR_VERSION = 1
# A slice holds tissue when more than this fraction of its pixels is above the background level.
_TISSUE_FRACTION = 0.02
_BACKGROUND_LEVEL = 0.05


@dataclass(frozen=True)
class EmbeddingSettings:
    """Everything that changes a descriptor (the cache key is made of it).

    Attributes:
        model: model type (``litemedsam``, ``vit_b`` ...).
        weights: SHA-256 of the checkpoint, or ``"random-seed-<n>"`` for random weights.
        image_size: the model's square input side.
        slices: slices per scan ``S``.
        plane: slicing plane.
        presets: one intensity preset per channel.
        mode: slice mode (``repeat`` / ``modalities``).
    """

    model: str
    weights: str
    image_size: int
    slices: int
    plane: str
    presets: tuple[str, ...]
    mode: str

    def key(self, file_digests: list[str]) -> str:
        """The cache key of one scan whose image files have these SHA-256s."""
        text = json.dumps({"version": DESCRIPTOR_VERSION, "settings": asdict(self), "files": file_digests},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ScanFacts:
    """What a person looks at beside the descriptor: field of view and intensity.

    Attributes:
        shape: the volume's ``(I, J, K)``.
        field_of_view_mm: in-plane ``(rows, columns)`` and slice-direction extent of the stack, mm.
        intensity_percentiles: the first channel's raw 1st, 50th and 99th percentiles over its
            nonzero voxels.
    """

    shape: tuple[int, int, int]
    field_of_view_mm: tuple[float, float, float]
    intensity_percentiles: tuple[float, float, float]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while chunk := file.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tissue_slices(images: np.ndarray, count: int) -> np.ndarray:
    """``count`` slice indices of ``images`` ``(N, 3, H, W)`` in [0, 1], spread evenly over the
    range of slices that hold tissue (all slices when none does), in increasing order; repeats
    when the range has fewer than ``count`` slices."""
    fraction = (images.mean(axis=1) > _BACKGROUND_LEVEL).mean(axis=(1, 2))  # (N,)
    holding = np.flatnonzero(fraction > _TISSUE_FRACTION)
    first, last = (int(holding[0]), int(holding[-1])) if holding.size else (0, images.shape[0] - 1)
    positions = first + (np.arange(count) + 0.5) / count * (last - first + 1)
    return np.clip(np.floor(positions).astype(np.int64), first, last)


def scan_facts(volumes: list[Volume], plane: str) -> ScanFacts:
    """Field of view and intensity of a scan (first channel), for the table."""
    first = volumes[0]
    spacing = plane_spacing(first, plane)
    count, height, width = slice_geometry(first, plane).shape
    values = first.array[first.array != 0]
    values = values if values.size else first.array.ravel()
    low, mid, high = (float(v) for v in np.percentile(values, [1, 50, 99]))
    return ScanFacts(tuple(int(n) for n in first.shape),  # type: ignore[arg-type]
                     (height * spacing.row, width * spacing.col, count * spacing.slice), (low, mid, high))


class ScanEmbedder:
    """Descriptors ``(S * 256,)`` float32 of scans, from a frozen image encoder, with a disk cache.

    Args:
        encode: images ``(B, 3, size, size)`` in [0, 1] → embeddings ``(B, 256, g, g)``
            (e.g. ``SamSegmenter.encode``, under no gradients).
        settings: what the descriptor depends on (:class:`EmbeddingSettings`).
        cache_dir: where descriptors are kept, or ``None`` for no cache.
        batch_size: slices per encoder call.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], settings: EmbeddingSettings,
                 cache_dir: Path | None, device: torch.device, batch_size: int = 8) -> None:
        self.encode = encode
        self.settings = settings
        self.cache_dir = cache_dir
        self.device = device
        self.batch_size = batch_size

    def cached(self, files: tuple[Path, ...]) -> tuple[str, tuple[np.ndarray, ScanFacts] | None]:
        """The scan's cache key, and its descriptor and facts when the cache has them."""
        key = self.settings.key([file_sha256(path) for path in files])
        if self.cache_dir is None:
            return key, None
        path = self.cache_dir / f"{key}.safetensors"
        if not path.is_file():
            return key, None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as entry:
                facts = json.loads(entry.metadata()["facts"])
                return key, (entry.get_tensor("descriptor"), ScanFacts(
                    tuple(facts["shape"]), tuple(facts["field_of_view_mm"]),  # type: ignore[arg-type]
                    tuple(facts["intensity_percentiles"])))  # type: ignore[arg-type]
        except Exception:  # a damaged or older cache entry is recomputed, never trusted
            return key, None

    def describe(self, volumes: list[Volume]) -> np.ndarray:
        """The descriptor of one scan's channel volumes ``(S * 256,)`` float32."""
        settings = self.settings
        stack = volume_to_slices(volumes, presets=list(settings.presets), plane=settings.plane,
                                 mode=settings.mode).images
        chosen = torch.from_numpy(np.ascontiguousarray(stack[tissue_slices(stack, settings.slices)]))
        pooled = []
        with torch.inference_mode():
            for first in range(0, chosen.shape[0], self.batch_size):
                batch, _ = letterbox_images(chosen[first:first + self.batch_size].to(self.device), settings.image_size)
                pooled.append(self.encode(batch).float().mean(dim=(2, 3)).cpu())  # (B, 256)
        descriptor = torch.cat(pooled).reshape(-1) / np.sqrt(settings.slices)
        return descriptor.numpy().astype(np.float32)

    def store(self, key: str, descriptor: np.ndarray, facts: ScanFacts) -> None:
        """Keep a descriptor and the scan's facts in the cache (atomically)."""
        if self.cache_dir is None:
            return
        from safetensors.numpy import save_file

        with write_errors(self.cache_dir):  # a failed write: one line naming it (atomic_output does the same)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.cache_dir / f"{key}.safetensors") as temporary:
            save_file({"descriptor": np.ascontiguousarray(descriptor)}, str(temporary),
                      metadata={"settings": json.dumps(asdict(self.settings)),
                                "facts": json.dumps(asdict(facts))})
