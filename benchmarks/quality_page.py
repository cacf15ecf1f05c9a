"""The quality benchmark's page (issue 30): the tables of ``quality_vs_baselines.py`` and, per task
and K, every contender's predictions side by side on the same slices.

One self-contained HTML file, made with :mod:`medsaga.report`'s building blocks (the same style,
palette, Content-Security-Policy and load check as ``medsaga evaluate``'s page):

- the summary (mean Dice over classes per task, K and contender, the best of each row in bold)
  and each task's table, with the figures of the Markdown tables (``data-value`` holds each
  exact value, the text is rounded as in the Markdown);
- per task and K, for each test case, one row per plane: the image with the manual labels
  outlined, then each contender's prediction filled over the same outline, all on the one slice
  where the contenders together disagree most with the labels and cut to one box around every
  label on it (:func:`medsaga.report.overlays.compare_overlays`). A contender whose prediction is
  missing or unreadable is named in a note; the page is written anyway.

``quality_vs_baselines.py`` says where the files lie (:class:`Comparison`); nothing here knows
the benchmark's folders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsaga.report.page import (Picture, case_score, contents_html, escape, facts_html, figure_html, format_number,
                                 html_document, legend_html, number_cell, table_html)

WHICH_SLICE = ("Each row shows one plane's slice where the contenders together disagree most with the manual "
               "labels, the same slice and crop for every contender")


@dataclass(frozen=True)
class Comparison:
    """One task and K: the test cases, each contender's prediction folder and the test set.

    Attributes:
        task, k: the task's name and the number of training cases.
        cases: the test cases, in order.
        predictions: contender → its folder of predicted label maps (``CASE.nii.gz``), in the
            order the page shows them.
        labels: the folder of the manual label maps the predictions were scored against.
        images: case → its image (channel 0); a case without one is drawn on grey.
        dataset_json: the task's ``dataset.json`` (its channel name picks the intensity window).
    """

    task: str
    k: int
    cases: tuple[str, ...]
    predictions: dict[str, Path]
    labels: Path
    images: dict[str, Path]
    dataset_json: Path | None = None


@dataclass(frozen=True)
class _CaseRows:
    """A test case's pictures: one row of pictures per plane, and notes on what is missing."""

    case: str
    rows: list[list[Picture]]
    notes: list[str]


def write_comparison_page(path: Path, tables: Sequence[tuple[str, list[str], list[dict[str, Any]]]],
                          summary: Sequence[tuple[str, int, Mapping[str, float]]], contenders: Sequence[str],
                          budget_note: str, comparisons: Sequence[Comparison], facts: Sequence[tuple[str, Any]] = (),
                          planes: Sequence[str] = ("axial",),
                          columns: Sequence[tuple[str, str, int]] = (), dice_decimals: int = 3) -> Path:
    """Write :func:`comparison_page` to ``path`` atomically (its folder is made); return ``path``."""
    from medsaga.report import write_html

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_html(Path(path), comparison_page(tables, summary, contenders, budget_note, comparisons, facts,
                                                  planes, columns, dice_decimals))


def comparison_page(tables: Sequence[tuple[str, list[str], list[dict[str, Any]]]],
                    summary: Sequence[tuple[str, int, Mapping[str, float]]], contenders: Sequence[str],
                    budget_note: str, comparisons: Sequence[Comparison], facts: Sequence[tuple[str, Any]] = (),
                    planes: Sequence[str] = ("axial",), columns: Sequence[tuple[str, str, int]] = (),
                    dice_decimals: int = 3) -> str:
    """The page (module docstring).

    Args:
        tables: per task, its class names and rows (``quality_vs_baselines.task_tables``): each row
            ``{"k", "contender", "dice": {class: Dice}}`` and the figures named in ``columns``.
        summary: ``(task, K, {contender: mean Dice})`` rows.
        contenders: the summary's columns, in order.
        budget_note: the line under the tables.
        comparisons: the overlays to draw, per task and K.
        facts: ``(name, value)`` pairs shown at the top.
        planes: the overlays' planes.
        columns: ``(row key, heading, decimals)`` of the task tables after the per-class Dice.
    """
    title = "medsaga against the alternatives: segmentation quality at the same training budget"
    by_task: dict[str, list[Comparison]] = {}
    for comparison in comparisons:
        by_task.setdefault(comparison.task, []).append(comparison)
    body = [f"<h1>{escape(title)}</h1>", facts_html(list(facts)),
            '<p id="broken-images" class="warning" hidden></p>',
            contents_html([("summary", "Summary")] + [(_anchor(task), task) for task, _, _ in tables])]
    body += ['<section id="summary"><h2>Summary: mean Dice over classes</h2>']
    if summary:
        body += [_summary_table(summary, contenders), f'<p class="note">{escape(budget_note)} The best mean Dice '
                 f'of each row is in bold.</p>']
    else:
        body.append('<p class="note">No finished runs: no records yet.</p>')
    body.append("</section>")
    for task, names, rows in tables:
        body += [f'<section id="{_anchor(task)}" data-task="{escape(task)}"><h2>{escape(task)}</h2>',
                 _task_table(task, names, rows, columns, dice_decimals)]
        for comparison in by_task.get(task, []):
            body.append(_comparison_section(comparison, names, planes))
        body.append("</section>")
    return html_document(title, body)


