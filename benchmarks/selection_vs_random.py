"""Does ``medsaga select`` pick better shots than chance? Selected against random shots on MALF.

For each K, the cohort's K picks by each selection rule (``medsaga select DATA --shots K --rule R``,
LiteMedSAM's frozen encoder) and K random cases under each of ``--seeds`` (drawn by the very
function ``medsaga finetune --shots K --seed S`` uses) are each fine-tuned with every method::

    medsaga finetune DATA --cases <the K> --model litemedsam --method M --steps S --batch-size B
                          --image-size I --seed 0 --speed --out RUN
    medsaga predict  RUN <the cases not trained on> --out RUN/predictions
    medsaga evaluate RUN/predictions <their labels> --labels RUN --out RUN/evaluation

(S: ``--decoder-steps`` for the decoder, ``--steps`` for the others.) Only the choice of cases
differs between runs of one method: the same training seed, steps and settings. Each
run is evaluated on every case it did not train on (central ``--test-slices`` axial slices of
each, to fit a 2-core CPU). A set of cases already trained with a method (a random draw equal to
a pick, or two equal draws) is trained once. Each finished run leaves its record in
``--records`` (committed with the project), and a run with a record is not repeated.

Prints, per method and K: the mean Dice of each rule's picks, and the mean, standard deviation,
minimum and maximum over the random draws, and where each rule's picks rank among the draws.

Usage (the table in docs/performance.md)::

    .venv/bin/python benchmarks/selection_vs_random.py --data ../shared/data/malf-brain-t1 --out runs/selection
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from litemedsam_quality import _test_set, finetune_predict_evaluate  # noqa: E402  (shared with the quality table)
from records import environment, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "malf-brain-t1")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "selection")
    parser.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "selection_vs_random")
    parser.add_argument("--shots", default="1,2,3")
    parser.add_argument("--methods", default="decoder,galore")
    parser.add_argument("--rules", default="kcenter,kmedoids")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="random draws of K cases")
    parser.add_argument("--steps", type=int, default=200, help="steps of the methods that train the encoder")
    # The decoder trains on cached embeddings at ~0.1 s a step (its run's time is the cache), and in
    # the quality table it sat on the all-background plateau (loss ~0.7) for ~150 steps: at 200 steps
    # whether it has left it would decide its Dice more than the cases do.
    parser.add_argument("--decoder-steps", type=int, default=500, help="steps of the decoder-only method")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--test-slices", type=int, default=64)
    parser.add_argument("--select-image-size", type=int, default=256, help="the encoder's size for select")
    # The question here is which cases, not how much memory: the runs train with --speed (no
    # activation checkpointing, plain GaLore), which saves the encoder's recomputation in every
    # backward. --lean trains with finetune's defaults, as the quality table does.
    parser.add_argument("--lean", action="store_true", help="train with finetune's lean defaults, not --speed")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)

    from medsaga.data.dataset import discover_dataset
    from medsaga.train.shots import choose_cases

    dataset = discover_dataset(args.data)
    everyone = sorted(case.case_id for case in dataset.labelled_cases)
    images, labels = _test_set(args.data, everyone, args.test_slices, args.out / "test")
    slab = dict(zip(everyone, images))
    args.records.mkdir(parents=True, exist_ok=True)
    draws_per_k: dict[int, dict[str, tuple[str, ...]]] = {}
    for k in [int(k) for k in args.shots.split(",")]:
        draws: dict[str, tuple[str, ...]] = {}
        for rule in args.rules.split(","):
            draws[rule] = _selected(args, k, rule)
        for seed in [int(s) for s in args.seeds.split(",")]:
            draws[f"random seed {seed}"] = choose_cases(dataset, k, seed).train
        draws_per_k[k] = draws
    rows = []
    # Method by method, so the cheap decoder's rows for every K are complete before the first
    # encoder-training run starts.
    for method in args.methods.split(","):
        for k, draws in draws_per_k.items():
            results = {}
            for name, cases in draws.items():
                record = _run(args, method, cases, [slab[c] for c in everyone if c not in cases], labels)
                if record is not None:
                    results[name] = record
            rows.append(_summary(method, k, draws, results, args.rules.split(",")))
    document = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": _settings(args),
                "rows": rows}
    (args.out / "selection.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    table = markdown(rows, args.rules.split(","))
    (args.out / "selection.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "decoder_steps": args.decoder_steps, "batch_size": args.batch_size, "image_size": args.image_size,
            "test_slices": args.test_slices, "select_image_size": args.select_image_size, "data": args.data.name,
            "memory_profile": "lean" if args.lean else "speed"}


def _steps(args: argparse.Namespace, method: str) -> int:
    return args.decoder_steps if method == "decoder" else args.steps


def _medsaga() -> list[str]:
    return [str(Path(sys.executable).with_name("medsaga"))]


def _selected(args: argparse.Namespace, k: int, rule: str) -> tuple[str, ...]:
    """The K cases ``medsaga select`` picks by ``rule`` (descriptors cached under OUT)."""
    out = args.out / "select" / f"{rule}-k{k}"
    if not (out / "selection.json").is_file():
        command = [*_medsaga(), "select", str(args.data), "--shots", str(k), "--rule", rule, "--out", str(out),
                   "--image-size", str(args.select_image_size), "--cache-dir", str(args.out / "descriptors"),
                   "--force"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"select failed: {result.stderr[-2000:]}")
        print(result.stdout, flush=True)
    return tuple(json.loads((out / "selection.json").read_text(encoding="utf-8"))["cases"])


def _run(args: argparse.Namespace, method: str, cases: tuple[str, ...], images: list[Path],
         labels: Path) -> dict[str, Any] | None:
    """Fine-tune on ``cases``, evaluate on ``images``; the record (kept, or made now)."""
    name = "+".join(sorted(cases))
    kept = args.records / f"{method}-{name}.json"
    if kept.is_file():
        record = json.loads(kept.read_text(encoding="utf-8"))
        if record["settings"] != _settings(args):
            raise SystemExit(f"{kept} was measured with {record['settings']}: move it aside")
        return record
    if args.table_only:
        return None
    run = args.out / "runs" / method / name
    finetune = ["finetune", str(args.data), "--cases", ",".join(sorted(cases)), "--model", "litemedsam",
                "--method", method, "--steps", str(_steps(args, method)), "--batch-size", str(args.batch_size),
                "--image-size", str(args.image_size), "--seed", "0", "--out", str(run), "--force",
                *([] if args.lean else ["--speed"])]
    timings = finetune_predict_evaluate(finetune, run, images, labels, f"{method} {name}")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    dice = {summary["name"]: summary["dice"] for summary in metrics["mean"]}
    record = {"method": method, "cases": sorted(cases), "evaluated_on": len(images), "dice": dice,
              "mean_dice": _mean(dice), "timings": timings, "settings": _settings(args), "measured": environment()}
    write_json(kept, record)
    return record


def _mean(dice: dict[str, float | None]) -> float:
    """Mean over classes; a class never predicted counts 0 (as in the quality table)."""
    values = [value or 0.0 for value in dice.values()]
    return sum(values) / max(1, len(values))


def _summary(method: str, k: int, draws: dict[str, tuple[str, ...]], results: dict[str, dict[str, Any]],
             rules: list[str]) -> dict[str, Any]:
    random_names = [name for name in draws if name.startswith("random")]
    random_dice = [results[name]["mean_dice"] for name in random_names if name in results]
    row: dict[str, Any] = {"method": method, "k": k, "draws": {name: list(cases) for name, cases in draws.items()},
                           "random": random_dice}
    for rule in rules:
        if rule in results:
            value = results[rule]["mean_dice"]
            row[rule] = value
            row[f"{rule}_beats"] = sum(value > other for other in random_dice)
    if len(random_dice) >= 2:
        row["random_mean"] = statistics.fmean(random_dice)
        row["random_std"] = statistics.stdev(random_dice)
    return row


def markdown(rows: list[dict[str, Any]], rules: list[str]) -> str:
    header = ["method", "K"] + [f"{rule} picks: Dice (beats n of the random)" for rule in rules] + \
        ["random: mean ± sd", "random: min – max", "random draws"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], str(row["k"])]
        for rule in rules:
            cells.append(f"{row[rule]:.3f} ({row[f'{rule}_beats']} of {len(row['random'])}) — "
                         f"{', '.join(row['draws'][rule])}" if rule in row else "–")
        random = row["random"]
        cells.append(f"{row['random_mean']:.3f} ± {row['random_std']:.3f}" if "random_mean" in row else "–")
        cells.append(f"{min(random):.3f} – {max(random):.3f}" if random else "–")
        cells.append(str(len(random)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
