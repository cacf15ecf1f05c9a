"""Run a command as the child of a small, fresh process, so that its peak RSS is its own.

``python -m medsaga.benchmark.launch CMD ARG...`` runs ``CMD ARG...`` and exits with its status;
stdin, stdout and stderr are passed through.

Why a middle process: on Linux a process's ``ru_maxrss`` (what :class:`~medsaga.train.memory.PeakMemory`
reads on a CPU) starts at the peak RSS of the *parent it was forked from*: ``exec`` folds the
old address space's high-water mark into it. A benchmark worker started straight from the
benchmark's parent (torch, the loaded slices: hundreds of MB) would report that parent's peak
whenever its own is lower. A command forked from this launcher inherits only the launcher's peak
(a bare interpreter, ~10 MB, below any model's baseline). This module therefore imports nothing
heavy.

A command killed by a signal N exits this launcher with status 128 + N (the shell's convention),
so the caller still learns that the kernel killed it (signal 9: usually out of memory). SIGTERM
and SIGINT sent to the launcher are passed on to the command, so stopping the benchmark's parent
leaves no worker running.
"""

from __future__ import annotations

import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m medsaga.benchmark.launch CMD [ARG...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda received, _frame: child.send_signal(received))
    status = child.wait()
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
