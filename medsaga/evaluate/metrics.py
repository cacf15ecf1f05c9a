"""Dice, HD95 and normalised surface Dice (NSD) of one class: two binary masks on one grid, in mm.

The surfaces and surface distances come from MONAI: :func:`monai.metrics.utils.get_edge_surface_distance`,
the function that :func:`monai.metrics.compute_hausdorff_distance` and
:func:`monai.metrics.compute_surface_dice` both call. We call it once and reduce its two distance
sets exactly as those two functions do (tests check that the results are equal): that halves the
time, avoids their float32 copies of the masks, and avoids ``torch.quantile``'s limit of 2**24
values (a speckled prediction on a large CT can have more surface voxels than that).

Dice is ``2 |P & G| / (|P| + |G|)`` from exact integer voxel counts, the value
:func:`monai.metrics.compute_dice` gives (tests check it), without its copies: on a body-sized
class of a 512 x 512 x 300 CT, MONAI's took 1.1 s and 660 MB more memory than the counts.

What the surface is (MONAI's definition, without sub-voxel areas): the mask voxels that have a
6-connected neighbour outside the mask (or outside the image), i.e. ``mask & ~binary_erosion(mask)``.
Distances go from voxel centre to voxel centre, in mm, using the voxel spacing along ``(i, j, k)``.

- **HD95**: the 95th percentile (linear interpolation) of the distances from each prediction
  surface voxel to the nearest reference surface voxel, the same the other way round, and the
  larger of the two.
- **NSD** at tolerance ``tau`` mm: the number of surface voxels of both masks that lie within
  ``tau`` (``<=``) of the other mask's surface, divided by the number of surface voxels of both.

Empty masks are decided here, before MONAI is called (MONAI would give ``nan``/``inf`` and warn):

================================  =====  =====  =====  =================
reference (GT)  /  prediction     Dice   HD95   NSD    status
================================  =====  =====  =====  =================
non-empty / non-empty             value  value  value  ``ok``
empty / empty                     1      0      1      ``both empty``
empty / non-empty                 0      NaN    0      ``false positive``
non-empty / empty                 0      NaN    0      ``missed``
================================  =====  =====  =====  =================

A false positive scores 0, never 1: predicting a structure that is not there is an error (SAMed's
evaluation scored such a case as Dice 1). HD95 is undefined when one surface is missing, so it is
NaN, never a made-up large distance; the status says why. How cases enter the means is decided in
:mod:`medsaga.evaluate.summary`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Status = Literal["ok", "both empty", "false positive", "missed"]
STATUSES: tuple[Status, ...] = ("ok", "both empty", "false positive", "missed")
HD_PERCENTILE = 95.0


@dataclass(frozen=True)
class ClassMetrics:
    """The metrics of one class in one case.

    Attributes:
        dice: Dice coefficient in [0, 1].
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm; NaN when one mask is empty.
        nsd: normalised surface Dice in [0, 1] at the tolerance it was computed with.
        status: ``"ok"``, ``"both empty"``, ``"false positive"`` or ``"missed"`` (module docstring).
        gt_voxels: voxels of the class in the reference.
        pred_voxels: voxels of the class in the prediction.
    """

    dice: float
    hd95_mm: float
    nsd: float
    status: Status
    gt_voxels: int
    pred_voxels: int


def empty_case_metrics(gt_voxels: int, pred_voxels: int) -> ClassMetrics | None:
    """The metrics fixed by the empty-mask rule, or ``None`` when both masks hold voxels."""
    if gt_voxels == 0 and pred_voxels == 0:
        return ClassMetrics(1.0, 0.0, 1.0, "both empty", 0, 0)
    if gt_voxels == 0:
        return ClassMetrics(0.0, math.nan, 0.0, "false positive", 0, pred_voxels)
    if pred_voxels == 0:
        return ClassMetrics(0.0, math.nan, 0.0, "missed", gt_voxels, 0)
    return None


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> ClassMetrics:
    """Dice, HD95 and NSD of a predicted mask against a reference mask.

    Args:
        pred: predicted mask ``(I, J, K)`` (bool, or anything where nonzero means inside).
        gt: reference mask, same shape.
        spacing: voxel size in mm along ``i, j, k``, length 3.
        tolerance_mm: NSD tolerance in mm (``>= 0``).

    Returns:
        The metrics; see the module docstring for empty masks.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} != {gt.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {pred.ndim}-D masks")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0 mm, got {tolerance_mm}")
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    gt_voxels, pred_voxels = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    fixed = empty_case_metrics(gt_voxels, pred_voxels)
    if fixed is not None:
        return fixed
    dice = 2.0 * int(np.count_nonzero(pred & gt)) / (gt_voxels + pred_voxels)
    box = union_box(pred, gt)
    pred_to_gt, gt_to_pred = _monai_surface_distances(pred[box], gt[box], [float(s) for s in spacing])
    hd95 = max(float(np.percentile(pred_to_gt, HD_PERCENTILE)), float(np.percentile(gt_to_pred, HD_PERCENTILE)))
    within = np.count_nonzero(pred_to_gt <= tolerance_mm) + np.count_nonzero(gt_to_pred <= tolerance_mm)
    nsd = float(within) / float(pred_to_gt.size + gt_to_pred.size)
    return ClassMetrics(dice, hd95, nsd, "ok", gt_voxels, pred_voxels)


def union_box(pred: np.ndarray, gt: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``pred | gt`` (any shape, not both empty), one voxel wider on each side
    where the image allows.

    Cropping to it changes no metric: Dice counts only voxels inside, and the one-voxel margin
    keeps every surface voxel a surface voxel (a mask touching the image border is eroded by
    the border there, exactly as it is without the crop). It keeps MONAI's tensors small.
    """
    box = []
    for axis in range(pred.ndim):
        others = tuple(a for a in range(pred.ndim) if a != axis)
        filled = np.flatnonzero(np.any(pred, axis=others) | np.any(gt, axis=others))
        box.append(slice(max(int(filled[0]) - 1, 0), min(int(filled[-1]) + 2, pred.shape[axis])))
    return tuple(box)


def _monai_surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's two directed surface-distance sets (mm) between non-empty masks ``(I, J, K)``:
    from each prediction surface voxel to the reference surface, and back."""
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred_t, gt_t = torch.from_numpy(np.ascontiguousarray(pred)), torch.from_numpy(np.ascontiguousarray(gt))
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about its own use of a deprecated argument of get_mask_edges; masks
        # are never empty here, so its empty-mask warnings cannot apply either.
        warnings.simplefilter("ignore", FutureWarning)
        _, (pred_to_gt, gt_to_pred), _ = get_edge_surface_distance(pred_t, gt_t, distance_metric="euclidean",
                                                                    spacing=spacing, symmetric=True)
    return _numpy(pred_to_gt), _numpy(gt_to_pred)


def _numpy(values: object) -> np.ndarray:
    import torch

    return values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
