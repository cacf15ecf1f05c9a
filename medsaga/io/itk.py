"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) with SimpleITK.

ITK stores geometry in LPS+ and hands arrays out in ``(k, j, i)`` order; this module is the one
place that converts both to medsaga's ``(i, j, k)`` array with a RAS+ affine, and back.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from medsaga.errors import InputError
from medsaga.io.guards import check_voxel_buffer
from medsaga.io.volume import SourceInfo, Volume, lps_to_ras

if TYPE_CHECKING:
    import SimpleITK as sitk

# Keys that ITK adds itself or that describe the file layout rather than the image.
_SKIPPED_KEY_PREFIXES = ("ITK_",)
_MAX_METADATA_VALUE = 1000
# "sitk::ERROR: " or "itk::ERROR: NrrdImageIO(0x55...): " before the message itself.
_ITK_PREFIX = re.compile(r"^(?:sitk|itk)::ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?")


def read_itk(path: Path) -> Volume:
    """Read a scalar 3-D image with SimpleITK.

    Returns a :class:`Volume`: ``array`` shape ``(I, J, K)`` with the file's pixel type,
    ``affine`` RAS+ built from ITK's LPS+ spacing, origin and direction. A 4-D image whose
    last axis has length 1 is accepted as 3-D; vector, RGB and 2-D images are refused.
    """
    import SimpleITK as sitk

    path = Path(path)
    format_name = "mha" if path.suffix.lower() in (".mha", ".mhd") else "nrrd"
    try:
        with quiet_itk():
            _check_claimed_size(path)
            image = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        raise InputError(f"cannot read as {format_name.upper()} ({itk_error_reason(error)})", path) from None
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(f"has {components} values per voxel (a vector or colour image); "
                         "expected one value per voxel", path)
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        array = array[0]
    elif dimension != 3:
        raise InputError(f"expected a 3-D volume, found a {dimension}-D image of size {image.GetSize()}", path)
    metadata = {
        key: image.GetMetaData(key)
        for key in image.GetMetaDataKeys()
        if not key.startswith(_SKIPPED_KEY_PREFIXES) and len(image.GetMetaData(key)) <= _MAX_METADATA_VALUE
    }
    return Volume(array_from_itk(array), affine_from_itk(image),
                  SourceInfo(path=path, format=format_name, metadata=metadata))


def _check_claimed_size(path: Path) -> None:
    """Refuse, from the header alone, an image whose voxel buffer would exceed the available memory.

    ITK allocates the buffer its header claims before reading a byte of data, so a corrupt header
    would get the process killed. The file size is not compared: NRRD and MetaImage data may be
    compressed or detached (.nhdr, .mhd), and only the memory check is cheap for every encoding.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # header only; raises RuntimeError as ReadImage would
    # The numpy type of one voxel of this pixel type, from a 1-voxel image (vector types: per component).
    itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).dtype.itemsize
    check_voxel_buffer(reader.GetSize(), itemsize * reader.GetNumberOfComponents(), path)


def array_from_itk(array_kji: np.ndarray) -> np.ndarray:
    """ITK's ``(K, J, I)`` array as ``(I, J, K)`` (a transposed view, no copy)."""
    return array_kji.transpose(2, 1, 0)


def affine_from_itk(image: "sitk.Image") -> np.ndarray:
    """RAS+ ``(4, 4)`` affine of a 3-D SimpleITK image."""
    return lps_to_ras(np.array(image.GetSpacing()), np.array(image.GetOrigin()),
                      np.array(image.GetDirection()).reshape(3, 3))


def image_to_itk(volume: Volume, array: np.ndarray | None = None) -> "sitk.Image":
    """A SimpleITK image with ``volume``'s geometry and ``array`` (default ``volume.array``), ``(I, J, K)``."""
    import SimpleITK as sitk

    voxels = volume.array if array is None else array
    # GetImageFromArray wants C order (K, J, I); the transpose of an (I, J, K) array is that view.
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0)))
    spacing, origin, direction = volume.lps_geometry()
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's warnings (printed straight to stderr) for the block; our checks report instead."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def itk_error_reason(error: BaseException) -> str:
    """The telling line of an ITK exception, without its source-file and class-address prefixes."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.lstrip().startswith("Exception thrown")]
    text = lines[-1] if lines else type(error).__name__
    return _ITK_PREFIX.sub("", text)[:200]
