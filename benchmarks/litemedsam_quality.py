"""Few-shot quality of every method on a real medical foundation model: LiteMedSAM on MALF brain MRI.

For each initialisation (the installed LiteMedSAM weights, and random weights of the same
architecture), each K (cases trained on) and each method, this runs the commands a user runs::

    medsaga finetune DATA --cases <first K of the training pool> --model litemedsam [--random-init]
                          --method M --steps S --batch-size B --seed 0 --out RUN
    medsaga predict  RUN <test images> --out RUN/predictions
    medsaga evaluate RUN/predictions <test labels> --labels RUN --out RUN/evaluation

with the same seed, steps, batch size and slicing for every method (each method at its default
learning rate), on test cases that no run trains on, and collects per class the mean Dice and
HD95, the tensor peak of training (what a GPU's allocator would count), the wall times and the
trainable parameters into ``OUT/quality.json`` and the Markdown table ``OUT/quality.md``.

The training pool and the test cases are disjoint and fixed: K = 1, 2, 5 take the first K of the
pool (nested sets), the test cases are the other three. ``--test-slices N`` evaluates on the
central N axial slices of each test case (written once under ``OUT/test``, with their exact
geometry) instead of the whole volume: on a 2-core CPU predicting three whole MALF volumes costs
about 4 minutes per run. A run whose evaluation exists is not repeated (``--redo`` repeats it),
so an interrupted benchmark continues where it stopped. Each finished run also leaves its record
(a few hundred bytes of JSON) in ``--records`` (default ``benchmarks/results/litemedsam_quality``,
committed with the project): a run with a record is not repeated either, so the table, whose 42
runs take longer than one working session on a 2-core CPU, is completed across machines.

Usage (the table in docs/performance.md)::

    .venv/bin/python benchmarks/litemedsam_quality.py --data ../shared/data/malf-brain-t1 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from records import environment, write_json

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("galore", "adapter", "parser", "lora", "conv-lora", "decoder", "full")
INITS = ("pretrained", "random")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "malf-brain-t1")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--shots", default="1,2,5", help="comma-separated K values")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inits", default=",".join(INITS), help="pretrained, random or both")
    parser.add_argument("--pool", default="MALF_1000,MALF_1001,MALF_1002,MALF_1003,MALF_1004",
                        help="training cases, in the order K takes them")
    parser.add_argument("--test", default="MALF_1005,MALF_1006,MALF_1007", help="cases evaluated, never trained on")
    # The table in docs/performance.md: 42 runs of 200 steps at 128 px, about 4.5 hours on a quiet 2-core CPU.
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-slices", type=int, default=64, help="central axial slices per test case (0: all)")
    parser.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "litemedsam_quality",
                        help="one JSON record per finished run, kept across machines")
    parser.add_argument("--redo", action="store_true", help="repeat runs that already have an evaluation or record")
    parser.add_argument("--table-only", action="store_true", help="only collect what exists into the table")
    args = parser.parse_args(argv)

    pool = args.pool.split(",")
    test = args.test.split(",")
    shots = [int(k) for k in args.shots.split(",")]
    if set(pool) & set(test) or max(shots) > len(pool):
        parser.error("the training pool and the test cases must be disjoint, and K at most the pool's size")
    args.out.mkdir(parents=True, exist_ok=True)
    images, labels = _test_set(args.data, test, args.test_slices, args.out / "test")
    args.records.mkdir(parents=True, exist_ok=True)
    records = []
    for init in args.inits.split(","):
        for k in shots:
            for method in args.methods.split(","):
                run = args.out / init / f"k{k}" / method
                kept = args.records / f"{init}-k{k}-{method}.json"
                finished = (run / "evaluation" / "metrics.json").is_file() or kept.is_file()
                ran_now = not args.table_only and (args.redo or not finished)
                if ran_now:
                    _run(args, init, pool[:k], method, run, images, labels)
                if (run / "evaluation" / "metrics.json").is_file():
                    record = _record(init, k, method, run)
                    # A kept record keeps the date and machine of its measurement: only a run done now,
                    # or one whose record is missing, writes it.
                    if ran_now or not kept.is_file():
                        write_json(kept, {**record, "settings": _settings(args), "measured": environment()})
                    records.append(record)
                elif kept.is_file():
                    records.append(_kept_record(kept, args))
    document = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "data": str(args.data),
                "pool": pool, "test": test, "test_slices": args.test_slices, "steps": args.steps,
                "batch_size": args.batch_size, "image_size": args.image_size, "seed": args.seed,
                "records": records}
    (args.out / "quality.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    table = markdown(records)
    (args.out / "quality.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must be equal for two runs to share a table."""
    return {"steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size, "seed": args.seed,
            "test_slices": args.test_slices, "pool": args.pool, "test": args.test}


