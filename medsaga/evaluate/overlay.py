"""Overlay pictures: a few axial slices of a case, the prediction filled in colour, the reference outlined.

Each picture is one row of panels, one per chosen slice, inferior to superior from left to right,
laid out as a radiologist sees an axial slice (:mod:`medsaga.data.slicing`: anterior up, patient
right on the image's left). In each panel:

- the image, windowed by an intensity preset (:mod:`medsaga.data.intensity`; the window is taken
  over the whole volume, so the panels of one case share it), in grey;
- the predicted labels, blended over it, one fixed colour per class value (the Okabe–Ito palette
  of :mod:`medsaga.report.overlays`, which also draws the report's pictures), so a class has the
  same colour in every picture;
- the reference's boundary, opaque, in the same colour: where fill and outline agree, the
  prediction is right.

The slices are spread evenly through the slices where either label map holds a label (the middle
slice when neither does). Panels are enlarged by whole pixel repeats (no interpolation, so the
labels stay exact) to at least ``MIN_PANEL`` pixels on their longer side, and corrected for
non-square pixels.
"""

from __future__ import annotations

import numpy as np

from medsaga.data.intensity import IntensityPreset, intensity_range
from medsaga.data.slicing import plane_spacing, slice_volume
from medsaga.io import Volume
from medsaga.report.overlays import (FILL_ALPHA, MIN_PANEL, PALETTE, class_colour, class_colour_name, draw_panel,
                                     label_boundary, panel_repeats, window)

GAP = 4
GAP_GREY = 40


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
    repeats = panel_repeats(image_stack.shape[1:], (spacing.row, spacing.col))
    panels = [draw_panel(window(image_stack[n], low, high), pred_stack[n], ref_stack[n], repeats)
              for n in choose_slices(pred_stack, ref_stack, slices)]
    height = panels[0].shape[0]
    gap = np.full((height, GAP, 3), GAP_GREY, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        row += [gap, panel] if row else [panel]
    return np.concatenate(row, axis=1)


__all__ = ["FILL_ALPHA", "GAP", "MIN_PANEL", "PALETTE", "choose_slices", "class_colour", "class_colour_name",
           "label_boundary", "render_overlay"]
