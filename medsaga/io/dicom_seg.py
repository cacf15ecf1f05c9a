"""DICOM-SEG (Segmentation Storage) as an integer label map on the grid of its source series.

Label values and overlaps
    The value of a voxel is the segment number (1, 2, ...) of the segment that covers it, 0 where
    none does. Where segments overlap, **the highest segment number wins** (the rule highdicom
    documents for combining segments); the number of such voxels is kept in the metadata.
    FRACTIONAL segments count where their fraction is at least 0.5.

Segment names
    ``source.metadata`` holds, for each segment ``n``: ``segment.<n>.label`` (SegmentLabel),
    ``segment.<n>.property_type`` and ``segment.<n>.property_category`` (code meanings);
    :func:`segment_labels` turns them into ``{n: label}``.

Placing frames
    If the reference is the DICOM series the SEG was made from, frames go to the slices whose
    SOPInstanceUIDs they reference (exact, no arithmetic). Otherwise (a NIfTI/NRRD reference, or
    another series in the same frame of reference) frames are placed by their plane positions,
    which must fall on the reference grid (same spacing, axes parallel, whole-voxel offsets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from medsaga.errors import InputError
from medsaga.io.read_image import SEG_SOP_CLASS_UIDS, is_dicom_seg, read_image  # noqa: F401 (re-exported)
from medsaga.io.volume import LPS_TO_RAS, SourceInfo, Volume

OVERLAP_RULE = "highest segment number wins"
# Sibling folders searched for the referenced series when none is given (bounded: it reads headers).
_MAX_SEARCHED_FOLDERS = 64
_GRID_TOL = 1e-3  # direction/spacing ratios (unitless)
_OFFSET_TOL_VOXELS = 0.05  # positions written as decimal strings land this close to whole voxels


def segment_labels(volume: Volume) -> dict[int, str]:
    """``{segment number: SegmentLabel}`` of a label map read by :func:`read_dicom_seg`; ``{}`` otherwise."""
    labels = {}
    for key, value in volume.source.metadata.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "segment" and parts[2] == "label" and parts[1].isdigit():
            labels[int(parts[1])] = value
    return dict(sorted(labels.items()))


def read_dicom_seg(seg_path: Path, series: Path | Volume | None = None) -> Volume:
    """Read a DICOM-SEG file as a label map on the grid of the image it segments.

    Args:
        seg_path: the DICOM-SEG file.
        series: the segmented image: a DICOM series folder (the series the SEG references is picked
            from it), any other image path :func:`medsaga.io.read_volume` reads (not another
            DICOM-SEG: :func:`medsaga.io.read_image.read_image`), or a :class:`Volume` already read. ``None``: look for the referenced series (by SeriesInstanceUID) in the
            SEG's folder and its subfolders.

    Returns:
        A :class:`Volume` on the reference grid (same shape and affine): ``array`` ``(I, J, K)``
        uint8 (uint16 above 255 segments) holding segment numbers, overlaps resolved as the module
        docstring says. ``source``: format ``"dicom-seg"``, ``path`` the SEG file,
        ``series_instance_uid`` the SEG's own series, ``dicom_files`` and ``nifti_header`` those of
        the reference (what a writer needs to overlay on it), ``metadata`` the segment names plus
        ``overlap_rule``, ``overlapping_voxels``, ``segmentation_type``, ``reference``,
        ``referenced_series_instance_uid`` and ``frame_of_reference_uid``.
    """
    seg_path = Path(seg_path)
    seg = _load(seg_path)
    referenced_series = sorted({str(uids[1]).strip() for uids in seg.get_source_image_uids()})
    reference = _reference_volume(seg_path, series, referenced_series)
    _check_frame_of_reference(seg, reference, seg_path)
    numbers = [int(n) for n in seg.segment_numbers]
    fetch = _fetch_by_source_instance(seg, reference) or _fetch_by_position(seg, reference, seg_path)
    dtype = np.uint8 if max(numbers, default=0) <= 255 else np.uint16
    labels = np.zeros(reference.shape, dtype=dtype)
    coverage = np.zeros(reference.shape, dtype=np.uint16)
    try:
        # Ascending numbers, each written over the last: the highest number wins where they overlap.
        for number in sorted(numbers):
            mask = fetch(number)
            labels[mask] = number
            coverage += mask
    except InputError:
        raise
    except Exception as error:  # undecodable frames, inconsistent functional groups
        raise InputError(f"cannot decode the segmentation frames ({_short(error)})", seg_path) from None
    metadata = _segment_metadata(seg, numbers)
    metadata.update({
        "segmentation_type": _enum_text(seg.segmentation_type),
        "overlap_rule": OVERLAP_RULE,
        "overlapping_voxels": str(int(np.count_nonzero(coverage > 1))),
        "reference": str(reference.source.path) if reference.source.path is not None else "",
        "referenced_series_instance_uid": "\\".join(referenced_series),
        "frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "")),
    })
    source = SourceInfo(
        path=seg_path, format="dicom-seg", nifti_header=reference.source.nifti_header,
        dicom_files=reference.source.dicom_files,
        series_instance_uid=str(seg.get("SeriesInstanceUID", "")) or None, metadata=metadata,
    )
    return Volume(labels, reference.affine, source)


def _load(seg_path: Path) -> Any:
    import highdicom as hd
    import pydicom

    try:
        header = pydicom.dcmread(seg_path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception as error:
        raise InputError(f"cannot read as DICOM ({_short(error)})", seg_path) from None
    if not is_dicom_seg(header):
        raise InputError(f"is not a DICOM-SEG (Modality {header.get('Modality', '?')})", seg_path)
    try:
        return hd.seg.segread(seg_path)
    except Exception as error:
        raise InputError(f"cannot read as DICOM-SEG ({_short(error)})", seg_path) from None


def _reference_volume(seg_path: Path, series: Path | Volume | None, referenced_series: list[str]) -> Volume:
    """The image the SEG is placed on: given, or found next to the SEG by SeriesInstanceUID."""
    if isinstance(series, Volume):
        return series
    if series is None:
        series = _find_referenced_series(seg_path, referenced_series)
    series = Path(series)
    if series.is_dir():
        from medsaga.io.dicom_series import list_dicom_series

        present = {summary.uid for summary in list_dicom_series(series)}
        chosen = next((uid for uid in referenced_series if uid in present), None)
        return read_image(series, series_uid=chosen)
    return read_image(series)


def _find_referenced_series(seg_path: Path, referenced_series: list[str]) -> Path:
    import SimpleITK as sitk

    from medsaga.io.dicom_series import clean_uid
    from medsaga.io.itk import quiet_itk

    wanted = set(referenced_series) - {""}
    parent = seg_path.parent
    if not wanted:
        raise InputError("references no source series; pass the image it segments", seg_path)
    try:
        subfolders = sorted(entry for entry in parent.iterdir() if entry.is_dir())
    except OSError:
        subfolders = []
    candidates = [parent, *subfolders][:_MAX_SEARCHED_FOLDERS]
    for folder in candidates:
        with quiet_itk():
            if wanted & {clean_uid(uid) for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))}:
                return folder
    raise InputError(f"the series it segments ({', '.join(sorted(wanted))}) is not in {parent} or its "
                     "subfolders; pass the source series folder (or image) explicitly", seg_path)


def _check_frame_of_reference(seg: Any, reference: Volume, seg_path: Path) -> None:
    ours = str(seg.get("FrameOfReferenceUID", ""))
    theirs = reference.source.metadata.get("frame_of_reference_uid", "")
    if ours and theirs and ours != theirs:
        raise InputError(f"is in frame of reference {ours}, but {reference.source.path} is in {theirs}: "
                         "they are not in the same patient space", seg_path)


def _fetch_by_source_instance(seg: Any, reference: Volume) -> Callable[[int], np.ndarray] | None:
    """Segment masks ``(I, J, K)`` read by referenced SOPInstanceUID, or None when that is not possible."""
    if reference.source.format != "dicom" or not reference.source.dicom_files:
        return None
    instance_uids = _sop_instance_uids(reference.source.dicom_files)
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    columns, rows, _ = reference.shape
    if (not referenced or not referenced <= set(instance_uids) or len(set(instance_uids)) != len(instance_uids)
            or (int(seg.Rows), int(seg.Columns)) != (rows, columns) or _locations_not_preserved(seg)):
        return None

    def fetch(number: int) -> np.ndarray:
        # Frames of the same size as their source image, and not declared moved: pixel (r, c) of
        # the frame is pixel (r, c) of the slice, i.e. voxel (c, r, k).
        pixels = seg.get_pixels_by_source_instance(
            instance_uids, segment_numbers=[number], ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True, rescale_fractional=True,
        )[..., 0]  # (K, rows, columns)
        return _binary(pixels).transpose(2, 1, 0)

    return fetch


def _fetch_by_position(seg: Any, reference: Volume, seg_path: Path) -> Callable[[int], np.ndarray]:
    """Segment masks ``(I, J, K)`` placed on the reference grid by the frames' plane positions."""

    def fetch(number: int) -> np.ndarray:
        try:
            frames = seg.get_volume(segment_numbers=[number], rescale_fractional=True)
        except Exception as error:
            raise InputError(f"cannot place segment {number} in space ({_short(error)}); pass the DICOM "
                             "series it was made from", seg_path) from None
        return _paste_on_grid(_binary(frames.array[..., 0]), frames.affine, reference, seg_path)

    return fetch


