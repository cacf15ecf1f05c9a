"""The benchmark as a picture: three horizontal bar charts, one row per entry, drawn with numpy.

1. peak memory (device-specific: CUDA max allocated, or CPU peak RSS above the loaded model);
2. the device-independent breakdown as stacked bars: frozen parameters, trainable parameters,
   gradients, optimizer state, saved activations (a legend strip names the colours);
3. slices per second, three bars per entry: training, inference (the encoder's exact fast
   attention, as ``medsaga predict`` runs it) and inference with segment-anything's own attention.

Each chart has its own scale (its largest value spans the bar area) and prints every value, with
its ratio to the reference, at the end of the bar, so the picture reads on its own. Labels use
the built-in bitmap font (:mod:`.font`); the result is an ``(H, W, 3)`` uint8 array for the
project's PNG writer. Colours are from the Okabe-Ito palette, distinguishable with colour-blindness.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsaga.benchmark.font import GLYPH_WIDTH, SPACING, draw_text, text_height, text_width
from medsaga.benchmark.report import RATIO_FIGURES, device_text, mib, rate, ratio

SCALE = 2  # font pixels → image pixels
MARGIN = 16
BAR_WIDTH = 520
ROW = 26  # pixels per entry in the memory charts
BAR = 18
THROUGHPUT_BAR = 18  # as tall as a line of text, so the two values of a row do not overlap
THROUGHPUT_ROW = 3 * THROUGHPUT_BAR + 10
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
AXIS = (160, 160, 160)
PEAK_COLOUR = (68, 68, 110)
BREAKDOWN: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("frozen_parameters", "frozen + buffers", (185, 185, 185)),
    ("trainable_parameters", "trainable params", (0, 114, 178)),
    ("gradients", "gradients", (230, 159, 0)),
    ("optimizer_state", "optimizer state", (213, 94, 0)),
    ("saved_activations", "saved activations", (0, 158, 115)),
)
TRAIN_COLOUR = (0, 114, 178)
INFERENCE_COLOUR = (86, 180, 233)
SAM_INFERENCE_COLOUR = (204, 121, 167)
THROUGHPUTS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("train_slices_per_second", "training", TRAIN_COLOUR),
    ("inference_slices_per_second", "inference", INFERENCE_COLOUR),
    ("inference_sam_slices_per_second", "inference, SAM attention", SAM_INFERENCE_COLOUR),
)


def render_chart(document: dict[str, Any]) -> np.ndarray:
    """The picture of a benchmark document (:func:`medsaga.benchmark.run.run_benchmark`), ``(H, W, 3)`` uint8."""
    entries = document["entries"]
    char = (GLYPH_WIDTH + SPACING) * SCALE
    line = text_height(SCALE) + 8
    label_width = max(text_width(entry["label"], SCALE) for entry in entries) + 2 * char
    value_width = 26 * char
    width = MARGIN + label_width + BAR_WIDTH + char + value_width + MARGIN
    height = MARGIN * 2 + line * 14 + len(entries) * (3 * ROW + THROUGHPUT_ROW) + 4 * 3 * line
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    canvas = _Canvas(image, label_width, line)

    settings = document["settings"]
    canvas.text(f"medsaga benchmark: {settings['model']}, {settings['image_size']} px, batch "
                f"{settings['batch_size']}, {device_text(settings)}", INK)
    for text in _wrap(f"{document['weights']}. {settings['warmup_steps']} warm-up + {settings['timed_steps']} "
                      f"timed steps per entry, each in its own process. (×) = ratio to {document['reference']}.",
                      (width - 2 * MARGIN) // char):
        canvas.text(text, MUTED)
    canvas.skip(line // 2)

    canvas.text(f"Peak memory, MiB ({document['peak_memory_kind']})", INK)
    values = [RATIO_FIGURES["peak_memory"](entry) if entry.get("status") == "ok" else None for entry in entries]
    canvas.bars(entries, [[(v or 0, PEAK_COLOUR)] for v in values],
                [_with_ratio(f"{mib(v)} MiB", entry, "peak_memory") for v, entry in zip(values, entries)])
    canvas.skip(line // 2)

    canvas.text("Tensor peak, MiB (most tensor bytes alive at once above the model: what a GPU counts)", INK)
    values = [RATIO_FIGURES["tensor_peak"](entry) if entry.get("status") == "ok" else None for entry in entries]
    canvas.bars(entries, [[(v or 0, PEAK_COLOUR)] for v in values],
                [_with_ratio(f"{mib(v)} MiB", entry, "tensor_peak") for v, entry in zip(values, entries)])
    canvas.skip(line // 2)

    canvas.text("Memory breakdown, MiB (bytes of tensors: the same on any device)", INK)
    canvas.legend([(name, colour) for _, name, colour in BREAKDOWN])
    segments, notes = [], []
    for entry in entries:
        memory = entry.get("memory") if entry.get("status") == "ok" else None
        segments.append([((memory or {}).get(key, 0), colour) for key, _, colour in BREAKDOWN])
        notes.append(_with_ratio(f"{mib((memory or {}).get('sum_of_peaks'))} MiB", entry, "memory_total"))
    canvas.bars(entries, segments, notes)
    canvas.skip(line // 2)

    canvas.text("Throughput, slices/s (same batch size)", INK)
    canvas.legend([(name, colour) for _, name, colour in THROUGHPUTS])
    canvas.grouped_bars(entries, [(key, colour) for key, _, colour in THROUGHPUTS])
    return _crop(image[:canvas.y + MARGIN])


class _Canvas:
    """Draws rows top to bottom; ``y`` is the next free row of pixels."""

    def __init__(self, image: np.ndarray, label_width: int, line: int) -> None:
        self.image = image
        self.line = line
        self.y = MARGIN
        self.label_left = MARGIN
        self.bar_left = MARGIN + label_width
        self.value_left = self.bar_left + BAR_WIDTH + (GLYPH_WIDTH + SPACING) * SCALE

    def skip(self, pixels: int) -> None:
        self.y += pixels

    def text(self, text: str, colour: tuple[int, int, int]) -> None:
        draw_text(self.image, text, MARGIN, self.y, colour, SCALE)
        self.y += self.line

    def legend(self, items: list[tuple[str, tuple[int, int, int]]]) -> None:
        """A strip of colour swatches, each followed by its name; wraps to more lines if needed."""
        swatch = text_height(SCALE) - 6
        x = self.bar_left
        for name, colour in items:
            width = swatch + 6 + text_width(name, SCALE)
            if x > self.bar_left and x + width > self.image.shape[1] - MARGIN:
                x, self.y = self.bar_left, self.y + self.line
            self.image[self.y + 2:self.y + 2 + swatch, x:x + swatch] = colour
            x = draw_text(self.image, name, x + swatch + 6, self.y, INK, SCALE) + 24
        self.y += self.line

    def bars(self, entries: list[dict[str, Any]], segments: list[list[tuple[float, tuple[int, int, int]]]],
             notes: list[str]) -> None:
        """One (stacked) bar per entry, all on one scale: the longest spans ``BAR_WIDTH``."""
        largest = max((sum(value for value, _ in row) for row in segments), default=0) or 1
        top = self.y
        for entry, row, note in zip(entries, segments, notes):
            self._label(entry, self.y + (ROW - text_height(SCALE)) // 2)
            x = float(self.bar_left)
            for value, colour in row:
                end = x + BAR_WIDTH * value / largest
                self.image[self.y + (ROW - BAR) // 2:self.y + (ROW + BAR) // 2, round(x):round(end)] = colour
                x = end
            text_top = self.y + (ROW - text_height(SCALE)) // 2
            draw_text(self.image, _status_note(entry) or note, self.value_left, text_top, INK, SCALE)
            self.y += ROW
        self._axis(top)

    def grouped_bars(self, entries: list[dict[str, Any]], figures: list[tuple[str, tuple[int, int, int]]]) -> None:
        """One bar per figure (record key, colour) per entry, top to bottom, all on one scale."""
        ok = [entry for entry in entries if entry.get("status") == "ok"]
        largest = max((entry.get(key) or 0 for entry in ok for key, _ in figures), default=0) or 1
        top = self.y
        for entry in entries:
            self._label(entry, self.y + (THROUGHPUT_ROW - text_height(SCALE)) // 2)
            status = _status_note(entry)
            if status:
                draw_text(self.image, status, self.value_left, self.y + (THROUGHPUT_ROW - text_height(SCALE)) // 2,
                          INK, SCALE)
            else:
                for index, (key, colour) in enumerate(figures):
                    value = entry.get(key) or 0
                    bar_top = self.y + 3 + index * (THROUGHPUT_BAR + 2)
                    self.image[bar_top:bar_top + THROUGHPUT_BAR,
                               self.bar_left:self.bar_left + round(BAR_WIDTH * value / largest)] = colour
                    draw_text(self.image, _with_ratio(rate(entry.get(key)), entry, key), self.value_left, bar_top,
                              INK, SCALE)
            self.y += THROUGHPUT_ROW
        self._axis(top)

    def _label(self, entry: dict[str, Any], y: int) -> None:
        draw_text(self.image, entry["label"], self.label_left, y, INK, SCALE)

    def _axis(self, top: int) -> None:
        self.image[top:self.y, self.bar_left - 1] = AXIS


def _crop(image: np.ndarray) -> np.ndarray:
    """Drop blank columns on the right beyond a margin (the value column was sized generously)."""
    inked = np.flatnonzero((image != np.array(BACKGROUND, np.uint8)).any(axis=(0, 2)))
    right = int(inked[-1]) + 1 + MARGIN if inked.size else image.shape[1]
    return np.ascontiguousarray(image[:, :min(right, image.shape[1])])


def _with_ratio(text: str, entry: dict[str, Any], name: str) -> str:
    value = (entry.get("ratios_to_reference") or {}).get(name)
    return f"{text} ({ratio(value)})" if value is not None else text


def _status_note(entry: dict[str, Any]) -> str:
    status = entry.get("status")
    return "" if status == "ok" else "out of memory" if status == "out_of_memory" else "failed"


def _wrap(text: str, columns: int) -> list[str]:
    """Greedy word wrap to ``columns`` characters."""
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > columns:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    return [*lines, current] if current else lines


__all__ = ["render_chart"]
