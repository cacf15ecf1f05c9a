"""Volumes to stacks of 2-D slices along an anatomical plane, and back, without resampling.

A stack is the volume's voxels reoriented, by an axis permutation and flips only, to one fixed
anatomical layout per plane, so that the same scan stored RAS, LPS or in any other axis order
gives identical slices. The layout is the one a radiologist sees on a DICOM viewer.

Stack ``(N, H, W)``: ``array[n]`` is slice ``n``; row index ``r`` runs down the image, column
index ``c`` to the right. Each index grows towards:

- ``axial``:    ``n`` Superior (inferior slice first), ``r`` Posterior (anterior at the top),
  ``c`` patient Left (patient right on the image's left).
- ``coronal``:  ``n`` Posterior (anterior slice first), ``r`` Inferior (superior at the top),
  ``c`` patient Left.
- ``sagittal``: ``n`` patient Left (right slice first), ``r`` Inferior (superior at the top),
  ``c`` Posterior (anterior on the image's left).

Slices are always ordered along the LPS+ (DICOM) axis normal to the plane: L, P or S.

For oblique grids (direction cosines not aligned with the anatomical axes) each voxel axis is
assigned to its *closest* anatomical axis (:func:`closest_orientation`); the voxels are never
interpolated, so slicing is exactly invertible and :attr:`SliceGeometry.affine` still gives each
stack voxel's exact world position. Even for grids rotated by exactly 45°, where two anatomical
axes are equally close, the choice depends on the grid only, not on its storage order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from medsaga.errors import InputError
from medsaga.io.volume import SourceInfo, Volume

# Axis codes (nibabel convention: the direction each index grows towards) of the stack's
# (slice, row, column) axes, per plane. See the module docstring for the table.
PLANES: dict[str, tuple[str, str, str]] = {
    "axial": ("S", "P", "L"),
    "coronal": ("P", "I", "L"),
    "sagittal": ("L", "I", "P"),
}


class SliceSpacing(NamedTuple):
    """Voxel size of a slice stack in mm: ``row`` (H direction), ``col`` (W direction) and
    ``slice``, the centre-to-centre distance between neighbouring slices (what metrics such as
    surface distances need; DICOM's SliceThickness may differ from it)."""

    row: float
    col: float
    slice: float


@dataclass(frozen=True, eq=False)
class SliceGeometry:
    """How a volume's grid maps to a slice stack and back (no voxels, only geometry).

    Attributes:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        transform: ``(3, 2)`` nibabel orientation transform from the volume's ``(i, j, k)`` axes
            to the stack's ``(n, r, c)`` axes: row ``a`` says which stack axis volume axis ``a``
            becomes, and whether it is flipped (-1) or not (1).
        source_shape: the volume's ``(I, J, K)``.
        source_affine: the volume's ``(4, 4)`` voxel → RAS+ mm affine.
        source: the volume's :class:`SourceInfo`, given back unchanged by :meth:`to_volume`.
        affine: ``(4, 4)`` stack voxel ``(n, r, c, 1)`` → RAS+ mm.
    """

    plane: str
    transform: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    source: SourceInfo
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The stack's ``(N, H, W)``."""
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.transform):
            shape[int(target)] = self.source_shape[axis]
        return tuple(shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> SliceSpacing:
        """In-plane pixel spacing and slice spacing of the stack, in mm."""
        slice_mm, row_mm, col_mm = np.linalg.norm(self.affine[:3, :3], axis=0)
        return SliceSpacing(row=float(row_mm), col=float(col_mm), slice=float(slice_mm))

    def to_stack(self, array: np.ndarray) -> np.ndarray:
        """Voxels ``(I, J, K)`` on the source grid → ``(N, H, W)`` stack.

        Returns a view (no copy), possibly with negative strides: copy it (e.g. with
        ``np.ascontiguousarray``) before ``torch.from_numpy``.
        """
        import nibabel.orientations as nio

        if tuple(array.shape) != self.source_shape:
            raise ValueError(f"array shape {array.shape} is not the source grid's {self.source_shape}")
        return nio.apply_orientation(array, self.transform)

    def to_volume(self, stack: np.ndarray) -> Volume:
        """``(N, H, W)`` stack (any dtype, e.g. predicted labels) → :class:`Volume` on the source
        grid: same shape, affine and source as the volume that was sliced.

        The array is a fresh C-contiguous copy: predictions are small, and writers and torch
        handle the flipped views that reorientation makes badly.
        """
        import nibabel.orientations as nio

        if tuple(stack.shape) != self.shape:
            raise ValueError(f"stack shape {stack.shape} is not the {self.plane} stack's {self.shape}")
        # The inverse of a permutation with flips: stack axis t goes back to the volume axis that
        # became t, flipped the same way.
        back = np.empty_like(self.transform)
        for axis, (target, flip) in enumerate(self.transform):
            back[int(target)] = (axis, flip)
        array = np.ascontiguousarray(nio.apply_orientation(stack, back))
        return Volume(array, self.source_affine.copy(), self.source)


@dataclass(frozen=True, eq=False)
class SliceStack:
    """A volume's voxels as 2-D slices, with what is needed to put them back.

    Attributes:
        array: ``(N, H, W)``, the volume's dtype, a view of its voxels (see
            :meth:`SliceGeometry.to_stack`); ``array[n]`` is slice ``n`` in the layout of the
            module docstring.
        geometry: the mapping to and from the volume's grid.
    """

    array: np.ndarray
    geometry: SliceGeometry

    @property
    def plane(self) -> str:
        return self.geometry.plane

    @property
    def spacing(self) -> SliceSpacing:
        """In-plane pixel spacing and slice spacing, in mm."""
        return self.geometry.spacing


def check_plane(plane: str) -> str:
    """``plane`` if it is one of :data:`PLANES`, else :class:`InputError` listing them."""
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; choose one of: {', '.join(PLANES)}")
    return plane


def slice_geometry(volume: Volume, plane: str = "axial") -> SliceGeometry:
    """The geometry of ``volume``'s ``plane`` stack, without touching its voxels."""
    import nibabel.orientations as nio

    check_plane(plane)
    ornt = closest_orientation(volume.affine)
    if ornt is None:
        raise InputError("degenerate affine: cannot tell which anatomical direction each voxel axis points to",
                         volume.source.path)
    transform = nio.ornt_transform(ornt, _stack_ornt(plane))
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.shape)
    return SliceGeometry(plane, transform, volume.shape, volume.affine.copy(), volume.source, affine)


