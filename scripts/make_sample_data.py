#!/usr/bin/env python3
"""Generate medsaga's synthetic demo dataset: abdominal CT phantoms in the nnU-Net v2 layout.

Every case is a small CT-like volume of a synthetic "patient": a body of fat and muscle in air,
three labelled organs (1 liver, 2 kidneys, 3 spleen) and unlabelled distractors (vertebrae and
discs, ribs, psoas and back muscles, aorta, inferior vena cava, bowel loops with gas). The anatomy
is defined in physical RAS+ millimetres (+x patient's Right, +y Anterior, +z Superior) and
rasterised through each case's own voxel-to-world affine, so the different orientations (RAS,
LPS, sagittal PSR, coronal LIP, oblique, ...) are different sampling geometries of the same kind of
body, not array flips. Edges get a partial-volume ramp as wide as the voxel is along the surface
normal, so thick slices look like thick slices. Gaussian noise is added and images stored as int16.

Output (``--out``)::

    dataset.json                       nnU-Net v2 metadata (+ a few-shot split, licence)
    README.md                          one line per case: shape, spacing, orientation, volumes
    imagesTr/phantom_XXX_0000.nii.gz   int16 Hounsfield units
    labelsTr/phantom_XXX.nii.gz        uint8 labels on exactly the image's grid

The output is a pure function of ``--seed``: running the script twice gives byte-identical files.
Two things make that true: every case draws from its own ``numpy.random.default_rng([seed, case])``
stream, and the ``.nii.gz`` container is written here with a fixed gzip header (no mtime, no file
name, fixed OS byte) around zlib's raw deflate of nibabel's ``to_bytes()``, so neither the clock
nor the Python version's ``gzip`` module leaks into the bytes.

Regenerate the committed copy (``tests/test_sample_data.py`` checks it matches this script)::

    python scripts/make_sample_data.py --out sample_data --force

Only numpy and nibabel are needed: the script does not import medsaga, so it runs anywhere.
The generated data are synthetic and dedicated to the public domain (CC0 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS: dict[str, int] = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}
FILE_ENDING = ".nii.gz"
CASE_PREFIX = "phantom_"
N_FEW_SHOT_TRAIN = 5  # cases 1-5 are the few-shot training set, the rest are held out

# Nominal Hounsfield units (portal-venous-phase-like). Each case jitters them by a few HU.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "visceral_fat": -90.0,
    "muscle": 45.0,
    "liver": 60.0,
    "spleen": 45.0,
    "kidney_cortex": 70.0,
    "kidney_medulla": 30.0,
    "bowel": 25.0,
    "gas": -950.0,
    "aorta": 150.0,
    "ivc": 110.0,
    "disc": 90.0,
    "cortical_bone": 700.0,
    "cancellous_bone": 300.0,
    "rib": 500.0,
    "csf": 15.0,
}
HU_MIN, HU_MAX = -1024, 3071  # the usual 12-bit CT range
SUPERIOR = (0.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Per-case sampling geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseGeometry:
    """How one case samples the world: grid size, voxel size, axis directions and obliquity.

    Attributes:
        shape: voxels along ``(i, j, k)``.
        spacing: voxel size in mm along ``(i, j, k)``.
        axcodes: the world direction each voxel axis points to, nibabel style (``"PSR"``: ``i``
            towards Posterior, ``j`` Superior, ``k`` Right).
        tilt_deg: small rotation of the whole grid about world x, y, z (degrees), applied after
            ``axcodes``; non-zero makes the case oblique.
        description: a few words for the README.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axcodes: str
    tilt_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    description: str = ""


# Fixed (not seed-dependent) so that the README table and the tests can name them. Extents are
# chosen to cover the ~230 x 170 mm body and the ~130 mm of abdomen holding the organs, except
# case 7, whose small field of view crops the body sides as a tight reconstruction FOV would.
CASES: tuple[CaseGeometry, ...] = (
    CaseGeometry((64, 64, 24), (3.8, 3.8, 5.0), "RAS", description="axial"),
    CaseGeometry((72, 60, 30), (3.4, 3.4, 4.0), "LPS", description="axial, DICOM/ITK-like"),
    CaseGeometry((56, 48, 36), (4.0, 4.0, 3.0), "LAS", (6.0, 0.0, 3.0), "axial, gantry tilt"),
    CaseGeometry((48, 40, 40), (4.0, 3.5, 6.0), "PSR", description="sagittal slices"),
    CaseGeometry((64, 40, 30), (3.8, 3.2, 6.0), "LIP", description="coronal slices"),
    CaseGeometry((80, 64, 20), (3.0, 3.0, 6.0), "RAS", (0.0, 4.0, 8.0), "axial, oblique"),
    CaseGeometry((48, 40, 16), (4.0, 4.0, 6.0), "RPI", description="axial, cropped FOV"),
    CaseGeometry((60, 72, 28), (3.0, 3.4, 4.5), "ARS", description="axial, i/j swapped"),
)

