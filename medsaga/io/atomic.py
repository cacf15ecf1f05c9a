"""Write-then-rename, so that an output file is either complete or absent (never half written);
and the one place where a failed write (disk full, read-only, no permission) becomes an
:class:`~medsaga.errors.InputError` naming the path, i.e. one line and exit 2 instead of a traceback."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medsaga.errors import InputError

TEMP_PREFIX = ".medsaga-tmp-"


def is_write_error(error: BaseException) -> bool:
    """An error of the file system rather than of the program: an :class:`OSError`, or the
    ``SafetensorError`` by which safetensors reports one (its I/O errors are not OSErrors)."""
    return isinstance(error, OSError) or type(error).__name__ == "SafetensorError"


def write_error_reason(error: BaseException) -> str:
    """A short reason: ``No space left on device`` rather than the errno tuple or Rust's debug text."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error).split(" at path ")[0]  # safetensors appends its own temporary's path


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Turn a failed write inside the block into ``InputError("cannot write (REASON)", path)``.

    Every writer goes through here (:func:`atomic_output` does, and the few writes that are not
    one file, such as the training checkpoint, wrap themselves in it), so no command needs its
    own handler; anything else (a bug) keeps its traceback.
    """
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        if not is_write_error(error):
            raise
        raise InputError(f"cannot write ({write_error_reason(error)})", path) from None


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, move it onto ``path``.

    The temporary name ends with ``path``'s own name, so writers that choose the format by
    extension (nibabel, SimpleITK) see the right one. It lives in the same folder so that the final
    ``os.replace`` is a rename on one file system, which is atomic; the data is fsynced first so a
    crash cannot leave a complete-looking name over incomplete contents. If the block raises, the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        InputError: the write failed on the file system (disk full, read-only...), naming ``path``
            (:func:`write_errors`).
    """
    path = Path(path)
    temporary = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{path.name}")
    with write_errors(path):
        try:
            yield temporary
            _fsync(temporary)
            # Some writers (safetensors) create private 0600 files; an output should get the
            # permissions any new file of this user gets.
            os.chmod(temporary, 0o666 & ~_umask())
            os.replace(temporary, path)
        except BaseException:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:  # the file system that failed the write may refuse this too; keep the first error
                pass
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
