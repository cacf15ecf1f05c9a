"""One entry point for every input medsaga accepts: it looks at the path and picks the reader.

The dispatch itself is :mod:`medsaga.io.read_image`'s (shared with the DICOM-SEG reader, which
reads its reference image through it); this module adds the DICOM-SEG case.
"""

from __future__ import annotations

from pathlib import Path

from medsaga.io.read_image import Reference, read_checked
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
    return read_checked(Path(path).expanduser(), series_uid, reference, _read_seg)


def _read_seg(path: Path, reference: Reference) -> Volume:
    from medsaga.io.dicom_seg import read_dicom_seg

    return read_dicom_seg(path, None if reference is None else
                          reference if isinstance(reference, Volume) else Path(reference))