def _paste_on_grid(mask: np.ndarray, mask_affine_lps: np.ndarray, grid: Volume, seg_path: Path) -> np.ndarray:
    """``mask`` (any 3 axes, LPS affine ``(4, 4)``) as a boolean ``(I, J, K)`` array on ``grid``.

    Every mask voxel must coincide with a grid voxel: mask axes parallel to grid axes (in any order
    or sense), whole-voxel offset, and steps of a whole number of grid voxels (a SEG whose frames
    cover every other slice, or one slice, spans a sparser grid). Nothing is resampled.
    """
    where = grid.source.path or "the reference image"
    to_grid = np.linalg.solve(LPS_TO_RAS @ grid.affine, mask_affine_lps)  # mask index -> grid index
    linear, offset = to_grid[:3, :3], to_grid[:3, 3]
    grid_axis = np.argmax(np.abs(linear), axis=0)  # the grid axis each mask axis runs along
    steps = linear[grid_axis, np.arange(3)]
    along_one_axis = np.abs(linear).sum(axis=0) - np.abs(steps) < _GRID_TOL
    # A length-1 mask axis has no step to check: one frame fits wherever its position says.
    whole_steps = (np.abs(steps - np.round(steps)) < _GRID_TOL) & (np.round(np.abs(steps)) >= 1)
    whole_steps |= np.array(mask.shape) == 1
    if len(set(grid_axis.tolist())) != 3 or not along_one_axis.all() or not whole_steps.all():
        raise InputError(f"its frames are not on the grid of {where} (other spacing or orientation); "
                         "resampling is not supported", seg_path)
    if np.abs(offset - np.round(offset)).max() > _OFFSET_TOL_VOXELS:
        raise InputError(f"its frames sit between the voxels of {where} (sub-voxel offset); "
                         "resampling is not supported", seg_path)
    mask_axis = np.argsort(grid_axis)  # the mask axis that runs along grid axis 0, 1, 2
    aligned = mask.transpose(mask_axis)
    # Grid index of every mask position along each grid axis; flips are just negative steps.
    indices = [np.round(offset[p] + np.round(steps[mask_axis[p]]) * np.arange(aligned.shape[p])).astype(int)
               for p in range(3)]
    inside = [(index >= 0) & (index < size) for index, size in zip(indices, grid.shape)]
    if np.count_nonzero(aligned[np.ix_(*inside)]) != np.count_nonzero(aligned):
        raise InputError(f"segments extend outside {where}", seg_path)
    placed = np.zeros(grid.shape, dtype=bool)
    placed[np.ix_(*(index[ok] for index, ok in zip(indices, inside)))] = aligned[np.ix_(*inside)]
    return placed


