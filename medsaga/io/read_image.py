"""What a path holds, read as a :class:`Volume`: the dispatch on folders, suffixes and the DICOM
preamble that :func:`medsaga.io.read.read_volume` and the DICOM-SEG reader share.

It reads images (a DICOM series folder, NIfTI, NRRD/MHA). A DICOM-SEG file is handed to the
``read_seg`` callable its caller passes (:mod:`medsaga.io.read` passes the DICOM-SEG reader); the
DICOM-SEG reader itself reads its reference image through :func:`read_image`, which passes none.
So neither of those two modules imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

from medsaga.errors import InputError
from medsaga.io.formats import (DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, READABLE, format_suffix,
                                has_dicom_preamble)
from medsaga.io.guards import check_geometry
from medsaga.io.volume import Volume

Reference = Union[str, Path, Volume, None]
# A DICOM-SEG file's path and its reference (as given: ``None`` searches next to it) → its label map.
SegReader = Callable[[Path, Reference], Volume]


def read_image(path: str | Path, series_uid: str | None = None) -> Volume:
    """An image (not a DICOM-SEG) as a :class:`Volume`, its geometry checked: what
    :func:`~medsaga.io.read.read_volume` reads, less the DICOM-SEG case (refused here: a label map
    is not an image to place another on)."""
    return read_checked(Path(path).expanduser(), series_uid, None, None)


def read_checked(path: Path, series_uid: str | None, reference: Reference, read_seg: Optional[SegReader]) -> Volume:
    """:func:`read_any`, then the one geometry check every format passes
    (:func:`~medsaga.io.guards.check_geometry`)."""
    volume = read_any(path, series_uid, reference, read_seg)
    check_geometry(volume, path)
    return volume


def read_any(path: Path, series_uid: str | None, reference: Reference, read_seg: Optional[SegReader]) -> Volume:
    """The reader ``path`` calls for (see :func:`medsaga.io.read.read_volume`)."""
    if not path.exists():
        raise InputError("file not found" if path.suffix else "no such file or folder", path)
    if path.is_dir():
        from medsaga.io.dicom_series import read_dicom_series

        _refuse_reference(reference, path)
        return read_dicom_series(path, series_uid)
    suffix = format_suffix(path)
    if suffix in DICOM_SUFFIXES or (suffix not in NIFTI_SUFFIXES + ITK_SUFFIXES and has_dicom_preamble(path)):
        return _read_dicom_file(path, series_uid, reference, read_seg)
    if series_uid is not None:
        raise InputError("a series UID selects a series in a DICOM folder, but this is a file", path)
    _refuse_reference(reference, path)
    if suffix in NIFTI_SUFFIXES:
        from medsaga.io.nifti import read_nifti

        return read_nifti(path)
    if suffix in ITK_SUFFIXES:
        from medsaga.io.itk import read_itk

        return read_itk(path)
    kind = f"'{suffix}' files" if suffix else "files without an extension"
    raise InputError(f"unsupported format ({kind}); medsaga reads {READABLE}", path)


SEG_SOP_CLASS_UIDS = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
})


def is_dicom_seg(dataset: Any) -> bool:
    """True when a pydicom dataset (header enough) is a DICOM Segmentation."""
    return str(dataset.get("SOPClassUID", "")) in SEG_SOP_CLASS_UIDS or str(dataset.get("Modality", "")) == "SEG"


def _read_dicom_file(path: Path, series_uid: str | None, reference: Reference,
                     read_seg: Optional[SegReader]) -> Volume:
    """A DICOM-SEG becomes a label map (``read_seg``); any other single DICOM file is one slice of a series."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "Modality", "NumberOfFrames"])
    except Exception as error:  # pydicom raises several types for what is not DICOM
        raise InputError(f"cannot read as DICOM ({str(error).strip()[:200] or type(error).__name__})", path) from None
    if is_dicom_seg(header):
        if series_uid is not None:
            raise InputError("a series UID selects a series in a DICOM folder; a DICOM-SEG names its own "
                             "source series", path)
        if read_seg is None:
            raise InputError("is a DICOM-SEG (a label map); an image is needed here", path)
        return read_seg(path, reference)
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError("is a multi-frame DICOM image; only series of single-frame images are supported", path)
    raise InputError(f"is one image of a DICOM series; pass the folder of the series instead ({path.parent})",
                     path)


def _refuse_reference(reference: object, path: Path) -> None:
    if reference is not None:
        raise InputError("a reference image only applies to DICOM-SEG input", path)
