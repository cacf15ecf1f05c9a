"""The report as one self-contained HTML page: tables, plots and overlays, nothing fetched.

Every picture is inlined as a ``data:`` URI, the style sheet and the one small script are inline,
and a Content-Security-Policy forbids the page any other source (``default-src 'none'``): it opens
from a USB stick on a workstation without network and cannot leak a request anywhere.

Two pages are made here (and the building blocks at the end serve other pages, such as the
quality benchmark's comparison, ``benchmarks/quality_page.py``):

- :func:`evaluation_page`: what ``medsaga evaluate`` measured (metrics.json's document): per-class
  means, a per-case table worst case first, each case's overlays, and, when a run folder is known,
  the run's section;
- :func:`run_page`: a fine-tuning run alone (settings, curves, memory and throughput).

Numbers in tables carry their exact value in ``data-value`` (the text shows them rounded as the
terminal tables do), so a test or a script reads the page as data. The script only checks that
every picture decoded and says so on the page (``data-images``/``data-images-loaded`` on ``<body>``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsaga import __version__
from medsaga.report.figures import MEMORY_PARTS, dice_per_case, memory_breakdown, training_curves
from medsaga.report.overlays import PALETTE, PLANE_CAPTIONS, class_colour_hex, class_colour_name
from medsaga.report.run_folder import RunRecord

MIB = 2 ** 20
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass(frozen=True)
class Picture:
    """A PNG to inline, with its size in pixels and what it shows.

    Attributes:
        png: the PNG file's bytes.
        alt: text for readers that cannot see it.
        caption: shown under it (may be empty).
    """

    png: bytes
    alt: str
    caption: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` from the PNG header."""
        if self.png[12:16] != b"IHDR":
            raise ValueError("not a PNG file")
        width, height = struct.unpack(">II", self.png[16:24])
        return int(width), int(height)


@dataclass(frozen=True)
class CaseOverlays:
    """A case's overlay pictures (one per plane) and a note on what they are drawn on."""

    pictures: tuple[Picture, ...]
    note: str = ""


# --- the two pages ---------------------------------------------------------------------------------


def evaluation_page(document: Mapping[str, Any], overlays: Mapping[str, CaseOverlays] | None = None,
                    run: RunRecord | None = None, images_note: str = "") -> str:
    """The evaluation page for metrics.json's ``document`` (:func:`medsaga.evaluate.outputs.json_document`).

    Args:
        document: the evaluation, as written to metrics.json.
        overlays: case id → its overlays; cases without an entry get none (said on the page).
        run: the fine-tuning run whose predictions these are, when known.
        images_note: what the overlays are drawn on (the images' folder, or why there are none).
    """
    classes = _present_classes(document)
    cases = _cases_worst_first(document, classes)
    hidden = len(document.get("classes", [])) - len(classes)
    anchors = {case["case_id"]: _case_anchor(case["case_id"], rank) for rank, case in enumerate(cases)}
    title = f"medsaga evaluation: {len(cases)} case{'s' * (len(cases) != 1)}"
    body = [
        f"<h1>{escape(title)}</h1>",
        facts_html([("prediction", document.get("prediction")), ("ground truth", document.get("ground_truth")),
                ("classes from", document.get("classes_from")),
                ("NSD tolerance", f"{document.get('tolerance_mm', math.nan):g} mm"),
                ("HD", f"{document.get('hd_percentile', 95):g}th percentile of surface distances, mm"),
                ("written", f"{document.get('created', '')} by medsaga {document.get('medsaga_version', '')}")]),
        '<p id="broken-images" class="warning" hidden></p>',
        contents_html([("summary", "Per class"), ("cases", "Per case, worst first"), ("overlays", "Overlays")]
                  + ([("run", "Training run")] if run is not None else [])),
        '<section id="summary"><h2>Per class</h2><div class="side-by-side"><div>',
        _summary_table(document, classes),
        f'<p class="note">{escape(_mean_note(hidden))}</p></div>',
    ]
    dice_plot = _dice_plot(document, classes, cases)
    if dice_plot is not None:
        body.append(figure_html(dice_plot))
    body.append("</div></section>")
    body += ['<section id="cases"><h2>Per case, worst first</h2>',
             '<p class="note">Cases sorted by their mean Dice over the classes that their ground truth or '
             'prediction holds (lowest first); the case name leads to its overlays.</p>',
             _case_table(cases, classes, anchors), "</section>"]
    body += ['<section id="overlays"><h2>Overlays</h2>', legend_html(classes),
             f'<p class="note">{escape(images_note)}</p>' if images_note else "",
             *(_case_overlays(case, (overlays or {}).get(case["case_id"]), classes, anchors[case["case_id"]])
               for case in cases),
             "</section>"]
    if run is not None:
        body.append(_run_section(run))
    body.append(_unmatched(document))
    body.append(f'<p class="note">{escape(document.get("empty_rule", ""))}</p>')
    return html_document(title, body)


