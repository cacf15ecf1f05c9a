"""A folder of single-frame DICOM images (one series) as one :class:`Volume`.

GDCM (through SimpleITK) finds the series and decodes the pixels, compressed syntaxes included
(JPEG, JPEG-LS, JPEG 2000, RLE), applying RescaleSlope/Intercept (CT values come out in HU).
The geometry is not taken on trust from ITK: the slices are sorted here by their position along
the slice normal and checked (one orientation, one pixel grid, no duplicate or missing slices),
and the affine is built from ImagePositionPatient itself, so that a gantry tilt shows up as the
shear it is instead of being squared off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsaga.errors import InputError
from medsaga.io.formats import DICOM_SUFFIXES, format_suffix, has_dicom_preamble
from medsaga.io.itk import array_from_itk, itk_error_reason, quiet_itk
from medsaga.io.volume import LPS_TO_RAS, SourceInfo, Volume

# Objects that share a study with the images but are not slices of a volume.
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"})

_HEADER_TAGS = [
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality",
    "SeriesDescription", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
    "Columns", "NumberOfFrames", "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "SliceThickness", "SpacingBetweenSlices",
]
# Direction cosines and pixel spacings written as decimal strings agree to about 1e-6.
_ORIENTATION_TOL = 1e-4
_SPACING_TOL_MM = 1e-3
# Slice gaps may differ by this fraction of the mean gap before we call the series uneven.
_GAP_REL_TOL = 0.01


@dataclass(frozen=True)
class SeriesSummary:
    """One DICOM series found in a folder.

    Attributes:
        uid: SeriesInstanceUID; ``""`` when the files carry none (some anonymisers blank it).
        files: its files, in GDCM's order.
        modality: Modality of its first file (``"CT"``, ``"MR"``, ``"SEG"`` ...), ``""`` if absent.
        description: SeriesDescription of its first file, ``""`` if absent.
    """

    uid: str
    files: tuple[Path, ...]
    modality: str
    description: str

    def describe(self) -> str:
        """One line for error messages, e.g. ``1.2.3 (20 files, CT, 'CT Body 3.0')``."""
        uid = self.uid if self.uid else '"" (no SeriesInstanceUID)'
        details = [f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"]
        details += [text for text in (self.modality, repr(self.description) if self.description else "") if text]
        return f"{uid} ({', '.join(details)})"


def list_dicom_series(folder: Path) -> list[SeriesSummary]:
    """The DICOM series directly inside ``folder`` (subfolders are not searched), sorted by UID."""
    import pydicom
    import SimpleITK as sitk

    folder = Path(folder)
    with quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    summaries = []
    for uid in sorted(uids):
        with quiet_itk():
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid, False, False, False)
        if not names:
            continue
        try:
            first = pydicom.dcmread(names[0], stop_before_pixels=True,
                                    specific_tags=["Modality", "SeriesDescription"])
            modality, description = str(first.get("Modality", "")), str(first.get("SeriesDescription", ""))
        except Exception:  # a file GDCM could parse but pydicom cannot: describe it without the extras
            modality = description = ""
        summaries.append(SeriesSummary(clean_uid(uid), tuple(Path(name) for name in names), modality, description))
    return summaries


def read_dicom_series(folder: Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` as a volume.

    Args:
        folder: a folder holding the series' files (other series and non-DICOM files may sit there).
        series_uid: the SeriesInstanceUID to read; needed only when the folder holds more than one
            image series (DICOM-SEG, RTSTRUCT and similar non-image series are not counted).
            ``""`` selects a series whose files carry an empty SeriesInstanceUID.

    Returns:
        A :class:`Volume`: ``array`` ``(I, J, K)`` = (column, row, slice), rescaled values (HU for
        CT) as int16/int32, or float32 when the rescale is fractional or differs between slices;
        ``affine`` RAS+ from the DICOM position and orientation; ``source.dicom_files`` in ``k``
        order (``k`` grows along the slice normal, row x column direction); ``source.metadata``
        with modality, series_description, rescale_slope/intercept/type, study and frame of
        reference UIDs, transfer_syntax_uid.
    """
    folder = Path(folder)
    all_series = list_dicom_series(folder)
    summary = _choose_series(folder, all_series, series_uid)
    _check_nothing_skipped(folder, all_series, summary)
    headers = [_read_header(path) for path in summary.files]
    _check_same_series(headers, summary)
    order, affine = _slice_order_and_affine(headers, folder)
    files = tuple(summary.files[n] for n in order)
    headers = [headers[n] for n in order]
    array = _read_pixels(files, headers, folder)
    first = headers[0]
    source = SourceInfo(
        path=folder, format="dicom", dicom_files=files,
        series_instance_uid=summary.uid or None, metadata=_metadata(headers, first),
    )
    return Volume(array, affine, source)


