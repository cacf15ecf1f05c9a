"""Output paths: is this output the same file as that input, and may this output folder be (re)used?"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from medsaga.errors import InputError


def same_path(a: Path, b: Path) -> bool:
    """Same file or folder: by identity when both exist (catches links and hard links), otherwise by
    resolved path (an output that does not exist yet)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def check_owned_folder(out: Path, *, force: bool, marker: str, kind: str, data: Path, resume_hint: str = "") -> None:
    """Refuse an output folder that must not be (re)used; changes nothing on disk.

    ``out`` may be new or empty. A non-empty one is replaced only with ``force``, and only if it
    holds ``marker`` (the file that says it is a previous ``kind``, e.g. a run's config.json):
    never a folder of other files. It must not hold the input folder ``data`` (replacing it would
    delete the inputs).

    Raises:
        InputError: naming ``out`` and what is wrong.
    """
    resolved, root = out.resolve(), data.resolve()
    if resolved == root or root.is_relative_to(resolved):
        raise InputError(f"the {kind} folder would contain the input folder {data}; choose another --out", out)
    if out.exists():
        if not out.is_dir():
            raise InputError("exists and is not a folder", out)
        if any(out.iterdir()):
            if not force:
                raise InputError(f"already exists; pass --force to replace it{resume_hint}", out)
            if not (out / marker).is_file():
                raise InputError(f"is not a medsaga {kind} folder (no {marker}): not replacing it, even with --force",
                                 out)


def prepare_owned_folder(out: Path) -> None:
    """Create ``out``, emptying a previous output there (:func:`check_owned_folder` allowed it)."""
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
