"""No ``.medsaga-tmp-*`` file outlives a prediction: removed on SIGINT/SIGTERM, and on the next run.

Every output is written to a hidden temporary beside its final name and renamed when whole
(:func:`medsaga.io.atomic.atomic_output`). That cleans up after an exception, but SIGTERM's default
action ends the process at once, and a second Ctrl-C can land inside the clean-up itself: the
hidden temporaries then stay forever. Two mechanisms close the gap:

- :func:`interruptible`: for the duration of a prediction, SIGINT and SIGTERM raise
  :class:`Interrupted`, so every ``atomic_output`` block unwinds and removes its temporary; on the
  way out the output folders are swept for temporaries of this run's own outputs, created since it
  started, in case the signal landed inside a clean-up. The command then exits 130 or 143.
- :func:`remove_stale_temporaries`: at the start of the next run, temporaries in the output
  folders that are older than the run itself (an earlier run killed with SIGKILL, a power cut).
  Only names that ``atomic_output`` makes, only in the output folders, only regular files.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from medsaga.io.atomic import TEMP_PREFIX

# atomic_output's names: TEMP_PREFIX, 8 hex digits, "-", the final file name.
_TEMPORARY = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]{8}-(?P<name>.+)\Z", re.DOTALL)
# A temporary written by a concurrent process that started just before this one (another rank of
# the same torchrun cohort) is newer than this; file-system timestamps may be coarser than time.time().
_STALE_MARGIN_S = 2.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM during a prediction (a BaseException, as KeyboardInterrupt: no ``except
    Exception`` that keeps a cohort going may swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def temporaries(folders: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """``(path, final name)`` of each regular file named as ``atomic_output``'s temporaries in ``folders``
    (not their subfolders); symbolic links are never reported."""
    for folder in dict.fromkeys(folders):  # each folder once, in order
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not created yet, or unreadable: nothing of ours there
            continue
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                yield Path(entry.path), match["name"]


def remove_stale_temporaries(folders: Iterable[Path], started: float) -> list[Path]:
    """Remove the temporaries in ``folders`` last modified before ``started`` (``time.time()``) and
    return them: left by an earlier run that was killed; a concurrent writer's are newer."""
    removed = []
    for path, _ in temporaries(folders):
        try:
            if path.lstat().st_mtime < started - _STALE_MARGIN_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished or cleaned it meanwhile
            continue
    return removed


def remove_own_temporaries(outputs: Iterable[Path], started: float) -> list[Path]:
    """Remove the temporaries of the final paths ``outputs`` created since ``started``: this run's own."""
    by_folder: dict[Path, set[str]] = {}
    for output in outputs:
        by_folder.setdefault(Path(output).parent, set()).add(Path(output).name)
    removed = []
    for path, name in temporaries(by_folder):
        try:
            if name in by_folder[path.parent] and path.lstat().st_mtime >= started - _STALE_MARGIN_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


@contextmanager
def interruptible(outputs: list[Path], started: float) -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise :class:`Interrupted`; on leaving it (normally or
    not) the temporaries of ``outputs`` created since ``started`` (``time.time()``) are removed and
    the previous handlers restored.

    ``outputs`` is read when the block ends: the caller may fill it inside (once it knows which
    cases are its own). A signal that is ignored (``nohup``, a background job's SIGINT) stays
    ignored. Handlers can only be installed from the main thread; elsewhere the block runs with
    the handlers it has.
    """
    previous: dict[int, object] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        # Once is enough: a second signal during the unwinding must not interrupt the clean-up.
        for number in previous:
            signal.signal(number, signal.SIG_IGN)
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.getsignal(number)
                signal.signal(number, handler)
    try:
        yield
    finally:
        try:
            remove_own_temporaries(outputs, started)
        finally:
            for number, old in previous.items():
                signal.signal(number, old)  # type: ignore[arg-type]
