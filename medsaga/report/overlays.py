"""Overlay pictures for the report: per case, the slice of each plane where prediction and reference
disagree most, the prediction filled, the reference outlined.

For each plane (axial, coronal, sagittal; laid out as :mod:`medsaga.data.slicing` says, the way a
DICOM viewer shows them) the chosen slice is the one with the most voxels where the two label maps
differ (:func:`worst_slice`); where they agree everywhere, the slice with the most reference voxels,
so the picture still shows the structure. In each panel:

- the image in grey, windowed by an intensity preset over the whole volume; without an image, a
  neutral grey (:data:`NEUTRAL_GREY`) so the labels alone still read;
- the prediction blended over it at :data:`FILL_ALPHA`, one colour per class value;
- the reference's boundary, opaque, :data:`OUTLINE_WIDTH` pixels wide, in the same colour: where
  fill and outline agree the prediction is right.

Colours are the Okabe–Ito palette (Okabe & Ito 2008, "Color Universal Design"), which stays
distinguishable with the common colour-vision deficiencies; its black is left out (it would vanish
on a dark image). Class value ``v`` gets ``PALETTE[(v - 1) % 7]`` in every picture medsaga draws.

:func:`compare_overlays` draws several predictions of one case (the quality benchmark's
contenders) on one shared slice per plane, cut to one shared box, beside the reference alone.

Panels are enlarged by whole-pixel repeats only (no interpolation: labels stay exact), to square
pixels in mm and at least :data:`MIN_PANEL` pixels on the longer side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medsaga.data.intensity import IntensityPreset, intensity_range
from medsaga.data.slicing import PLANES, slice_geometry
from medsaga.io import Volume

FILL_ALPHA = 0.45
OUTLINE_WIDTH = 2
MIN_PANEL = 256
NEUTRAL_GREY = 0.35  # the background, in [0, 1], when there is no image

# Okabe–Ito without black: (name, RGB).
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("orange", (230, 159, 0)),
    ("sky blue", (86, 180, 233)),
    ("bluish green", (0, 158, 115)),
    ("yellow", (240, 228, 66)),
    ("blue", (0, 114, 178)),
    ("vermillion", (213, 94, 0)),
    ("reddish purple", (204, 121, 167)),
)

# What each plane's picture shows, for captions (see medsaga.data.slicing's table).
PLANE_CAPTIONS: dict[str, str] = {
    "axial": "anterior up, patient right on the left",
    "coronal": "superior up, patient right on the left",
    "sagittal": "superior up, anterior on the left",
}


def class_colour(value: int) -> tuple[int, int, int]:
    """The RGB colour of label value ``value`` (>= 1) in every overlay."""
    return PALETTE[(int(value) - 1) % len(PALETTE)][1]


def class_colour_name(value: int) -> str:
    """The name of :func:`class_colour` (``"orange"``...), for legends in words."""
    return PALETTE[(int(value) - 1) % len(PALETTE)][0]


def class_colour_hex(value: int) -> str:
    """:func:`class_colour` as CSS ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*class_colour(value))


@dataclass(frozen=True)
class PlaneOverlay:
    """One plane's picture of a case.

    Attributes:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: the slice shown, counted from 0 along the plane's stack.
        slices: the number of slices in that stack.
        disagreement: voxels of that slice where prediction and reference differ.
        picture: ``(H', W', 3)`` uint8, the enlarged panel.
    """

    plane: str
    index: int
    slices: int
    disagreement: int
    picture: np.ndarray