_AXIS_OF_CODE = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def direction_matrix(axcodes: str) -> np.ndarray:
    """Columns are the RAS+ unit vectors that voxel axes ``i, j, k`` point along."""
    directions = np.zeros((3, 3))
    for column, code in enumerate(axcodes):
        axis, sign = _AXIS_OF_CODE[code]
        directions[axis, column] = sign
    if sorted(_AXIS_OF_CODE[c][0] for c in axcodes) != [0, 1, 2]:
        raise ValueError(f"axcodes {axcodes!r} must name each world axis once")
    return directions


def rotation_matrix(degrees_xyz: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (extrinsic), angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(degrees_xyz, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def case_affine(geometry: CaseGeometry, fov_centre: np.ndarray) -> np.ndarray:
    """Voxel-to-RAS+ affine whose grid centre lands on ``fov_centre`` (mm).

    Rounded to float32, the precision of the NIfTI sform, so that the geometry used to rasterise
    is exactly the one any reader gets back from the file.
    """
    linear = rotation_matrix(geometry.tilt_deg) @ direction_matrix(geometry.axcodes)
    linear = linear * np.asarray(geometry.spacing)[None, :]
    centre_index = (np.asarray(geometry.shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = fov_centre - linear @ centre_index
    return affine.astype(np.float32).astype(np.float64)


class Grid:
    """World coordinates of every voxel of a case, plus what partial-volume modelling needs."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray) -> None:
        self.shape = shape
        self.affine = affine
        ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
        self.xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]  # (3, N), RAS+ mm
        # Voxel edge vectors (columns, mm): the width of a voxel along a unit normal n is
        # sum_i |n . edge_i|, which sets how wide a surface's partial-volume ramp is.
        self.edges = affine[:3, :3]

    def coverage(self, distance: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Fraction of each voxel inside a surface, from signed distance (mm, < 0 inside).

        A voxel straddling a locally planar surface is filled linearly in the distance across
        the voxel's width along the normal (a box filter of the edge), so the fraction is 0.5 on
        the surface and saturates half a voxel-width either side.
        """
        width = np.abs(self.edges.T @ normal).sum(axis=0)
        return np.clip(0.5 - distance / np.maximum(width, 1e-6), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Shapes as signed distance fields (approximate near the surface, which is all that matters)
# --------------------------------------------------------------------------------------------

# A field maps world points (3, N) to (signed distance mm, unit outward normal (3, N)).
Field = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def superellipsoid(
    centre: Sequence[float],
    semi_axes: Sequence[float],
    rotation: np.ndarray | None = None,
    exponent: float = 2.0,
) -> Field:
    """Solid ``sum |q_a / a|^p <= 1`` in the local frame ``q = R^T (x - centre)``.

    ``p = 2`` is an ellipsoid; an infinite semi-axis makes a cylinder along that local axis; a
    larger ``p`` squares the cross-section off (an abdomen is flatter than an ellipse at the back).
    The distance is the first-order estimate ``F / |grad F|`` with ``F = (sum |u|^p)^(1/p) - 1``,
    exact on the surface and good within a voxel or two of it. ``p`` is 2 or 2.5, the two
    exponents that have a fast path (square roots instead of fractional powers).
    """
    if exponent not in (2.0, 2.5):
        raise ValueError(f"exponent must be 2 or 2.5, got {exponent}")
    c = np.asarray(centre, dtype=np.float64).reshape(3, 1)
    a_all = np.asarray(semi_axes, dtype=np.float64)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    # Infinite axes contribute nothing: leave them out of the arithmetic altogether.
    finite = np.isfinite(a_all)
    a = a_all[finite].reshape(-1, 1)
    to_local = rot.T[finite]  # world offset -> finite local coordinates
    to_world = rot[:, finite]  # local gradient -> world gradient

    def field(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local = to_local @ (xyz - c)
        scaled = local / a
        if exponent == 2.0:
            r = np.sqrt(np.einsum("ij,ij->j", scaled, scaled))
            grad_local = local / (a * a) / np.maximum(r, 1e-12)
        else:
            # dF/dq = r^(1-p) |u|^(p-1) sign(q) / a, with u^1.5 = u sqrt(u) and r^-1.5 = 1/(r sqrt(r)).
            u = np.abs(scaled)
            u_15 = u * np.sqrt(u)
            r = np.maximum((u * u_15).sum(axis=0) ** 0.4, 1e-12)
            grad_local = u_15 * np.sign(local) / a / (r * np.sqrt(r))
        grad = to_world @ grad_local
        norm = np.sqrt(np.einsum("ij,ij->j", grad, grad))
        # At the very centre the gradient vanishes: the point is deep inside whatever the normal.
        distance = np.where(norm > 1e-12, (r - 1.0) / np.maximum(norm, 1e-12), -1e6)
        return distance, grad / np.maximum(norm, 1e-12)

    return field


def slab_bands(normal: Sequence[float], period: float, width: float, phase: float) -> Field:
    """Periodic slabs ``width`` mm thick every ``period`` mm along a world direction (vertebrae, ribs).

    Slabs of any width with the same ``period`` and ``phase`` share their mid-planes.
    """
    n = np.asarray(normal, dtype=np.float64)
    n = (n / np.linalg.norm(n)).reshape(3, 1)

    def field(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = np.mod((n * xyz).sum(axis=0) - phase, period) - period / 2.0
        distance = np.abs(t) - width / 2.0
        return distance, n * np.where(t >= 0, 1.0, -1.0)

    return field


def half_space(axis: int, limit: float, keep_below: bool) -> Field:
    """World half-space ``x[axis] <= limit`` (or ``>=`` when ``keep_below`` is False)."""
    sign = 1.0 if keep_below else -1.0

    def field(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distance = sign * (xyz[axis] - limit)
        normal = np.zeros_like(xyz)
        normal[axis] = sign
        return distance, normal

    return field


def cached(field: Field) -> Field:
    """Remember the last evaluation: a shape used in several intersections is computed once."""
    memo: dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}

    def wrapper(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if "last" not in memo or memo["last"][0] is not xyz:
            memo["last"] = (xyz, field(xyz))
        return memo["last"][1]

    return wrapper


def intersect(*fields: Field) -> Field:
    """CSG intersection: the largest distance, with the normal of the surface that set it."""
    return _combine(fields, np.greater)


def union(*fields: Field) -> Field:
    """CSG union: the smallest distance, with the normal of the surface that set it."""
    return _combine(fields, np.less)


def _combine(fields: tuple[Field, ...], prefer: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Field:
    """Point-wise pick among ``fields``: ``prefer(d_other, d_so_far)`` says where the other wins."""

    def field(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distance, normal = fields[0](xyz)
        for other in fields[1:]:
            d2, n2 = other(xyz)
            take = prefer(d2, distance)
            distance = np.where(take, d2, distance)
            normal = np.where(take[None, :], n2, normal)
        return distance, normal

    return field


def subtract(base: Field, hole: Field) -> Field:
    """CSG difference ``base - hole``."""

    def negated(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distance, normal = hole(xyz)
        return -distance, -normal

    return intersect(base, negated)


# --------------------------------------------------------------------------------------------
# The synthetic patient
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """One painted structure: later tissues overwrite earlier ones where they overlap.

    ``label`` is the label value written where the tissue covers at least half a voxel; ``0``
    for unlabelled structures, which therefore also erase labels of organs painted before them
    (a vessel running through the liver is not liver).
    """

    name: str
    field: Field
    hu: float
    label: int = 0


def build_patient(rng: np.random.Generator) -> tuple[list[Tissue], dict[str, float]]:
    """Draw one patient: tissues in painting order, plus the per-case parameters for the README.

    Positions are RAS+ mm around the body centre at the level of the kidneys' hila, in a template
    of a small adult (230 x 170 mm) that is then scaled, shifted and jittered per case.
    """
    scale = rng.uniform(0.92, 1.08)
    body_centre = np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0])

    def at(x: float, y: float, z: float, jitter: float = 0.0) -> np.ndarray:
        """Template position -> world, with optional uniform jitter (mm) per axis."""
        return body_centre + scale * np.array([x, y, z]) + rng.uniform(-jitter, jitter, 3)

    def size(*semi: float, jitter: float = 0.0) -> np.ndarray:
        """Template semi-axes -> world, each scaled by up to +-jitter (relative)."""
        factors = rng.uniform(1 - jitter, 1 + jitter, len(semi)) if jitter else np.ones(len(semi))
        return scale * np.array(semi) * factors

    def turn(x: float, y: float, z: float, jitter: float = 0.0) -> np.ndarray:
        """Nominal rotation (degrees about x, y, z) with uniform jitter per angle."""
        return rotation_matrix(np.array([x, y, z]) + rng.uniform(-jitter, jitter, 3))

    def hu(name: str, jitter: float = 4.0) -> float:
        """Nominal Hounsfield units of a tissue, jittered by up to +-jitter HU."""
        return HU[name] + rng.uniform(-jitter, jitter)

    cyl = np.inf  # semi-axis along which a structure runs through the whole field of view
    body_p = 2.5  # flatter than an ellipse, as a supine abdomen is

    body = superellipsoid(at(0, 0, 0), size(115, 85, cyl), exponent=body_p)
    wall = cached(superellipsoid(at(0, 0, 0), size(106, 76, cyl), exponent=body_p))
    cavity = cached(superellipsoid(at(0, 0, 0), size(98, 68, cyl), exponent=body_p))
    tissues = [
        Tissue("subcutaneous_fat", body, hu("fat")),
        Tissue("muscle_wall", wall, hu("muscle")),
        Tissue("visceral_fat", cavity, hu("visceral_fat")),
    ]

    # Bowel loops in the anterior abdomen below the liver, some holding a gas pocket.
    for _ in range(5):
        centre = at(rng.uniform(-55, 55), rng.uniform(10, 50), rng.uniform(-60, 0))
        semi = size(*rng.uniform(10, 18, 3))
        rot = rotation_matrix(rng.uniform(-90, 90, 3))
        loop = intersect(superellipsoid(centre, semi, rot), cavity)
        tissues.append(Tissue("bowel", loop, hu("bowel", 8)))
        if rng.uniform() < 0.6:
            # Gas floats: an anterior (non-dependent) pocket inside the loop.
            gas_centre = centre + np.array([0.0, 0.4 * semi[1], 0.0])
            gas = superellipsoid(gas_centre, 0.45 * semi, rot)
            tissues.append(Tissue("gas", gas, hu("gas", 20)))

    # Back muscles and psoas; side +1 is the patient's right (+x). The psoas diverge caudally:
    # a rotation of -10 deg about y tips the right one's lower end to the right, +10 the left's.
    for side in (1, -1):
        erector = superellipsoid(at(28 * side, -62, 0), size(20, 14, cyl, jitter=0.08))
        psoas_rot = turn(0, -10 * side, 0, 3)
        psoas = superellipsoid(at(24 * side, -30, -70, 3), size(11, 12, 75, jitter=0.1), psoas_rot)
        tissues += [Tissue("erector_spinae", erector, hu("muscle")), Tissue("psoas", psoas, hu("muscle"))]

    # Ribs: bands of the muscle wall that slope down anteriorly, above the costal margin, absent
    # in front (cartilage); so an axial slice cuts them into arcs, as in a real scan.
    rib_slope = (0.0, np.sin(np.deg2rad(30.0)), np.cos(np.deg2rad(30.0)))
    ribs = intersect(
        subtract(wall, cavity),
        slab_bands(rib_slope, period=28.0 * scale, width=9.0 * scale, phase=rng.uniform(0, 28)),
        half_space(1, float(at(0, 40, 0)[1]), keep_below=True),
        half_space(2, float(at(0, 0, -5)[2]), keep_below=False),
    )
    tissues.append(Tissue("ribs", ribs, hu("rib", 40)))

    # Labelled organs, clipped to the cavity so none pokes through the abdominal wall.
    liver = union(
        superellipsoid(at(50, 5, 22, 5), size(38, 48, 42, jitter=0.1), turn(0, 0, -20, 8)),
        superellipsoid(at(2, 32, 32, 5), size(32, 20, 22, jitter=0.1), turn(0, 0, -15, 8)),
    )
    tissues.append(Tissue("liver", intersect(liver, cavity), hu("liver"), LABELS["liver"]))
    spleen = superellipsoid(at(-62, -28, 24, 5), size(15, 35, 28, jitter=0.12), turn(0, 0, 40, 10))
    tissues.append(Tissue("spleen", intersect(spleen, cavity), hu("spleen"), LABELS["spleen"]))
    # Kidneys: the right one lower (pushed down by the liver). Rotating by -12 deg * side about y
    # brings the upper poles medial; by -30 deg * side about z turns the lateral borders
    # posterior, so the hila face anteromedially.
    cortex_hu, medulla_hu = hu("kidney_cortex"), hu("kidney_medulla")
    for side, z in ((1, -24), (-1, -10)):
        centre = at(50 * side, -36, z, 4)
        rot = turn(0, -12 * side, -30 * side, 6)
        outer = size(20, 15, 42, jitter=0.1)
        inner = outer - 6.0 * scale  # ~6 mm of enhancing cortex around the medulla
        cortex = intersect(superellipsoid(centre, outer, rot), cavity)
        tissues.append(Tissue("kidney_cortex", cortex, cortex_hu, LABELS["kidney"]))
        medulla = superellipsoid(centre, inner, rot)
        tissues.append(Tissue("kidney_medulla", medulla, medulla_hu, LABELS["kidney"]))

    # Great vessels, slightly off vertical: aorta left-anterior of the spine, IVC right-anterior.
    aorta = superellipsoid(at(-10, -4, 0, 3), size(11, 11, cyl, jitter=0.1), turn(3, 3, 0, 2))
    ivc = superellipsoid(at(20, -12, 0, 3), size(13, 9, cyl, jitter=0.1), turn(0, 0, 0, 2))
    tissues += [Tissue("aorta", aorta, hu("aorta", 20)), Tissue("ivc", ivc, hu("ivc", 10))]

    # Spine: discs, vertebral bodies (cortical shell, cancellous core), arch, canal, spinous process.
    # Bone exists only in the vertebral levels; the core's thinner slabs share their mid-planes.
    level_period, level_phase = 32.0 * scale, rng.uniform(0, 32)
    level = slab_bands(SUPERIOR, level_period, 26.0 * scale, level_phase)
    core_level = slab_bands(SUPERIOR, level_period, 22.0 * scale, level_phase)
    spine_centre = at(0, -30, 0, 2)
    vertebral_body = superellipsoid(spine_centre, size(17, 14, cyl))
    core = superellipsoid(spine_centre, size(13, 10, cyl))
    arch = superellipsoid(at(0, -54, 0), size(14, 12, cyl))
    spinous = superellipsoid(at(0, -68, 0), size(5, 10, cyl))
    tissues += [
        Tissue("disc", vertebral_body, hu("disc", 10)),
        Tissue("vertebral_body", intersect(vertebral_body, level), hu("cortical_bone", 50)),
        Tissue("cancellous_bone", intersect(core, core_level), hu("cancellous_bone", 40)),
        Tissue("vertebral_arch", intersect(arch, level), hu("cortical_bone", 50)),
        Tissue("spinal_canal", superellipsoid(at(0, -52, 0), size(7, 6, cyl)), hu("csf", 5)),
        Tissue("spinous_process", intersect(spinous, level), hu("cortical_bone", 50)),
    ]

    params = {"scale": float(scale), "noise_sigma": float(rng.uniform(10.0, 20.0))}
    return tissues, params


def smooth_texture(xyz: np.ndarray, rng: np.random.Generator, amplitude: float = 6.0) -> np.ndarray:
    """Low-frequency intensity variation (a few HU over ~5-15 cm), defined in world space."""
    texture = np.zeros(xyz.shape[1])
    for _ in range(4):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(50.0, 150.0)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.cos(2 * np.pi * (direction @ xyz) / wavelength + phase)
    return amplitude / 2.0 * texture


def render_case(
    geometry: CaseGeometry, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Rasterise one random patient through ``geometry``: int16 image, uint8 labels, affine, params."""
    tissues, params = build_patient(rng)
    fov_centre = np.array([0.0, 0.0, 5.0]) + rng.uniform(-5.0, 5.0, 3)
    affine = case_affine(geometry, fov_centre)
    grid = Grid(geometry.shape, affine)

    image = np.full(grid.xyz.shape[1], HU["air"])
    labels = np.zeros(grid.xyz.shape[1], dtype=np.uint8)
    body_fraction = None
    for tissue in tissues:
        fraction = grid.coverage(*tissue.field(grid.xyz))
        image += fraction * (tissue.hu - image)  # partial-volume blend over what is beneath
        labels[fraction >= 0.5] = tissue.label
        if body_fraction is None:
            body_fraction = fraction  # the first tissue is the body outline
    image += body_fraction * smooth_texture(grid.xyz, rng)
    image += rng.normal(0.0, params["noise_sigma"], image.shape)
    image = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
    return image.reshape(geometry.shape), labels.reshape(geometry.shape), affine, params


# --------------------------------------------------------------------------------------------
# Deterministic writing
# --------------------------------------------------------------------------------------------


def nifti_bytes(array: np.ndarray, affine: np.ndarray, is_label: bool) -> bytes:
    """Uncompressed NIfTI-1 bytes with sform and qform (scanner) and mm units."""
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units(xyz="mm", t="sec")
    image.set_sform(affine, code=1)  # NIFTI_XFORM_SCANNER_ANAT
    image.set_qform(affine, code=1)
    header.set_slope_inter(1.0, 0.0)
    if is_label:
        header.set_intent("label")
        header["descrip"] = b"medsaga synthetic phantom labels"
    else:
        header["descrip"] = b"medsaga synthetic phantom CT (HU)"
    return image.to_bytes()


def gzip_bytes(payload: bytes) -> bytes:
    """A gzip member with a fixed header: no mtime, no file name, OS "unknown" (RFC 1952).

    Written by hand because ``gzip.compress`` changed how it builds the header between Python
    versions; the deflate stream itself is zlib's at level 9.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY)
    deflated = compressor.compress(payload) + compressor.flush()
    # magic, method deflate, no flags | mtime 0 | extra flags "max compression", OS "unknown"
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(payload) & 0xFFFFFFFF, len(payload) & 0xFFFFFFFF)
    return header + deflated + trailer


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a data file should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def orientation_label(affine: np.ndarray) -> tuple[str, float]:
    """nibabel axis codes and the largest angle (degrees) between a voxel axis and its world axis."""
    codes = "".join(nib.aff2axcodes(affine))
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.clip(np.abs(directions).max(axis=0), -1.0, 1.0)
    return codes, float(np.degrees(np.arccos(cosines)).max())


def dataset_json(case_ids: list[str], seed: int) -> dict:
    """nnU-Net v2 ``dataset.json`` plus provenance and medsaga's few-shot split."""
    return {
        "name": "medsaga synthetic abdominal CT phantoms",
        "description": (
            "Synthetic CT-like phantom volumes (ellipsoidal organs with Hounsfield-unit intensities, "
            "partial volume and Gaussian noise) in varied sizes, spacings and orientations, for demos "
            f"and tests. Not real patient data. Generated by scripts/make_sample_data.py --seed {seed}."
        ),
        "licence": "CC0 1.0 (public domain dedication); synthetic data, no patient information",
        "reference": "scripts/make_sample_data.py in the medsaga repository",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": len(case_ids),
        "file_ending": FILE_ENDING,
        "few_shot_split": {"train": case_ids[:N_FEW_SHOT_TRAIN], "held_out": case_ids[N_FEW_SHOT_TRAIN:]},
    }


def readme(rows: list[dict], seed: int) -> str:
    """The dataset's README, one table row per case."""
    lines = [
        "# medsaga sample data: synthetic abdominal CT phantoms",
        "",
        "Synthetic, CT-like volumes in the nnU-Net v2 raw layout (`dataset.json`, `imagesTr/`, `labelsTr/`).",
        "Labels: 1 liver, 2 kidney (both), 3 spleen. Unlabelled distractors: vertebrae and discs, ribs,",
        "psoas and back muscles, aorta, inferior vena cava, bowel loops with gas. Images are int16",
        "Hounsfield units with Gaussian noise; labels are uint8 on exactly the image's grid. The anatomy is",
        "placed in RAS+ millimetres (liver on the patient's right, spleen on the left, kidneys posterior)",
        "and sampled through each case's affine, so the orientations below are real geometry, not array",
        "flips.",
        "",
        f"Generated by `scripts/make_sample_data.py --seed {seed}`; do not edit by hand. To regenerate:",
        "",
        "```",
        "python scripts/make_sample_data.py --out sample_data --force",
        "```",
        "",
        "`tests/test_sample_data.py` checks that these files are byte-identical to the script's output.",
        "",
        "Licence: CC0 1.0 (public domain). Synthetic; contains no patient data.",
        "",
        "| case | split | shape (i, j, k) | spacing (mm) | orientation | oblique | noise σ (HU) "
        "| liver / kidney / spleen (mL) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shape = " × ".join(str(n) for n in row["shape"])
        spacing = " × ".join(f"{s:g}" for s in row["spacing"])
        oblique = f"{row['oblique_deg']:.1f}°" if row["oblique_deg"] > 0.5 else "no"
        volumes = " / ".join(f"{v:.0f}" for v in row["volumes_ml"])
        lines.append(
            f"| {row['case']} | {row['split']} | {shape} | {spacing} | {row['axcodes']} | {oblique} "
            f"| {row['noise_sigma']:.1f} | {volumes} | {row['description']} |"
        )
    lines += [
        "",
        "Orientation is nibabel's axis codes: the world direction each voxel axis increases towards",
        "(`PSR`: i → Posterior, j → Superior, k → patient's Right). `dataset.json` also lists the",
        f"few-shot split: cases 1-{N_FEW_SHOT_TRAIN} for training, the rest held out.",
        "",
    ]
    return "\n".join(lines)


def generate(out: Path, seed: int) -> list[dict]:
    """Write the whole dataset under ``out``; return one summary row per case."""
    rows = []
    case_ids = [f"{CASE_PREFIX}{index:03d}" for index in range(1, len(CASES) + 1)]
    for index, (case_id, geometry) in enumerate(zip(case_ids, CASES), start=1):
        # One independent stream per case: editing one case's draws leaves the others unchanged.
        rng = np.random.default_rng([seed, index])
        image, labels, affine, params = render_case(geometry, rng)
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
        counts = np.bincount(labels.ravel(), minlength=len(LABELS))
        missing = [name for name, value in LABELS.items() if value and counts[value] == 0]
        if missing:
            raise RuntimeError(f"{case_id}: field of view misses {missing}; adjust CASES")
        image_path = out / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
        write_atomic(image_path, gzip_bytes(nifti_bytes(image, affine, is_label=False)))
        label_path = out / "labelsTr" / f"{case_id}{FILE_ENDING}"
        write_atomic(label_path, gzip_bytes(nifti_bytes(labels, affine, is_label=True)))
        axcodes, oblique = orientation_label(affine)
        rows.append(
            {
                "case": case_id,
                "split": "train" if index <= N_FEW_SHOT_TRAIN else "held out",
                "shape": geometry.shape,
                "spacing": geometry.spacing,
                "axcodes": axcodes,
                "oblique_deg": oblique,
                "noise_sigma": params["noise_sigma"],
                "volumes_ml": [counts[LABELS[name]] * voxel_ml for name in ("liver", "kidney", "spleen")],
                "description": geometry.description,
            }
        )
    write_atomic(out / "dataset.json", (json.dumps(dataset_json(case_ids, seed), indent=2) + "\n").encode())
    write_atomic(out / "README.md", readme(rows, seed).encode())
    # --force over an older version of the dataset: drop cases this version no longer makes.
    wanted = {f"{c}_0000{FILE_ENDING}" for c in case_ids} | {f"{c}{FILE_ENDING}" for c in case_ids}
    for folder in ("imagesTr", "labelsTr"):
        for stale in (out / folder).glob(f"{CASE_PREFIX}*{FILE_ENDING}"):
            if stale.name not in wanted:
                stale.unlink()
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: ``--out``, ``--seed``, ``--force``."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Regenerate the committed copy: python scripts/make_sample_data.py --out sample_data --force",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("sample_data"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0, the committed data)")
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty --out, replacing the dataset's files"
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be a non-negative integer")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = parse_args(argv)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()) and not args.force:
        print(f"error: {out} is not empty; pass --force to replace the dataset files", file=sys.stderr)
        return 2
    rows = generate(out, args.seed)
    for row in rows:
        shape = "x".join(str(n) for n in row["shape"])
        spacing = "x".join(f"{s:g}" for s in row["spacing"])
        oblique = f"{row['oblique_deg']:.1f} deg"
        print(f"{row['case']}: {shape} voxels, {spacing} mm, {row['axcodes']}, oblique {oblique}")
    print(f"wrote {len(rows)} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
