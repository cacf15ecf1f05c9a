"""Does medsaga segment better than what a user would train instead? (issue 27)

Four real tasks from ``../shared/data`` (see its README), each split once and for all into a
training pool (K = 1, 2, 5 take its first K cases: nested sets) and three test cases that no run
trains on (:data:`TASKS`). Every contender trains for the same budget (``--budget`` seconds of
its training process's CPU time by default, ``--clock wall`` for wall-clock time; counted from the
start of its training command: reading the cases counts; with OMP_NUM_THREADS=1 a CPU second is
a second of one core, whatever else the machine runs), then predicts
the test cases as NIfTI label maps on their own grid, which ``medsaga evaluate`` scores (Dice,
HD95, NSD at 2 mm) against the manual labels:

- ``medsaga-default``: ``medsaga finetune DATA --cases <K> --model litemedsam --time-budget B``
  and finetune's defaults otherwise: what a user gets;
- ``medsaga-best``: the configuration in :data:`BEST_OPTIONS` (recorded in each record);
- ``unet``: a from-scratch 2-D MONAI BasicUNet (``benchmarks/baselines/unet.py``);
- ``nnunet``: nnU-Net v2, 2d configuration (``benchmarks/baselines/nnunet.py``).

MALF's test volumes are scored on their central 64 axial slices (written once under
``OUT/<task>/test`` with their geometry), as in the LiteMedSAM quality table; the other tasks'
test volumes whole. The runner refuses a training case that is also a test case.

Each finished run writes its record at once to ``--records`` (one JSON file per task, K and
contender, committed with the project): with the per-class metrics, the train/test cases, the
budget, the measured wall seconds of each command, the CPU seconds of the commands (getrusage of
the children), the medsaga commit, torch version, CPU model, OMP_NUM_THREADS and the date. A run
with a record is not repeated (``--redo`` repeats it) and a kept record keeps its date, so the
table is completed across sessions and machines. ``--table-only`` prints the tables from the
records. Either way the run ends by writing one self-contained page (``--page``, default
``OUT/report.html``, :mod:`quality_page`): the same tables, and per task and K each contender's
predictions of every test case side by side on the same slices, those where the contenders
together disagree most with the manual labels.

Usage (one job at a time on a shared CPU)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup .venv/bin/python benchmarks/quality_vs_baselines.py \\
        > runs/quality_vs_baselines.log 2>&1 &
    .venv/bin/python benchmarks/quality_vs_baselines.py --table-only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from litemedsam_quality import _test_set, finetune_predict_evaluate  # noqa: E402  (the shared runner)
from records import environment, write_json  # noqa: E402

from medsaga.io.atomic import atomic_output  # noqa: E402


@dataclass(frozen=True)
class Task:
    """One dataset's fixed split: K takes the first K of ``pool``; ``test`` is never trained on."""

    pool: tuple[str, ...]
    test: tuple[str, ...]
    test_slices: int = 0  # central axial slices of each test case scored; 0: the whole volume


TASKS: dict[str, Task] = {
    "chaos-mr-abdomen": Task(("CHAOS_T2_01", "CHAOS_T2_02", "CHAOS_T2_03", "CHAOS_T2_05", "CHAOS_T2_08"),
                             ("CHAOS_T2_10", "CHAOS_T2_13", "CHAOS_T2_15")),
    "malf-brain-t1": Task(("MALF_1000", "MALF_1001", "MALF_1002", "MALF_1003", "MALF_1004"),
                          ("MALF_1005", "MALF_1006", "MALF_1007"), test_slices=64),
    "acdc-mr-cardiac": Task(("ACDC_patient001_frame01", "ACDC_patient002_frame01", "ACDC_patient021_frame01",
                             "ACDC_patient022_frame01", "ACDC_patient041_frame01"),
                            ("ACDC_patient042_frame01", "ACDC_patient061_frame01", "ACDC_patient062_frame01")),
    "openkbp-ct-headneck": Task(("OKBP_pt_4", "OKBP_pt_13", "OKBP_pt_17", "OKBP_pt_22", "OKBP_pt_31"),
                                ("OKBP_pt_34", "OKBP_pt_59", "OKBP_pt_60")),
}
CONTENDERS = ("unet", "medsaga-default", "medsaga-best", "nnunet")
# Run in this order: the two that answer "does the default beat the U-Net" on every task first.
DEFAULT_ORDER = "unet,medsaga-default;medsaga-best;nnunet"
# medsaga's strongest other configuration measured so far: the decoder alone on frozen, cached
# LiteMedSAM embeddings at 128 px, 2 views (CHAOS K = 2, 600 CPU-s: 1,797 steps, mean Dice 0.46;
# the default, a decoder warm-up then GaLore, reached 0.49). The earlier choice, 256 px with 4 views
# and batch 8, made 41 steps in that budget and scored 0.00: at 256 px encoding 4 views of every
# slice takes most of 10 CPU-minutes.
BEST_OPTIONS = ("--method", "decoder", "--image-size", "128", "--cache-views", "2")