def worst_slice(differ_per_slice: np.ndarray, reference_per_slice: np.ndarray) -> int:
    """The slice to show, from per-slice counts ``(N,)``: the most disagreeing voxels; when none
    differ, the most reference voxels; when the reference is empty too, the middle slice."""
    if differ_per_slice.size and differ_per_slice.max() > 0:
        return int(np.argmax(differ_per_slice))
    if reference_per_slice.size and reference_per_slice.max() > 0:
        return int(np.argmax(reference_per_slice))
    return int(differ_per_slice.size // 2)


def case_overlays(prediction: Volume, reference: Volume, image: Volume | None,
                  preset: str | IntensityPreset | None, planes: tuple[str, ...] = tuple(PLANES)
                  ) -> list[PlaneOverlay]:
    """One :class:`PlaneOverlay` per plane of ``planes``, in that order.

    ``prediction``, ``reference`` and ``image`` (optional) share one grid ``(I, J, K)``: the caller
    checks it. ``preset`` windows the image (it must be given when ``image`` is).
    """
    pred, ref = np.asarray(prediction.array), np.asarray(reference.array)
    differ = Volume(pred != ref, reference.affine)
    labelled = Volume(ref != 0, reference.affine)
    low, high = (0.0, 0.0)
    if image is not None:
        if preset is None:
            raise ValueError("an image needs an intensity preset")
        low, high = intensity_range(image.array, preset)
    overlays = []
    for plane in planes:
        geometry = slice_geometry(reference, plane)
        differ_counts = geometry.to_stack(differ.array).sum(axis=(1, 2))
        labelled_counts = geometry.to_stack(labelled.array).sum(axis=(1, 2))
        index = worst_slice(differ_counts, labelled_counts)
        spacing = geometry.spacing
        repeats = panel_repeats(geometry.shape[1:], (spacing.row, spacing.col))
        grey = None if image is None else window(geometry.to_stack(image.array)[index], low, high)
        picture = draw_panel(grey, geometry.to_stack(pred)[index], geometry.to_stack(ref)[index], repeats)
        overlays.append(PlaneOverlay(plane, index, int(differ_counts.size), int(differ_counts[index]), picture))
    return overlays


@dataclass(frozen=True)
class ComparedPlane:
    """One plane of one case, every contender drawn on the same slice and the same crop.

    Attributes:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: the slice shown, counted from 0 along the plane's stack.
        slices: the number of slices in that stack.
        box: the crop ``(row0, row1, col0, col1)`` of the slice (half-open), the same in every panel.
        reference: the image with the reference outlined alone, ``(H', W', 3)`` uint8.
        pictures: contender name → its panel (prediction filled, reference outlined), in the
            order the predictions were given.
        disagreement: contender name → voxels of the shown slice where it differs from the reference.
    """

    plane: str
    index: int
    slices: int
    box: tuple[int, int, int, int]
    reference: np.ndarray
    pictures: dict[str, np.ndarray]
    disagreement: dict[str, int]


def compare_overlays(predictions: Mapping[str, Volume], reference: Volume, image: Volume | None,
                     preset: str | IntensityPreset | None, planes: Sequence[str] = ("axial",), crop: bool = True,
                     min_panel: int = MIN_PANEL) -> list[ComparedPlane]:
    """Several predictions of one case side by side: per plane, the one slice where they disagree
    most with the reference all together (the sum over predictions of the differing voxels,
    :func:`worst_slice`), every panel cut to the same box.

    Args:
        predictions: name → predicted label map, each on the reference's grid ``(I, J, K)``
            (the caller checks it).
        reference, image: as :func:`case_overlays` (``preset`` windows the image).
        crop: cut the panels to the box around every label on the shown slice, reference's and
            predictions' (:func:`label_box`); small structures then fill the panel.
        min_panel: the panels' longer side at least this many pixels (whole-pixel repeats).
    """
    ref = np.asarray(reference.array)
    arrays = {name: np.asarray(volume.array) for name, volume in predictions.items()}
    low, high = (0.0, 0.0)
    if image is not None:
        if preset is None:
            raise ValueError("an image needs an intensity preset")
        low, high = intensity_range(image.array, preset)
    compared = []
    for plane in planes:
        geometry = slice_geometry(reference, plane)
        ref_stack = geometry.to_stack(ref)
        stacks = {name: geometry.to_stack(array) for name, array in arrays.items()}
        differ = {name: (stack != ref_stack).sum(axis=(1, 2)) for name, stack in stacks.items()}
        total = np.sum(list(differ.values()), axis=0) if differ else np.zeros(ref_stack.shape[0], np.int64)
        index = worst_slice(total, (ref_stack != 0).sum(axis=(1, 2)))
        ref_slice = ref_stack[index]
        slices = {name: stack[index] for name, stack in stacks.items()}
        full = (0, ref_slice.shape[0], 0, ref_slice.shape[1])
        box = label_box([ref_slice, *slices.values()]) if crop else full
        rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
        spacing = geometry.spacing
        repeats = panel_repeats((box[1] - box[0], box[3] - box[2]), (spacing.row, spacing.col), min_panel)
        grey = None if image is None else window(geometry.to_stack(image.array)[index][rows, cols], low, high)
        cut_ref = ref_slice[rows, cols]
        compared.append(ComparedPlane(
            plane, index, int(ref_stack.shape[0]), box,
            draw_panel(grey, np.zeros_like(cut_ref), cut_ref, repeats),
            {name: draw_panel(grey, labels[rows, cols], cut_ref, repeats) for name, labels in slices.items()},
            {name: int(counts[index]) for name, counts in differ.items()}))
    return compared


def label_box(slices: Sequence[np.ndarray], margin: float = 0.15, min_margin: int = 8
              ) -> tuple[int, int, int, int]:
    """The box ``(row0, row1, col0, col1)`` (half-open) around every labelled pixel of 2-D label
    maps ``(H, W)`` of one shape, widened on each side by ``margin`` of its size (at least
    ``min_margin`` pixels) and kept inside the slice; the whole slice when nothing is labelled."""
    shape = np.asarray(slices[0]).shape
    labelled = np.zeros(shape, bool)
    for labels in slices:
        labelled |= np.asarray(labels) != 0
    if not labelled.any():
        return 0, shape[0], 0, shape[1]
    rows, cols = np.flatnonzero(labelled.any(axis=1)), np.flatnonzero(labelled.any(axis=0))
    box = []
    for first, last, size in ((rows[0], rows[-1] + 1, shape[0]), (cols[0], cols[-1] + 1, shape[1])):
        pad = max(min_margin, math.ceil(margin * (last - first)))
        box += [max(0, int(first) - pad), min(size, int(last) + pad)]
    return box[0], box[1], box[2], box[3]


def window(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Intensities ``(H, W)`` → float32 grey in [0, 1] over ``[low, high]`` (all 0 when ``high <= low``)."""
    span = high - low
    if not span > 0:
        return np.zeros(image.shape, np.float32)
    return np.clip((np.asarray(image, np.float32) - low) / span, 0.0, 1.0)


def draw_panel(grey: np.ndarray | None, prediction: np.ndarray, reference: np.ndarray,
               repeats: tuple[int, int] = (1, 1), outline_width: int = OUTLINE_WIDTH) -> np.ndarray:
    """One slice → its enlarged RGB panel ``(H * rows, W * cols, 3)`` uint8.

    Args:
        grey: the image slice ``(H, W)`` in [0, 1], or ``None`` for :data:`NEUTRAL_GREY`.
        prediction, reference: label slices ``(H, W)`` of non-negative integers.
        repeats: whole-pixel enlargement ``(rows, cols)`` (:func:`panel_repeats`).
        outline_width: the reference outline's width in output pixels.
    """
    def enlarge(array: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(np.asarray(array), repeats[0], axis=0), repeats[1], axis=1)

    prediction, reference = enlarge(prediction).astype(np.int64), enlarge(reference).astype(np.int64)
    base = np.full(prediction.shape, NEUTRAL_GREY, np.float32) if grey is None else enlarge(grey)
    rgb = np.repeat(base[..., None] * 255.0, 3, axis=2)
    colours = colour_table(max(int(prediction.max(initial=0)), int(reference.max(initial=0))))
    filled = prediction != 0
    rgb[filled] = (1 - FILL_ALPHA) * rgb[filled] + FILL_ALPHA * colours[prediction[filled]]
    outline = label_boundary(reference, outline_width)
    rgb[outline] = colours[reference[outline]]
    return np.round(rgb).astype(np.uint8)


def label_boundary(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a 2-D label map ``(H, W)``, as bool ``(H, W)``: labelled pixels within
    ``width`` 4-neighbour steps (inside their own label) of a pixel of another value. The map's own
    edge does not count as a neighbour."""
    labels = np.asarray(labels)
    boundary = np.zeros(labels.shape, bool)
    inside = labels.copy()
    for _ in range(max(int(width), 1)):
        padded = np.pad(inside, 1, mode="edge")
        centre = padded[1:-1, 1:-1]
        ring = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
                | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre)) & (centre != 0)
        ring &= ~boundary
        boundary |= ring
        inside = np.where(ring, -1, inside)  # peel the ring off: the next ring lies one step further in
    return boundary & (labels != 0)