def _choose_series(folder: Path, series: list[SeriesSummary], series_uid: str | None) -> SeriesSummary:
    """The series to read, or an :class:`InputError` that says what the folder holds."""
    listing = _listing(series)
    if not series:
        raise InputError(f"no DICOM series found in this folder{_folder_hint(folder)}", folder)
    if series_uid is not None:
        for summary in series:
            if summary.uid == clean_uid(series_uid):
                return summary
        raise InputError(f"no series with SeriesInstanceUID {series_uid!r} here; the folder holds: {listing}",
                         folder)
    images = [summary for summary in series if summary.modality not in NON_IMAGE_MODALITIES]
    if len(images) == 1:
        return images[0]
    if not images:
        raise InputError(f"holds no image series, only: {listing} (to read a DICOM-SEG, pass its file)", folder)
    raise InputError(f"holds {len(images)} DICOM image series; choose one by SeriesInstanceUID: {_listing(images)}",
                     folder)


def _check_nothing_skipped(folder: Path, all_series: list[SeriesSummary], chosen: SeriesSummary) -> None:
    """Refuse a series with a slice GDCM could not parse: GDCM leaves such files out silently,
    and a series missing a slice at either end, or every other slice, still looks evenly spaced."""
    import pydicom

    listed = {path.name for summary in all_series for path in summary.files}
    for entry in sorted(folder.iterdir()):
        if entry.name in listed or not entry.is_file():
            continue
        if not (format_suffix(entry) in DICOM_SUFFIXES or has_dicom_preamble(entry)):
            continue
        try:
            header = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            raise InputError("is a DICOM file that cannot be read (damaged or truncated?); "
                             "repair or remove it to read the series", entry) from None
        if clean_uid(header.get("SeriesInstanceUID", "")) == chosen.uid:
            raise InputError(f"belongs to series {chosen.uid or '(no SeriesInstanceUID)'} but cannot be decoded "
                             "(damaged or truncated?); the series would miss a slice", entry)


def clean_uid(uid: object) -> str:
    """A UID as text without the padding (space or NUL) that DICOM may leave at its end."""
    return str(uid if uid is not None else "").strip().rstrip("\x00").strip()


def _listing(series: list[SeriesSummary], limit: int = 20) -> str:
    """The series as one line (error messages are printed on one line), the first ``limit`` of them."""
    shown = "; ".join(summary.describe() for summary in series[:limit])
    return shown + (f"; and {len(series) - limit} more" if len(series) > limit else "")


