"""Intensity presets, preset choice, and a case's 3-channel model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsaga.data.intensity import (
    PRESETS,
    choose_preset,
    get_preset,
    intensity_range,
    normalise,
    presets_for_channels,
)
from medsaga.data.slices import volume_to_slices
from medsaga.data.slicing import slice_volume, unslice
from medsaga.errors import InputError
from medsaga.io.volume import SourceInfo, Volume
from tests.data_paths import need_shared

WINDOWS = {
    "ct-abdomen": (-125, 275),
    "ct-soft-tissue": (-160, 240),
    "ct-bone": (-500, 1300),
    "ct-lung": (-1350, 150),
}


@pytest.mark.parametrize("name, bounds", WINDOWS.items())
def test_ct_windows_map_bounds_to_0_and_1_and_clip(name, bounds):
    low, high = bounds
    raw = np.array([-3000, low - 1, low, (low + high) / 2, high, high + 1, 4000], dtype=np.float64)
    out = normalise(raw, name)
    assert out.dtype == np.float32
    assert out.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert get_preset(name).window == (low, high)


def test_ct_window_on_int16_volume_keeps_shape_and_range():
    raw = np.random.default_rng(0).integers(-1024, 3000, size=(4, 5, 6)).astype(np.int16)
    out = normalise(raw, "ct-abdomen")
    assert out.shape == raw.shape and out.dtype == np.float32 and out.flags.c_contiguous
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(out, np.clip((raw.astype(np.float64) + 125) / 400, 0, 1), atol=1e-6)


def test_mr_percentiles_over_nonzero_voxels():
    rng = np.random.default_rng(1)
    volume = np.zeros((40, 40, 40), dtype=np.int16)
    volume[10:30, 10:30, 10:30] = rng.normal(500, 100, size=(20, 20, 20)).clip(1, None).astype(np.int16)
    foreground = volume[volume != 0]
    low, high = intensity_range(volume, "mr")
    assert (low, high) == pytest.approx(tuple(np.percentile(foreground, [0.5, 99.5])))
    out = normalise(volume, "mr")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out[volume == 0] == 0).all()  # background stays black
    # ~0.5 % of the foreground at or above the 99.5th percentile saturates at 1.
    assert np.mean(out[volume != 0] == 1.0) == pytest.approx(0.005, abs=0.002)
    # A voxel just below the upper percentile is just below 1.
    near = foreground[foreground < high].max()
    assert 0.95 < normalise(np.array([low, near, high], dtype=np.float32), get_preset("mr"))[1] <= 1


@pytest.mark.parametrize("value", [0, 7, -3.5])
def test_constant_volume_gives_zeros_without_warnings(value):
    with np.errstate(all="raise"):
        out = normalise(np.full((3, 4, 5), value, dtype=np.float32), "mr")
    assert out.dtype == np.float32 and (out == 0).all()


def test_binary_foreground_falls_back_to_min_max():
    volume = np.zeros((5, 5, 5), dtype=np.uint8)
    volume[1:3] = 9
    out = normalise(volume, "mr")
    assert set(np.unique(out).tolist()) == {0.0, 1.0}


def test_nans_become_zero_and_percentiles_ignore_them():
    volume = np.linspace(1, 100, 1000, dtype=np.float32).reshape(10, 10, 10)
    volume[0, 0, :3] = np.nan
    out = normalise(volume, "mr")
    assert np.isfinite(out).all() and (out[0, 0, :3] == 0).all()
    assert out.max() == 1.0


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(InputError) as error:
        get_preset("ct-brain")
    for name in PRESETS:
        assert name in str(error.value)
    with pytest.raises(InputError, match="ct-abdomen"):
        choose_preset("CT", explicit="nope")


@pytest.mark.parametrize("channel, preset, guessed", [
    ("CT", "ct-abdomen", False), ("ct", "ct-abdomen", False), ("CT_venous", "ct-abdomen", False),
    ("MRI", "mr", False), ("MR", "mr", False), ("T1", "mr", False), ("t1w", "mr", False),
    ("T1Gd", "mr", False), ("T2", "mr", False), ("FLAIR", "mr", False), ("ADC", "mr", False),
    ("DWI b1000", "mr", False), ("PET", "mr", True), ("noNorm", "mr", True), ("", "mr", True),
    (None, "mr", True), ("ACTIVITY", "mr", True),
])
def test_preset_from_channel_name(channel, preset, guessed):
    choice = choose_preset(channel)
    assert (choice.name, choice.guessed) == (preset, guessed)
    assert choice.reason


def test_explicit_preset_wins_and_channels_follow_dataset_json_order():
    assert choose_preset("MRI", explicit="ct-bone").name == "ct-bone"
    choices = presets_for_channels({"1": "T2", "0": "CT", "10": "FLAIR", "2": "PET"})
    assert [c.name for c in choices] == ["ct-abdomen", "mr", "mr", "mr"]
    assert [c.name for c in presets_for_channels({"0": "MRI"}, explicit="ct-lung")] == ["ct-lung"]


# ---- 3-channel model inputs (medsaga.data.slices) ------------------------------------------

def _case(shape=(6, 7, 5), affine=None, seed=0, path="img.nii.gz") -> Volume:
    affine = np.diag([-0.9, -0.9, 2.0, 1.0]) if affine is None else affine  # LPS storage
    array = np.random.default_rng(seed).integers(-200, 400, size=shape).astype(np.int16)
    return Volume(array, affine, SourceInfo(path=Path(path), format="nifti"))


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_repeat_mode_shapes_dtypes_and_labels(plane):
    image = _case()
    label = image.with_array((image.array > 100).astype(np.uint8))
    images, labels = volume_to_slices(image, label, presets="ct-abdomen", plane=plane)
    n, h, w = slice_volume(image, plane).array.shape
    assert images.shape == (n, 3, h, w) and images.dtype == np.float32 and images.flags.c_contiguous
    assert labels.shape == (n, h, w) and labels.dtype == np.int64 and labels.flags.c_contiguous
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 0], images[:, 2])
    expected = normalise(slice_volume(image, plane).array, "ct-abdomen")
    assert np.array_equal(images[:, 1], expected)
    # Labels line up with the image slices voxel for voxel, and go back onto the grid.
    assert np.array_equal(labels == 1, images[:, 0] > (100 + 125) / 400)
    assert np.array_equal(unslice(labels, image, plane).array, label.array)


def test_no_label_gives_none():
    assert volume_to_slices([_case()], presets="mr").labels is None


def test_neighbours_mode_replicates_edges():
    image = _case(shape=(3, 4, 5))
    images, _ = volume_to_slices(image, presets="ct-abdomen", mode="neighbours")
    grey = normalise(slice_volume(image).array, "ct-abdomen")
    n = grey.shape[0]
    for k in range(n):
        assert np.array_equal(images[k, 0], grey[max(k - 1, 0)])
        assert np.array_equal(images[k, 1], grey[k])
        assert np.array_equal(images[k, 2], grey[min(k + 1, n - 1)])


def test_neighbours_mode_with_a_single_slice():
    images, _ = volume_to_slices(_case(shape=(3, 4, 1)), presets="mr", mode="neighbours")
    assert images.shape == (1, 3, 4, 3)
    assert np.array_equal(images[0, 0], images[0, 1]) and np.array_equal(images[0, 2], images[0, 1])


def test_modalities_mode_two_and_three_channels():
    t1, t2, flair = (_case(seed=s) for s in range(3))
    grey = [normalise(slice_volume(v).array, "mr") for v in (t1, t2, flair)]
    images, _ = volume_to_slices([t1, t2], presets=["mr", "mr"], mode="modalities")
    assert np.array_equal(images[:, 0], grey[0]) and np.array_equal(images[:, 1], grey[1])
    assert np.allclose(images[:, 2], (grey[0] + grey[1]) / 2)
    images, _ = volume_to_slices([t1, t2, flair], presets="mr", mode="modalities")
    assert all(np.array_equal(images[:, c], grey[c]) for c in range(3))
    one, _ = volume_to_slices([t1], presets="mr", mode="modalities")
    assert np.array_equal(one, volume_to_slices(t1, presets="mr").images)


def test_channel_count_mode_and_preset_errors():
    a, b = _case(seed=0), _case(seed=1)
    with pytest.raises(InputError, match="modalities"):
        volume_to_slices([a, b], presets="mr", mode="repeat")
    with pytest.raises(InputError, match="at most 3"):
        volume_to_slices([a, b, a, b], presets="mr", mode="modalities")
    with pytest.raises(InputError, match="repeat, neighbours, modalities"):
        volume_to_slices(a, presets="mr", mode="rgb")
    with pytest.raises(InputError, match="2 intensity presets for 1"):
        volume_to_slices(a, presets=["mr", "mr"])
    with pytest.raises(InputError, match="choose one of"):
        volume_to_slices(a, presets="ct-brain")
    with pytest.raises(InputError, match="axial"):
        volume_to_slices(a, presets="mr", plane="oblique")


def test_channels_and_label_must_share_the_grid():
    a = _case()
    shifted = Volume(a.array, a.affine + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]]),
                     SourceInfo(path=Path("t2.nii.gz")))
    with pytest.raises(InputError, match="origin") as error:
        volume_to_slices([a, shifted], presets="mr", mode="modalities")
    assert error.value.path == Path("t2.nii.gz")
    label = Volume(np.zeros((6, 7, 4), np.uint8), a.affine, SourceInfo(path=Path("seg.nii.gz")))
    with pytest.raises(InputError, match="shape") as error:
        volume_to_slices(a, label, presets="mr")
    assert error.value.path == Path("seg.nii.gz")


def test_float_labels_must_be_whole_numbers():
    a = _case()
    whole = a.with_array((a.array > 0).astype(np.float32) * 2)
    assert set(np.unique(volume_to_slices(a, whole, presets="mr").labels)) == {0, 2}
    with pytest.raises(InputError, match="non-integer"):
        volume_to_slices(a, a.with_array(whole.array + 0.5), presets="mr")


def test_real_ct_and_mr_cases():
    from medsaga.io.nifti import read_nifti

    ct_dir, mr_dir = need_shared("ct-dicom-series"), need_shared("malf-brain-t1")
    ct, seg = read_nifti(ct_dir / "example_ct_sm.nii.gz"), read_nifti(ct_dir / "example_seg.nii.gz")
    images, labels = volume_to_slices(ct, seg, presets="ct-abdomen", mode="neighbours")
    assert images.shape == (30, 3, 101, 122) and labels.shape == (30, 101, 122)
    assert images.min() == 0 and images.max() == 1 and labels.max() == 117

    mr = read_nifti(mr_dir / "imagesTr" / "MALF_1000_0000.nii.gz")
    mr_label = read_nifti(mr_dir / "labelsTr" / "MALF_1000.nii.gz")
    images, labels = volume_to_slices(mr, mr_label, presets=choose_preset("MRI").name, plane="coronal")
    assert images.shape[1] == 3 and images.shape[0] == mr.shape[1]
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    brain = labels > 0
    # Normalisation put the brain's tissue in the working range, not squashed near 0 or 1.
    assert 0.2 < float(np.median(images[:, 0][brain])) < 0.9
