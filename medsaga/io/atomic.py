"""Write-then-rename, so that an output file is either complete or absent (never half written)."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".medsaga-tmp-"


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, move it onto ``path``.

    The temporary name ends with ``path``'s own name, so writers that choose the format by
    extension (nibabel, SimpleITK) see the right one. It lives in the same folder so that the final
    ``os.replace`` is a rename on one file system, which is atomic; the data is fsynced first so a
    crash cannot leave a complete-looking name over incomplete contents. If the block raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    try:
        yield temporary
        _fsync(temporary)
        # Some writers (safetensors) create private 0600 files; an output should get the
        # permissions any new file of this user gets.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself; not every platform lets a folder be opened, hence best effort."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