def run_page(run: RunRecord) -> str:
    """The page of a fine-tuning run on its own: settings, curves, memory and throughput."""
    config = run.config or {}
    method = (config.get("method") or {}).get("name") or (run.report or {}).get("method") or "?"
    dataset = (config.get("dataset") or {}).get("name") or ""
    title = f"medsaga fine-tuning run: {method}" + (f" on {dataset}" if dataset else "")
    return html_document(title, [f"<h1>{escape(title)}</h1>", '<p id="broken-images" class="warning" hidden></p>',
                         _run_section(run, heading=False)])


# --- the evaluation's parts ------------------------------------------------------------------------


def _present_classes(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The classes some reference or prediction holds (as the terminal tables: a class absent from
    every case would add rows of 'both empty')."""
    return [m for m in document.get("mean", []) if m.get("both_empty", 0) < m.get("cases", 0)]


def case_score(case: Mapping[str, Any], values: Iterable[int]) -> float:
    """A case's mean Dice over the classes of ``values`` that its ground truth or prediction holds
    (false positives and misses count as 0); 1 when it holds none of them."""
    wanted = set(values)
    dice = [c["dice"] for c in case.get("classes", []) if c["value"] in wanted and c["status"] != "both empty"
            and c.get("dice") is not None]
    return float(np.mean(dice)) if dice else 1.0


def _cases_worst_first(document: Mapping[str, Any], classes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    values = [c["value"] for c in classes]
    return sorted(document.get("cases", []), key=lambda case: (case_score(case, values), case["case_id"]))


def _summary_table(document: Mapping[str, Any], classes: Sequence[Mapping[str, Any]]) -> str:
    head = ["class", "with GT", "Dice", "HD95 (mm)", "NSD", "missed", "false pos.", "both empty"]
    rows = []
    for m in classes:
        rows.append(f'<tr data-class="{m["value"]}"><th scope="row">'
                    f'{swatch_html(m["value"])}{escape(_class_text(m))}</th>'
                    f'{int_cell("cases_with_gt", m.get("cases_with_gt"))}'
                    f'{number_cell("dice", m.get("dice"), 4)}{number_cell("hd95_mm", m.get("hd95_mm"), 2)}'
                    f'{number_cell("nsd", m.get("nsd"), 4)}{int_cell("missed", m.get("missed"))}'
                    f'{int_cell("false_positive", m.get("false_positive"))}'
                    f'{int_cell("both_empty", m.get("both_empty"))}</tr>')
    overall = document.get("mean_over_classes") or {}
    rows.append(f'<tr data-class="mean" class="total"><th scope="row">mean over classes</th><td></td>'
                f'{number_cell("dice", overall.get("dice"), 4)}{number_cell("hd95_mm", overall.get("hd95_mm"), 2)}'
                f'{number_cell("nsd", overall.get("nsd"), 4)}<td></td><td></td><td></td></tr>')
    return table_html("summary-table", head, rows)


def _mean_note(hidden: int) -> str:
    note = ("With GT: the cases whose ground truth (GT) holds the class. Dice and NSD: mean over those cases (a "
            "miss counts 0); HD95: over the cases where both hold it. Missed, false pos., both empty: cases where "
            "only the GT, only the prediction, or neither holds the class.")
    if hidden:
        note += f" {hidden} class(es) absent from every case are not shown (they are in metrics.json)."
    return note


def _case_table(cases: Sequence[Mapping[str, Any]], classes: Sequence[Mapping[str, Any]],
                anchors: Mapping[str, str]) -> str:
    head = ["case", "mean Dice", "class", "Dice", "HD95 (mm)", "NSD", "note"]
    values = [c["value"] for c in classes]
    rows = []
    for case in cases:
        by_value = {c["value"]: c for c in case.get("classes", [])}
        shown = [by_value[v] for v in values if v in by_value]
        score = case_score(case, values)
        for index, c in enumerate(shown):
            lead = ""
            if index == 0:
                span = f' rowspan="{len(shown)}"' if len(shown) > 1 else ""
                lead = (f'<th scope="rowgroup"{span}><a href="#{anchors[case["case_id"]]}">'
                        f'{escape(case["case_id"])}</a></th>'
                        f'<td{span} class="num" data-metric="case_score" data-value="{score!r}">{score:.4f}</td>')
            status = c.get("status", "")
            rows.append(f'<tr data-case="{escape(case["case_id"])}" data-class="{c["value"]}"'
                        f'{" class=first" if index == 0 else ""}>{lead}'
                        f'<td>{swatch_html(c["value"])}{escape(_class_text(c))}</td>'
                        f'{number_cell("dice", c.get("dice"), 4)}{number_cell("hd95_mm", c.get("hd95_mm"), 2)}'
                        f'{number_cell("nsd", c.get("nsd"), 4)}'
                        f'<td>{"" if status == "ok" else escape(status)}</td></tr>')
    return table_html("case-table", head, rows)


def _dice_plot(document: Mapping[str, Any], classes: Sequence[Mapping[str, Any]],
               cases: Sequence[Mapping[str, Any]]) -> Picture | None:
    if not classes or not cases:
        return None
    values = [c["value"] for c in classes]
    dice = np.full((len(cases), len(values)), np.nan)
    for row, case in enumerate(cases):
        by_value = {c["value"]: c for c in case.get("classes", [])}
        for column, value in enumerate(values):
            c = by_value.get(value)
            if c is not None and c.get("status") != "both empty" and c.get("dice") is not None:
                dice[row, column] = c["dice"]
    png = dice_per_case([c["name"] for c in classes], values, dice)
    return Picture(png, "Dice of each case per class, with the class mean")


def legend_html(classes: Sequence[Mapping[str, Any]],
                which_slice: str = "Each plane shows the slice where they disagree most") -> str:
    """The overlays' key: fill = prediction, outline = ground truth, then each class (``value``,
    ``name``) with its swatch and colour in words; ``which_slice`` says how the slices were chosen."""
    items = "".join(f'<li>{swatch_html(c["value"])}{escape(_class_text(c))} <span class="muted">'
                    f'({escape(class_colour_name(c["value"]))})</span></li>' for c in classes)
    repeat = ""
    if classes and max(c["value"] for c in classes) > len(PALETTE):
        repeat = f" Colours repeat every {len(PALETTE)} label values."
    return (f'<div class="legend"><p><span class="fill-key"></span> fill = prediction &nbsp; '
            f'<span class="outline-key"></span> outline = ground truth: where they agree, the prediction is '
            f'right. {escape(which_slice)} (Okabe–Ito colours, readable with '
            f'colour-blindness).{repeat}</p><ul>{items}</ul></div>')


def _case_overlays(case: Mapping[str, Any], overlays: CaseOverlays | None,
                   classes: Sequence[Mapping[str, Any]], anchor: str) -> str:
    case_id = case["case_id"]
    values = [c["value"] for c in classes]
    parts = [f'<article class="case" id="{anchor}" data-case="{escape(case_id)}">',
             f"<h3>{escape(case_id)} <span class=\"muted\">mean Dice {case_score(case, values):.4f}</span></h3>"]
    wanted = set(values)
    scores = [f'{swatch_html(c["value"])}{escape(c["name"])} {format_number(c.get("dice"), 4)}'
              for c in case.get("classes", []) if c["value"] in wanted]
    if scores:
        parts.append(f'<p class="scores">Dice: {" &nbsp; ".join(scores)}</p>')
    if overlays is None or not overlays.pictures:
        parts.append('<p class="note">No overlay for this case.</p>')
    else:
        if overlays.note:
            parts.append(f'<p class="note">{escape(overlays.note)}</p>')
        parts.append('<div class="planes">' + "".join(figure_html(p) for p in overlays.pictures) + "</div>")
    parts.append("</article>")
    return "".join(parts)


def _unmatched(document: Mapping[str, Any]) -> str:
    unmatched = document.get("unmatched") or {}
    lines = []
    for key, what in (("ground_truth_without_prediction", "ground-truth case(s) without a prediction"),
                      ("predictions_without_ground_truth", "prediction(s) without ground truth")):
        ids = unmatched.get(key) or []
        if ids:
            lines.append(f"<li>{len(ids)} {what}, not evaluated: {escape(', '.join(ids))}</li>")
    return f'<section id="unmatched"><h2>Not evaluated</h2><ul>{"".join(lines)}</ul></section>' if lines else ""


# --- the run's section -----------------------------------------------------------------------------


def _run_section(run: RunRecord, heading: bool = True) -> str:
    parts = ['<section id="run">', "<h2>Training run</h2>" if heading else "",
             facts_html([("run folder", str(run.folder))])]
    if run.problems:
        parts.append('<ul class="warning">' + "".join(f"<li>{escape(p)}</li>" for p in run.problems) + "</ul>")
    if run.config is not None:
        parts += ["<h3>Settings</h3>", _settings_table(run.config),
                  f"<details><summary>config.json in full</summary><pre>{escape(json.dumps(run.config, indent=2))}"
                  f"</pre></details>"]
    parts.append("<h3>Training curves</h3>")
    if run.steps.size or run.validation_dice:
        png = training_curves(run.steps.tolist(), run.losses.tolist(), run.validation_steps(),
                                      run.validation_dice)
        parts.append(figure_html(Picture(png, "training loss per step, and validation Dice")))
        if run.validation_dice:
            parts.append(f'<p class="note">Validation Dice after each validation: '
                         f'{", ".join(format_number(v, 4) for v in run.validation_dice)} '
                         '(slice-level mean over classes on the validation cases).</p>')
    else:
        parts.append('<p class="note">No training step recorded yet.</p>')
    parts.append("<h3>Memory and throughput</h3>")
    if run.report is not None:
        parts.append(_memory_table(run.report))
        if isinstance(run.report.get("memory"), dict):
            parts.append(figure_html(Picture(memory_breakdown(run.report["memory"]),
                                         "memory of a training step, by kind")))
    else:
        parts.append('<p class="note">report.json is not written yet (it is written when training ends).</p>')
    parts.append("</section>")
    return "".join(parts)


def _settings_table(config: Mapping[str, Any]) -> str:
    model, dataset = config.get("model") or {}, config.get("dataset") or {}
    training, slicing = config.get("training") or {}, config.get("slicing") or {}
    method, cache = config.get("method") or {}, config.get("embedding_cache") or {}
    checkpoint = model.get("checkpoint")
    if checkpoint is None:
        weights = "random (no checkpoint)"
    else:
        weights = checkpoint.get("packaged") or checkpoint.get("path") or "?"
        if checkpoint.get("sha256"):
            weights += f" (SHA-256 {str(checkpoint['sha256'])[:12]}…)"
    names = (config.get("classes") or {}).get("names") or []
    rows: list[tuple[str, Any]] = [
        ("model", f"{model.get('type', '?')} at {model.get('image_size', '?')} px"),
        ("weights", weights),
        ("method", f"{method.get('name', '?')}" + (f" ({_compact(method.get('options'))})" if method.get("options")
                                                    else "")),
        ("classes", ", ".join(map(str, names[1:] if names[:1] == ["background"] else names))),
        ("dataset", f"{dataset.get('name', '')} ({dataset.get('root', '')})"),
        ("training cases", ", ".join(dataset.get("train_cases") or [])),
        ("validation cases", ", ".join(dataset.get("val_cases") or []) or "none"),
        ("training slices", dataset.get("training_slices")),
        ("slicing", f"{slicing.get('plane', '?')}, {slicing.get('mode', '?')}, intensity "
                    f"{', '.join(slicing.get('presets') or [])}"),
        ("steps", training.get("steps")),
        ("batch", f"{training.get('batch_size')} slices × {training.get('grad_accum', 1)} accumulation"),
        ("learning rate", f"{training.get('lr')}" + (f", decoder {training['decoder_lr']}"
                                                     if training.get("decoder_lr") is not None else "")
         + f"; weight decay {training.get('weight_decay')}; warm-up {training.get('warmup_steps')} steps"),
        ("precision", training.get("precision")),
        ("activation checkpointing", training.get("activation_checkpointing")),
        ("embedding cache", f"{cache.get('views')} view(s), {cache.get('dtype')}" if cache.get("enabled") else "off"),
        ("augmentation", "on" if (config.get("augmentation") or {}).get("enabled") else "off"),
        ("memory settings", _profile(config.get("memory_profile"))),
        ("device", config.get("device")),
        ("seed", training.get("seed")),
        ("written", f"{config.get('created', '')} by medsaga {config.get('medsaga_version', '')}"),
    ]
    if config.get("time_budget"):
        rows.append(("time budget", _compact(config["time_budget"])))
    body = "".join(f'<tr data-setting="{escape(key)}"><th scope="row">{escape(key)}</th>'
                   f'<td>{escape(_text(value))}</td></tr>'
                   for key, value in rows)
    return f'<table class="settings"><tbody>{body}</tbody></table>'


def _memory_table(report: Mapping[str, Any]) -> str:
    memory = report.get("memory") or {}
    rows = [
        _measure_row("steps", "steps trained", report.get("steps"),
                     f"{report.get('steps')}" + (f" (resumed at {report['first_step']})" if report.get("first_step")
                                                 else "")),
        _measure_row("slices_per_second", "throughput", report.get("slices_per_second"),
                     f"{format_number(report.get('slices_per_second'), 2)} slices/s"),
        _measure_row("wall_seconds", "training time", report.get("wall_seconds"),
                     f"{format_number(report.get('wall_seconds'), 1)} s"),
        _measure_row("final_loss", "final loss", report.get("final_loss"), format_number(report.get("final_loss"), 4)),
        _measure_row("trainable_parameters", "trainable parameters", report.get("trainable_parameters"),
                     f"{_count(report.get('trainable_parameters'))} of {_count(report.get('total_parameters'))}"),
    ]
    for key, name, _ in MEMORY_PARTS:
        rows.append(_measure_row(f"memory.{key}", f"memory: {name}", memory.get(key), _mib(memory.get(key))))
    rows.append(_measure_row("memory.sum_of_peaks", "memory: sum of the peaks (an upper bound)",
                             memory.get("sum_of_peaks"),
                             _mib(memory.get("sum_of_peaks"))))
    peak = report.get("peak_memory") or {}
    if peak:
        rows.append(_measure_row("peak_memory.peak_above_baseline_bytes", f"measured peak ({peak.get('kind', '')}, "
                                 "above the loaded model)", peak.get("peak_above_baseline_bytes"),
                                 _mib(peak.get("peak_above_baseline_bytes"))))
    tensor = report.get("tensor_peak") or {}
    if tensor.get("bytes") is not None:
        rows.append(_measure_row("tensor_peak.bytes", f"tensor peak (step {tensor.get('step')}, "
                                 f"{tensor.get('kind', '')})", tensor.get("bytes"), _mib(tensor.get("bytes"))))
    cache = report.get("embedding_cache") or {}
    if isinstance(cache, dict) and cache.get("bytes") is not None:
        rows.append(_measure_row("embedding_cache.bytes", "embedding cache", cache.get("bytes"), _mib(cache["bytes"])))
    profile = report.get("memory_profile") or {}
    rows.append(f'<tr><th scope="row">memory settings</th><td>{escape(_profile(profile))}</td></tr>')
    rows.append(f'<tr><th scope="row">device, precision</th><td>{escape(report.get("device"))}, '
                f'{escape(report.get("precision"))}</td></tr>')
    return ('<table class="settings" id="memory-table"><tbody>' + "".join(rows) + "</tbody></table>"
            "<details><summary>report.json in full</summary><pre>"
            f"{escape(json.dumps(report, indent=2))}</pre></details>")


def _measure_row(key: str, name: str, value: Any, text: str) -> str:
    data = "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)
    return (f'<tr data-measure="{escape(key)}"><th scope="row">{escape(name)}</th>'
            f'<td class="num" data-value="{escape(data)}">{escape(text)}</td></tr>')


# --- building blocks (also for other pages: benchmarks/quality_page.py) ------------------------------


def html_document(title: str, body: Sequence[str]) -> str:
    """A whole self-contained page: ``body``'s parts, the style sheet, the CSP, the load-check script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<meta name=\"generator\" content=\"medsaga {__version__}\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>{''.join(body)}<script>{SCRIPT}</script></body></html>\n")


