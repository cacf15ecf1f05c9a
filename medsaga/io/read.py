"""One entry point for every input medsaga accepts: it looks at the path and picks the reader."""

from __future__ import annotations

from pathlib import Path

from medsaga.errors import InputError
from medsaga.io.formats import (DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, READABLE, format_suffix,
                                has_dicom_preamble)
from medsaga.io.guards import check_geometry
from medsaga.io.volume import Volume


def read_volume(path: str | Path, series_uid: str | None = None, *,
                reference: str | Path | Volume | None = None) -> Volume:
    """Read an image or label map as a :class:`Volume` (``array`` ``(I, J, K)``, RAS+ ``affine``).

    What ``path`` is decides how it is read:

    - a folder: a DICOM series (:func:`~medsaga.io.dicom_series.read_dicom_series`); ``series_uid``
      picks one when the folder holds several image series;
    - ``.nii``, ``.nii.gz``: NIfTI with nibabel, header kept;
    - ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``: SimpleITK;
    - a DICOM-SEG file (``.dcm``, or any file with the DICOM preamble): a label map on the grid of
      ``reference`` (see :func:`~medsaga.io.dicom_seg.read_dicom_seg`; ``None`` searches next to it);
    - a single DICOM image file: refused, with the folder to pass instead.

    Every format then passes one geometry check (:func:`~medsaga.io.guards.check_geometry`): an
    affine that cannot locate the voxels (all zeros, NaN, parallel axes) is refused here, naming the
    file, rather than failing later in slicing, orientation codes or evaluation.

    Raises:
        InputError: the path is missing, of an unknown kind, unreadable, not a 3-D scalar image,
            larger than its file or the memory can hold, or without usable geometry.
    """
    path = Path(path).expanduser()
    volume = _read_any(path, series_uid, reference)
    check_geometry(volume, path)
    return volume


def _read_any(path: Path, series_uid: str | None, reference: str | Path | Volume | None) -> Volume:
    """The reader ``path`` calls for (see :func:`read_volume`)."""
    if not path.exists():
        raise InputError("file not found" if path.suffix else "no such file or folder", path)
    if path.is_dir():
        from medsaga.io.dicom_series import read_dicom_series

        _refuse_reference(reference, path)
        return read_dicom_series(path, series_uid)
    suffix = format_suffix(path)
    if suffix in DICOM_SUFFIXES or (suffix not in NIFTI_SUFFIXES + ITK_SUFFIXES and has_dicom_preamble(path)):
        return _read_dicom_file(path, series_uid, reference)
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


def _read_dicom_file(path: Path, series_uid: str | None, reference: str | Path | Volume | None) -> Volume:
    """A DICOM-SEG becomes a label map; any other single DICOM file is one slice of a series."""
    import pydicom

    from medsaga.io.dicom_seg import is_dicom_seg, read_dicom_seg

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "Modality", "NumberOfFrames"])
    except Exception as error:  # pydicom raises several types for what is not DICOM
        raise InputError(f"cannot read as DICOM ({str(error).strip()[:200] or type(error).__name__})", path) from None
    if is_dicom_seg(header):
        if series_uid is not None:
            raise InputError("a series UID selects a series in a DICOM folder; a DICOM-SEG names its own "
                             "source series", path)
        return read_dicom_seg(path, None if reference is None else
                              reference if isinstance(reference, Volume) else Path(reference))
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError("is a multi-frame DICOM image; only series of single-frame images are supported", path)
    raise InputError(f"is one image of a DICOM series; pass the folder of the series instead ({path.parent})",
                     path)


def _refuse_reference(reference: object, path: Path) -> None:
    if reference is not None:
        raise InputError("a reference image only applies to DICOM-SEG input", path)
