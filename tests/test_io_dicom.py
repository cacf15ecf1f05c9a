"""DICOM series and DICOM-SEG reading against the real data in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsaga.errors import InputError
from medsaga.io import (OVERLAP_RULE, SourceInfo, Volume, read_dicom_seg, read_dicom_series, read_volume,
                        segment_labels)
from tests.data_paths import SHARED_DATA, needs_shared_data

SEG_DIR = SHARED_DATA / "ct-dicom-seg"
THREE_SLICE = SEG_DIR / "ct-3slice"
SERIES_DIR = SHARED_DATA / "ct-dicom-series"
JPEG2000 = SERIES_DIR / "dicom"
THREE_SLICE_UID = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"

pytestmark = needs_shared_data


@pytest.fixture(scope="module")
def three_slice() -> Volume:
    return read_volume(THREE_SLICE)


@pytest.fixture(scope="module")
def jpeg2000() -> Volume:
    return read_volume(JPEG2000)


@pytest.fixture(scope="module")
def liver_nrrd() -> Volume:
    return read_volume(SEG_DIR / "liver_seg.nrrd")


@pytest.fixture(scope="module")
def overlap_truth() -> np.ndarray:
    """Segment numbers as the partial_overlaps NRRDs give them, highest number per voxel."""
    parts = [read_volume(SEG_DIR / f"partial_overlaps-{n}.nrrd").array for n in (1, 2, 3)]
    return np.maximum.reduce(parts)


# --- DICOM series -------------------------------------------------------------------------------

def test_three_slice_series_is_ordered_by_position_not_file_name(three_slice: Volume) -> None:
    # 01.dcm is the top slice (z = -126.69), 03.dcm the lowest (z = -128.69): k must grow with z.
    assert [path.name for path in three_slice.source.dicom_files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert three_slice.shape == (512, 512, 3)
    assert three_slice.origin[2] == pytest.approx(-128.690002, abs=1e-6)
    assert three_slice.affine[2, 2] == pytest.approx(1.0, abs=1e-6)
    # RAS+ from LPS+: x and y change sign; origin (LPS) = (-235.199997, -226.800003, -128.690002).
    assert np.allclose(three_slice.origin, [235.199997, 226.800003, -128.690002], atol=1e-6)
    assert np.allclose(three_slice.spacing, [0.810547, 0.810547, 1.0], atol=1e-6)
    assert three_slice.orientation == "LPS"
    assert three_slice.source.series_instance_uid == THREE_SLICE_UID
    assert three_slice.source.format == "dicom"


def test_three_slice_series_is_on_the_grid_of_the_nrrd_labels(three_slice: Volume, liver_nrrd: Volume) -> None:
    assert three_slice.same_grid(liver_nrrd) == []


def test_series_voxels_are_rescaled_hu_in_column_row_slice_order(three_slice: Volume) -> None:
    import pydicom

    for k, path in enumerate(three_slice.source.dicom_files):
        dataset = pydicom.dcmread(path)
        stored = dataset.pixel_array.astype(np.float64)
        expected = stored * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        # pixel_array is (rows, columns) = (j, i): transposed onto our (i, j) slice.
        assert np.array_equal(three_slice.array[:, :, k], expected.T)
        position = np.array([float(v) for v in dataset.ImagePositionPatient]) * [-1, -1, 1]
        assert np.allclose(three_slice.affine @ [0, 0, k, 1], [*position, 1], atol=1e-5)
    assert np.issubdtype(three_slice.array.dtype, np.signedinteger)
    assert three_slice.array.min() < -1000  # air in HU, not raw stored values
    assert three_slice.source.metadata["rescale_intercept"] == "-1024"
    assert three_slice.source.metadata["modality"] == "CT"


def test_jpeg2000_series_reads_with_its_geometry(jpeg2000: Volume) -> None:
    import pydicom

    assert jpeg2000.shape == (512, 512, 20)
    assert np.allclose(jpeg2000.spacing, [0.9765625, 0.9765625, 2.0])
    assert jpeg2000.array.dtype == np.int16
    assert jpeg2000.source.metadata["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"
    assert -1100 <= jpeg2000.array.min() <= -1000 and jpeg2000.array.max() > 1000  # HU: air to bone
    # k order follows ImagePositionPatient z, checked on the files themselves.
    heights = [float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])
               for path in jpeg2000.source.dicom_files]
    assert np.allclose(heights, -804.5 + 2.0 * np.arange(20))
    assert np.allclose(jpeg2000.affine[:3, 3], [249.51171875, 437.51171875, -804.5])
    # Its files carry an empty SeriesInstanceUID: reported as None, not "".
    assert jpeg2000.source.series_instance_uid is None


def test_y_flipped_label_map_covers_the_same_physical_grid(jpeg2000: Volume) -> None:
    labels = read_volume(SERIES_DIR / "example_seg_dicom.nii.gz")
    assert labels.same_grid(jpeg2000) != []  # stored the other way up in j
    flipped = labels.flip(1)
    assert np.allclose(flipped.affine, jpeg2000.affine, atol=1e-4)
    assert flipped.same_grid(jpeg2000) == []
    # Flipping the CT's j axis gives the label map's affine: the same points, the other index order.
    assert np.allclose(jpeg2000.flip(1).affine, labels.affine, atol=1e-4)
    # The flip matters for the voxels: aligned by geometry, labelled voxels sit in tissue (HU > -300);
    # compared by raw index they often sit in air.
    in_tissue = (jpeg2000.array[flipped.array > 0] > -300).mean()
    by_raw_index = (jpeg2000.array[labels.array > 0] > -300).mean()
    assert in_tissue > 0.95
    assert by_raw_index < in_tissue - 0.15


def test_folder_with_two_series_lists_both_and_reads_the_chosen_one(tmp_path: Path) -> None:
    for source in (THREE_SLICE, JPEG2000):
        for path in source.iterdir():
            shutil.copy(path, tmp_path / path.name)
    with pytest.raises(InputError) as caught:
        read_volume(tmp_path)
    message = str(caught.value)
    assert THREE_SLICE_UID in message and "no SeriesInstanceUID" in message
    assert "3 files" in message and "20 files" in message
    assert caught.value.path == tmp_path
    assert read_volume(tmp_path, series_uid=THREE_SLICE_UID).shape == (512, 512, 3)
    assert read_volume(tmp_path, series_uid="").shape == (512, 512, 20)
    with pytest.raises(InputError, match="no series with SeriesInstanceUID '1.2.3'"):
        read_volume(tmp_path, series_uid="1.2.3")


def test_a_seg_beside_the_images_does_not_make_the_folder_ambiguous(tmp_path: Path, three_slice: Volume) -> None:
    for path in THREE_SLICE.iterdir():
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(SEG_DIR / "liver.dcm", tmp_path / "liver.dcm")
    volume = read_volume(tmp_path)
    assert volume.shape == (512, 512, 3)
    assert np.array_equal(volume.array, three_slice.array)


def test_slices_with_different_rescale_slopes_come_out_as_float(tmp_path: Path, three_slice: Volume) -> None:
    import pydicom

    for path in THREE_SLICE.iterdir():
        shutil.copy(path, tmp_path / path.name)
    edited = pydicom.dcmread(tmp_path / "02.dcm")
    edited.RescaleSlope = "0.5"
    edited.save_as(tmp_path / "02.dcm")
    volume = read_dicom_series(tmp_path)
    assert volume.array.dtype == np.float32
    raw_middle = (three_slice.array[:, :, 1].astype(np.float64) + 1024)  # stored values of 02.dcm
    assert np.array_equal(volume.array[:, :, 1], raw_middle * 0.5 - 1024)
    assert np.array_equal(volume.array[:, :, [0, 2]], three_slice.array[:, :, [0, 2]])
    assert volume.source.metadata["rescale_slope"] == "varies"


# --- DICOM-SEG ----------------------------------------------------------------------------------

def test_liver_seg_equals_the_nrrd_label_map(liver_nrrd: Volume, three_slice: Volume) -> None:
    # No series given: found by SeriesInstanceUID in the SEG's sibling folder ct-3slice/.
    labels = read_volume(SEG_DIR / "liver.dcm")
    assert labels.same_grid(liver_nrrd) == []
    assert np.allclose(labels.affine, three_slice.affine)
    assert labels.array.dtype == np.uint8
    assert np.count_nonzero(labels.array) == 107098
    assert np.array_equal(labels.array, liver_nrrd.array)
    assert segment_labels(labels) == {1: "Liver"}
    assert labels.source.format == "dicom-seg"
    assert labels.source.metadata["segment.1.property_type"] == "Liver"
    assert labels.source.metadata["referenced_series_instance_uid"] == THREE_SLICE_UID
    assert labels.source.dicom_files == three_slice.source.dicom_files


def test_overlapping_segments_highest_number_wins(overlap_truth: np.ndarray) -> None:
    labels = read_dicom_seg(SEG_DIR / "partial_overlaps.dcm", THREE_SLICE)
    assert OVERLAP_RULE == "highest segment number wins"
    assert labels.source.metadata["overlap_rule"] == OVERLAP_RULE
    assert segment_labels(labels) == {1: "GREEN", 2: "ORANGE", 3: "PURPLE", 4: "LIGHT_BLUE", 5: "DARK_BLUE"}
    assert int(labels.source.metadata["overlapping_voxels"]) > 0
    assert np.array_equal(labels.array, overlap_truth)
    # Spelled out where segment 2 (partial_overlaps-2) meets segment 3 (partial_overlaps-3): 3 wins.
    two = read_volume(SEG_DIR / "partial_overlaps-2.nrrd").array == 2
    three = read_volume(SEG_DIR / "partial_overlaps-3.nrrd").array == 3
    assert np.count_nonzero(two & three) > 0
    assert np.all(labels.array[two & three] == 3)
    assert np.all(labels.array[two & ~three] >= 2)


def test_seg_placed_by_position_on_a_non_dicom_reference(liver_nrrd: Volume, overlap_truth: np.ndarray) -> None:
    # No SOPInstanceUIDs to go by: frames land by their plane positions, whatever the axis order.
    assert np.array_equal(read_dicom_seg(SEG_DIR / "liver.dcm", liver_nrrd).array, liver_nrrd.array)
    flipped = liver_nrrd.flip(1)
    assert np.array_equal(read_dicom_seg(SEG_DIR / "liver.dcm", flipped).array, flipped.array)
    swapped = Volume(liver_nrrd.array.transpose(1, 0, 2), liver_nrrd.affine[:, [1, 0, 2, 3]])
    assert np.array_equal(read_dicom_seg(SEG_DIR / "liver.dcm", swapped).array, swapped.array)
    upside_down = liver_nrrd.flip(2).flip(0)
    labels = read_dicom_seg(SEG_DIR / "partial_overlaps.dcm", upside_down)
    assert np.array_equal(labels.array, np.flip(overlap_truth, axis=(0, 2)))


def test_seg_refuses_a_reference_on_another_grid(liver_nrrd: Volume) -> None:
    coarse = Volume(liver_nrrd.array[::2, ::2], liver_nrrd.affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="not on the grid"):
        read_dicom_seg(SEG_DIR / "liver.dcm", coarse)
    shifted_affine = liver_nrrd.affine.copy()
    shifted_affine[:3, 3] += liver_nrrd.affine[:3, 0] * 0.5
    with pytest.raises(InputError, match="between the voxels"):
        read_dicom_seg(SEG_DIR / "liver.dcm", Volume(liver_nrrd.array, shifted_affine))
    cropped = Volume(liver_nrrd.array[:, :, :2], liver_nrrd.affine)  # drops the top slice, which has liver
    with pytest.raises(InputError, match="outside"):
        read_dicom_seg(SEG_DIR / "liver.dcm", cropped)


def test_seg_refuses_a_reference_in_another_frame_of_reference(liver_nrrd: Volume) -> None:
    other = Volume(liver_nrrd.array, liver_nrrd.affine,
                   SourceInfo(path=Path("other"), format="dicom", metadata={"frame_of_reference_uid": "1.2.3"}))
    with pytest.raises(InputError, match="frame of reference"):
        read_dicom_seg(SEG_DIR / "liver.dcm", other)


def test_seg_without_its_series_nearby_asks_for_it(tmp_path: Path) -> None:
    lonely = tmp_path / "liver.dcm"
    shutil.copy(SEG_DIR / "liver.dcm", lonely)
    with pytest.raises(InputError, match="pass the source series") as caught:
        read_volume(lonely)
    assert caught.value.path == lonely
    assert THREE_SLICE_UID in str(caught.value)
    # Given explicitly, also through read_volume, it works.
    assert np.count_nonzero(read_volume(lonely, reference=THREE_SLICE).array) == 107098


def test_seg_series_picked_from_a_folder_of_several(tmp_path: Path, liver_nrrd: Volume) -> None:
    for source in (THREE_SLICE, JPEG2000):
        for path in source.iterdir():
            shutil.copy(path, tmp_path / path.name)
    labels = read_dicom_seg(SEG_DIR / "liver.dcm", tmp_path)
    assert np.array_equal(labels.array, liver_nrrd.array)


def test_read_dicom_seg_refuses_an_image_file() -> None:
    with pytest.raises(InputError, match="not a DICOM-SEG"):
        read_dicom_seg(THREE_SLICE / "01.dcm", THREE_SLICE)


def _write_seg(kind: str, path: Path) -> None:
    """A 2-segment SEG of type ``kind`` with frames on 01.dcm (top, k=2) and 03.dcm (bottom, k=0) only."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(THREE_SLICE / name) for name in ("01.dcm", "03.dcm")]
    for source in sources:
        source.SpecificCharacterSet = "ISO_IR 100"  # blank in these files; highdicom insists
    labels = np.zeros((2, 512, 512), np.uint8)  # (frame, row, column)
    labels[0, 10:20, 30:40] = 1
    labels[1, 100:120, 50:60] = 2
    pixels: np.ndarray = labels
    extra = {}
    if kind == "FRACTIONAL":
        pixels = np.zeros((2, 512, 512, 2), np.float32)
        pixels[..., 0] = (labels == 1) * 0.7
        pixels[..., 1] = (labels == 2) * 0.4  # below one half: not part of segment 2
        pixels[1, 200:210, 220:230, 1] = 0.9
        extra = {"max_fractional_value": 100}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"part {number}", segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for number in (1, 2)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=getattr(hd.seg.SegmentationTypeValues, kind),
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0", **extra)
    seg.save_as(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_seg_types_and_frames_on_some_slices_only(kind: str, tmp_path: Path, liver_nrrd: Volume) -> None:
    path = tmp_path / f"{kind}.dcm"
    _write_seg(kind, path)
    expected = np.zeros((512, 512, 3), np.uint8)  # (i = column, j = row, k)
    expected[30:40, 10:20, 2] = 1
    if kind == "FRACTIONAL":
        expected[220:230, 200:210, 0] = 2
    else:
        expected[50:60, 100:120, 0] = 2
    by_uid = read_dicom_seg(path, THREE_SLICE)
    assert np.array_equal(by_uid.array, expected)
    assert by_uid.source.metadata["segmentation_type"] == kind
    assert segment_labels(by_uid) == {1: "part 1", 2: "part 2"}
    # By position, onto a grid stored the other way round in i: frames 2 slices apart still land.
    mirrored = liver_nrrd.flip(0)
    assert np.array_equal(read_dicom_seg(path, mirrored).array, np.flip(expected, axis=0))


def test_gantry_tilt_shows_as_shear_not_squared_off(tmp_path: Path, three_slice: Volume) -> None:
    import pydicom

    for path in THREE_SLICE.iterdir():
        dataset = pydicom.dcmread(path)
        x, y, z = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y + 0.2 * (z + 128.690002), z]  # slices slide 0.2 mm per mm in y
        dataset.save_as(tmp_path / path.name)
    tilted = read_volume(tmp_path)
    assert np.allclose(tilted.affine[:3, 2], [0.0, -0.2, 1.0], atol=1e-6)  # RAS: y flips sign
    assert np.allclose(tilted.affine[:3, :2], three_slice.affine[:3, :2])
    assert np.array_equal(tilted.array, three_slice.array)
