"""Ratios to the reference, and the figures as text (a Markdown table, shared cell formats).

Every ratio is the entry's figure divided by the reference's (plain ``full``), so the reference's
own ratios are 1.0: below 1 is less memory (good), above 1 is more slices per second (good).
A ratio is null where either figure is missing (a failed or out-of-memory entry) or the
reference's figure is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MIB = 2**20

# ratio name -> how to read the figure from a worker record (None when it is missing)
RATIO_FIGURES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "peak_memory": lambda entry: (entry.get("peak_memory") or {}).get("peak_above_baseline_bytes"),
    "tensor_peak": lambda entry: (entry.get("tensor_peak") or {}).get("bytes"),
    "memory_total": lambda entry: (entry.get("memory") or {}).get("sum_of_peaks"),
    "train_slices_per_second": lambda entry: entry.get("train_slices_per_second"),
    "inference_slices_per_second": lambda entry: entry.get("inference_slices_per_second"),
}


def add_ratios(entries: list[dict[str, Any]], reference_label: str) -> None:
    """Set ``entry["ratios_to_reference"]`` on every entry (module docstring), in place."""
    reference = next((entry for entry in entries if entry.get("label") == reference_label), None)
    for entry in entries:
        ratios: dict[str, float | None] = {}
        for name, figure in RATIO_FIGURES.items():
            value = figure(entry) if entry.get("status") == "ok" else None
            base = figure(reference) if reference is not None and reference.get("status") == "ok" else None
            ratios[name] = value / base if value is not None and base else None
        entry["ratios_to_reference"] = ratios


def mib(value: float | None) -> str:
    """Bytes as MiB: ``1,234``; ``-`` when missing."""
    return "-" if value is None else f"{value / MIB:,.0f}" if value >= 10 * MIB else f"{value / MIB:,.1f}"


def ratio(value: float | None) -> str:
    """``0.45×``; empty when missing."""
    return "" if value is None else f"{value:.2f}×"


def rate(value: float | None) -> str:
    """Slices per second, three significant digits."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def percent(value: float | None) -> str:
    """A fraction as ``62%``; ``-`` when missing."""
    return "-" if value is None else f"{100 * value:.0f}%"


def peak_shares(entry: dict[str, Any]) -> str:
    """The fast encoder's GFLOP/s as shares of the fp32 and bf16 matmul peaks: ``41% / 181%``."""
    shares = entry.get("encoder_fraction_of_peak") or {}
    return f"{percent(shares.get('fp32'))} / {percent(shares.get('bf16'))}"


def parameters(value: int | None) -> str:
    """``93.6 M`` / ``147 k``."""
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.1f} M"
    return f"{value / 1e3:.0f} k" if value >= 1e3 else str(value)


# The table's columns: header, and the cell text of one entry (used by the rich table and Markdown).
def table_columns(document: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """Column headers and cell formatters, in order."""
    peak = "peak MiB" if document.get("peak_memory_kind", "").startswith("peak RSS") else "peak MiB (CUDA)"

    def memory(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda entry: mib((entry.get("memory") or {}).get(key))

    def with_ratio(text: str, entry: dict[str, Any], name: str) -> str:
        value = (entry.get("ratios_to_reference") or {}).get(name)
        return f"{text} ({ratio(value)})" if value is not None else text

    return [
        ("entry", lambda entry: entry["label"] + _status_suffix(entry)),
        ("trainable", lambda entry: parameters(entry.get("trainable_parameters"))),
        (peak, lambda entry: with_ratio(mib(RATIO_FIGURES["peak_memory"](entry)), entry, "peak_memory")),
        ("tensors MiB", lambda entry: with_ratio(mib(RATIO_FIGURES["tensor_peak"](entry)), entry, "tensor_peak")),
        ("frozen", memory("frozen_parameters")),
        ("trained", memory("trainable_parameters")),
        ("grads", memory("gradients")),
        ("optim", memory("optimizer_state")),
        ("activ.", memory("saved_activations")),
        ("sum MiB", lambda entry: with_ratio(mib((entry.get("memory") or {}).get("sum_of_peaks")), entry, "memory_total")),
        ("train sl/s", lambda entry: with_ratio(rate(entry.get("train_slices_per_second")), entry,
                                                "train_slices_per_second")),
        ("infer sl/s", lambda entry: with_ratio(rate(entry.get("inference_slices_per_second")), entry,
                                                "inference_slices_per_second")),
        ("SAM sl/s", lambda entry: rate(entry.get("inference_sam_slices_per_second"))),
        ("enc GF/s", lambda entry: rate(entry.get("encoder_gflops_per_second"))),
        ("% peak fp32 / bf16", peak_shares),
    ]


def device_text(settings: dict[str, Any]) -> str:
    """``cpu``, ``cpu, 1 thread``, ``cuda``."""
    threads = settings.get("threads")
    if settings["device"] != "cpu" or threads is None:
        return settings["device"]
    return f"cpu, {threads} thread{'s' if threads != 1 else ''}"


def caption(document: dict[str, Any]) -> str:
    """One paragraph saying what the figures are."""
    settings = document["settings"]
    data = document["data"]
    return (f"{settings['model']} at {settings['image_size']} px, batch {settings['batch_size']}, "
            f"{device_text(settings)}; {settings['warmup_steps']} warm-up + {settings['timed_steps']} timed steps "
            f"per entry, each in its own process, on {data['slices']} real slices from {len(data['cases'])} cases "
            f"of {data['name']}; {document['weights']}. Peak: {document['peak_memory_kind']}. "
            f"tensors: the most tensor bytes alive at once above the model, what a GPU's allocator counts "
            f"(CPU: optimizer state and cache held between steps plus the allocation peak of one profiled "
            f"step; CUDA: max_memory_allocated); a CPU's RSS also holds the C allocator's free memory. "
            f"frozen/trained/grads/optim/activ.: bytes of frozen parameters, trainable parameters, "
            f"gradients (most alive at once), optimizer state, activations saved for backward "
            f"(device-independent); sum: their total. (×) ratio to {document['reference']}. "
            f"sl/s: slices per second; infer: inference with the encoder's exact fast attention (as medsaga "
            f"predict), SAM: with segment-anything's own. enc GF/s: the image encoder's FLOPs (counted, no work on "
            f"window padding) per second of its time in the fast inference; % peak: that rate as a share of a large "
            f"square matmul's GFLOP/s in fp32 and in bf16, measured in the same worker process.")


def markdown_table(document: dict[str, Any]) -> str:
    """The table as Markdown, with the caption underneath (what the README quotes)."""
    columns = table_columns(document)
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for entry in document["entries"]:
        cells = [cell(entry).replace("|", "\\|") for _, cell in columns]
        cells[0] = f"`{entry['label']}`" + _status_suffix(entry)  # entries are code: what --methods takes
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + caption(document) + "\n"


def _status_suffix(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    if status == "ok":
        return ""
    return " (out of memory)" if status == "out_of_memory" else " (failed)"
