"""The report's plots, drawn with matplotlib (Agg) and returned as PNG bytes.

- :func:`training_curves`: training loss per step (raw and a moving average) and the validation
  Dice after each validation;
- :func:`memory_breakdown`: the device-independent memory of a training step, stacked;
- :func:`dice_per_case`: each case's Dice per class, one dot per case, the class mean as a bar;
- :func:`new_figure`, :func:`style_axes`, :func:`figure_png`: the pieces other plots share
  (``medsaga select``'s cohort map).

No pyplot: each figure is a :class:`matplotlib.figure.Figure` of its own, so nothing global is kept
between calls and no display is needed. Colours are from the Okabe–Ito palette
(:mod:`medsaga.report.overlays`), the same as the overlays' classes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from medsaga.report.overlays import class_colour

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
INK = "#222222"
MUTED = "#888888"
MIB = 2 ** 20

# report.json "memory" keys, their names on the plot, and colours (grey, then Okabe–Ito).
MEMORY_PARTS: tuple[tuple[str, str, str], ...] = (
    ("frozen_parameters", "frozen parameters", "#b9b9b9"),
    ("trainable_parameters", "trainable parameters", "#0072b2"),
    ("gradients", "gradients", "#e69f00"),
    ("optimizer_state", "optimizer state", "#d55e00"),
    ("saved_activations", "saved activations", "#009e73"),
)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a picture ``(H, W, 3)`` uint8 as PNG (matplotlib's writer, through Pillow)."""
    from matplotlib.image import imsave

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png", metadata={"Software": None})
    return buffer.getvalue()


def training_curves(steps: Sequence[int], losses: Sequence[float], validation_steps: Sequence[int] = (),
                    validation_dice: Sequence[float] = ()) -> bytes:
    """Loss against step (left) and validation Dice against step (right, when any), as PNG bytes.

    Args:
        steps, losses: one training step each ``(S,)``; non-finite losses are left out.
        validation_steps, validation_dice: one validation each ``(V,)``.
    """
    steps_array, loss_array = np.asarray(steps, float), np.asarray(losses, float)
    finite = np.isfinite(loss_array)
    steps_array, loss_array = steps_array[finite], loss_array[finite]
    with_validation = len(validation_dice) > 0
    figure = new_figure(9.6 if with_validation else 6.4, 3.2)
    axes = figure.subplots(1, 2 if with_validation else 1, squeeze=False)[0]
    loss_axes = axes[0]
    if steps_array.size:
        loss_axes.plot(steps_array, loss_array, color="#56b4e9", linewidth=0.8, alpha=0.55,
                       label="per step")
        window = max(1, steps_array.size // 20)
        if window > 1:
            loss_axes.plot(steps_array[window - 1:], moving_average(loss_array, window), color="#0072b2",
                           linewidth=1.8, label=f"mean of {window} steps")
        loss_axes.legend(frameon=False, fontsize=8)
    else:
        loss_axes.text(0.5, 0.5, "no steps recorded", ha="center", va="center", color=MUTED,
                       transform=loss_axes.transAxes)
    style_axes(loss_axes, "training loss (0.2·CE + 0.8·Dice)", "step", "loss")
    last = max([*steps_array.tolist(), *map(float, validation_steps), 1.0])
    loss_axes.set_xlim(0, last * 1.02)
    if with_validation:
        dice_axes = axes[1]
        dice_axes.plot(np.asarray(validation_steps, float), np.asarray(validation_dice, float), marker="o",
                       markersize=4, color="#d55e00", linewidth=1.5)
        dice_axes.set_ylim(0, 1.02)
        dice_axes.set_xlim(0, last * 1.02)
        style_axes(dice_axes, "validation Dice (mean over classes)", "step", "Dice")
    return figure_png(figure)


def memory_breakdown(memory: Mapping[str, float]) -> bytes:
    """One horizontal stacked bar of a training step's memory (report.json ``memory``), in MiB."""
    figure = new_figure(8.0, 1.9)
    axes = figure.subplots()
    left = 0.0
    for key, name, colour in MEMORY_PARTS:
        value = float(memory.get(key) or 0) / MIB
        axes.barh([0], [value], left=left, color=colour, label=f"{name} {value:,.1f}", height=0.6)
        left += value
    axes.set_yticks([])
    axes.set_xlim(0, max(left, 1e-9) * 1.02)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.5), ncol=3, frameon=False, fontsize=8)
    style_axes(axes, f"memory of a training step: {left:,.1f} MiB (sum of peaks)", "MiB", None)
    axes.grid(False)
    return figure_png(figure)


def dice_per_case(class_names: Sequence[str], values: Sequence[int], dice: np.ndarray) -> bytes:
    """Dice per case and class: one dot per case, the mean over the cases that have a value as a bar.

    Args:
        class_names: ``(C,)`` names, the x-axis.
        values: ``(C,)`` label values (their colours).
        dice: ``(N, C)`` float, NaN where a case has no Dice for the class (both empty).
    """
    dice = np.asarray(dice, float).reshape(-1, len(class_names))
    figure = new_figure(max(3.2, 1.0 + 0.9 * len(class_names)), 3.0)
    axes = figure.subplots()
    positions = np.arange(len(class_names))
    defined = np.isfinite(dice)
    counts = defined.sum(axis=0)
    means = np.where(counts > 0, np.nansum(dice, axis=0) / np.maximum(counts, 1), np.nan)
    colours = [np.array(class_colour(v)) / 255 for v in values]
    axes.bar(positions, np.nan_to_num(means), width=0.6, color=colours, alpha=0.35)
    # A fixed, per-case jitter (no randomness: the same data draws the same picture).
    jitter = (np.linspace(-0.18, 0.18, dice.shape[0]) if dice.shape[0] > 1 else np.zeros(dice.shape[0]))
    for column, colour in enumerate(colours):
        rows = defined[:, column]
        axes.scatter(positions[column] + jitter[rows], dice[rows, column], s=18, color=colour, edgecolor=INK,
                     linewidth=0.5, zorder=3)
    axes.set_xticks(positions, list(class_names), rotation=30 if len(class_names) > 6 else 0, ha="right"
                    if len(class_names) > 6 else "center")
    axes.set_ylim(0, 1.02)
    style_axes(axes, "Dice per case (dots) and mean (bars)", None, "Dice")
    return figure_png(figure)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means of ``window`` consecutive values of ``(S,)`` → ``(S - window + 1,)`` (one cumulative sum)."""
    totals = np.cumsum(np.concatenate([[0.0], np.asarray(values, float)]))
    return (totals[window:] - totals[:-window]) / window


def new_figure(width: float, height: float) -> "Figure":
    """A figure of ``width`` × ``height`` inches at :data:`DPI`, on its own (no pyplot, no display)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def style_axes(axes, title: str, xlabel: str | None, ylabel: str | None) -> None:  # type: ignore[no-untyped-def]
    """The report's look: a left-aligned title, dark ink, no top/right spines, a faint grid."""
    axes.set_title(title, fontsize=10, color=INK, loc="left")
    if xlabel:
        axes.set_xlabel(xlabel, fontsize=9, color=INK)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=9, color=INK)
    axes.tick_params(labelsize=8, colors=INK)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.grid(alpha=0.25, linewidth=0.6)


def figure_png(figure: "Figure") -> bytes:
    """The figure as PNG, cropped to what is drawn (legends outside the axes included)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    return buffer.getvalue()


__all__ = ["DPI", "INK", "MEMORY_PARTS", "MUTED", "dice_per_case", "figure_png", "memory_breakdown", "moving_average",
           "new_figure", "png_bytes", "style_axes", "training_curves"]
