"""``--nproc N``: relaunch the same command under torchrun, N processes on this machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (the option that launched torchrun)."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(name + "="):
            kept.append(argument)
    return kept


def torchrun_command(nproc: int, arguments: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m medsaga ARGS``:
    torchrun from this interpreter (the same environment), its own rendezvous on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "medsaga", *arguments]


def launch_torchrun(nproc: int, arguments: Sequence[str]) -> int:
    """Run the command on ``nproc`` processes and return torchrun's exit status."""
    return subprocess.run(torchrun_command(nproc, arguments)).returncode
