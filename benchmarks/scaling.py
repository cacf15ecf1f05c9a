"""Training and cohort-prediction throughput on 1 and N processes (torchrun), in one run.

For each process count P it runs what a user runs::

    medsaga finetune DATA --cases ... --model M --method METHOD --steps S --batch-size B --nproc P
    torchrun --standalone --nproc-per-node P -m medsaga predict RUN COHORT... --out PRED

with the machine's cores split between the processes (``OMP_NUM_THREADS`` = cores / P), the same
global batch, seed and steps, and prints a Markdown table: training slices/s over the timed steps
(report.json: the global throughput; the cache build and start-up excluded), the whole command's
wall time, and the cohort's volumes, slices and wall time (model loading on every rank included).
Writes ``OUT/scaling.json`` and ``OUT/scaling.md``.

Usage (the table in docs/scaling-out.md)::

    .venv/bin/python benchmarks/scaling.py --out runs/scaling
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from records import save_record

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--cases", default="phantom_001,phantom_002")
    parser.add_argument("--cohort", default="phantom_003,phantom_004,phantom_005,phantom_006,phantom_007,phantom_008",
                        help="cases whose images are predicted")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--method", default="galore")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4, help="the global batch")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scaling")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    medsaga = str(Path(sys.executable).with_name("medsaga"))
    cohort = [str(args.data / "imagesTr" / f"{case}_0000.nii.gz") for case in args.cohort.split(",")]
    rows = []
    for nproc in (int(n) for n in args.nprocs.split(",")):
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
        run = args.out / f"train-{nproc}"
        train_seconds = _timed([medsaga, "finetune", str(args.data), "--cases", args.cases, "--model", args.model,
                                "--method", args.method, "--image-size", str(args.image_size), "--steps",
                                str(args.steps), "--batch-size", str(args.batch_size), "--seed", "0",
                                "--checkpoint-every", "0", "--out", str(run), "--force", "--nproc", str(nproc)], env)
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        predictions = args.out / f"predict-{nproc}"
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                     "-m", "medsaga"] if nproc > 1 else [medsaga])
        predict_seconds = _timed([*launcher, "predict", str(args.out / "train-1"), *cohort, "--out", str(predictions),
                                  "--force"], env)
        slices = _cohort_slices(predictions, args.cohort.split(","))
        rows.append({"processes": nproc, "threads_per_process": int(env["OMP_NUM_THREADS"]),
                     "train_slices_per_second": report["slices_per_second"], "train_command_seconds": train_seconds,
                     "peak_rss_bytes_per_rank": [r["peak_memory"].get("peak_above_baseline_bytes")
                                                 for r in (report.get("distributed") or {}).get("ranks", [])]
                     or [report["peak_memory"].get("peak_above_baseline_bytes")],
                     "cohort_volumes": len(cohort), "cohort_slices": slices, "predict_seconds": predict_seconds})
    document = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cores": cores, "model": args.model,
                "method": args.method, "image_size": args.image_size, "steps": args.steps,
                "global_batch": args.batch_size, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    save_record("scaling", f"{args.model}-{args.method}-{args.image_size}", document)
    table = markdown(rows)
    (args.out / "scaling.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def _timed(command: list[str], env: dict[str, str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"failed (exit {result.returncode}): {' '.join(command)}")
    return time.perf_counter() - started


def _cohort_slices(folder: Path, cases: list[str]) -> int:
    """Axial slices predicted: the third dimension of every written label map."""
    import nibabel as nib

    return sum(int(nib.load(folder / f"{case}.nii.gz").shape[2]) for case in cases)


def markdown(rows: list[dict[str, Any]]) -> str:
    header = ["processes × threads", "training slices/s", "speed-up", "finetune command s", "peak RSS per rank MiB",
              "cohort", "predict wall s", "predicted slices/s", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = rows[0]
    for row in rows:
        lines.append("| " + " | ".join([
            f"{row['processes']} × {row['threads_per_process']}", f"{row['train_slices_per_second']:.2f}",
            f"{row['train_slices_per_second'] / base['train_slices_per_second']:.2f}×",
            f"{row['train_command_seconds']:.0f}",
            ", ".join(f"{b / 2**20:.0f}" for b in row["peak_rss_bytes_per_rank"] if b is not None),
            f"{row['cohort_volumes']} volumes, {row['cohort_slices']} slices", f"{row['predict_seconds']:.1f}",
            f"{row['cohort_slices'] / row['predict_seconds']:.2f}",
            f"{base['predict_seconds'] / row['predict_seconds']:.2f}×"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
