"""Checks every reader applies: geometry that locates the voxels, and voxels that fit in memory.

Two kinds of file pass a format reader yet cannot be used:

- an affine that maps the voxels nowhere: an all-zero sform (sform_code 1, qform_code 0), NaN,
  two voxel axes along one line. Every later step (orientation codes, slicing, the inverse that
  puts a prediction back) then fails deep inside numpy or nibabel. :func:`check_geometry` runs
  once, in :func:`medsaga.io.read_volume`, for every format.
- a header that claims far more voxels than the file holds (a corrupt or hostile header): the
  reader allocates the claimed buffer and the kernel kills the process, with no message.
  :func:`check_voxel_buffer` runs in each reader *before* the voxels are read.
"""

from __future__ import annotations

from math import prod
from pathlib import Path
from typing import Sequence

import numpy as np

from medsaga.errors import InputError
from medsaga.io.volume import Volume

# Below this |det| of the unit direction matrix two voxel axes are (nearly) parallel: the same
# threshold as medsaga.data.slicing.closest_orientation, so what passes here can be sliced.
_MIN_DIRECTION_DET = 1e-6


def affine_problem(affine: np.ndarray) -> str | None:
    """What makes ``affine`` ``(4, 4)`` unusable as voxel → world mm, or ``None`` when it is fine."""
    matrix = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(matrix).all():
        return "the affine holds NaN or infinite values"
    columns = matrix[:3, :3]
    if not columns.any():
        return "the affine is all zeros"
    norms = np.linalg.norm(columns, axis=0)
    if not (norms > 0).all():
        axes = ", ".join("ijk"[axis] for axis in range(3) if norms[axis] == 0)
        return f"the affine gives voxel axis {axes} zero length"
    if abs(np.linalg.det(columns / norms)) < _MIN_DIRECTION_DET:
        return "the affine's voxel axes are (nearly) parallel: it cannot be inverted"
    return None


def check_geometry(volume: Volume, path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` when ``volume``'s affine cannot locate its voxels.

    For NIfTI the message says which header field the affine came from (sform, qform or pixdim),
    since that is what the user has to fix.
    """
    problem = affine_problem(volume.affine)
    if problem is None:
        return
    origin = _nifti_affine_origin(volume.source.nifti_header)
    raise InputError(f"unusable geometry: {problem}{origin}; cannot tell where its voxels are "
                     "(fix the header's orientation)", path)


def _nifti_affine_origin(header: object) -> str:
    """`` (from the sform, sform_code 1)``-style note for a NIfTI header, else ``""``."""
    if header is None or not hasattr(header, "get_sform"):
        return ""
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code > 0:
        return f" (from the sform, sform_code {sform_code}, qform_code {qform_code})"
    if qform_code > 0:
        return f" (from the qform, qform_code {qform_code})"
    return " (from pixdim: sform_code and qform_code are 0)"


def available_memory_bytes() -> int | None:
    """The memory the system could give this process now (Linux ``MemAvailable``), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_voxel_buffer(shape: Sequence[int], itemsize: int, path: Path, *, stored_bytes: int | None = None,
                       memory_bytes: int | None = None) -> None:
    """Refuse, before reading, a volume whose header claims more than the file or the memory holds.

    Args:
        shape: the voxel grid the header claims (any number of axes).
        itemsize: bytes per voxel *after* reading (scaling to float included).
        path: the file, named in the error.
        stored_bytes: bytes the file must hold for that claim (data offset + raw voxels), when the
            format stores them uncompressed; compared with the file's size.
        memory_bytes: available memory; default :func:`available_memory_bytes` (unknown: no check).

    Raises:
        InputError: the file is shorter than its header claims, or the buffer exceeds the memory.
    """
    claimed = prod(int(n) for n in shape) * int(itemsize)  # Python ints: no overflow for 2000³
    grid = "×".join(str(int(n)) for n in shape)
    if stored_bytes is not None:
        size = Path(path).stat().st_size
        if stored_bytes > size:
            raise InputError(f"the header claims {grid} voxels ({human_bytes(stored_bytes)}) but the file holds "
                             f"only {human_bytes(size)}: a truncated file or a corrupt header", path)
    available = available_memory_bytes() if memory_bytes is None else memory_bytes
    if available is not None and claimed > available:
        raise InputError(f"the header claims {grid} voxels, a {human_bytes(claimed)} buffer, more than the "
                         f"{human_bytes(available)} of memory available", path)


def human_bytes(count: int) -> str:
    """``2400`` → ``"2.4 kB"``, ``16_000_000_000`` → ``"16.0 GB"`` (decimal units, as ``ls -h --si``)."""
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"