def check_disjoint(train: tuple[str, ...] | list[str], test: tuple[str, ...] | list[str]) -> None:
    """Refuse a test case that is also a training case (the score would measure memory)."""
    shared = sorted(set(train) & set(test))
    if shared:
        raise ValueError(f"test case(s) {', '.join(shared)} also in the training cases: refusing to score them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the folder holding the four task folders")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality_vs_baselines")
    parser.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "quality_vs_baselines")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--shots", default="2", help="comma-separated K values")
    parser.add_argument("--order", default=DEFAULT_ORDER,
                        help="contender groups separated by ';': each group runs on every task before the next")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per contender")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="what the budget counts: each training process's CPU seconds (the default: fair "
                             "when other jobs share the machine) or wall-clock seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-options", default="",
                        help="extra `medsaga finetune` options for the medsaga contenders, as one string "
                             "(--finetune-options='--image-size 128'); for experiments: give them their own "
                             "--records and --out")
    parser.add_argument("--redo", action="store_true", help="repeat runs that have a record")
    parser.add_argument("--table-only", action="store_true", help="only print the tables from the records")
    parser.add_argument("--update-docs", action="store_true",
                        help="also rewrite the tables in README.md and docs/performance.md from the records")
    parser.add_argument("--page", type=Path, default=None,
                        help="where to write the comparison page (default OUT/report.html): the tables and each "
                             "contender's predictions side by side on the same slices")
    parser.add_argument("--page-planes", default="axial",
                        help="comma-separated planes of the page's overlays (axial, coronal, sagittal)")
    args = parser.parse_args(argv)

    groups = [group.split(",") for group in args.order.split(";")]
    unknown = {c for group in groups for c in group} - set(CONTENDERS)
    if unknown or set(args.tasks.split(",")) - set(TASKS):
        parser.error(f"unknown contender or task: {sorted(unknown) or args.tasks}")
    shots = [int(k) for k in args.shots.split(",")]
    planes = tuple(args.page_planes.split(","))
    if set(planes) - {"axial", "coronal", "sagittal"}:
        parser.error(f"--page-planes: choose among axial, coronal, sagittal, not {args.page_planes!r}")
    for name in args.tasks.split(","):
        task = TASKS[name]
        check_disjoint(task.pool, task.test)
        if max(shots) > len(task.pool):
            parser.error(f"K at most {len(task.pool)} for {name}")
    args.records.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for group in groups:
            for name in args.tasks.split(","):
                for k in shots:
                    for contender in group:
                        kept = args.records / f"{name}-k{k}-{contender}.json"
                        if kept.is_file() and not args.redo:
                            continue
                        record = run_one(args, name, k, contender)
                        if record is not None:
                            write_json(kept, record)  # a record is there whole or not at all
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(args.records.glob("*.json"))]
    print(markdown(records, args.budget))
    if args.update_docs:
        for path in update_docs(records):
            print(f"updated the tables in {path}", file=sys.stderr)
    page = write_page(args.page or args.out / "report.html", records, args.out, args.data, args.records, planes)
    print(f"wrote {page}", file=sys.stderr)
    return 0


