"""Fine-tune the tiny SAM on 2 MALF brain MR cases with every method; print one line per method.

Run: .venv/bin/python benchmarks/finetune_malf_all_methods.py [--data ../shared/data/malf-brain-t1]
     [--image-size 256] [--epochs N] [--val N] [--methods galore,adapter] [--out runs/malf-methods]

Each method runs as `medsaga finetune DATA --shots 2 --model tiny --image-size 256 --method M` (the
finetune issue's command: default epochs, no validation unless --val), in its own process (so peak
memory is its own), and the table is read back from each report.json. "total s" is the whole
process, start-up, data loading and any embedding cache included; "train s" the training loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from medsaga.methods import method_names
from records import save_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/malf-brain-t1"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=None, help="default: finetune's own default")
    parser.add_argument("--val", type=int, default=0, help="held-out cases validated every epoch")
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--out", type=Path, default=Path("runs/malf-methods"))
    args = parser.parse_args()
    print(f"{'method':<10}{'trainable':>12}{'peak MiB':>10}{'optim MiB':>10}{'act MiB':>9}{'slices/s':>10}"
          f"{'train s':>8}{'total s':>8}{'val Dice':>10}")
    rows = []
    for method in args.methods.split(","):
        run = args.out / method
        started = time.perf_counter()
        command = [sys.executable, "-m", "cli.main", "finetune", str(args.data), "--shots", "2", "--model", "tiny",
                   "--image-size", str(args.image_size), "--method", method, "--out", str(run), "--force"]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        if args.val:
            command += ["--val", str(args.val)]
        result = subprocess.run(command, capture_output=True, text=True)
        total = time.perf_counter() - started
        if result.returncode != 0:
            print(f"{method:<10} failed after {total:.0f} s: {result.stderr.strip()[-300:]}")
            continue
        report = json.loads((run / "report.json").read_text())
        memory = report["memory"]
        dice = report["validation_dice"][-1] if report["validation_dice"] else float("nan")
        print(f"{method:<10}{report['trainable_parameters']:>12,}"
              f"{report['peak_memory']['peak_above_baseline_bytes'] / 2**20:>10.0f}"
              f"{memory['optimizer_state'] / 2**20:>10.1f}{memory['saved_activations'] / 2**20:>9.1f}"
              f"{report['slices_per_second']:>10.1f}{report['wall_seconds']:>8.0f}{total:>8.0f}{dice:>10.3f}", flush=True)
        rows.append({"method": method, "trainable": report["trainable_parameters"],
                     "peak_above_baseline_bytes": report["peak_memory"]["peak_above_baseline_bytes"],
                     "optimizer_state_bytes": memory["optimizer_state"],
                     "saved_activation_bytes": memory["saved_activations"],
                     "slices_per_second": report["slices_per_second"], "training_seconds": report["wall_seconds"],
                     "command_seconds": total, "validation_dice": report["validation_dice"]})
    save_record("finetune_malf_all_methods", f"tiny-{args.image_size}", {"image_size": args.image_size, "rows": rows})


if __name__ == "__main__":
    main()
