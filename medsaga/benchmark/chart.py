"""The benchmark as a picture: four horizontal bar charts, one row per entry, drawn with matplotlib (Agg).

1. peak memory (device-specific: CUDA max allocated, or CPU peak RSS above the loaded model);
2. the tensor peak (the most tensor bytes alive at once above the model: what a GPU counts);
3. the device-independent breakdown as stacked bars: frozen parameters, trainable parameters,
   gradients, optimizer state, saved activations;
4. slices per second, three bars per entry: training, inference (the encoder's exact fast
   attention, as ``medsaga predict`` runs it) and inference with segment-anything's own attention.

Each chart has its own scale and prints every value, with its ratio to the reference, at the end of
the bar, so the picture reads on its own. Colours are from the Okabe-Ito palette, distinguishable
with colour-blindness. The result is the PNG file's bytes.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

import numpy as np

from medsaga.benchmark.report import RATIO_FIGURES, device_text, mib, rate, ratio

MIB = 2 ** 20
DPI = 100
INK = "#1e1e1e"
MUTED = "#6e6e6e"
PEAK_COLOUR = "#44446e"
BREAKDOWN: tuple[tuple[str, str, str], ...] = (
    ("frozen_parameters", "frozen + buffers", "#b9b9b9"),
    ("trainable_parameters", "trainable params", "#0072b2"),
    ("gradients", "gradients", "#e69f00"),
    ("optimizer_state", "optimizer state", "#d55e00"),
    ("saved_activations", "saved activations", "#009e73"),
)
THROUGHPUTS: tuple[tuple[str, str, str], ...] = (
    ("train_slices_per_second", "training", "#0072b2"),
    ("inference_slices_per_second", "inference", "#56b4e9"),
    ("inference_sam_slices_per_second", "inference, SAM attention", "#cc79a7"),
)


def render_chart(document: dict[str, Any]) -> bytes:
    """The picture of a benchmark document (:func:`medsaga.benchmark.run.run_benchmark`), as PNG bytes."""
    from matplotlib.figure import Figure

    entries = document["entries"]
    rows = max(len(entries), 1)
    heights = [rows, rows, rows, 2.2 * rows]
    figure = Figure(figsize=(11.0, 1.0 + 0.3 * sum(heights) + 4 * 0.9), dpi=DPI, layout="constrained")
    axes = figure.subplots(4, 1, gridspec_kw={"height_ratios": heights})
    settings = document["settings"]
    title = (f"medsaga benchmark: {settings['model']}, {settings['image_size']} px, batch {settings['batch_size']}, "
             f"{device_text(settings)}")
    subtitle = (f"{document['weights']}. {settings['warmup_steps']} warm-up + {settings['timed_steps']} timed steps "
                f"per entry, each in its own process. (×) = ratio to {document['reference']}.")
    figure.suptitle(title + "\n" + textwrap.fill(subtitle, 130), x=0.01, ha="left", fontsize=10, color=INK)

    for ax, name, title_text in ((axes[0], "peak_memory", f"Peak memory, MiB ({document['peak_memory_kind']})"),
                                 (axes[1], "tensor_peak", "Tensor peak, MiB (most tensor bytes alive at once above "
                                                          "the model: what a GPU counts)")):
        values = [_figure(entry, name) for entry in entries]
        _bars(ax, entries, [[(v or 0, PEAK_COLOUR)] for v in values],
              [_with_ratio(f"{mib(v)} MiB", entry, name) for v, entry in zip(values, entries)], title_text)

    segments, notes = [], []
    for entry in entries:
        memory = entry.get("memory") if entry.get("status") == "ok" else None
        segments.append([((memory or {}).get(key, 0), colour) for key, _, colour in BREAKDOWN])
        notes.append(_with_ratio(f"{mib((memory or {}).get('sum_of_peaks'))} MiB", entry, "memory_total"))
    _bars(axes[2], entries, segments, notes, "Memory breakdown, MiB (bytes of tensors: the same on any device)")
    _legend(axes[2], [(name, colour) for _, name, colour in BREAKDOWN])

    _throughput(axes[3], entries)
    _legend(axes[3], [(name, colour) for _, name, colour in THROUGHPUTS])

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata={"Software": None})
    return buffer.getvalue()


def _figure(entry: dict[str, Any], name: str) -> float | None:
    return RATIO_FIGURES[name](entry) if entry.get("status") == "ok" else None


def _bars(ax, entries: list[dict[str, Any]], segments: list[list[tuple[float, str]]], notes: list[str],
          title: str) -> None:  # type: ignore[no-untyped-def]
    """One (stacked) bar per entry in MiB, first entry on top, the note (value, ratio) at its end."""
    totals = np.array([sum(value for value, _ in row) for row in segments], float) / MIB
    largest = float(totals.max()) if totals.size and totals.max() > 0 else 1.0
    positions = np.arange(len(entries))
    for part in range(max((len(row) for row in segments), default=0)):
        values = np.array([row[part][0] if part < len(row) else 0 for row in segments], float) / MIB
        lefts = np.array([sum(v for v, _ in row[:part]) for row in segments], float) / MIB
        colours = [row[part][1] if part < len(row) else "none" for row in segments]
        ax.barh(positions, values, left=lefts, color=colours, height=0.7)
    for y, (entry, total, note) in enumerate(zip(entries, totals, notes)):
        ax.text(total + largest * 0.01, y, _status_note(entry) or note, va="center", fontsize=8.5, color=INK)
    _style(ax, entries, largest, title)


def _throughput(ax, entries: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    """Three bars per entry (training, inference, inference with SAM's attention), one scale."""
    ok = [entry for entry in entries if entry.get("status") == "ok"]
    largest = max((entry.get(key) or 0 for entry in ok for key, _, _ in THROUGHPUTS), default=0) or 1.0
    height = 0.8 / len(THROUGHPUTS)
    for y, entry in enumerate(entries):
        status = _status_note(entry)
        if status:
            ax.text(largest * 0.01, y, status, va="center", fontsize=8.5, color=INK)
            continue
        for index, (key, _, colour) in enumerate(THROUGHPUTS):
            value = entry.get(key) or 0
            offset = y - 0.4 + height * (index + 0.5)
            ax.barh([offset], [value], height=height * 0.9, color=colour)
            ax.text(value + largest * 0.01, offset, _with_ratio(rate(entry.get(key)), entry, key), va="center",
                    fontsize=7.5, color=INK)
    _style(ax, entries, float(largest), "Throughput, slices/s (same batch size)")


def _style(ax, entries: list[dict[str, Any]], largest: float, title: str) -> None:  # type: ignore[no-untyped-def]
    ax.set_yticks(np.arange(len(entries)), [entry["label"] for entry in entries], fontsize=9, color=INK)
    ax.set_ylim(len(entries) - 0.5, -0.5)  # the first entry on top
    ax.set_xlim(0, largest * 1.42)  # room for the notes at the bars' ends
    ax.set_title(title, loc="left", fontsize=9.5, color=INK)
    ax.tick_params(axis="x", labelsize=8, colors=MUTED)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", alpha=0.25, linewidth=0.6)


def _legend(ax, items: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    from matplotlib.patches import Patch

    # In a band between the title (lifted for it) and the bars: it never covers a bar or a value.
    ax.legend(handles=[Patch(color=colour, label=name) for name, colour in items], loc="lower right",
              bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, ncol=len(items), frameon=False, fontsize=8,
              handlelength=1.2, columnspacing=1.2)
    ax.set_title(ax.get_title(loc="left"), loc="left", fontsize=9.5, color=INK, pad=20)


def _with_ratio(text: str, entry: dict[str, Any], name: str) -> str:
    value = (entry.get("ratios_to_reference") or {}).get(name)
    return f"{text} ({ratio(value)})" if value is not None else text


def _status_note(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    return "" if status == "ok" else "out of memory" if status == "out_of_memory" else "failed"


__all__ = ["render_chart"]