# --- tables ----------------------------------------------------------------------------------------


def _summary_table(summary: Sequence[tuple[str, int, Mapping[str, float]]], contenders: Sequence[str]) -> str:
    rows = []
    for task, k, found in summary:
        best = max((v for v in found.values() if v is not None), default=None)
        cells = "".join(number_cell(c, found.get(c), 3, grouping=True,
                                    css="best" if best is not None and found.get(c) == best else "")
                        for c in contenders)
        rows.append(f'<tr data-task="{escape(task)}" data-k="{k}"><th scope="row"><a href="#{_anchor(task)}">'
                    f'{escape(task)}</a></th><td class="num">{k}</td>{cells}</tr>')
    return table_html("summary-table", ["task", "K", *contenders], rows)


def _task_table(task: str, names: Sequence[str], rows: Sequence[Mapping[str, Any]],
                columns: Sequence[tuple[str, str, int]], dice_decimals: int) -> str:
    best = {}
    for row in rows:
        if row.get("mean_dice") is not None:
            best[row["k"]] = max(best.get(row["k"], row["mean_dice"]), row["mean_dice"])
    lines = []
    for row in rows:
        cells = [number_cell(f"dice:{name}", row["dice"].get(name), dice_decimals, grouping=True) for name in names]
        for key, _, digits in columns:
            value = row.get(key)
            bold = "best" if key == "mean_dice" and value is not None and value == best.get(row["k"]) else ""
            cells.append(number_cell(key, value, digits, grouping=True, css=bold))
        lines.append(f'<tr data-k="{row["k"]}" data-contender="{escape(row["contender"])}"><td class="num">'
                     f'{row["k"]}</td><th scope="row">{escape(row["contender"])}</th>{"".join(cells)}</tr>')
    head = ["K", "contender", *[f"Dice {n}" for n in names], *(heading for _, heading, _ in columns)]
    return table_html(f"table-{_anchor(task)}", head, lines)


# --- overlays --------------------------------------------------------------------------------------


def _comparison_section(comparison: Comparison, names: Sequence[str], planes: Sequence[str]) -> str:
    documents = _metrics(comparison)
    classes = _classes(documents, names)
    values = [c["value"] for c in classes]
    parts = [f'<div class="comparison" data-task="{escape(comparison.task)}" data-k="{comparison.k}">',
             f"<h3>K = {comparison.k}: the test cases, contender by contender</h3>"]
    if not any(Path(folder).is_dir() for folder in comparison.predictions.values()):
        where = ", ".join(str(f) for f in comparison.predictions.values()) or "any folder"
        parts.append(f'<p class="note">No predictions found ({escape(where)}): the records travel with the project, '
                     f'the predictions stay on the machine that made them. Overlays not drawn.</p></div>')
        return "".join(parts)
    parts.append(legend_html(classes, WHICH_SLICE))
    for drawn in _draw(comparison, planes, documents, values):
        parts.append(f'<article class="case" data-case="{escape(drawn.case)}"><h4>{escape(drawn.case)}</h4>')
        parts += [f'<p class="note">{escape(note)}</p>' for note in drawn.notes]
        for row in drawn.rows:
            parts.append('<div class="planes compare">' + "".join(figure_html(p) for p in row) + "</div>")
        parts.append("</article>")
    parts.append("</div>")
    return "".join(parts)