def _binary(pixels: np.ndarray) -> np.ndarray:
    """BINARY/LABELMAP pixels are 0/1; FRACTIONAL ones, rescaled to [0, 1], count from one half."""
    if np.issubdtype(pixels.dtype, np.floating):
        return pixels >= 0.5
    return pixels > 0


def _sop_instance_uids(files: tuple[Path, ...]) -> list[str]:
    import pydicom

    uids = []
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception as error:
            raise InputError(f"cannot read the DICOM header ({_short(error)})", path) from None
        uids.append(str(header.get("SOPInstanceUID", "")))
    return uids


def _locations_not_preserved(seg: Any) -> bool:
    """True when the SEG says some frame's pixels do not sit where its source image's pixels do."""
    if str(seg.get("SpatialLocationsPreserved", "")) == "NO":
        return True
    for group in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in group.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if str(source.get("SpatialLocationsPreserved", "")) == "NO":
                    return True
    return False


def _segment_metadata(seg: Any, numbers: list[int]) -> dict[str, str]:
    metadata = {}
    for number in numbers:
        description = seg.get_segment_description(number)
        metadata[f"segment.{number}.label"] = str(description.segment_label)
        for key, attribute in (("property_type", "segmented_property_type"),
                               ("property_category", "segmented_property_category")):
            try:
                metadata[f"segment.{number}.{key}"] = str(getattr(description, attribute).meaning)
            except Exception:  # optional in practice; a missing code is not worth failing the read
                pass
    return metadata


def _enum_text(value: Any) -> str:
    return str(getattr(value, "value", value))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
