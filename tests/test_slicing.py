"""Slicing volumes along anatomical planes: exact inverse, storage-order independence, layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsaga.data.slicing import (
    PLANES,
    SliceSpacing,
    closest_orientation,
    plane_spacing,
    slice_geometry,
    slice_volume,
    unslice,
)
from medsaga.errors import InputError
from medsaga.io.volume import SourceInfo, Volume
from tests.data_paths import need_shared


def _rotation(quaternion: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a (not necessarily unit) nonzero quaternion."""
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _volume(shape, rotation, spacing, origin, seed=0, reflect=False) -> Volume:
    affine = np.eye(4)
    direction = rotation @ np.diag([-1.0, 1.0, 1.0]) if reflect else rotation
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = origin
    array = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int16)
    return Volume(array, affine, SourceInfo(format="memory", metadata={"id": "x"}))


def _restored(volume: Volume, permutation, flips) -> Volume:
    """The same physical image stored with its axes permuted and flipped (built by hand, not
    with nibabel, so that the test does not share the implementation's arithmetic)."""
    array = np.transpose(volume.array, permutation)
    index_map = np.zeros((4, 4))  # new voxel index -> old voxel index
    index_map[3, 3] = 1
    for new_axis, old_axis in enumerate(permutation):
        if flips[new_axis]:
            array = np.flip(array, axis=new_axis)
            index_map[old_axis, new_axis] = -1
            index_map[old_axis, 3] = volume.shape[old_axis] - 1
        else:
            index_map[old_axis, new_axis] = 1
    return Volume(array, volume.affine @ index_map, volume.source)


quaternions = st.lists(st.floats(-1, 1, allow_nan=False), min_size=4, max_size=4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1)
shapes = st.tuples(*[st.integers(1, 7)] * 3)
spacings = st.tuples(*[st.floats(0.2, 6.0)] * 3)
origins = st.tuples(*[st.floats(-300, 300)] * 3)


@settings(max_examples=60, deadline=None)
@given(quaternions, shapes, spacings, origins, st.booleans(), st.sampled_from(list(PLANES)))
def test_slice_then_unslice_is_identity_for_any_grid(quaternion, shape, spacing, origin, reflect, plane):
    volume = _volume(shape, _rotation(quaternion), spacing, origin, reflect=reflect)
    stack = slice_volume(volume, plane)
    assert stack.array.shape == stack.geometry.shape
    for reference in (stack, stack.geometry, volume):
        back = unslice(stack.array.copy(), reference, plane)
        assert np.array_equal(back.array, volume.array)
        assert back.array.dtype == volume.array.dtype
        assert np.array_equal(back.affine, volume.affine)
        assert back.source is volume.source


@settings(max_examples=60, deadline=None)
@given(quaternions, shapes, spacings, origins, st.sampled_from(list(PLANES)))
def test_stack_affine_gives_each_voxel_its_world_position(quaternion, shape, spacing, origin, plane):
    volume = _volume(shape, _rotation(quaternion), spacing, origin)
    stack = slice_volume(volume, plane)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    nrc = np.linalg.solve(stack.geometry.affine[:3, :3], (world - stack.geometry.affine[:3, 3]).T).T
    nrc = np.rint(nrc).astype(int)
    assert np.array_equal(stack.array[tuple(nrc.T)], volume.array[tuple(ijk.T)])
    # Spacing follows the stack axes.
    assert np.allclose(stack.spacing, np.linalg.norm(stack.geometry.affine[:3, :3], axis=0)[[1, 2, 0]])


@pytest.mark.parametrize("rotation", ["identity", "oblique"])
def test_every_storage_order_gives_identical_slices(rotation):
    """RAS, LPS, LAS, PIL, ... (all 48 axis permutations and flips) of one scan slice alike."""
    matrix = np.eye(3) if rotation == "identity" else _rotation(np.array([0.9, 0.2, -0.15, 0.1]))
    base = _volume((4, 5, 6), matrix, (0.8, 1.1, 3.0), (10.0, -20.0, 35.0))
    expected = {plane: slice_volume(base, plane) for plane in PLANES}
    seen_codes = set()
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            copy = _restored(base, permutation, flips)
            seen_codes.add(copy.orientation)
            for plane, reference in expected.items():
                stack = slice_volume(copy, plane)
                assert np.array_equal(stack.array, reference.array), (copy.orientation, plane)
                assert np.allclose(stack.geometry.affine, reference.geometry.affine, atol=1e-9)
                assert np.array_equal(unslice(stack.array, copy, plane).array, copy.array)
    assert {"RAS", "LPS", "LAS", "PIL"} <= seen_codes
    assert len(seen_codes) == 48


@settings(max_examples=40, deadline=None)
@given(quaternions, shapes, spacings, st.permutations(range(3)), st.tuples(*[st.booleans()] * 3),
       st.sampled_from(list(PLANES)))
def test_storage_order_never_matters_for_oblique_grids(quaternion, shape, spacing, permutation, flips, plane):
    base = _volume(shape, _rotation(quaternion), spacing, (1.0, 2.0, 3.0))
    copy = _restored(base, permutation, flips)
    assert np.array_equal(slice_volume(copy, plane).array, slice_volume(base, plane).array)


@pytest.mark.parametrize("quaternion", [(1, 0, 1, 1), (np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)),
                                        (np.cos(np.pi / 8), np.sin(np.pi / 8), 0, 0), (1, 1, 1, 1)])
