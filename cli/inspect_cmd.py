"""``medsaga inspect DATA_DIR``: what a dataset holds, and what is wrong with it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medsaga.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

    from medsaga.data.checks import CaseSummary
    from medsaga.data.dataset import Dataset


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def inspect(
    data_dir: Path = typer.Argument(..., help="Dataset folder: nnU-Net v2 / MSD layout or image/label pairs."),
) -> None:
    """List the cases of a dataset: shape, spacing, orientation, channels, label values with voxel
    counts, and every problem found (grid mismatch, non-integer or undeclared labels).

    Exits with code 2 when any case has a problem.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from medsaga.data.checks import summarize_case
    from medsaga.data.dataset import discover_dataset

    dataset = discover_dataset(data_dir)
    # Redirected to a file or a CI log, rich would assume 80 columns and fold the table.
    console = Console() if sys.stdout.isatty() else Console(width=132)
    summaries: list[CaseSummary] = []
    with Progress(TextColumn("reading {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(dataset.name, total=len(dataset.cases))
        for files in dataset.cases:
            summaries.append(summarize_case(dataset, files))
            progress.advance(task)

    console.print(_case_table(dataset, summaries))
    problems = [problem for summary in summaries for problem in summary.problems]
    if problems:
        error_console = Console(stderr=True, highlight=False, soft_wrap=True)
        for problem in problems:
            error_console.print(f"error: {problem}", markup=False)
        raise InputError(f"{len(problems)} problem(s) in {sum(1 for s in summaries if s.problems)} case(s)",
                         dataset.root)


# Past this many distinct label values one column per value no longer fits a terminal.
_MAX_LABEL_COLUMNS = 6


def _case_table(dataset: Dataset, summaries: list[CaseSummary]) -> Table:
    """One row per case; one column per label value when there are few, else one compact column."""
    from rich.table import Table

    names = {value: name for name, value in (dataset.labels or {}).items()}
    present = sorted({v for s in summaries for v in (s.label_counts or {})} | set(names))
    declared = ", ".join(f"{v} {n}" for v, n in sorted(names.items())) if names else "not declared"
    table = Table(title=f"{dataset.name}: {len(dataset.cases)} cases ({dataset.layout} layout, "
                        f"{len(dataset.labelled_cases)} labelled)",
                  caption=f"channels: {', '.join(dataset.channel_names)} · labels: {declared} · "
                          "label columns: voxels per value")
    table.add_column("case", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("spacing mm", no_wrap=True)
    table.add_column("orient", no_wrap=True)
    table.add_column("ch", justify="right", no_wrap=True)
    per_value = len(present) <= _MAX_LABEL_COLUMNS
    for value in present if per_value else []:
        table.add_column(str(value), justify="right", no_wrap=True)
    if not per_value:
        table.add_column("label values: voxels")
    table.add_column("problems", overflow="fold")
    for summary in summaries:
        counts = summary.label_counts
        if per_value:
            label_cells = [_abbreviate(counts.get(v, 0)) if counts is not None else "-" for v in present]
        else:
            label_cells = [" ".join(f"{v}:{_abbreviate(c)}" for v, c in counts.items()) if counts else "-"]
        table.add_row(
            summary.case_id,
            "×".join(str(n) for n in summary.shape),
            "×".join(f"{s:.3g}" for s in summary.spacing),
            summary.orientation,
            str(summary.channels),
            *label_cells,
            "\n".join(p.message for p in summary.problems) or "[green]ok[/green]",
        )
    return table


def _abbreviate(count: int) -> str:
    """``4245424`` → ``4.25M``, ``89286`` → ``89.3k``, ``6337`` → ``6337``: counts in a narrow column."""
    if count < 10_000:  # four digits still fit the column
        return str(count)
    value = float(count)
    for suffix in ("k", "M", "G"):
        value /= 1000
        text = f"{value:.3g}"
        if "e" not in text:  # 999.9k rounds to "1e+03": use the next unit instead
            return text + suffix
    return f"{value:.3g}G"
