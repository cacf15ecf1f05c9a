"""The one image type of medsaga: voxels that carry their geometry.

Conventions (those of nibabel, so that NIfTI, by far the most common input, needs no conversion):

- ``array`` is indexed ``(i, j, k)``: ``i`` is the fastest-varying index on disk (NIfTI ``x``,
  DICOM/ITK column index), ``k`` the slowest (slice index).
- ``affine`` is a ``(4, 4)`` float64 matrix that maps a voxel index ``(i, j, k, 1)`` to world
  millimetres in **RAS+**: +x towards the patient's Right, +y Anterior, +z Superior.
- ITK and DICOM use LPS+; :func:`lps_to_ras` converts. The two differ only by the sign of x and y.

A ``Volume`` never crosses a module boundary without its affine: see DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# Flips x and y: RAS+ <-> LPS+ (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SourceInfo:
    """Where a volume came from, and what is needed to write a label map that overlays on it.

    Attributes:
        path: the file, or the DICOM series folder, it was read from.
        format: ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"dicom"``, ``"dicom-seg"`` or ``"memory"``.
        nifti_header: the NIfTI header as read (qform/sform codes, intent, xyzt units), if NIfTI.
        dicom_files: the series' files sorted by slice position (index ``k`` order), if DICOM.
        series_instance_uid: the DICOM SeriesInstanceUID, if DICOM.
        metadata: other format-specific header fields worth keeping (string keys and values).
    """

    path: Path | None = None
    format: str = "memory"
    nifti_header: Any = None
    dicom_files: tuple[Path, ...] = ()
    series_instance_uid: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image or label map with its geometry.

    Attributes:
        array: voxels, shape ``(I, J, K)``; any numeric dtype as stored on disk.
        affine: ``(4, 4)`` float64, voxel index → RAS+ world millimetres.
        source: where it came from (header kept for writing outputs that overlay exactly).
    """

    array: np.ndarray
    affine: np.ndarray
    source: SourceInfo = field(default_factory=SourceInfo)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D (I, J, K), got shape {self.array.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along ``i, j, k``, shape ``(3,)``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS+, mm) of voxel ``(0, 0, 0)``'s centre, shape ``(3,)``."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit direction cosines (RAS+) of the ``i, j, k`` axes as the columns of a ``(3, 3)``."""
        return self.affine[:3, :3] / self.spacing

    @property
    def orientation(self) -> str:
        """Closest anatomical axis codes of ``i, j, k``, e.g. ``"RAS"`` or ``"LPS"``."""
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))

    def lps_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ITK-style ``(spacing (3,), origin (3,), direction (3, 3))`` in LPS+."""
        lps = LPS_TO_RAS @ self.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        return spacing, lps[:3, 3].copy(), lps[:3, :3] / spacing

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same grid and source with other voxels (e.g. a label map predicted on it)."""
        if array.shape != self.array.shape:
            raise ValueError(f"new array shape {array.shape} differs from the grid's {self.shape}")
        return replace(self, array=array)

    def flip(self, axis: int) -> "Volume":
        """The same voxels at the same world positions, stored with index ``axis`` (0, 1 or 2) reversed.

        ``array`` is flipped along ``axis`` and the affine changed so that every voxel keeps its
        world position: column ``axis`` changes sign and the origin moves to the old last voxel.
        """
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        affine = self.affine.copy()
        affine[:3, 3] += affine[:3, axis] * (self.array.shape[axis] - 1)
        affine[:3, axis] *= -1
        return replace(self, array=np.flip(self.array, axis=axis), affine=affine)

    def same_grid(self, other: "Volume", atol_mm: float = 1e-3, atol_dir: float = 1e-4) -> list[str]:
        """What differs between the two grids, as readable phrases; empty when they match.

        Tolerances: ``atol_mm`` on spacing and origin (mm), ``atol_dir`` on direction cosines.
        """
        problems: list[str] = []
        if self.shape != other.shape:
            return [f"shape {self.shape} != {other.shape}"]
        if not np.allclose(self.spacing, other.spacing, atol=atol_mm):
            problems.append(f"spacing {_fmt(self.spacing)} != {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, atol=atol_mm):
            problems.append(f"origin {_fmt(self.origin)} != {_fmt(other.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=atol_dir):
            problems.append(f"direction {self.orientation} != {other.orientation}"
                            if self.orientation != other.orientation
                            else "direction cosines differ")
        return problems


def lps_to_ras(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """RAS+ affine ``(4, 4)`` from ITK's LPS+ ``spacing (3,)``, ``origin (3,)``, ``direction (3, 3)``."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
