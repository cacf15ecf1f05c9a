"""Output paths: is this output the same file as that input, is this folder writable, and may this
output folder be (re)used or replaced?

The one mechanism every command uses for its output folder:

- :func:`ensure_writable_folder` before any long work (a read-only or full location stops the
  command at once, with one line);
- :func:`check_owned_folder` (before any long work) and :func:`new_owned_folder` (when the first
  output is written) for folders medsaga owns (a run, a selection): a folder is replaced only when
  it carries medsaga's marker (:data:`FOLDER_MARKER`) and holds nothing but what medsaga writes
  (:data:`OWNED_CONTENTS`); the old one is renamed aside and deleted only once the new one holds
  its first output, never before.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsaga.errors import InputError
from medsaga.io.atomic import TEMP_PREFIX, write_error_reason, write_errors

# The file by which medsaga recognises a folder it made itself (a run, a selection...): JSON
# ``{"kind": KIND, "medsaga_version": ...}``. Only a folder holding it may be replaced with --force.
FOLDER_MARKER = ".medsaga-folder.json"
# The self-contained HTML page in a run folder and in evaluate's --out (written by medsaga.report).
REPORT_NAME = "report.html"


def write_folder_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as a medsaga folder of ``kind`` (``"run"``, ``"selection"``, ...), atomically."""
    from medsaga import __version__
    from medsaga.io.atomic import atomic_output

    with atomic_output(folder / FOLDER_MARKER) as temporary:
        temporary.write_text(json.dumps({"kind": kind, "medsaga_version": __version__}) + "\n", encoding="utf-8")


