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

``medsaga evaluate --overlay`` writes one picture per case into ``OUT/overlays/``
(:data:`OVERLAY_FOLDER`) while it evaluates (:class:`OverlayWriter`), windowed by
:func:`overlay_preset`, and records :func:`overlay_legend` in metrics.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medsaga.data.intensity import IntensityPreset, choose_preset, intensity_range
from medsaga.data.slicing import plane_spacing, slice_volume
from medsaga.evaluate.matching import Matching
from medsaga.evaluate.outputs import OVERLAY_FOLDER
from medsaga.evaluate.run import CaseResult, Evaluation, present_classes, read_image
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


def channel_name(path: Path | None) -> str | None:
    """Channel 0's name in a dataset.json (``channel_names`` or ``modality``), in a run's config.json
    (``"dataset": {"channel_names": ...}``), or in the one of these that a folder holds (config.json
    first); ``None`` where there is none or the file cannot be read: only a picture's window depends
    on it, which then falls back to percentiles."""
    if path is not None and path.is_dir():
        path = next((path / name for name in ("config.json", "dataset.json") if (path / name).is_file()), None)
    if path is None or not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict):
        return None
    run_dataset = spec.get("dataset")
    names = spec.get("channel_names") or spec.get("modality") or \
        (run_dataset.get("channel_names") if isinstance(run_dataset, dict) else None)
    if isinstance(names, dict) and "0" in names:
        return str(names["0"])
    if isinstance(names, list) and names:
        return str(names[0])
    return None


def overlay_preset(explicit: str | None, candidates: Sequence[Path | None]) -> str | None:
    """The intensity preset of the pictures: ``explicit`` (``--intensity``, validated before any
    work), else the one for the first channel name found in ``candidates`` (dataset.json files, a
    run folder or its config.json: :func:`channel_name`); ``None`` when neither decides (then each
    image's DICOM modality does, else per-volume percentiles)."""
    if explicit is not None:
        return choose_preset(None, explicit).name
    channel = next((name for name in map(channel_name, candidates) if name is not None), None)
    return choose_preset(channel).name if channel is not None else None


class OverlayWriter:
    """``on_case`` callback of :func:`medsaga.evaluate.evaluate`: writes each case's picture
    (:func:`render_overlay`) to ``folder/CASE.png``, atomically.

    Args:
        folder: where the pictures go (made with the first one).
        images: case id → image file, for every case (checked against the reference grids).
        preset: the intensity preset; ``None``: each image's DICOM modality decides, else percentiles.
        slices: axial slices per picture.
        matching: the evaluation's pairs.
    """

    def __init__(self, folder: Path, images: Mapping[str, Path], preset: str | None, slices: int,
                 matching: Matching) -> None:
        self.folder = Path(folder)
        self.images = dict(images)
        self.preset = preset
        self.slices = slices
        self.pairs = {pair.case_id: pair for pair in matching.pairs}

    def __call__(self, result: CaseResult, predicted: Volume, truth: Volume) -> None:
        from medsaga.io.atomic import atomic_output, write_errors
        from medsaga.report.figures import png_bytes

        image = read_image(self.images[result.case_id], truth, self.pairs[result.case_id])
        window = self.preset or choose_preset(image.source.metadata.get("modality")).name
        picture = render_overlay(image, predicted, truth, window, self.slices)
        with write_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.folder / f"{result.case_id}.png") as temporary:
            temporary.write_bytes(png_bytes(picture))


def overlay_legend(evaluation: Evaluation, shown: int | None = None) -> dict[str, str]:
    """Which colour is which class, for the classes some case holds (``shown``: at most that many
    named): metrics.json's ``overlays`` entry."""
    classes = present_classes(evaluation)
    words = [f"{c.label} {class_colour_name(c.value)}" for c in classes]
    text = ", ".join(words if shown is None else words[:shown])
    if shown is not None and len(words) > shown:
        text += f" and {len(words) - shown} more (in metrics.json)"
    if classes and max(c.value for c in classes) > len(PALETTE):
        text += f"; colours repeat every {len(PALETTE)} label values"
    return {"fill": "prediction", "outline": "ground truth", "colours": text}


__all__ = ["FILL_ALPHA", "GAP", "MIN_PANEL", "OVERLAY_FOLDER", "PALETTE", "OverlayWriter", "channel_name",
           "choose_slices", "class_colour", "class_colour_name", "label_boundary", "overlay_legend",
           "overlay_preset", "render_overlay"]