def facts_html(pairs: Sequence[tuple[str, Any]]) -> str:
    """A definition list of ``(name, value)``; empty values are left out."""
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(_text(v))}</dd>" for k, v in pairs if v not in (None, ""))
    return f'<dl class="facts">{items}</dl>'


def contents_html(entries: Sequence[tuple[str, str]]) -> str:
    """A row of links ``(anchor, text)`` to the page's sections."""
    return '<nav><ul>' + "".join(f'<li><a href="#{a}">{escape(t)}</a></li>' for a, t in entries) + "</ul></nav>"


def table_html(table_id: str, head: Sequence[str], rows: Sequence[str]) -> str:
    """A table with a header row ``head`` and ``rows`` (each a whole ``<tr>...</tr>``)."""
    header = "".join(f'<th scope="col">{escape(h)}</th>' for h in head)
    return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def figure_html(picture: Picture) -> str:
    """A ``<figure>``: the picture inlined as a ``data:`` URI at its own size, its caption under it."""
    width, height = picture.size
    source = "data:image/png;base64," + base64.b64encode(picture.png).decode("ascii")
    caption = f"<figcaption>{escape(picture.caption)}</figcaption>" if picture.caption else ""
    return (f'<figure><img src="{source}" width="{width}" height="{height}" alt="{escape(picture.alt)}">'
            f"{caption}</figure>")


