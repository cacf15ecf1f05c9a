"""Running ``medsaga`` from a test, and checking its one-line errors.

Three ways, each for a reason:

- :func:`medsaga`: in a fresh interpreter, as a user runs it (``cli.main.run``, the console
  script's entry point); a ``prelude`` of Python may run there first;
- :func:`medsaga_in_process`: the same entry point in this process (a test can replace the long work
  by a tripwire, make a write fail, or keep a registration made here); needs ``capsys`` and
  ``monkeypatch``;
- :func:`medsaga_runner`: Typer's ``CliRunner`` in this process, which also gives stdout apart;
  an :class:`InputError` becomes exit 2 and its one line, as ``cli.main.run`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_paths import ROOT

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Options of a run that takes seconds: finetune and select on the tiny random-weights SAM at 64 px.
TINY = ("--shots", "1", "--model", "tiny", "--random-init", "--image-size", "64", "--batch-size", "2", "--steps", "1",
        "--checkpoint-every", "0", "--no-augment")
SELECT = ("--shots", "1", "--model", "tiny", "--random-init", "--image-size", "64", "--slices", "1")


def medsaga(*args: str | Path, prelude: str = "", env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``medsaga ARGS`` in a fresh interpreter in the repository root, as a user would, after
    ``prelude`` (Python) has run there; ``env`` adds to the environment."""
    code = f"{prelude}\nimport sys\nsys.argv = ['medsaga', *sys.argv[1:]]\nfrom cli.main import run\nrun()\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


def medsaga_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                       *args: str | Path) -> tuple[int, str]:
    """Run ``medsaga ARGS`` in this process through the console script's entry point: its exit
    code and what it wrote on stderr."""
    from cli.main import run

    monkeypatch.setattr(sys, "argv", ["medsaga", *map(str, args)])
    capsys.readouterr()
    try:
        run()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return code, capsys.readouterr().err


def medsaga_runner(*args: str | Path) -> tuple[int, str, str]:
    """``medsaga ARGS`` in this process through Typer's ``CliRunner``: exit code, stdout, stderr; an
    InputError becomes exit 2 and its one line, as cli.main.run does."""
    from typer.testing import CliRunner

    from cli.main import app
    from medsaga.errors import InputError

    result = CliRunner().invoke(app, [str(arg) for arg in args])
    if isinstance(result.exception, InputError):
        return 2, result.stdout, f"error: {result.exception}\n"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(result: subprocess.CompletedProcess[str], path: Path, *fragments: str) -> None:
    """Exit code 2, exactly one line on stderr that names ``path`` and says what is wrong."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ") and str(path) in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_refused(code: int, stderr: str, fragment: str) -> str:
    """Exit 2, stderr's last line is the one ``error:`` line holding ``fragment``, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, stderr
    assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]
