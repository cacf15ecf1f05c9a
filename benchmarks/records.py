"""Committed benchmark records: every figure a page of docs/ quotes, with what measured it.

Each benchmark script saves its result as one JSON record under ``benchmarks/results/<script>/``
(committed with the project) through :func:`save_record`, which adds :func:`environment`: the date,
the CPU model and core count, the medsaga commit (``+uncommitted`` when medsaga's sources or the
benchmarks differ from it), the torch version and the thread settings. A table in docs/ can then be
traced to the record and the code that produced it, and a later run on another machine is told apart.

Also a command, for benchmarks that are shell scripts around ``medsaga benchmark``::

    .venv/bin/python benchmarks/records.py keep runs/benchmark-vit_b-256/benchmark.json \\
        benchmarks/results/benchmark_methods/vit_b-256.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def commit() -> str:
    """``HEAD``'s hash, ``+uncommitted`` when medsaga's or the benchmarks' tracked sources differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "medsaga", "benchmarks"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """When, on what and with which code a record was measured."""
    import torch

    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "medsaga_commit": commit(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` whole or not at all (:func:`medsaga.io.atomic.atomic_output`)."""
    from medsaga.io.atomic import atomic_output

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def save_record(script: str, name: str, result: dict[str, Any], command: list[str] | None = None,
                folder: Path = RESULTS) -> Path:
    """Save ``result`` as ``folder/<script>/<name>.json`` with the command and :func:`environment`."""
    record = {**result, "command": " ".join(command if command is not None else [Path(sys.executable).name, *sys.argv]),
              "measured": environment()}
    path = write_json(folder / script / f"{name}.json", record)
    print(f"record: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keep a medsaga benchmark's JSON as a committed record")
    commands = parser.add_subparsers(dest="command", required=True)
    keep = commands.add_parser("keep", help="copy OUT/benchmark.json into benchmarks/results/ with the environment")
    keep.add_argument("source", type=Path)
    keep.add_argument("record", type=Path)
    keep.add_argument("--command-line", default="", help="the command that produced the source")
    args = parser.parse_args(argv)
    result = json.loads(args.source.read_text(encoding="utf-8"))
    if not isinstance(result, dict):
        parser.error(f"{args.source}: not a JSON object")
    write_json(args.record, {**result, "command": args.command_line, "measured": environment()})
    print(f"record: {args.record}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