def test_exact_45_degree_ties_do_not_depend_on_storage_order(quaternion):
    base = _volume((2, 3, 4), _rotation(np.array(quaternion, dtype=float)), (1.0, 1.5, 2.0), (0.0, 0.0, 0.0))
    for plane in PLANES:
        expected = slice_volume(base, plane).array
        for permutation in itertools.permutations(range(3)):
            for flips in itertools.product([False, True], repeat=3):
                copy = _restored(base, permutation, flips)
                assert np.array_equal(slice_volume(copy, plane).array, expected), (permutation, flips, plane)


@settings(max_examples=60, deadline=None)
@given(quaternions, spacings, st.booleans())
def test_closest_axes_agree_with_nibabel_away_from_ties(quaternion, spacing, reflect):
    import nibabel.orientations as nio

    affine = _volume((1, 1, 1), _rotation(quaternion), spacing, (0, 0, 0), reflect=reflect).affine
    cosines = np.sort(np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)), axis=0)
    column_gaps = np.diff(np.sort(cosines[-1]))  # between the axes' largest cosines
    top_gaps = cosines[-1] - cosines[-2]  # between each axis' two largest cosines
    if min(column_gaps.min(), top_gaps.min()) < 1e-6:
        return  # (near-)ties: nibabel's choice depends on storage order there, ours does not
    assert np.array_equal(closest_orientation(affine), nio.io_orientation(affine))


def test_markers_land_where_a_radiologist_expects_them():
    """RAS+ grid, identity directions: i → Right, j → Anterior, k → Superior."""
    shape = (5, 6, 7)
    array = np.zeros(shape, dtype=np.int16)
    i, j, k = 3, 1, 5  # rather right, rather posterior, rather superior
    array[i, j, k] = 1
    volume = Volume(array, np.diag([0.5, 0.6, 2.0, 1.0]))
    X, Y, Z = shape

    def position(plane):
        stack = slice_volume(volume, plane).array
        return tuple(int(v) for v in np.argwhere(stack == 1)[0]), stack.shape

    # axial: slices inferior→superior, rows anterior→posterior, columns right→left
    assert position("axial") == ((k, Y - 1 - j, X - 1 - i), (Z, Y, X))
    # coronal: slices anterior→posterior, rows superior→inferior, columns right→left
    assert position("coronal") == ((Y - 1 - j, Z - 1 - k, X - 1 - i), (Y, Z, X))
    # sagittal: slices right→left, rows superior→inferior, columns anterior→posterior
    assert position("sagittal") == ((X - 1 - i, Z - 1 - k, Y - 1 - j), (X, Z, Y))


def test_anterior_right_superior_corner_is_top_left_of_last_axial_slice():
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[-1, -1, -1] = 7  # RAS grid: the most right, anterior, superior voxel
    stack = slice_volume(Volume(array, np.eye(4)), "axial").array
    assert stack[-1, 0, 0] == 7


def test_spacing_per_plane():
    volume = Volume(np.zeros((2, 3, 4)), np.diag([-0.7, -0.8, 3.0, 1.0]))  # LPS storage
    assert plane_spacing(volume, "axial") == pytest.approx(SliceSpacing(row=0.8, col=0.7, slice=3.0))
    assert plane_spacing(volume, "coronal") == pytest.approx(SliceSpacing(row=3.0, col=0.7, slice=0.8))
    assert plane_spacing(volume, "sagittal") == pytest.approx(SliceSpacing(row=3.0, col=0.8, slice=0.7))
    assert slice_volume(volume, "coronal").spacing.slice == pytest.approx(0.8)


def test_slicing_is_a_view_not_a_copy():
    volume = _volume((8, 9, 10), np.eye(3), (1, 1, 1), (0, 0, 0))
    assert np.shares_memory(slice_volume(volume, "axial").array, volume.array)


def test_bad_plane_and_degenerate_affine_are_input_errors():
    volume = Volume(np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(InputError, match="axial, coronal, sagittal"):
        slice_volume(volume, "transverse")
    with pytest.raises(InputError, match="degenerate"):
        slice_geometry(Volume(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0])))


def test_unslice_checks_shape_and_plane():
    stack = slice_volume(Volume(np.zeros((2, 3, 4)), np.eye(4)), "axial")
    with pytest.raises(ValueError, match="shape"):
        unslice(np.zeros((2, 3, 4)), stack)
    with pytest.raises(ValueError, match="plane"):
        unslice(stack.array, stack, "coronal")


def test_real_mr_volume_and_label_round_trip():
    from medsaga.io.nifti import read_nifti

    folder = need_shared("malf-brain-t1")
    image = read_nifti(folder / "imagesTr" / "MALF_1000_0000.nii.gz")
    label = read_nifti(folder / "labelsTr" / "MALF_1000.nii.gz")
    assert image.orientation == "LAS"
    for plane in PLANES:
        for volume in (image, label):
            stack = slice_volume(volume, plane)
            back = unslice(stack.array, volume, plane)
            assert np.array_equal(back.array, volume.array)
            assert np.array_equal(back.affine, volume.affine)
            assert back.source.path == volume.source.path
    # LAS storage: axial slices are the k planes, transposed to (A→P rows, R→L columns).
    axial = slice_volume(image, "axial").array
    assert np.array_equal(axial[40], image.array[:, ::-1, 40].T)
