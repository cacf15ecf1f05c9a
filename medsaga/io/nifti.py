"""NIfTI (.nii, .nii.gz) with nibabel, keeping the header so that outputs overlay exactly."""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np

from medsaga.errors import InputError
from medsaga.io.formats import format_suffix
from medsaga.io.guards import check_voxel_buffer
from medsaga.io.volume import SourceInfo, Volume


def read_nifti(path: Path) -> Volume:
    """Read a 3-D NIfTI-1 or NIfTI-2 image (trailing axes of length 1 are dropped).

    Returns a :class:`Volume` whose ``array`` has the on-disk dtype after scaling (scl_slope),
    shape ``(I, J, K)``, and whose ``affine`` is the file's best affine (sform, else qform).
    ``source.nifti_header`` keeps the header (qform/sform codes, intent, units, extensions).
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))  # the header only: the voxels are read below
    except Exception as error:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"cannot read as NIfTI ({_short(error)})", path) from None
    _check_claimed_size(image, Path(path))
    try:
        # Read the voxels here, inside the try: a truncated .nii.gz only fails when decompressed.
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"cannot read as NIfTI ({_short(error)})", path) from None
    if array.dtype.fields is not None or np.iscomplexobj(array):
        raise InputError(f"holds {array.dtype} voxels (colour or complex); expected one real value per voxel",
                         path)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4:
        raise InputError(f"holds {array.shape[3]} volumes (shape {array.shape}); medsaga reads one 3-D volume "
                         "per file: store channels as CASE_0000, CASE_0001, ... (nnU-Net v2 layout)", path)
    if array.ndim != 3:
        raise InputError(f"expected a 3-D volume, found shape {array.shape}", path)
    header = image.header.copy()
    return Volume(np.asarray(array), image.affine, SourceInfo(path=Path(path), format="nifti", nifti_header=header))


def _check_claimed_size(image: object, path: Path) -> None:
    """Refuse a header that claims more voxels than the file or the memory holds, before reading.

    An uncompressed ``.nii`` must hold ``vox_offset`` + the raw voxels: compared with its size. A
    ``.nii.gz`` would have to be decompressed to learn its size; there the buffer is only compared
    with the available memory (a short stream then fails cleanly while decompressing).
    """
    header = image.header  # type: ignore[attr-defined]
    shape = header.get_data_shape()
    stored_dtype = np.dtype(header.get_data_dtype())
    slope, inter = header.get_slope_inter()
    scaled = (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0)
    # Scaled voxels come back as floats (scl_slope is float32): int16 → float32, int32 → float64.
    itemsize = (np.result_type(stored_dtype, np.float32).itemsize if scaled and stored_dtype.kind in "iub"
                else stored_dtype.itemsize)
    compressed = format_suffix(path) == ".nii.gz"
    stored = None if compressed else int(header.get_data_offset()) + prod(shape) * stored_dtype.itemsize
    check_voxel_buffer(shape, itemsize, path, stored_bytes=stored)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
