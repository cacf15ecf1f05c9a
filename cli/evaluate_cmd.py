"""``medsaga evaluate PRED GT``: Dice, HD95 and NSD in mm per case and class, a table, CSV/JSON, overlays,
and the report page (OUT/report.html)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cli.console import ProgressBars, stderr_console, stdout_console
from cli.options import Command, Force, library_default
from medsaga.errors import InputError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from medsaga.evaluate import Evaluation, Matching

SHORT_HELP = "Dice, HD95 and NSD of label maps against reference ones."


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=Command, short_help=SHORT_HELP)(evaluate)


def evaluate(
    prediction: Path = typer.Argument(..., help="Predicted label map, or a folder of them (CASE.nii.gz, ...)."),
    ground_truth: Path = typer.Argument(..., help="Reference label map, or a folder of them, or a dataset "
                                                  "(nnU-Net root: its labelsTr/; plain pairs: labels/ or CASE_seg)."),
    labels: Path | None = typer.Option(None, "--labels", help="Classes and their names: a dataset.json, or a "
                                                              "RUN_DIR (its config.json). Default: the reference "
                                                              "dataset's dataset.json, else the values found."),
    tolerance: float = typer.Option(library_default("medsaga.evaluate.run", "DEFAULT_TOLERANCE_MM"), "--tolerance",
                                    help="NSD tolerance in mm."),
    out: Path | None = typer.Option(None, "--out", help="Folder for metrics.csv, metrics.json, report.html and "
                                                        "overlays/."),
    overlay: bool = typer.Option(False, "--overlay", help="Write PNG overlays of a few axial slices per case "
                                                          "into OUT/overlays/ (needs --images and --out)."),
    report: bool | None = typer.Option(None, "--report/--no-report", help="Write OUT/report.html: one page with "
                                                                          "the tables, the overlays of each case "
                                                                          "in three planes and, with --labels RUN, "
                                                                          "the run's settings and curves. Default: "
                                                                          "on when --out is given."),
    images: Path | None = typer.Option(None, "--images", help="The images, for --overlay and the report: a file, "
                                                              "or a folder matched by case id (CASE or CASE_0000). "
                                                              "The report's default: the ground-truth dataset's "
                                                              "own images, when it has them."),
    intensity: str | None = typer.Option(None, "--intensity", help="Overlay window: {presets} (default: from the "
                                                                   "dataset's channel name, else percentiles)."),
    slices: int = typer.Option(3, "--slices", help="Axial slices per overlay picture."),
    per_case: bool = typer.Option(True, "--per-case/--no-per-case", help="Print the per-case table, not only "
                                                                         "the means."),
    strict: bool = typer.Option(False, "--strict", help="Every ground-truth case must have a prediction."),
    force: Force = False,
) -> None:
    """Compare predicted label maps with reference label maps.

    For each case and class: Dice, HD95 (mm) and normalised surface Dice (NSD) at --tolerance
    mm, using the voxel spacing. Folders are matched by case id; cases found on one side only
    are listed on stderr and left out. A prediction on another grid than its reference is an
    error (nothing is resampled).

    Empty masks: both empty → Dice 1, HD95 0, NSD 1 ('both empty'); reference empty, prediction
    not → Dice 0, NSD 0, HD95 undefined ('false positive'); prediction empty → Dice 0, NSD 0,
    HD95 undefined ('missed'). Means per class: Dice and NSD over the cases whose reference
    holds the class, HD95 over the cases where both do; the rest are counted.
    """
    from medsaga.evaluate import evaluate as run_evaluation, match_cases, match_images
    from medsaga.evaluate.outputs import check_outputs, planned_outputs
    from medsaga.report.overlay_pngs import OVERLAY_FOLDER, OverlayWriter, overlay_legend, overlay_preset

    if report is None:
        report = out is not None
    _check_options(tolerance, overlay, images, out, slices, report)
    matching = match_cases(prediction, ground_truth)
    image_paths, image_json = match_images(images, matching.pairs) if images is not None else ({}, None)
    report_images, images_note = ({}, "")
    if report:
        from medsaga.report import report_images as choose_report_images

        report_images, images_note, dataset_json = choose_report_images(images, image_paths, ground_truth,
                                                                        [pair.case_id for pair in matching.pairs])
        if images is None:
            image_json = dataset_json
    preset = overlay_preset(intensity, [image_json, labels, matching.dataset_json]) if overlay or report else None
    outputs = planned_outputs(out, [p.case_id for p in matching.pairs] if overlay else [], report)
    check_outputs(outputs, force, [prediction, ground_truth, labels, images])
    if strict and matching.references_without_prediction:
        missing = matching.references_without_prediction
        raise InputError(f"--strict: {len(missing)} ground-truth case(s) have no prediction: {_some(missing)}",
                         prediction)
    errors = stderr_console()

    callbacks: list[Callable[..., None]] = []
    if overlay:
        assert out is not None
        callbacks.append(OverlayWriter(out / OVERLAY_FOLDER, image_paths, preset, slices, matching))
    collector = None
    if report:
        from medsaga.report import OverlayCollector

        collector = OverlayCollector(report_images, preset, checked=images is not None)
        callbacks.append(collector)
    # Unmatched cases are listed once every pair is checked: before the long part, yet after any
    # input error, which then stays the only line on stderr.
    with ProgressBars(errors) as bars:
        evaluation = run_evaluation(prediction, ground_truth, labels=labels, tolerance_mm=tolerance,
                                    images=image_paths or None,
                                    progress=_progress(bars, lambda: _report_unmatched(matching, prediction,
                                                                                        ground_truth, errors)),
                                    on_case=_each(callbacks) if callbacks else None)

    console = stdout_console()
    if per_case:
        console.print(_case_table(evaluation))
    console.print(_mean_table(evaluation))
    if out is not None:
        from medsaga.evaluate.outputs import write_outputs

        extra = {"overlays": overlay_legend(evaluation)} if overlay else None
        csv_path, json_path = write_outputs(out, evaluation, prediction, ground_truth, extra)
        errors.print(f"wrote {csv_path} and {json_path}", markup=False)
        if overlay:
            errors.print(f"wrote {len(evaluation.cases)} overlay(s) to {out / OVERLAY_FOLDER}: fill = prediction, "
                         f"outline = ground truth; {overlay_legend(evaluation, 12)['colours']}", markup=False)
        if collector is not None:
            import json

            from medsaga.report import write_evaluation_report

            document = json.loads(json_path.read_text(encoding="utf-8"))  # the page shows what metrics.json holds
            page = write_evaluation_report(out, document, collector.overlays, labels, images_note)
            errors.print(f"wrote {page}", markup=False)


def _check_options(tolerance: float, overlay: bool, images: Path | None, out: Path | None, slices: int,
                   report: bool) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"--tolerance must be a number of mm >= 0, got {tolerance}")
    if overlay and images is None:
        raise InputError("--overlay needs --images (the scans to draw the labels on)")
    if overlay and out is None:
        raise InputError("--overlay needs --out (overlays are written to OUT/overlays/)")
    if report and out is None:
        raise InputError("--report needs --out (the page is written to OUT/report.html)")
    if images is not None and not (overlay or report):
        raise InputError("--images is only used for --overlay and the report; add --overlay, or --out for the "
                         "report")
    if slices < 1:
        raise InputError(f"--slices must be at least 1, got {slices}")


def _report_unmatched(matching: "Matching", prediction: Path, ground_truth: Path, errors: "Console") -> None:
    """Cases found on one side only, one warning line per side on stderr."""
    for ids, what in ((matching.references_without_prediction, f"ground-truth case(s) without a prediction in "
                                                               f"{prediction}"),
                      (matching.predictions_without_reference, f"prediction(s) without ground truth in "
                                                               f"{ground_truth}")):
        if ids:
            errors.print(f"warning: {len(ids)} {what}, not evaluated: {_some(ids)}", markup=False)


def _each(callbacks: list[Callable[..., None]]) -> Callable[..., None]:
    """One ``on_case`` callback calling each of ``callbacks`` in turn."""
    def call(*args: object) -> None:
        for callback in callbacks:
            callback(*args)

    return call


def _progress(bars: ProgressBars, on_checked: Callable[[], None]) -> Callable[[str, int, int], None]:
    """The library's progress callback: a bar per stage; ``on_checked()`` once the checking pass is done."""
    pending = [on_checked]

    def progress(stage: str, done: int, total: int) -> None:
        bars.update(stage, done, total)
        if stage == "checking" and done == total and pending:
            pending.pop()()

    return progress


