"""Bad input becomes an InputError naming the file and the problem; writers never clobber."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsaga.errors import InputError
from medsaga.io import Volume, read_volume, write_label_map
from medsaga.io.atomic import TEMP_PREFIX, atomic_output
from tests.data_paths import SHARED_DATA, needs_shared_data

CT_NIFTI = SHARED_DATA / "ct-dicom-series" / "example_ct_sm.nii.gz"
LABELS_NIFTI = SHARED_DATA / "ct-dicom-series" / "example_seg.nii.gz"
THREE_SLICE = SHARED_DATA / "ct-dicom-seg" / "ct-3slice"


def _grid_volume(array: np.ndarray) -> Volume:
    return Volume(array, np.diag([0.8, 0.8, 2.0, 1.0]))


# --- reading ------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as caught:
        read_volume(tmp_path / "absent.nii.gz")
    assert caught.value.path == tmp_path / "absent.nii.gz"


@needs_shared_data
def test_truncated_nifti_names_the_file(tmp_path: Path) -> None:
    data = CT_NIFTI.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read as NIfTI") as caught:
        read_volume(truncated)
    assert caught.value.path == truncated
    assert str(caught.value).startswith(str(truncated))


def test_not_a_nifti_at_all(tmp_path: Path) -> None:
    fake = tmp_path / "notes.nii"
    fake.write_text("not an image")
    with pytest.raises(InputError, match="cannot read as NIfTI"):
        read_volume(fake)


def test_unknown_extension_lists_the_supported_formats(tmp_path: Path) -> None:
    picture = tmp_path / "slice.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"unsupported format \('.png' files\)") as caught:
        read_volume(picture)
    message = str(caught.value)
    for supported in (".nii.gz", ".nrrd", ".mha", "DICOM series", "DICOM-SEG"):
        assert supported in message


def test_nifti_with_several_volumes_is_refused(tmp_path: Path) -> None:
    import nibabel as nib

    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), path)
    with pytest.raises(InputError, match=r"holds 2 volumes \(shape \(4, 4, 4, 2\)\).*CASE_0000, CASE_0001"):
        read_volume(path)
    single = tmp_path / "one_volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 1), np.int16), np.eye(4)), single)
    assert read_volume(single).shape == (4, 4, 4)


def test_itk_images_that_are_not_scalar_volumes_are_refused(tmp_path: Path) -> None:
    import SimpleITK as sitk

    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(flat))
    with pytest.raises(InputError, match="expected a 3-D volume, found a 2-D image"):
        read_volume(flat)
    vectors = tmp_path / "vectors.mha"
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3), str(vectors))
    with pytest.raises(InputError, match="3 values per voxel"):
        read_volume(vectors)


@needs_shared_data
def test_truncated_nrrd(tmp_path: Path) -> None:
    truncated = tmp_path / "labels.nrrd"
    truncated.write_bytes((SHARED_DATA / "ct-dicom-seg" / "liver_seg.nrrd").read_bytes()[:300])
    with pytest.raises(InputError, match="cannot read as NRRD") as caught:
        read_volume(truncated)
    assert "Exception thrown" not in str(caught.value) and "\n" not in str(caught.value)


def test_folder_without_dicom(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no DICOM series found in this folder \(it is empty\)"):
        read_volume(tmp_path)
    (tmp_path / "image.nii.gz").write_bytes(b"x")
    (tmp_path / "nested").mkdir()
    with pytest.raises(InputError, match="no DICOM series") as caught:
        read_volume(tmp_path)
    assert "1 non-DICOM file" in str(caught.value) and "subfolders are not searched" in str(caught.value)


@needs_shared_data
def test_single_dicom_image_asks_for_its_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pass the folder of the series") as caught:
        read_volume(THREE_SLICE / "01.dcm")
    assert str(THREE_SLICE) in str(caught.value)
    # Recognised by its DICM preamble even without the .dcm extension.
    plain = tmp_path / "IM0001"
    shutil.copy(THREE_SLICE / "01.dcm", plain)
    with pytest.raises(InputError, match="one image of a DICOM series"):
        read_volume(plain)


@needs_shared_data
def test_damaged_slice_is_reported_not_silently_dropped(tmp_path: Path) -> None:
    for path in THREE_SLICE.iterdir():
        shutil.copy(path, tmp_path / path.name)
    middle = tmp_path / "02.dcm"
    middle.write_bytes(middle.read_bytes()[:300_000])
    # GDCM leaves the damaged file out, and 01 + 03 alone would look like an even 2 mm series.
    with pytest.raises(InputError, match="cannot be decoded") as caught:
        read_volume(tmp_path)
    assert caught.value.path == middle


@needs_shared_data
def test_missing_and_duplicate_slices_are_refused(tmp_path: Path) -> None:
    gap = tmp_path / "gap"
    gap.mkdir()
    files = sorted((SHARED_DATA / "ct-dicom-series" / "dicom").iterdir())
    for path in files[:7] + files[8:]:  # one slice missing in the middle
        shutil.copy(path, gap / path.name)
    with pytest.raises(InputError, match="unevenly spaced"):
        read_volume(gap)
    duplicate = tmp_path / "duplicate"
    duplicate.mkdir()
    for path in THREE_SLICE.iterdir():
        shutil.copy(path, duplicate / path.name)
    shutil.copy(THREE_SLICE / "01.dcm", duplicate / "01-again.dcm")
    with pytest.raises(InputError, match="share a position"):
        read_volume(duplicate)


@needs_shared_data
@pytest.mark.parametrize("keep, message", [(3000, "cannot read as DICOM"), (-20000, "cannot decode the segmentation")])
def test_truncated_dicom_seg(keep: int, message: str, tmp_path: Path) -> None:
    truncated = tmp_path / "liver.dcm"
    truncated.write_bytes((SHARED_DATA / "ct-dicom-seg" / "liver.dcm").read_bytes()[:keep])
    with pytest.raises(InputError, match=message) as caught:
        read_volume(truncated, reference=THREE_SLICE)
    assert caught.value.path == truncated


def test_series_uid_on_a_file_is_refused(tmp_path: Path) -> None:
    import nibabel as nib

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    with pytest.raises(InputError, match="series UID"):
        read_volume(path, series_uid="1.2.3")


# --- writing ------------------------------------------------------------------------------------

@needs_shared_data
def test_writer_never_overwrites_its_input(tmp_path: Path) -> None:
    source = tmp_path / "labels.nii.gz"
    shutil.copy(LABELS_NIFTI, source)
    before = source.read_bytes()
    volume = read_volume(source)
    with pytest.raises(InputError, match="input") as caught:
        write_label_map(volume, source, overwrite=True)
    assert caught.value.path == source
    link = tmp_path / "link.nii.gz"
    link.symlink_to(source)
    with pytest.raises(InputError, match="input"):
        write_label_map(volume, link, overwrite=True)
    assert source.read_bytes() == before


def test_writer_refuses_an_existing_file_unless_told(tmp_path: Path) -> None:
    out = tmp_path / "out.nrrd"
    out.write_bytes(b"precious")
    volume = _grid_volume(np.ones((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match="already exists"):
        write_label_map(volume, out)
    assert out.read_bytes() == b"precious"
    write_label_map(volume, out, overwrite=True)
    assert np.array_equal(read_volume(out).array, volume.array)


def test_writer_creates_missing_folders_and_refuses_folders(tmp_path: Path) -> None:
    volume = _grid_volume(np.ones((3, 3, 3), np.uint8))
    out = write_label_map(volume, tmp_path / "a" / "b" / "labels.nii.gz")
    assert out.is_file()
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_label_map(volume, tmp_path / "dir.nii.gz", overwrite=True)


@pytest.mark.parametrize("values, message", [
    (np.array([-1, 0, 1]), r"0\.\.65535, found -1\.\.1"),
    (np.array([0, 70000, 1]), r"0\.\.65535, found 0\.\.70000"),
    (np.array([0.0, 1.5, 2.0]), "whole numbers"),
    (np.array([0.0, np.nan, 2.0]), "whole numbers"),
])
def test_writer_refuses_labels_that_do_not_fit(values: np.ndarray, message: str, tmp_path: Path) -> None:
    volume = _grid_volume(np.resize(values, (3, 3, 3)))
    with pytest.raises(InputError, match=message):
        write_label_map(volume, tmp_path / "labels.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_writer_accepts_whole_float_and_bool_labels(tmp_path: Path) -> None:
    as_float = _grid_volume(np.resize(np.array([0.0, 2.0, 7.0]), (3, 3, 3)))
    assert read_volume(write_label_map(as_float, tmp_path / "f.nrrd")).array.dtype == np.uint8
    as_bool = _grid_volume(np.resize(np.array([True, False]), (3, 3, 3)))
    written = read_volume(write_label_map(as_bool, tmp_path / "b.nii"))
    assert np.array_equal(written.array, as_bool.array.astype(np.uint8))


def test_writer_refuses_unknown_extensions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"use one of \.nii, \.nii\.gz, \.nrrd, \.mha"):
        write_label_map(_grid_volume(np.zeros((2, 2, 2), np.uint8)), tmp_path / "labels.png")


@pytest.mark.parametrize("suffix, module, function", [
    (".nii.gz", "nibabel", "save"),
    (".nrrd", "SimpleITK", "WriteImage"),
])
def test_failed_write_leaves_no_temporary_and_the_old_file_intact(
        suffix: str, module: str, function: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    out = tmp_path / f"labels{suffix}"
    out.write_bytes(b"previous result")

    def half_write(image: object, filename: str, *args: object, **kwargs: object) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importlib.import_module(module), function, half_write)
    with pytest.raises(InputError, match="cannot write .*No space left on device"):
        write_label_map(_grid_volume(np.ones((3, 3, 3), np.uint8)), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert out.read_bytes() == b"previous result"


def test_atomic_output_keeps_the_extension_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "result.nii.gz"
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(TEMP_PREFIX) and temporary.name.endswith(".nii.gz")
        temporary.write_bytes(b"done")
        assert not target.exists()  # nothing visible under the final name until the block succeeds
    assert target.read_bytes() == b"done"
    assert os.listdir(tmp_path) == ["result.nii.gz"]
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "other.nii.gz") as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == ["result.nii.gz"]
