"""Label-map writers: NIfTI (.nii, .nii.gz), NRRD (.nrrd) and MetaImage (.mha), atomically.

A label map is written on the grid of the volume it came with, so that it overlays exactly on the
input: for a NIfTI input the input's own header is reused (qform/sform and their codes, units,
intent, extensions); otherwise the geometry comes from the affine. Voxels are stored as uint8, or
uint16 when a label exceeds 255, without scaling, so labels read back exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.paths import same_path
from medsaga.io.formats import format_suffix
from medsaga.io.volume import Volume

if TYPE_CHECKING:
    import nibabel as nib

LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
MAX_LABEL = int(np.iinfo(np.uint16).max)
# An unchanged grid carries the header's own best affine, bit for bit; a real change (flip, crop,
# resample) moves it by far more than this, and then the header's forms must follow the affine.
_SAME_AFFINE_TOL = 1e-6


def label_dtype(array: np.ndarray, path: Path) -> np.dtype:
    """uint8 when every label fits, else uint16; labels must be whole numbers in ``0..65535``.

    ``array`` is any shape; ``path`` only names the output in errors.
    """
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"labels must be integers, got {array.dtype} voxels", path)
    if array.size == 0:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise InputError("labels must be whole numbers; this label map holds fractions or NaN", path)
    low, high = array.min(), array.max()
    if low < 0 or high > MAX_LABEL:
        raise InputError(f"labels must lie in 0..{MAX_LABEL}, found {low:g}..{high:g}", path)
    return np.dtype(np.uint8 if high <= 255 else np.uint16)


def write_label_map(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``volume.array`` (labels, ``(I, J, K)``) to ``path`` on ``volume``'s grid; returns ``path``.

    The format follows the extension: ``.nii``/``.nii.gz`` (nibabel), ``.nrrd`` or ``.mha``
    (SimpleITK, compressed). Missing parent folders are created. The file appears complete or not
    at all (written to a temporary name beside it, then renamed).

    Raises:
        InputError: ``path`` is one of the volume's inputs (never overwritten), exists and
            ``overwrite`` is False, has an unsupported extension, or the labels do not fit uint16.
    """
    path = Path(path).expanduser()
    suffix = format_suffix(path)
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"cannot write label maps as '{suffix or 'no extension'}'; "
                         f"use one of {', '.join(LABEL_SUFFIXES)}", path)
    dtype = label_dtype(volume.array, path)
    _check_output_path(volume, path, overwrite)
    labels = volume.array.astype(dtype, copy=False)
    try:
        with atomic_output(path) as temporary:
            if suffix in (".nii", ".nii.gz"):
                _write_nifti(volume, labels, temporary)
            else:
                _write_itk(volume, labels, temporary)
    except InputError:
        raise
    except (OSError, RuntimeError) as error:  # disk full, permissions; ITK reports as RuntimeError
        raise InputError(f"cannot write ({_reason(error)})", path) from None
    return path


def _check_output_path(volume: Volume, path: Path, overwrite: bool) -> None:
    inputs = [volume.source.path, *volume.source.dicom_files]
    if volume.source.metadata.get("reference"):
        inputs.append(Path(volume.source.metadata["reference"]))
    for source in inputs:
        if source is not None and same_path(Path(source), path):
            raise InputError("is an input of this label map; refusing to overwrite it", path)
    if path.is_dir():
        raise InputError("is a folder; give a file name for the label map", path)
    if path.exists() and not overwrite:
        raise InputError("already exists; refusing to overwrite it", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder ({error.strerror or error})", path) from None


def _write_nifti(volume: Volume, labels: np.ndarray, path: Path) -> None:
    import nibabel as nib

    source_header = volume.source.nifti_header
    if source_header is not None:
        header = source_header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        if not np.allclose(header.get_best_affine(), volume.affine, rtol=0, atol=_SAME_AFFINE_TOL):
            qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
            if qform_code == 0 and sform_code == 0:
                qform_code = sform_code = 1  # the old grid said nothing; the new one comes from an affine
            header.set_sform(volume.affine, code=sform_code)
            _set_qform(header, volume.affine, qform_code)
        # else: keep the input's qform and sform exactly as they were, codes included.
    else:
        header = nib.Nifti1Header()
        image_class = nib.Nifti1Image
        header.set_sform(volume.affine, code=1)  # 1 = scanner coordinates (DICOM, NRRD inputs)
        _set_qform(header, volume.affine, 1)
        header.set_xyzt_units("mm", "sec")
    header.set_data_shape(labels.shape)
    header.set_data_dtype(labels.dtype)
    header["cal_min"], header["cal_max"] = 0, 0  # an image's display window means nothing for labels
    # affine=None: the header's forms are authoritative, so nibabel must not re-derive them.
    image = image_class(labels, None, header=header)
    # Explicit identity scaling, set on the image's own header (the constructor resets scaling to
    # "unset", which nibabel would save as NaN): stored values are the labels themselves.
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, str(path))


def _set_qform(header: "nib.Nifti1Header", affine: np.ndarray, code: int) -> None:
    """Set the qform, or mark it unknown (code 0) when it cannot hold ``affine`` ``(4, 4)``: a
    quaternion has no shear (gantry tilt), and a reader preferring the qform would see another grid."""
    header.set_qform(affine, code=code)
    if code and not np.allclose(header.get_qform(), affine, rtol=0, atol=1e-4):
        header.set_qform(affine, code=0)


def _write_itk(volume: Volume, labels: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    from medsaga.io.itk import image_to_itk

    sitk.WriteImage(image_to_itk(volume, labels), str(path), useCompression=True)


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__