def comparisons(records: list[dict[str, Any]], out: Path, data: Path) -> list[Any]:
    """One :class:`quality_page.Comparison` per task and K with records: where each contender's
    predictions and the test set it was scored on lie (under ``out``, as :func:`run_one` writes them)."""
    from quality_page import Comparison

    found = []
    for task, k, scores in summary_rows(records):
        spec = TASKS[task]
        test = next(r for r in records if r["task"] == task and r["k"] == k)
        cases = tuple(test.get("test_cases") or spec.test)
        images, labels = _test_files(data / task, list(cases), test.get("test_slices", spec.test_slices),
                                     out / task / "test")
        found.append(Comparison(task, k, cases, {c: out / task / f"k{k}" / c / "predictions"
                                                 for c in CONTENDERS if c in scores},
                                labels, dict(zip(cases, images)), data / task / "dataset.json"))
    return found


def write_page(path: Path, records: list[dict[str, Any]], out: Path, data: Path, records_folder: Path,
               planes: tuple[str, ...] = ("axial",)) -> Path:
    """Write the comparison page (:mod:`quality_page`) for ``records`` to ``path``."""
    from quality_page import write_comparison_page

    facts = [("records", records_folder), ("predictions and test sets", out), ("data", data)]
    return write_comparison_page(path, task_tables(records), summary_rows(records), CONTENDERS,
                                 budget_note(records) if records else "", comparisons(records, out, data), facts,
                                 planes, TASK_COLUMNS, DICE_DECIMALS)


def _test_files(data: Path, cases: list[str], slices: int, folder: Path) -> tuple[list[Path], Path]:
    """Where :func:`litemedsam_quality._test_set` put (or found) the test images and labels; writes nothing."""
    if not slices:
        return [data / "imagesTr" / f"{case}_0000.nii.gz" for case in cases], data / "labelsTr"
    return [folder / "imagesTs" / f"{case}_0000.nii.gz" for case in cases], folder / "labelsTs"


def run_one(args: argparse.Namespace, name: str, k: int, contender: str) -> dict[str, Any] | None:
    """Train ``contender`` on the first ``k`` of task ``name``'s pool, predict and score the test
    cases; the record (``None`` when the contender cannot run here, with the reason printed)."""
    task = TASKS[name]
    train_cases = list(task.pool[:k])
    check_disjoint(train_cases, task.test)
    data = args.data / name
    run = args.out / name / f"k{k}" / contender
    images, labels = _test_set(data, list(task.test), task.test_slices, args.out / name / "test")
    title = f"{name} K={k} {contender}"
    before = _children_cpu()
    started = time.perf_counter()
    if contender.startswith("medsaga"):
        finetune = ["finetune", str(data), "--cases", ",".join(train_cases), "--model", "litemedsam",
                    "--time-budget", f"{args.budget:g}", "--time-budget-clock", args.clock, "--seed", str(args.seed), "--out", str(run), "--force",
                    *(BEST_OPTIONS if contender == "medsaga-best" else ()), *args.finetune_options.split()]
        run.parent.mkdir(parents=True, exist_ok=True)
        timings = finetune_predict_evaluate(finetune, run, images, labels, title, logs=run.parent / contender)
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        trained = {"steps": report["steps"], "time_budget": report.get("time_budget"),
                   "decoder_warmup_steps": (report.get("decoder_warmup") or {}).get("steps"),
                   "train_wall_seconds": report["wall_seconds"], "options": finetune[3:]}
    else:
        runner = _BASELINES[contender]
        missing = runner.unavailable() if hasattr(runner, "unavailable") else None
        if missing:
            print(f"[{title}] skipped: {missing}", flush=True)
            return None
        timings, trained = runner.run(data, train_cases, run, images, labels, args.budget, args.seed, title,
                                      args.clock)
    cpu = _children_cpu() - before
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))
    classes = {summary["name"]: {"dice": summary["dice"], "hd95": summary["hd95_mm"], "nsd": summary["nsd"]}
               for summary in metrics["mean"]}
    return {"task": name, "k": k, "contender": contender, "train_cases": train_cases, "test_cases": list(task.test),
            "test_slices": task.test_slices, "budget_seconds": args.budget, "budget_clock": args.clock,
            "seed": args.seed,
            "classes": classes, "mean_dice": _mean([c["dice"] for c in classes.values()]),
            "wall_seconds": {**timings, "all": round(time.perf_counter() - started, 1)},
            "cpu_seconds_all_commands": round(cpu, 1), "trained": trained, "measured": environment()}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _mean(values: list[float | None]) -> float:
    """Mean over classes; a class never predicted counts 0."""
    return sum(v or 0.0 for v in values) / max(1, len(values))