def plane_caption(plane: str, index: int, slices: int, disagreement: int) -> str:
    """The caption under one plane's overlay."""
    differ = f"{disagreement} voxel{'s' * (disagreement != 1)} differ" if disagreement else "no voxel differs"
    return f"{plane} {index + 1} of {slices}: {differ} ({PLANE_CAPTIONS.get(plane, '')})"


def swatch_html(value: int) -> str:
    """A small square in label value ``value``'s colour."""
    return f'<span class="swatch" style="background:{class_colour_hex(value)}"></span>'


def _class_text(c: Mapping[str, Any]) -> str:
    value, name = str(c["value"]), str(c["name"])
    return value if name == value else f"{value} {name}"


def _case_anchor(case_id: str, rank: int) -> str:
    return f"case-{rank}-" + re.sub(r"[^A-Za-z0-9_-]", "-", case_id)


def number_cell(metric: str, value: float | None, digits: int, grouping: bool = False, css: str = "") -> str:
    """A numeric cell: the exact value in ``data-value`` (empty for none), the text rounded to
    ``digits`` (:func:`format_number`); ``css`` adds classes (``"best"``: bold)."""
    data = "" if value is None else repr(float(value))
    return (f'<td class="{escape(" ".join(["num", *css.split()]))}" data-metric="{escape(metric)}" '
            f'data-value="{data}">{format_number(value, digits, grouping)}</td>')