def _kept_record(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A record kept from an earlier machine, refused if it was measured with other settings."""
    record = json.loads(path.read_text(encoding="utf-8"))
    settings = record.pop("settings", None)
    record.pop("measured", None)
    if settings != _settings(args):
        raise SystemExit(f"{path} was measured with {settings}, not {_settings(args)}: move it aside or use --redo")
    return record


def _test_set(data: Path, cases: list[str], slices: int, folder: Path) -> tuple[list[Path], Path]:
    """The test images and their label folder: the dataset's own files, or central slabs of them."""
    if not slices:
        return [data / "imagesTr" / f"{case}_0000.nii.gz" for case in cases], data / "labelsTr"
    import nibabel as nib

    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTs").mkdir(exist_ok=True)
    images = []
    for case in cases:
        image_out, label_out = folder / "imagesTs" / f"{case}_0000.nii.gz", folder / "labelsTs" / f"{case}.nii.gz"
        if not image_out.is_file() or not label_out.is_file():
            image = nib.load(data / "imagesTr" / f"{case}_0000.nii.gz")
            label = nib.load(data / "labelsTr" / f"{case}.nii.gz")
            axial = _axial_axis(image.affine)
            first = max(0, image.shape[axial] // 2 - slices // 2)
            index = tuple(slice(first, first + slices) if axis == axial else slice(None) for axis in range(3))
            nib.save(image.slicer[index], image_out)
            nib.save(label.slicer[index], label_out)
        images.append(image_out)
    return images, folder / "labelsTs"


def _axial_axis(affine: Any) -> int:
    """The voxel axis that runs most nearly inferior-superior."""
    import numpy as np

    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def _run(args: argparse.Namespace, init: str, cases: list[str], method: str, run: Path, images: list[Path],
         labels: Path) -> None:
    finetune = ["finetune", str(args.data), "--cases", ",".join(cases), "--model", "litemedsam",
                "--method", method, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                "--image-size", str(args.image_size), "--seed", str(args.seed), "--out", str(run), "--force"]
    if init == "random":
        finetune.append("--random-init")
    timings = finetune_predict_evaluate(finetune, run, images, labels, f"{init} K={len(cases)} {method}",
                                        logs=run.parent / method)
    (run / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")


def finetune_predict_evaluate(finetune: list[str], run: Path, images: list[Path], labels: Path, title: str,
                              logs: Path | None = None) -> dict[str, float]:
    """What a user runs: ``medsaga <finetune...>`` into ``run``, then ``predict`` on ``images`` and
    ``evaluate`` against ``labels`` inside it; the wall seconds of each. Each command's output goes
    to ``<logs>.<command>.log`` when ``logs`` is given; a failing command ends the benchmark."""
    medsaga = [str(Path(sys.executable).with_name("medsaga"))]
    timings = {}
    for name, command in (
            ("finetune", [*medsaga, *finetune]),
            ("predict", [*medsaga, "predict", str(run), *map(str, images), "--out", str(run / "predictions"),
                         "--force"]),
            ("evaluate", [*medsaga, "evaluate", str(run / "predictions"), str(labels), "--labels", str(run),
                          "--out", str(run / "evaluation"), "--force"])):
        print(f"[{title}] {name}", flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        timings[name] = round(time.perf_counter() - started, 1)
        if logs is not None:
            logs.with_name(f"{logs.name}.{name}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{name} failed for {run} (exit {result.returncode})")
    return timings


def _record(init: str, k: int, method: str, run: Path) -> dict[str, Any]:
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    timings = json.loads((run / "timings.json").read_text(encoding="utf-8")) if (run / "timings.json").is_file() else {}
    classes = {summary["name"]: {"dice": summary["dice"], "hd95": summary["hd95_mm"], "nsd": summary["nsd"]}
               for summary in metrics["mean"]}
    peak = dict(report.get("tensor_peak") or {})
    cache = report.get("embedding_cache") or {}
    if peak.get("bytes") and cache and peak.get("held_bytes", 0) >= cache["bytes"] + report["memory"]["optimizer_state"]:
        # A run from before the loop stopped counting the host-memory embedding cache in its
        # tensor peak (a GPU's allocator would not count it): take it out.
        peak["bytes"] -= cache["bytes"]
    return {"init": init, "k": k, "method": method, "trainable_parameters": report["trainable_parameters"],
            "classes": classes, "tensor_peak_bytes": peak.get("bytes"), "train_seconds": report["wall_seconds"],
            "train_slices_per_second": report["slices_per_second"], "timings": timings,
            "train_cases": report["train_cases"]}


def _class_values(record: dict[str, Any], key: str) -> dict[str, float | None]:
    return {name: values.get(key) for name, values in record["classes"].items()}


def markdown(records: list[dict[str, Any]]) -> str:
    """One row per run: per-class Dice and HD95, their means, memory, time, parameters."""
    if not records:
        return "(no finished runs)"
    names = list(records[0]["classes"])
    header = (["init", "K", "method"] + [f"Dice {n}" for n in names] + ["mean Dice"]
              + [f"HD95 {n} mm" for n in names] + ["tensor peak MiB", "Dice per GiB", "train s", "trainable"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        dice = _class_values(record, "dice")
        hd95 = _class_values(record, "hd95")
        mean_dice = sum(v for v in dice.values() if v is not None) / max(1, sum(v is not None for v in dice.values()))
        peak = record["tensor_peak_bytes"]
        cells = [record["init"], str(record["k"]), record["method"]]
        cells += [_fmt(dice[n], 3) for n in names] + [_fmt(mean_dice, 3)]
        cells += [_fmt(hd95[n], 1) for n in names]
        cells += [_fmt(peak / 2**20, 0) if peak else "–", _fmt(mean_dice / (peak / 2**30), 2) if peak else "–",
                  _fmt(record["train_seconds"], 0), f"{record['trainable_parameters']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