def colour_table(top: int) -> np.ndarray:
    """``(top + 1, 3)`` float32: row ``v`` is the colour of label value ``v`` (row 0 unused)."""
    table = np.zeros((top + 1, 3), dtype=np.float32)
    values = np.arange(1, top + 1)
    if values.size:
        table[1:] = np.array([colour for _, colour in PALETTE], np.float32)[(values - 1) % len(PALETTE)]
    return table


def panel_repeats(shape: tuple[int, int], spacing: tuple[float, float], min_panel: int = MIN_PANEL
                  ) -> tuple[int, int]:
    """Whole-pixel repeats ``(rows, cols)`` for a slice of ``shape`` ``(H, W)`` and pixel ``spacing``
    (row, column mm): square pixels, the longer side at least ``min_panel`` where it was shorter."""
    finest = min(spacing)
    aspect = [max(1, round(s / finest)) for s in spacing]
    longest = max(n * a for n, a in zip(shape, aspect))
    scale = max(1, math.ceil(min_panel / max(longest, 1)))
    return aspect[0] * scale, aspect[1] * scale


__all__ = ["FILL_ALPHA", "MIN_PANEL", "NEUTRAL_GREY", "PALETTE", "PLANE_CAPTIONS", "ComparedPlane", "PlaneOverlay",
           "case_overlays", "class_colour", "class_colour_hex", "class_colour_name", "colour_table", "compare_overlays",
           "draw_panel", "label_box", "label_boundary", "panel_repeats", "window", "worst_slice"]