def folder_kind(folder: Path) -> str | None:
    """The kind recorded by :func:`write_folder_marker` in ``folder``, or ``None`` when it holds no
    readable marker (not a medsaga folder, or not a folder at all)."""
    try:
        recorded = json.loads((folder / FOLDER_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = recorded.get("kind") if isinstance(recorded, dict) else None
    return kind if isinstance(kind, str) else None


def same_path(a: Path, b: Path) -> bool:
    """Same file or folder: by identity when both exist (catches links and hard links), otherwise by
    resolved path (an output that does not exist yet)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


# --- which folders are medsaga's, and what it writes in them ------------------------------------

FILE = "file"
# A folder tree: name or glob pattern → FILE, or → the tree of a sub-folder.
Tree = Mapping[str, Any]
_CHECKPOINT: Tree = {"state.safetensors": FILE, "state.json": FILE}

# What medsaga itself writes in a folder of each kind: the one list that decides whether --force
# may replace a folder. A folder holding anything else is not medsaga's alone, so it is never
# replaced. Interrupted atomic writes (``.medsaga-tmp-*``) are allowed at every level, the marker
# at the top. A new output file of a kind joins its tree here (tests/test_output_safety.py checks
# that a real run and a real selection hold nothing else).
OWNED_CONTENTS: dict[str, Tree] = {
    "run": {  # medsaga finetune
        "config.json": FILE, "report.json": FILE, REPORT_NAME: FILE, "metrics.jsonl": FILE,
        "trained.safetensors": FILE, "method.json": FILE,
        "checkpoint": _CHECKPOINT, ".checkpoint-new": _CHECKPOINT, ".checkpoint-old": _CHECKPOINT,
        # the decoder warm-up's phase (medsaga.train.decoder_warmup)
        "decoder-warmup": {"metrics.jsonl": FILE, "trained.safetensors": FILE, "method.json": FILE,
                           "checkpoint": _CHECKPOINT, ".checkpoint-new": _CHECKPOINT, ".checkpoint-old": _CHECKPOINT},
        # what `make demo` writes inside its run: medsaga predict's and medsaga evaluate's outputs
        "predictions": {"*.nii.gz": FILE, "*.nrrd": FILE, "*.seg.dcm": FILE, "probabilities": {"*.nii.gz": FILE}},
        "evaluation": {"metrics.csv": FILE, "metrics.json": FILE, REPORT_NAME: FILE, "overlays": {"*.png": FILE}},
    },
    "selection": {"selection.json": FILE, "cases.txt": FILE, "cohort_map.png": FILE},  # medsaga select
}


def foreign_entry(folder: Path, kind: str) -> Path | None:
    """The first entry of ``folder`` (sorted, depth first) that medsaga does not write in a folder of
    ``kind`` (:data:`OWNED_CONTENTS`), relative to ``folder``; ``None`` when every entry is medsaga's.
    A symbolic link is always foreign: medsaga writes none."""
    return _foreign_in(folder, OWNED_CONTENTS[kind], Path(), top=True)


def _foreign_in(folder: Path, tree: Tree, relative: Path, *, top: bool) -> Path | None:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        name = entry.name
        if entry.is_symlink():
            return relative / name
        if entry.is_file() and (name.startswith(TEMP_PREFIX) or (top and name == FOLDER_MARKER)):
            continue
        expected = next((sub for pattern, sub in tree.items() if fnmatch.fnmatchcase(name, pattern)), None)
        if expected is None or (expected == FILE) != entry.is_file():
            return relative / name
        if expected != FILE:
            found = _foreign_in(entry, expected, relative / name, top=False)
            if found is not None:
                return found
    return None


# --- an output folder: writable, and replaced only when it is medsaga's ---------------------------

def ensure_writable_folder(path: Path, what: str = "--out", *, keep: bool = True) -> Path:
    """Create the folder ``path`` (parents too) and prove it writable: a probe file is created,
    written, synced and removed. Run it before any long work, so a read-only, full or mistyped
    output location stops the command at once instead of after hours of training.

    ``keep=False`` only proves it: the folders it had to create are removed again (the command
    creates them when it writes; a later input error then leaves nothing behind).

    Returns:
        ``path`` (with ``~`` expanded).

    Raises:
        InputError: naming ``path`` and why it cannot be written (a file on the way, read-only,
            no permission, no space).
    """
    path = Path(path).expanduser()
    missing: list[Path] = []
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == path else f"cannot be created: {existing} is not a folder"
        raise InputError(f"{where}; {what} takes a folder", path)
    probe = path / f"{TEMP_PREFIX}probe-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            with open(probe, "xb") as handle:
                handle.write(b"\0" * 4096)  # a block, so a full disk fails here rather than at the end
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        raise InputError(f"cannot write in this {what} folder ({write_error_reason(error)})", path) from None
    finally:
        if not keep:
            for folder in missing:  # deepest first; only the empty folders this call made
                try:
                    folder.rmdir()
                except OSError:
                    break
    return path


def check_owned_folder(out: Path, *, force: bool, kind: str, inputs: Mapping[str, Path | None],
                       resume_hint: str = "") -> None:
    """Refuse an output folder of ``kind`` that must not be (re)used; changes nothing on disk.

    ``out`` may be new or empty. A non-empty one is replaced only with ``force``, and only when it
    is medsaga's (:func:`check_replaceable`). No input (``inputs``: what the user calls it → its
    path, e.g. ``{"the input folder": data}``) may lie in it: replacing the folder would delete it,
    and writing into it would mix a user's files with medsaga's. Last, ``out`` (or, when it is
    replaced, also its parent, where the old folder is renamed aside) must be writable
    (:func:`ensure_writable_folder`).

    Raises:
        InputError: naming ``out`` and what is wrong.
    """
    out = Path(out).expanduser()
    resolved = out.resolve()
    for description, path in inputs.items():
        if path is not None and Path(path).expanduser().resolve().is_relative_to(resolved):
            raise InputError(f"the {kind} folder would contain {description} {path}; choose another --out", out)
    replacing = out.is_dir() and any(out.iterdir())
    if replacing:
        if not force:
            raise InputError(f"already exists; pass --force to replace it{resume_hint}", out)
        check_replaceable(out, kind)
        ensure_writable_folder(out.parent, "parent")  # the old folder is renamed aside there
    ensure_writable_folder(out, "--out", keep=False)


def check_replaceable(out: Path, kind: str) -> None:
    """May ``--force`` replace the existing folder ``out`` by a new one of ``kind``? Only when it
    carries medsaga's marker of that kind and holds nothing but what medsaga writes for it.

    Raises:
        InputError: naming ``out``, and the first foreign file when there is one.
    """
    found = folder_kind(out)
    if found is None:
        raise InputError(f"is not a medsaga {kind} folder (no {FOLDER_MARKER}; folders made by older medsaga "
                         "versions carry none either): not replacing it, even with --force; delete it by hand or "
                         "choose another --out", out)
    if found != kind:
        raise InputError(f"is a medsaga {found} folder, not a {kind} folder: not replacing it, even with --force; "
                         "choose another --out", out)
    foreign = foreign_entry(out, kind)
    if foreign is not None:
        raise InputError(f"holds {foreign}, which medsaga does not write in a {kind} folder: not replacing it, "
                         "even with --force; move it out or choose another --out", out)


@contextmanager
def new_owned_folder(out: Path, kind: str) -> Iterator[Path]:
    """Create the folder ``out`` of ``kind`` (with its marker) for the block to write in; a previous
    one there (:func:`check_owned_folder` allowed it) is replaced without ever being lost.

    The old folder is renamed aside (same parent, hidden ``.NAME.medsaga-old-<hex>``) and deleted
    only when the block ends without error, i.e. once the new one holds its first output. If the
    block raises, the new folder is removed and the old one put back. Give the block only the
    first writes (a run's config.json): after it, the old folder is gone.

    Raises:
        InputError: the folder changed since the check and is no longer medsaga's alone, or it
            cannot be renamed or created.
    """
    out = Path(out).expanduser()
    aside = None
    created = not out.exists()
    if not created and any(out.iterdir()):
        check_replaceable(out, kind)  # again: hours may have passed since check_owned_folder
        aside = out.with_name(f".{out.name}.medsaga-old-{secrets.token_hex(4)}")
        with write_errors(out):
            os.rename(out, aside)
        created = True
    try:
        with write_errors(out):
            out.mkdir(parents=True, exist_ok=True)
        write_folder_marker(out, kind)
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)  # made a moment ago: it holds only what the block wrote
        else:
            (out / FOLDER_MARKER).unlink(missing_ok=True)
        if aside is not None:
            try:
                os.rename(aside, out)
            except OSError:
                raise InputError(f"failed, and the previous {kind} folder could not be put back: it is kept, "
                                 f"whole, as {aside}", out) from None
        raise
    if aside is None:
        return
    if aside.is_symlink():  # --out was a link to the old folder: drop the link, the folder it named stays
        aside.unlink(missing_ok=True)
    else:
        shutil.rmtree(aside, ignore_errors=True)
