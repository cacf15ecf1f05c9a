"""The cohort as a picture: every scan's descriptor projected to 2-D, the picks marked.

The projection is the descriptors' first two principal components (the directions along which
the cohort varies most), so distances on the map are the largest part of the distances the
selection used. Each scan is a grey dot; each pick a filled orange square with its pick number;
lines join every scan to its nearest pick. Case ids label the picks (all scans when there are
few enough to read). Drawn with numpy and the built-in bitmap font; the result is an
``(H, W, 3)`` uint8 array for the project's PNG writer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsaga.benchmark.font import draw_text, text_height, text_width

SIZE = 640  # plot area, pixels
MARGIN = 40
SCALE = 2
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (120, 120, 120)
LINK = (200, 200, 200)
SCAN = (86, 86, 86)
PICK = (213, 94, 0)  # Okabe-Ito vermillion
_INSET = 16  # keeps the outermost marks off the axes
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


def render_cohort_map(coordinates: np.ndarray, explained: np.ndarray, case_ids: Sequence[str], picks: Sequence[int],
                      nearest_pick: np.ndarray, title: str) -> np.ndarray:
    """The map as ``(H, W, 3)`` uint8 (module docstring), from :func:`principal_plane`'s ``(N, 2)``
    coordinates and ``(2,)`` explained variance fractions."""
    line = text_height(SCALE) + 6
    top = MARGIN + 2 * line
    image = np.full((top + SIZE + MARGIN + line, SIZE + 2 * MARGIN + 160, 3), BACKGROUND, np.uint8)
    draw_text(image, title, MARGIN, MARGIN // 2, INK, SCALE)
    draw_text(image, f"principal components 1 ({explained[0]:.0%} of the variance) and 2 ({explained[1]:.0%})",
              MARGIN, MARGIN // 2 + line, MUTED, SCALE)
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    pixels = np.empty_like(coordinates)
    inner = SIZE - 1 - 2 * _INSET
    pixels[:, 0] = MARGIN + _INSET + (coordinates[:, 0] - low[0]) / span[0] * inner
    pixels[:, 1] = top + _INSET + (1 - (coordinates[:, 1] - low[1]) / span[1]) * inner  # up is positive
    points = np.round(pixels).astype(int)
    image[top:top + SIZE, MARGIN - 1] = LINK
    image[top + SIZE, MARGIN - 1:MARGIN + SIZE] = LINK
    for index, nearest in enumerate(nearest_pick):
        _line(image, points[index], points[picks[int(nearest)]], LINK)
    picked = set(int(p) for p in picks)
    for index, (x, y) in enumerate(points):
        if index not in picked:
            _square(image, x, y, 3, SCAN)
            if len(case_ids) <= _NAMED_SCANS:
                draw_text(image, case_ids[index], x + 6, y - text_height(1) // 2, MUTED, 1)
    for number, index in enumerate(picks, start=1):
        x, y = points[int(index)]
        _square(image, x, y, 6, PICK)
        label = f"{number}: {case_ids[int(index)]}"
        left = min(x + 9, image.shape[1] - text_width(label, SCALE) - 2)
        draw_text(image, label, left, y - text_height(SCALE) // 2, PICK, SCALE)
    draw_text(image, f"{len(case_ids)} scans, {len(picks)} picks (orange, in pick order); grey lines: "
                     "each scan to its nearest pick", MARGIN, top + SIZE + 8, MUTED, 1)
    return image


def _square(image: np.ndarray, x: int, y: int, half: int, colour: tuple[int, int, int]) -> None:
    image[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = colour


def _line(image: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A one-pixel line from ``start`` to ``end`` ``(x, y)``, sampled once per pixel of its length."""
    steps = int(max(abs(end - start).max(), 1))
    t = np.linspace(0.0, 1.0, steps + 1)
    xs = np.round(start[0] + t * (end[0] - start[0])).astype(int)
    ys = np.round(start[1] + t * (end[1] - start[1])).astype(int)
    inside = (xs >= 0) & (xs < image.shape[1]) & (ys >= 0) & (ys < image.shape[0])
    image[ys[inside], xs[inside]] = colour
