"""Which file format a path names: by extension, and by the DICOM preamble for extension-less files."""

from __future__ import annotations

from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom")

READABLE = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), " \
           "a DICOM series (its folder) or a DICOM-SEG file (.dcm)"


def format_suffix(path: Path) -> str:
    """The lower-case extension that decides the format: ``".nii.gz"`` counts as one, ``""`` if none."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def has_dicom_preamble(path: Path) -> bool:
    """True when the file carries the ``DICM`` magic at byte 128 (Part 10 files, whatever their name)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"
