"""Where runs go when nobody says: a new folder under ``runs/`` per run, and ``runs/latest``.

``medsaga finetune --shots 5 data/`` names its run folder from the dataset, the method and K
(``runs/<dataset>-galore-k5``, then ``-2``, ``-3``...: never an existing folder, so a default can
never replace anything). When a run under ``runs/`` finishes, ``runs/latest`` (a symbolic link,
replaced atomically) points at it, and ``medsaga predict scan.nii.gz`` predicts with that run.

A run folder is recognised by its marker (:data:`medsaga.io.paths.FOLDER_MARKER`, kind ``run``)
or, for runs from before the marker, by a finished run's files (config.json + trained.safetensors).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medsaga.errors import InputError
from medsaga.io.paths import folder_kind

RUNS_DIR = Path("runs")  # relative to the working directory
LATEST = "latest"
# A finished run's files: config.json is written first, trained.safetensors when training ends.
FINISHED_RUN_FILES = ("config.json", "trained.safetensors")


def default_run_dir(dataset_name: str, method: str, shots: int, runs_dir: Path = RUNS_DIR) -> Path:
    """``runs_dir/<dataset>-<method>-k<K>``, or with ``-2``, ``-3``... the first name not taken.

    Nothing is created: the folder is made by finetune with its first output. A dangling link or a
    file of that name counts as taken too (``lexists``).
    """
    stem = f"{_slug(dataset_name)}-{_slug(method)}-k{shots}"
    candidate, number = runs_dir / stem, 1
    while os.path.lexists(candidate) or candidate.name == LATEST:
        number += 1
        candidate = runs_dir / f"{stem}-{number}"
    return candidate


def is_run_folder(path: Path) -> bool:
    """A medsaga run folder: its marker says ``run``, or it holds a finished run's files."""
    if not path.is_dir():
        return False
    if folder_kind(path) == "run":
        return True
    return all((path / name).is_file() for name in FINISHED_RUN_FILES)


def is_finished_run(path: Path) -> bool:
    """A run folder whose training finished (its trained weights are written)."""
    return is_run_folder(path) and all((path / name).is_file() for name in FINISHED_RUN_FILES)


def record_latest(run_dir: Path, runs_dir: Path = RUNS_DIR) -> Path | None:
    """Point ``runs_dir/latest`` at the finished ``run_dir``; returns the link, or ``None`` when
    ``run_dir`` is not directly inside ``runs_dir`` (a run under an explicit ``--out`` elsewhere is
    not recorded: ``runs/latest`` stays a link inside ``runs/``, which moves with the folder and
    never points at a place the user did not put under ``runs/``).

    The link is relative (``latest -> name``) and replaced atomically: a temporary link is made,
    then ``os.replace`` swaps it in, so a reader sees the old run or the new one, never none.
    """
    if run_dir.resolve().parent != runs_dir.resolve() or run_dir.name == LATEST:
        return None
    link = runs_dir / LATEST
    temporary = runs_dir / f".{LATEST}.{os.getpid()}.tmp"
    if os.path.lexists(temporary):
        temporary.unlink()
    os.symlink(run_dir.name, temporary, target_is_directory=True)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink()
        raise
    return link


def latest_run(runs_dir: Path = RUNS_DIR) -> Path | None:
    """The run folder ``runs_dir/latest`` points at (``runs/<name>``, the name it was trained under),
    when that is a finished run; else ``None``."""
    link = runs_dir / LATEST
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    run = target if target.is_absolute() else runs_dir / target
    return run if is_finished_run(run) else None


def _slug(text: str) -> str:
    """A file-name-safe form: letters, digits, ``.``, ``_`` and ``-``; other runs become one ``-``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug or "dataset"


NO_RUN_MESSAGE = (f"no finished run found ({RUNS_DIR / LATEST}); train one first with "
                  "'medsaga finetune --shots 5 DATA'")


@dataclass(frozen=True)
class PredictTarget:
    """What ``medsaga predict``'s arguments resolved to.

    Attributes:
        run_dir: the run to predict with.
        inputs: the scans (files, DICOM series folders, folders of them).
        run_source: how the run was chosen: ``--run``, ``RUN_DIR`` (the first positional) or ``runs/latest``.
    """

    run_dir: Path
    inputs: tuple[Path, ...]
    run_source: str


def resolve_predict_target(positionals: Sequence[Path], run: Path | None,
                           runs_dir: Path = RUNS_DIR) -> PredictTarget:
    """``medsaga predict [RUN_DIR] INPUT...`` and ``--run``: which path is the run, which are scans.

    - ``--run RUN_DIR``: every positional is an input.
    - else the first positional is the run when it is a folder that says so: the run marker or a
      config.json (an unfinished or damaged run then gets read_run_config's precise error), or,
      with more positionals after it, a folder holding no image and no DICOM series (nothing to
      predict in it: it can only have been meant as RUN_DIR). A scan file, a DICOM series folder
      and a folder of scans are never runs, so the two readings cannot both hold.
    - else every positional is an input and the run is ``runs/latest`` (an :class:`InputError`
      saying to run finetune first when there is none).

    A positional that does not exist is an :class:`InputError` naming it, before anything else.
    """
    inputs = tuple(positionals)
    for path in inputs:  # a mistyped path is named as such, not taken for "no run" or a scan
        if not os.path.lexists(path):
            raise InputError("no such file or folder", path)
    if run is not None:
        if inputs and _names_a_run(inputs[0]):
            raise InputError("is a run folder, and --run names the run: give the run once", inputs[0])
        return PredictTarget(run, inputs, "--run")
    if inputs and (_names_a_run(inputs[0]) or (len(inputs) > 1 and _holds_nothing_to_predict(inputs[0]))):
        return PredictTarget(inputs[0], inputs[1:], "RUN_DIR")
    latest = latest_run(runs_dir)
    if latest is None:
        raise InputError(NO_RUN_MESSAGE)
    return PredictTarget(latest, inputs, str(runs_dir / LATEST))


def _names_a_run(path: Path) -> bool:
    return path.is_dir() and (folder_kind(path) == "run" or (path / FINISHED_RUN_FILES[0]).is_file())


def _holds_nothing_to_predict(path: Path) -> bool:
    """A folder with no image file in it and no DICOM series in or below it (one level)."""
    from medsaga.predict.inputs import IMAGE_SUFFIXES, is_dicom_folder
    from medsaga.io.formats import format_suffix

    if not path.is_dir() or is_dicom_folder(path):
        return False
    for entry in path.iterdir():
        if entry.name.startswith("."):
            continue
        if (entry.is_file() and format_suffix(entry) in IMAGE_SUFFIXES) or (entry.is_dir() and is_dicom_folder(entry)):
            return False
    return True