def int_cell(metric: str, value: int | None) -> str:
    """An integer cell, as :func:`number_cell`."""
    return f'<td class="num" data-metric="{metric}" data-value="{"" if value is None else int(value)}">' \
           f'{"–" if value is None else int(value)}</td>'


def format_number(value: float | None, digits: int, grouping: bool = False) -> str:
    """As the terminal tables: fixed decimals (thousands separated by commas with ``grouping``),
    an en dash for undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):{',' if grouping else ''}.{digits}f}"


def _mib(value: Any) -> str:
    return "–" if value is None else f"{float(value) / MIB:,.1f} MiB"


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _compact(value: Any) -> str:
    """``{"rank": 8, "targets": ["qkv", "proj"]}`` → ``rank 8, targets qkv/proj``."""
    if value in (None, {}, []):
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{key} {_compact(item)}" for key, item in value.items() if item not in (None, {}, []))
    if isinstance(value, list):
        return "/".join(_compact(item) for item in value)
    return _text(value)


def _profile(profile: Any) -> str:
    """A memory profile as finetune prints it: ``lean: layerwise, activation_checkpointing``."""
    if not isinstance(profile, dict) or not profile.get("profile"):
        return "as recorded"
    applied = ", ".join(profile.get("applied") or []) or "nothing to save for this method"
    return f"{profile['profile']}: {applied}" if profile["profile"] != "speed" else "speed (none of the lean settings)"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def escape(value: Any) -> str:
    """``value`` as HTML text (``None`` empty, booleans yes/no), quotes escaped too."""
    return html.escape(_text(value), quote=True)


STYLE = """
:root{--ink:#1d1d1f;--muted:#6b6b70;--line:#d9d9de;--band:#f4f4f6;--accent:#0072b2}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);
margin:0 auto;padding:24px 32px 48px;max-width:1480px}
h1{font-size:1.6em;margin:0 0 .4em}h2{font-size:1.3em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);
padding-bottom:.2em}h3{font-size:1.05em;margin:1.2em 0 .4em}
a{color:var(--accent)}.muted{color:var(--muted);font-weight:normal}
.note{color:var(--muted);font-size:.9em;max-width:70em}
.warning{color:#a04000;font-weight:600}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0 0 1em;font-size:.92em}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;word-break:break-all}
nav ul{list-style:none;padding:0;display:flex;gap:18px;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:.92em;margin:.3em 0 .8em}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:var(--band);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total th,tr.total td{font-weight:600;border-top:2px solid var(--ink)}
#case-table tr.first th,#case-table tr.first td{border-top:2px solid #b8b8be}
table.settings th{color:var(--muted);font-weight:normal;white-space:nowrap}
.swatch{display:inline-block;width:.85em;height:.85em;border-radius:2px;margin-right:.4em;vertical-align:-.05em;
border:1px solid rgba(0,0,0,.35)}
.legend ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:6px 20px;margin:.3em 0}
.fill-key,.outline-key{display:inline-block;width:1.6em;height:.9em;vertical-align:-.05em}
.fill-key{background:rgba(230,159,0,.55)}.outline-key{border:2px solid #e69f00}
figure{margin:0 0 12px;display:table;vertical-align:top}
figure img{max-width:100%;height:auto;display:block;image-rendering:pixelated;border:1px solid var(--line)}
figcaption{display:table-caption;caption-side:bottom;font-size:.82em;color:var(--muted);padding-top:2px}
.side-by-side{display:flex;flex-wrap:wrap;gap:8px 32px;align-items:flex-start}
.side-by-side .note{max-width:46em}
.planes{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.planes figure img{max-height:420px;width:auto}
td.best{font-weight:700;background:#e8f3fa}
.planes.compare{flex-wrap:nowrap;gap:10px}
.planes.compare figure{flex:1 1 0;min-width:0;display:block}
.planes.compare figure img{width:100%;height:auto;max-height:none}
.planes.compare figcaption{display:block}
article.case{border-top:1px solid var(--line);padding-top:.2em;margin-top:1em}
.scores{margin:.2em 0 .6em;font-size:.92em}
pre{background:var(--band);padding:10px;overflow:auto;font-size:.82em;max-height:28em}
details{margin:.3em 0 1em}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded));
  if (loaded < images.length) {
    var note = document.getElementById("broken-images");
    if (note) { note.hidden = false; note.textContent = (images.length - loaded) + " of " + images.length +
      " pictures on this page did not load."; }
  }
});
"""

__all__ = ["CSP", "CaseOverlays", "Picture", "case_score", "contents_html", "escape", "evaluation_page", "facts_html",
           "figure_html", "format_number", "html_document", "int_cell", "legend_html", "number_cell", "plane_caption",
           "run_page", "swatch_html", "table_html"]