def timed_commands(commands: list[tuple[str, list[str]]], logs: Path, title: str) -> dict[str, Any]:
    """Run each ``(name, command)`` in turn; wall and CPU seconds of each. For the baselines, whose
    commands are not medsaga's (medsaga's contenders use the shared ``finetune_predict_evaluate``)."""
    timings: dict[str, Any] = {}
    for name, command in commands:
        print(f"[{title}] {name}", flush=True)
        before, started = _children_cpu(), time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        timings[name] = round(time.perf_counter() - started, 1)
        timings[f"{name}_cpu"] = round(_children_cpu() - before, 1)
        logs.with_name(f"{logs.name}.{name}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{name} failed for {title} (exit {result.returncode})")
    return timings


class _UNet:
    """benchmarks/baselines/unet.py: train, predict, then medsaga evaluate."""

    @staticmethod
    def run(data: Path, cases: list[str], run: Path, images: list[Path], labels: Path, budget: float, seed: int,
            title: str, clock: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
        script = [sys.executable, str(ROOT / "benchmarks" / "baselines" / "unet.py")]
        run.mkdir(parents=True, exist_ok=True)
        timings = timed_commands([
            ("train", [*script, "train", str(data), "--cases", ",".join(cases), "--out", str(run),
                       "--time-budget", f"{budget:g}", "--clock", clock, "--seed", str(seed)]),
            ("predict", [*script, "predict", str(run), *map(str, images), "--out", str(run / "predictions")]),
            ("evaluate", [str(Path(sys.executable).with_name("medsaga")), "evaluate", str(run / "predictions"),
                          str(labels), "--labels", str(data / "dataset.json"), "--out", str(run / "evaluation"),
                          "--force"])], run.parent / "unet", title)
        report = json.loads((run / "unet.json").read_text(encoding="utf-8"))
        return timings, {key: report[key] for key in ("steps", "time_budget", "training_slices", "features", "patch",
                                                      "batch", "lr", "final_loss")}


def _nnunet_runner() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))
    import nnunet  # noqa: PLC0415  (benchmarks/baselines/nnunet.py, imports nnunetv2 only when it runs)

    return nnunet


class _LazyNNUNet:
    @staticmethod
    def unavailable() -> str | None:
        return _nnunet_runner().unavailable()

    @staticmethod
    def run(*args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return _nnunet_runner().run(*args, timed_commands=timed_commands, check_disjoint=check_disjoint)


_BASELINES: dict[str, Any] = {"unet": _UNet, "nnunet": _LazyNNUNet}


# The figures of each task's table: (row key, heading, decimals). The Markdown and the page show these.
TASK_COLUMNS = (("mean_dice", "mean Dice", 3), ("mean_hd95", "mean HD95 mm", 1),
                ("warmup_steps", "decoder warm-up steps", 0), ("steps", "steps", 0),
                ("train_wall_seconds", "train wall s", 0), ("cpu_seconds", "CPU s (all)", 0))
DICE_DECIMALS = 3


def task_tables(records: list[dict[str, Any]]) -> list[tuple[str, list[str], list[dict[str, Any]]]]:
    """Per task with records (in :data:`TASKS` order): its class names and one row per K and
    contender (K, then :data:`CONTENDERS` order), each ``{"k", "contender", "dice": {class: Dice}}``
    and the :data:`TASK_COLUMNS` figures (``None`` where there is none)."""
    tables = []
    for task in [t for t in TASKS if any(r["task"] == t for r in records)]:
        rows = sorted((r for r in records if r["task"] == task),
                      key=lambda r: (r["k"], CONTENDERS.index(r["contender"])))
        names = list(rows[0]["classes"])
        table = []
        for r in rows:
            classes = r["classes"]
            hd95 = [classes[n]["hd95"] for n in names if n in classes and classes[n]["hd95"] is not None]
            table.append({"k": r["k"], "contender": r["contender"],
                          "dice": {n: (classes.get(n) or {}).get("dice") for n in names},
                          "mean_dice": r["mean_dice"], "mean_hd95": sum(hd95) / len(hd95) if hd95 else None,
                          "steps": r["trained"].get("steps"),
                          "warmup_steps": r["trained"].get("decoder_warmup_steps"),
                          "train_wall_seconds": r["wall_seconds"].get("finetune", r["wall_seconds"].get("train")),
                          "cpu_seconds": r.get("cpu_seconds_all_commands")})
        tables.append((task, names, table))
    return tables


def summary_rows(records: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, float]]]:
    """``(task, K, {contender: mean Dice})`` for every task and K with records, in table order."""
    keys = sorted({(r["task"], r["k"]) for r in records}, key=lambda key: (list(TASKS).index(key[0]), key[1]))
    return [(task, k, {r["contender"]: r["mean_dice"] for r in records if r["task"] == task and r["k"] == k})
            for task, k in keys]


