"""The cohort as a picture: every scan's descriptor projected to 2-D, the picks marked.

The projection is the descriptors' first two principal components (the directions along which
the cohort varies most), so distances on the map are the largest part of the distances the
selection used; both axes have the same scale, so the map does not stretch them. Each scan is a
grey dot; each pick a filled vermillion square with its pick number; grey lines join every scan
to its nearest pick. Case ids label the picks (all scans when there are few enough to read).
Drawn with matplotlib (Agg, no pyplot) through :mod:`medsaga.report.figures`, as every other
picture medsaga makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medsaga.report.figures import INK, MUTED, figure_png, new_figure, style_axes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIZE_INCHES = 8.0  # the figure's side before cropping; 100 px per inch
LINK = "#c8c8c8"
SCAN = "#565656"
PICK = "#d55e00"  # Okabe-Ito vermillion
# Past this many scans, only the picks are named: the names would cover each other.
_NAMED_SCANS = 40


def principal_plane(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` → the ``(N, 2)`` coordinates on the first two principal components, and the
    ``(2,)`` fraction of the cohort's variance each explains."""
    centred = np.asarray(descriptors, np.float64) - np.mean(descriptors, axis=0)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((centred.shape[0], 2))
    components = min(2, right.shape[0])
    coordinates[:, :components] = centred @ right[:components].T
    variance = singular**2
    explained = np.zeros(2)
    explained[:components] = variance[:components] / max(variance.sum(), 1e-30)
    return coordinates, explained


def cohort_figure(coordinates: np.ndarray, explained: np.ndarray, case_ids: Sequence[str], picks: Sequence[int],
                  nearest_pick: np.ndarray, title: str) -> "Figure":
    """The map (module docstring) as a matplotlib figure, from :func:`principal_plane`'s ``(N, 2)``
    coordinates and ``(2,)`` explained variance fractions; ``picks`` are indices into the scans in
    pick order, ``nearest_pick`` ``(N,)`` each scan's nearest pick as an index into ``picks``.

    The scans are the collection labelled ``"scans"``, the picks the one labelled ``"picks"``.
    """
    from matplotlib import patheffects
    from matplotlib.collections import LineCollection

    coordinates = np.asarray(coordinates, float)
    picks = [int(p) for p in picks]
    picked = set(picks)
    others = [i for i in range(len(case_ids)) if i not in picked]
    figure = new_figure(SIZE_INCHES, SIZE_INCHES)
    axes = figure.subplots()
    links = [(coordinates[i], coordinates[picks[int(nearest)]]) for i, nearest in enumerate(nearest_pick)
             if i not in picked]
    axes.add_collection(LineCollection(links, colors=LINK, linewidths=0.8, zorder=1))
    axes.scatter(coordinates[others, 0], coordinates[others, 1], s=22, marker="o", color=SCAN, zorder=2,
                 label="scans")
    axes.scatter(coordinates[picks, 0], coordinates[picks, 1], s=90, marker="s", color=PICK, edgecolor=INK,
                 linewidth=0.6, zorder=3, label="picks")
    if len(case_ids) <= _NAMED_SCANS:
        for index in others:
            axes.annotate(case_ids[index], coordinates[index], xytext=(5, 3), textcoords="offset points",
                          fontsize=7, color=MUTED)
    for number, index in enumerate(picks, start=1):
        axes.annotate(f"{number}: {case_ids[index]}", coordinates[index], xytext=(7, 4), textcoords="offset points",
                      fontsize=9, color=PICK, fontweight="bold", zorder=4,
                      path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])  # legible over dots
    axes.set_aspect("equal", adjustable="datalim")
    axes.margins(0.08)
    style_axes(axes, title, f"principal component 1 ({explained[0]:.0%} of the variance)",
               f"principal component 2 ({explained[1]:.0%})")
    axes.text(0.0, -0.1, f"{len(case_ids)} scans, {len(picks)} picks (vermillion squares, numbered in pick "
                         "order); grey lines: each scan to its nearest pick", transform=axes.transAxes, fontsize=8,
              color=MUTED, va="top")
    return figure


def render_cohort_map(coordinates: np.ndarray, explained: np.ndarray, case_ids: Sequence[str], picks: Sequence[int],
                      nearest_pick: np.ndarray, title: str) -> bytes:
    """:func:`cohort_figure` as PNG bytes (about 800 pixels square)."""
    return figure_png(cohort_figure(coordinates, explained, case_ids, picks, nearest_pick, title))


__all__ = ["PICK", "SCAN", "cohort_figure", "principal_plane", "render_cohort_map"]
