"""read -> write_label_map -> read gives the same voxels on the same grid, for every format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from medsaga.io import Volume, read_volume, write_label_map
from tests.data_paths import SHARED_DATA, needs_shared_data

pytestmark = needs_shared_data

LABEL_INPUTS = {
    "nifti-ct-labels": SHARED_DATA / "ct-dicom-series" / "example_seg.nii.gz",
    "nifti-malf-labels": SHARED_DATA / "malf-brain-t1" / "labelsTr" / "MALF_1000.nii.gz",
    "nrrd-labels": SHARED_DATA / "ct-dicom-seg" / "liver_spine_seg.nrrd",
}


def _nifti_header_on_disk(path: Path):
    """The header as stored (nib.load moves scl_slope/inter into the data proxy and blanks them)."""
    import nibabel as nib

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return nib.Nifti1Header.from_fileobj(handle)


def _assert_same(written: Volume, original: Volume, atol: float = 1e-5) -> None:
    assert written.shape == original.shape
    assert np.array_equal(written.array, original.array)
    assert np.allclose(written.affine, original.affine, rtol=0, atol=atol)
    assert written.same_grid(original) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", sorted(LABEL_INPUTS))
def test_label_maps_round_trip(name: str, suffix: str, tmp_path: Path) -> None:
    original = read_volume(LABEL_INPUTS[name])
    out = write_label_map(original, tmp_path / f"labels{suffix}")
    written = read_volume(out)
    _assert_same(written, original)
    assert written.array.dtype == np.uint8  # all of these labels fit in a byte
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"labels{suffix}"]  # no temporary left


@pytest.mark.parametrize("name", ["nifti-ct-labels", "nifti-malf-labels"])
def test_nifti_output_keeps_the_input_header(name: str, tmp_path: Path) -> None:
    import nibabel as nib

    original = read_volume(LABEL_INPUTS[name])
    source = original.source.nifti_header
    out = write_label_map(original, tmp_path / "labels.nii.gz")
    header = _nifti_header_on_disk(out)
    for field in ("qform_code", "sform_code", "intent_code", "xyzt_units", "quatern_b", "quatern_c", "quatern_d",
                  "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"):
        assert np.array_equal(header[field], source[field]), field
    assert len(nib.load(out).header.extensions) == len(source.extensions)
    assert header.get_data_dtype() == np.uint8
    assert (float(header["scl_slope"]), float(header["scl_inter"])) == (1.0, 0.0)


def test_nifti_source_with_a_changed_grid_gets_the_new_geometry(tmp_path: Path) -> None:
    original = read_volume(LABEL_INPUTS["nifti-ct-labels"])  # qform_code 0, sform_code 2
    flipped = original.flip(1)
    written = read_volume(write_label_map(flipped, tmp_path / "flipped.nii.gz"))
    _assert_same(written, flipped, atol=1e-4)
    header = _nifti_header_on_disk(tmp_path / "flipped.nii.gz")
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 2)
    # Same voxels in the same places: flipping back restores the original exactly.
    assert np.array_equal(written.flip(1).array, original.array)


def test_non_nifti_source_gets_scanner_codes(tmp_path: Path) -> None:
    original = read_volume(LABEL_INPUTS["nrrd-labels"])
    out = write_label_map(original, tmp_path / "labels.nii.gz")
    header = _nifti_header_on_disk(out)
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
    assert header.get_xyzt_units()[0] == "mm"


@pytest.fixture(scope="module")
def dicom_ct() -> Volume:
    return read_volume(SHARED_DATA / "ct-dicom-series" / "dicom")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_label_map_on_a_dicom_grid_round_trips(dicom_ct: Volume, suffix: str, tmp_path: Path) -> None:
    # A label map made on the DICOM grid (body = 1, bone = 2), as a model's output would be.
    labels = dicom_ct.with_array((dicom_ct.array > -300).astype(np.int64) + (dicom_ct.array > 300))
    written = read_volume(write_label_map(labels, tmp_path / f"body{suffix}"))
    _assert_same(written, labels)
    assert written.array.dtype == np.uint8
    assert written.same_grid(dicom_ct) == []
    assert set(np.unique(written.array)) == {0, 1, 2}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_labels_above_255_are_stored_as_uint16(dicom_ct: Volume, suffix: str, tmp_path: Path) -> None:
    labels = dicom_ct.with_array(np.where(dicom_ct.array > 300, 300, np.where(dicom_ct.array > -300, 255, 0)))
    written = read_volume(write_label_map(labels, tmp_path / f"many{suffix}"))
    assert written.array.dtype == np.uint16
    _assert_same(written, labels)


def test_dicom_seg_label_map_round_trips(tmp_path: Path) -> None:
    labels = read_volume(SHARED_DATA / "ct-dicom-seg" / "partial_overlaps.dcm")
    for suffix in (".nii.gz", ".nrrd"):
        written = read_volume(write_label_map(labels, tmp_path / f"overlaps{suffix}"))
        _assert_same(written, labels)


def test_sheared_grid_keeps_its_shear(tmp_path: Path) -> None:
    # A gantry-tilted CT: k does not run along the slice normal. The sform holds it exactly; the
    # qform cannot, so it is marked unknown rather than left to disagree.
    affine = np.eye(4)
    affine[:3, :3] = [[0.8, 0.0, 0.0], [0.0, 0.8, 0.3], [0.0, 0.0, 2.0]]
    volume = Volume(np.arange(27, dtype=np.uint8).reshape(3, 3, 3), affine)
    for suffix in (".nii.gz", ".nrrd"):
        written = read_volume(write_label_map(volume, tmp_path / f"tilted{suffix}"))
        _assert_same(written, volume)
    header = _nifti_header_on_disk(tmp_path / "tilted.nii.gz")
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 1)