def budget_note(records: list[dict[str, Any]]) -> str:
    """The budget line under the tables."""
    budgets = sorted({r["budget_seconds"] for r in records})
    clocks = sorted({r.get("budget_clock", "wall") for r in records})
    return (f"Training budget per contender: {', '.join(f'{b:g}' for b in budgets)} s of "
            f"{' / '.join('CPU' if c == 'cpu' else 'wall-clock' for c in clocks)} time.")


def task_markdown(records: list[dict[str, Any]], heading: str = "###") -> list[str]:
    """Per task: one row per K and contender (per-class Dice, the :data:`TASK_COLUMNS` figures)."""
    lines: list[str] = []
    for task, names, rows in task_tables(records):
        header = ["K", "contender", *[f"Dice {n}" for n in names], *(title for _, title, _ in TASK_COLUMNS)]
        lines += [f"{heading} {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [str(row["k"]), row["contender"], *[_fmt(row["dice"][n], DICE_DECIMALS) for n in names],
                     *(_fmt(row[key], digits) for key, _, digits in TASK_COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def summary_markdown(records: list[dict[str, Any]]) -> list[str]:
    """Mean Dice per task, K and contender (``–``: not run)."""
    header = ["task", "K", *CONTENDERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, k, found in summary_rows(records):
        lines.append("| " + " | ".join([task, str(k), *[_fmt(found.get(c), 3) for c in CONTENDERS]]) + " |")
    return lines


def markdown(records: list[dict[str, Any]], budget: float | None = None) -> str:
    """The per-task tables, then a summary of mean Dice per task and contender."""
    if not records:
        return "(no finished runs)"
    return "\n".join([*task_markdown(records), "### Summary: mean Dice over classes", "",
                      *summary_markdown(records), "", budget_note(records)])


# Where --update-docs writes: (file under the repository, marker name, what goes between the markers).
DOC_TABLES = (("README.md", "quality-vs-baselines:summary", summary_markdown),
              ("docs/performance.md", "quality-vs-baselines:tables", lambda records: task_markdown(records, "####")))


def replace_between_markers(text: str, name: str, body: list[str]) -> str:
    """``text`` with the lines between ``<!-- name -->`` and ``<!-- /name -->`` replaced by ``body``;
    refused when the pair is missing or repeated, so hand-written prose around it is never touched."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start} ... {end} pair")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + "\n".join(body).strip("\n") + "\n" + end + tail


def update_docs(records: list[dict[str, Any]], root: Path = ROOT) -> list[Path]:
    """Rewrite the tables of :data:`DOC_TABLES` from ``records`` (atomically, each file whole)."""
    written = []
    for relative, name, make in DOC_TABLES:
        path = root / relative
        text = replace_between_markers(path.read_text(encoding="utf-8"), name, make(records))
        with atomic_output(path) as temporary:
            temporary.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
