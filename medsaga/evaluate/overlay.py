"""Overlay pictures: a few axial slices of a case, the prediction filled in colour, the reference outlined.

Each picture is one row of panels, one per chosen slice, inferior to superior from left to right,
laid out as a radiologist sees an axial slice (:mod:`medsaga.data.slicing`: anterior up, patient
right on the image's left). In each panel:

- the image, windowed by an intensity preset (:mod:`medsaga.data.intensity`; the window is taken
  over the whole volume, so the panels of one case share it), in grey;
- the predicted labels, blended over it at ``FILL_ALPHA``, one fixed colour per class value
  (:func:`class_colour`), so a class has the same colour in every picture;
- the reference's boundary, opaque, in the same colour: where fill and outline agree, the
  prediction is right.

The slices are spread evenly through the slices where either label map holds a label (the middle
slice when neither does). Panels are enlarged by whole pixel repeats (no interpolation, so the
labels stay exact) to at least ``MIN_PANEL`` pixels on their longer side, and corrected for
non-square pixels.
"""

from __future__ import annotations

import math

import numpy as np

from medsaga.data.intensity import IntensityPreset, intensity_range
from medsaga.data.slicing import plane_spacing, slice_volume
from medsaga.io import Volume

FILL_ALPHA = 0.4
MIN_PANEL = 256
GAP = 4
GAP_GREY = 40

# Distinct, saturated colours that stand out on grey; class value v gets PALETTE[(v - 1) % 12].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
)
PALETTE_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "magenta",
                                  "lime", "pink", "teal", "brown")


def class_colour(value: int) -> tuple[int, int, int]:
    """The RGB colour of label value ``value`` (>= 1) in every overlay."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def class_colour_name(value: int) -> str:
    """A word for :func:`class_colour` (for the legend printed beside the pictures)."""
    return PALETTE_NAMES[(int(value) - 1) % len(PALETTE_NAMES)]


def choose_slices(prediction: np.ndarray, reference: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` slice indices of stacks ``(N, H, W)``, evenly spread through the labelled ones.

    The quantile points ``(i + 1) / (count + 1)`` of the labelled slices, not their ends (often a
    barely touched first or last slice); all labelled slices when there are no more than ``count``.
    """
    labelled = np.flatnonzero(np.any(prediction != 0, axis=(1, 2)) | np.any(reference != 0, axis=(1, 2)))
    if labelled.size == 0:
        return [prediction.shape[0] // 2]
    n = labelled.size
    if n <= count:
        return [int(s) for s in labelled]
    # Steps of n / (count + 1) >= 1: the indices are distinct.
    return [int(labelled[(i + 1) * n // (count + 1)]) for i in range(count)]


def render_overlay(image: Volume, prediction: Volume, reference: Volume, preset: str | IntensityPreset,
                   slices: int = 3) -> np.ndarray:
    """The overlay picture of one case, ``(H', W', 3)`` uint8 (module docstring).

    ``image``, ``prediction`` and ``reference`` must share one grid (the caller checks it).
    """
    image_stack = slice_volume(image).array
    pred_stack, ref_stack = slice_volume(prediction).array, slice_volume(reference).array
    low, high = intensity_range(image.array, preset)
    spacing = plane_spacing(image)
    repeats = _repeats(image_stack.shape[1:], (spacing.row, spacing.col))
    panels = [_panel(image_stack[n], pred_stack[n], ref_stack[n], low, high, repeats)
              for n in choose_slices(pred_stack, ref_stack, slices)]
    height = panels[0].shape[0]
    gap = np.full((height, GAP, 3), GAP_GREY, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        row += [gap, panel] if row else [panel]
    return np.concatenate(row, axis=1)


def label_boundary(labels: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D label map ``(H, W)``: labelled pixels with a 4-neighbour of
    another value (the map's own edge does not count as a neighbour), as a bool ``(H, W)``."""
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (centre != 0)


def _panel(image: np.ndarray, prediction: np.ndarray, reference: np.ndarray, low: float, high: float,
           repeats: tuple[int, int]) -> np.ndarray:
    """One slice ``(H, W)`` of each → enlarged RGB panel ``(H * rows, W * cols, 3)`` uint8."""
    image, prediction, reference = (np.repeat(np.repeat(np.asarray(a), repeats[0], axis=0), repeats[1], axis=1)
                                    for a in (image, prediction, reference))
    span = high - low
    grey = np.clip((image.astype(np.float32) - low) / span, 0, 1) if span > 0 else np.zeros(image.shape, np.float32)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=2)
    prediction, reference = prediction.astype(np.int64), reference.astype(np.int64)
    lut = _colour_table(max(int(prediction.max()), int(reference.max())))
    filled = prediction != 0
    rgb[filled] = (1 - FILL_ALPHA) * rgb[filled] + FILL_ALPHA * lut[prediction[filled]]
    outline = label_boundary(reference)
    rgb[outline] = lut[reference[outline]]
    return np.round(rgb).astype(np.uint8)


def _colour_table(top: int) -> np.ndarray:
    """``(top + 1, 3)`` float: row ``v`` is the colour of value ``v`` (row 0 unused)."""
    table = np.zeros((top + 1, 3), dtype=np.float32)
    for value in range(1, top + 1):
        table[value] = class_colour(value)
    return table


def _repeats(shape: tuple[int, int], spacing: tuple[float, float]) -> tuple[int, int]:
    """Whole-pixel repeats (rows, columns) for a panel of ``shape`` ``(H, W)`` and pixel ``spacing``
    (row, column mm): square pixels, longer side at least ``MIN_PANEL`` where it was shorter."""
    finest = min(spacing)
    aspect = [max(1, round(s / finest)) for s in spacing]
    longest = max(n * a for n, a in zip(shape, aspect))
    scale = max(1, math.ceil(MIN_PANEL / longest))
    return aspect[0] * scale, aspect[1] * scale