def _draw(comparison: Comparison, planes: Sequence[str], documents: Mapping[str, Mapping[str, Any]],
          values: Sequence[int]) -> list[_CaseRows]:
    """Read each test case's label maps, image and predictions, and draw them (one case at a time)."""
    from medsaga.evaluate.matching import label_files
    from medsaga.report.figures import png_bytes
    from medsaga.report.overlays import PLANE_CAPTIONS, compare_overlays

    references = _files(label_files, comparison.labels)
    predicted = {contender: _files(label_files, folder) for contender, folder in comparison.predictions.items()}
    preset = _preset(comparison.dataset_json)
    drawn = []
    for case in comparison.cases:
        notes: list[str] = []
        if case not in references:
            drawn.append(_CaseRows(case, [], [f"No manual labels for {case} in {comparison.labels}: not drawn."]))
            continue
        reference = _labels(references[case])
        if reference is None:
            drawn.append(_CaseRows(case, [], [f"{references[case]} could not be read: not drawn."]))
            continue
        predictions = {}
        for contender, files in predicted.items():
            path = files.get(case)
            volume = None if path is None else _labels(path)
            problem = (f"no prediction in {comparison.predictions[contender]}" if path is None
                       else f"{path.name} could not be read" if volume is None
                       else "; ".join(volume.same_grid(reference)))
            if problem and volume is not None:
                problem = f"{path.name} is on another grid than the manual labels ({problem})"
            if problem:
                notes.append(f"{contender}: {problem}; not shown.")
            else:
                predictions[contender] = volume
        image, note = _image(comparison.images.get(case), reference)
        notes.append(f"Drawn on {comparison.images[case].name} (window {preset})." if image is not None else note)
        rows = []
        for plane in compare_overlays(predictions, reference, image, preset if image is not None else None, planes):
            where = f"{plane.plane} {plane.index + 1} of {plane.slices}"
            row = [Picture(png_bytes(plane.reference), f"{comparison.task} K={comparison.k} {case} {plane.plane}: "
                           "manual labels", f"manual labels (outline), {where} ({PLANE_CAPTIONS[plane.plane]})")]
            for contender, picture in plane.pictures.items():
                score = _case_dice(documents.get(contender), case, values)
                differ = plane.disagreement[contender]
                differs = f"{differ:,} voxel{'s' * (differ != 1)} differ here" if differ else "no voxel differs here"
                dice = "" if score is None else f"case Dice {format_number(score, 3)}; "
                caption = f"{contender}: {dice}{differs}"
                row.append(Picture(png_bytes(picture), f"{comparison.task} K={comparison.k} {case} {plane.plane}: "
                                   f"{contender}", caption))
            rows.append(row)
        drawn.append(_CaseRows(case, rows, notes))
    return drawn


def _files(label_files: Any, folder: Path) -> dict[str, Path]:
    from medsaga.errors import InputError

    try:
        return label_files(folder) if Path(folder).is_dir() else {}
    except InputError:
        return {}


def _labels(path: Path) -> Any:
    """A label map as integers, or ``None`` when it cannot be read."""
    import numpy as np

    from medsaga.errors import InputError
    from medsaga.io import Volume, read_volume

    try:
        volume = read_volume(path)
    except (InputError, OSError):
        return None
    return Volume(np.rint(np.asarray(volume.array)).astype(np.int32), volume.affine)


def _image(path: Path | None, reference: Any) -> tuple[Any, str]:
    from medsaga.errors import InputError
    from medsaga.io import read_volume

    if path is None or not path.is_file():
        return None, "No image for this case here: the labels are drawn on a neutral grey."
    try:
        image = read_volume(path)
    except (InputError, OSError) as error:
        return None, f"Image {path.name} not used ({error}): the labels are drawn on a neutral grey."
    differences = image.same_grid(reference)
    if differences:
        return None, f"Image {path.name} is on another grid ({'; '.join(differences)}): drawn on a neutral grey."
    return image, ""


def _preset(dataset_json: Path | None) -> str:
    """The intensity window of the task's channel 0 (``dataset.json``), per-volume percentiles without one."""
    from medsaga.data.intensity import choose_preset

    channel = None
    if dataset_json is not None and dataset_json.is_file():
        try:
            spec = json.loads(dataset_json.read_text(encoding="utf-8"))
            names = spec.get("channel_names") or spec.get("modality") or {}
            channel = str(names.get("0")) if isinstance(names, dict) and "0" in names else None
        except (OSError, ValueError):
            channel = None
    return choose_preset(channel).name


def _metrics(comparison: Comparison) -> dict[str, dict[str, Any]]:
    """Each contender's metrics.json (beside its predictions: ``../evaluation/metrics.json``), where written."""
    found = {}
    for contender, folder in comparison.predictions.items():
        path = Path(folder).parent / "evaluation" / "metrics.json"
        try:
            found[contender] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return found


def _classes(documents: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """The classes ``{"value", "name"}`` of the legend: an evaluation's (its label values), else the
    table's names numbered 1, 2, ..."""
    for document in documents.values():
        mean = document.get("mean") or []
        if mean:
            return [{"value": int(m["value"]), "name": str(m["name"])} for m in mean]
    return [{"value": value, "name": name} for value, name in enumerate(names, start=1)]


def _case_dice(document: Mapping[str, Any] | None, case: str, values: Sequence[int]) -> float | None:
    """The case's mean Dice over the classes its labels or the prediction hold, from metrics.json."""
    for entry in (document or {}).get("cases", []):
        if entry.get("case_id") == case:
            return case_score(entry, values)
    return None


def _anchor(task: str) -> str:
    return "task-" + re.sub(r"[^A-Za-z0-9_-]", "-", task)


__all__ = ["Comparison", "comparison_page", "write_comparison_page"]
