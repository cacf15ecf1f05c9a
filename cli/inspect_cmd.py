"""``medsaga inspect DATA_DIR``: what a dataset holds, and what is wrong with it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.console import ProgressBars, stderr_console, stdout_console
from cli.options import Command, Series
from medsaga.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

    from medsaga.data.checks import CaseSummary
    from medsaga.data.dataset import Dataset


SHORT_HELP = "Describe a dataset or a scan, and what is wrong with it."


def register(app: typer.Typer) -> None:
    app.command("inspect", cls=Command, short_help=SHORT_HELP)(inspect)


def inspect(
    path: Path = typer.Argument(..., help="A dataset folder (nnU-Net v2 / MSD layout or image/label pairs), "
                                          "or one scan: a NIfTI/NRRD/MHA file, a DICOM series folder, a DICOM-SEG."),
    series: Series = None,
) -> None:
    """Describe a dataset or a single scan.

    For a dataset: every case with its shape, spacing, orientation, channels, voxel count per label
    value, and every problem found (unreadable file, grid mismatch, non-integer or undeclared
    labels). For a scan: its geometry, value range and source header details.

    Exits with code 2 when anything is wrong.
    """
    if not path.exists():
        raise InputError("no such file or folder", path)
    if _is_single_scan(path):
        _inspect_scan(path, series)
    else:
        _inspect_dataset(path)


def _is_single_scan(path: Path) -> bool:
    """A file, or a folder of DICOM files that is not a dataset layout."""
    from medsaga.io.formats import DICOM_SUFFIXES, has_dicom_preamble

    if path.is_file():
        return True
    if not path.is_dir() or (path / "imagesTr").is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file()]
    return any(p.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(p) for p in files[:50])


def _inspect_scan(path: Path, series: str | None) -> None:
    from rich.table import Table

    from medsaga.data.checks import label_counts
    from medsaga.io import read_volume

    volume = read_volume(path, series)
    values = volume.array
    table = Table(show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("path", str(path)),
        ("format", volume.source.format),
        ("shape (i, j, k)", " × ".join(str(n) for n in volume.shape)),
        ("spacing (mm)", " × ".join(f"{s:.4g}" for s in volume.spacing)),
        ("orientation", volume.orientation),
        ("origin (RAS mm)", ", ".join(f"{v:.2f}" for v in volume.origin)),
        ("dtype", str(values.dtype)),
        ("value range", f"{values.min():g} .. {values.max():g}" if values.size else "empty"),
    ]
    if volume.source.series_instance_uid:
        rows.append(("SeriesInstanceUID", volume.source.series_instance_uid))
    if volume.source.dicom_files:
        rows.append(("DICOM files", str(len(volume.source.dicom_files))))
    rows += [(key, text) for key, text in volume.source.metadata.items() if text]
    if values.dtype.kind in "iub" and values.size and values.min() >= 0 and values.max() < 1024:
        counts = label_counts(volume)
        if len(counts) <= 32:  # a label map: show what it holds
            rows.append(("voxels per value", ", ".join(f"{v}: {c:,}" for v, c in counts.items())))
    for field, text in rows:
        table.add_row(field, text)
    stdout_console().print(table)


def _inspect_dataset(data_dir: Path) -> None:
    from medsaga.data.checks import summarize_case
    from medsaga.data.dataset import discover_dataset

    dataset = discover_dataset(data_dir)
    console = stdout_console()
    error_console = stderr_console()
    # Files discovery left out (broken links, labels without images): named, one line each.
    for warning in dataset.warnings:
        error_console.print(f"warning: {warning}", markup=False)
    summaries: list[CaseSummary] = []
    with ProgressBars(error_console) as bars:
        for done, files in enumerate(dataset.cases):
            bars.update("cases", done, len(dataset.cases), f"reading {dataset.name}")
            summaries.append(summarize_case(dataset, files))
        bars.update("cases", len(dataset.cases), len(dataset.cases))

    console.print(_case_table(dataset, summaries))
    problems = [problem for summary in summaries for problem in summary.problems]
    if problems:
        # One line per problem, each naming its file; no summary line to read past.
        for problem in problems:
            error_console.print(f"error: {problem}", markup=False)
        raise typer.Exit(2)


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