def _hidden_note(evaluation: "Evaluation") -> str:
    from medsaga.evaluate import present_classes

    hidden = len(evaluation.classes.classes) - len(present_classes(evaluation))
    return f" {hidden} class(es) absent from every case are not shown (they are in the CSV/JSON)." if hidden else ""


def _case_table(evaluation: "Evaluation") -> "Table":
    from rich.table import Table

    from medsaga.evaluate import present_classes

    table = Table(title=f"per case (NSD at {evaluation.tolerance_mm:g} mm)", caption=_hidden_note(evaluation).strip()
                  or None)
    for name, justify in (("case", "left"), ("class", "left"), ("Dice", "right"), ("HD95 mm", "right"),
                          ("NSD", "right"), ("note", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    classes = present_classes(evaluation)
    for case in evaluation.cases:
        for index, c in enumerate(classes):
            m = case.metrics[c.value]
            table.add_row(case.case_id if index == 0 else "", c.name, _fmt(m.dice, 4), _fmt(m.hd95_mm, 2),
                          _fmt(m.nsd, 4), "" if m.status == "ok" else m.status,
                          end_section=index == len(classes) - 1)
    return table


def _mean_table(evaluation: "Evaluation") -> "Table":
    from rich.table import Table

    from medsaga.evaluate import mean_over_classes, present_classes

    overall = mean_over_classes(evaluation.summaries)
    table = Table(title=f"mean per class over {len(evaluation.cases)} case(s) (NSD at {evaluation.tolerance_mm:g} mm)",
                  caption="Dice, NSD: mean over the cases whose ground truth holds the class (missed = 0); "
                          "HD95: over the cases where both hold it. "
                          f"Mean over classes: Dice {_fmt(overall['dice'], 4)}, HD95 {_fmt(overall['hd95_mm'], 2)} "
                          f"mm, NSD {_fmt(overall['nsd'], 4)}.{_hidden_note(evaluation)}")
    for name in ("class", "with GT", "Dice", "HD95 mm", "NSD", "missed", "false pos.", "both empty"):
        table.add_column(name, justify="left" if name == "class" else "right", no_wrap=True)
    present = set(present_classes(evaluation))
    for s in evaluation.summaries:
        if s.eval_class not in present:
            continue
        table.add_row(s.eval_class.label, str(s.reference_cases), _fmt(s.dice_mean, 4),
                      _fmt(s.hd95_mean_mm, 2), _fmt(s.nsd_mean, 4), str(s.missed), str(s.false_positive),
                      str(s.both_empty))
    return table


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _some(ids: tuple[str, ...], shown: int = 10) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