def _folder_hint(folder: Path) -> str:
    """Why there may be nothing: what the folder holds instead (cheap: one directory listing)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return ""
    if not entries:
        return " (it is empty)"
    subfolders = sorted(entry.name for entry in entries if entry.is_dir())
    files = [entry for entry in entries if entry.is_file()]
    parts = []
    if files:
        parts.append(f"{len(files)} non-DICOM file{'s' if len(files) != 1 else ''}")
    if subfolders:
        shown = ", ".join(subfolders[:5]) + (", ..." if len(subfolders) > 5 else "")
        parts.append(f"the subfolders {shown}")
    hint = f" (it holds {' and '.join(parts)}"
    return hint + ("; subfolders are not searched)" if subfolders else ")")


def _read_header(path: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as error:  # pydicom raises several types for damaged files
        raise InputError(f"cannot read the DICOM header ({error})", path) from None


def _check_same_series(headers: list[Any], summary: SeriesSummary) -> None:
    """Refuse what a volume cannot be: multi-frame or colour files, a different pixel grid per file."""
    for path, header in zip(summary.files, headers):
        # GDCM returns the first series for an empty UID request; make sure these files are ours.
        if clean_uid(header.get("SeriesInstanceUID", "")) != summary.uid:
            raise InputError(f"belongs to series {header.get('SeriesInstanceUID', '')!r}, "
                             f"not {summary.uid!r}", path)
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError("is a multi-frame DICOM image; only series of single-frame images are supported",
                             path)
        if int(header.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError("is a colour DICOM image; expected one value per pixel", path)
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if header.get(tag) is None:
                raise InputError(f"has no {tag}: cannot place the slice in space", path)
    grids = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(grids) > 1:
        raise InputError(f"slices have different sizes (rows, columns) {sorted(grids)}", summary.files[0].parent)


def _slice_order_and_affine(headers: list[Any], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Slice order along the normal, shape ``(K,)``, and the RAS+ affine ``(4, 4)`` of the sorted stack."""
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])  # (K, 6)
    spacings = np.array([[float(v) for v in h.PixelSpacing] for h in headers])  # (K, 2): row, column
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])  # (K, 3) LPS
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOL:
        raise InputError("slices have different orientations (ImageOrientationPatient); "
                         "the series mixes acquisitions", folder)
    if np.abs(spacings - spacings[0]).max() > _SPACING_TOL_MM:
        raise InputError("slices have different PixelSpacing", folder)
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_dir, col_dir)
    heights = positions @ normal
    order = np.argsort(heights, kind="stable")
    heights, positions = heights[order], positions[order]
    lps = np.eye(4)
    # i walks along a row (row direction, column spacing), j down a column (column direction, row spacing).
    lps[:3, 0] = row_dir * spacings[0, 1]
    lps[:3, 1] = col_dir * spacings[0, 0]
    lps[:3, 3] = positions[0]
    if len(headers) == 1:
        first = headers[0]
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        lps[:3, 2] = normal * float(thickness)
    else:
        gaps = np.diff(heights)
        if gaps.min() < _SPACING_TOL_MM:
            raise InputError(f"{int(np.sum(gaps < _SPACING_TOL_MM)) + 1} slices share a position; "
                             "the series mixes acquisitions (or holds duplicates)", folder)
        mean_gap = (heights[-1] - heights[0]) / (len(heights) - 1)
        if np.abs(gaps - mean_gap).max() > _GAP_REL_TOL * mean_gap:
            raise InputError(f"slices are unevenly spaced (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm): "
                             "missing slices?", folder)
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    return order, LPS_TO_RAS @ lps


def _read_pixels(files: tuple[Path, ...], headers: list[Any], folder: Path) -> np.ndarray:
    """Decoded, rescaled voxels ``(I, J, K)`` of ``files`` (already in ``k`` order)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in files])
    rescales = {(float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0)) for h in headers}
    if len(rescales) > 1:
        # ITK picks the pixel type from the first file; slices with other slopes would be truncated.
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot decode the DICOM series ({itk_error_reason(error)})", folder) from None
    array = array_from_itk(sitk.GetArrayFromImage(image))
    if array.ndim != 3 or array.shape[2] != len(files):
        raise InputError(f"decoded to shape {array.shape}, expected {len(files)} slices", folder)
    return array


def _metadata(headers: list[Any], first: Any) -> dict[str, str]:
    """Header fields worth keeping, as strings (those that vary per slice are marked ``varies``)."""
    def value(keyword: str) -> str:
        values = {str(h.get(keyword, "")) for h in headers}
        return values.pop() if len(values) == 1 else "varies"

    metadata = {
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "rescale_slope": value("RescaleSlope"),
        "rescale_intercept": value("RescaleIntercept"),
        "rescale_type": value("RescaleType"),
        "transfer_syntax_uid": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")),
    }
    return {key: text for key, text in metadata.items() if text}