def slice_volume(volume: Volume, plane: str = "axial") -> SliceStack:
    """``volume`` as a stack of ``plane`` slices ``(N, H, W)``, laid out as in the module docstring.

    A pure axis permutation and flips of ``volume.array`` (a view, no copy, no resampling).
    """
    geometry = slice_geometry(volume, plane)
    return SliceStack(geometry.to_stack(volume.array), geometry)


def plane_spacing(volume: Volume, plane: str = "axial") -> SliceSpacing:
    """Pixel spacing (row, col) and slice spacing, in mm, of ``volume``'s ``plane`` slices."""
    return slice_geometry(volume, plane).spacing


def unslice(slices: np.ndarray, reference: Volume | SliceStack | SliceGeometry, plane: str | None = None) -> Volume:
    """Stack ``(N, H, W)`` → :class:`Volume` on ``reference``'s exact grid (shape, affine, source).

    ``reference`` is the volume that was sliced, or its stack or geometry. ``plane`` defaults to
    the stack's or geometry's plane, and to ``"axial"`` for a volume; naming another plane than
    the stack's is an error. The dtype of ``slices`` is kept.
    """
    if isinstance(reference, Volume):
        geometry = slice_geometry(reference, plane or "axial")
    else:
        geometry = reference.geometry if isinstance(reference, SliceStack) else reference
        if plane is not None and plane != geometry.plane:
            raise ValueError(f"plane {plane!r} differs from the reference stack's {geometry.plane!r}")
    return geometry.to_volume(np.asarray(slices))


def closest_orientation(affine: np.ndarray) -> np.ndarray | None:
    """The closest anatomical axis of each voxel axis of ``affine`` ``(4, 4)``, as a ``(3, 2)``
    nibabel orientation (world axis 0/1/2 = R/A/S, sign); ``None`` for a degenerate affine.

    nibabel's ``io_orientation`` rule (the axis with the largest direction cosine goes first and
    takes its closest world axis, and so on) with one difference: ties, which are exact for
    grids rotated by exactly 45°, are broken by the direction vectors themselves rather than by
    the storage order of the axes. So every storage order (RAS, LPS, permuted axes...) of one
    grid gets the same stack, even then. (io_orientation also first orthogonalises sheared
    affines; that only matters for strongly sheared grids, and its SVD would turn exact ties
    into storage-dependent near-ties.)
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.sqrt(np.sum(columns * columns, axis=0))
    if not (np.isfinite(columns).all() and (norms > 0).all()):
        return None
    unit = columns / norms
    if abs(np.linalg.det(unit)) < 1e-6:
        return None
    largest = np.abs(unit).max(axis=0)
    # Each axis as a line independent of its sign (flipped storage): pointing towards its
    # largest component. Distinct axes of a non-degenerate grid give distinct lines.
    lines = unit * np.sign(unit[np.abs(unit).argmax(axis=0), range(3)])
    order = sorted(range(3), key=lambda a: (-largest[a], tuple(lines[:, a])))
    ornt = np.zeros((3, 2))
    free = np.ones(3, dtype=bool)
    for axis in order:
        strength = np.where(free, np.abs(unit[:, axis]), -1.0)
        world = int(strength.argmax())  # ties: the lowest world axis, as in nibabel
        if unit[world, axis] == 0:
            return None
        ornt[axis] = (world, np.sign(unit[world, axis]))
        free[world] = False
    return ornt


def _stack_ornt(plane: str) -> np.ndarray:
    import nibabel.orientations as nio

    return nio.axcodes2ornt(PLANES[plane])
