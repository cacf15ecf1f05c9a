"""Label-map values: what they count, and what makes them unfit for training."""

from __future__ import annotations

import numpy as np


def value_counts(values: np.ndarray) -> dict[int, int]:
    """Count per value of a non-negative integer-valued array; bincount is ~10x faster than unique."""
    values = values.ravel()
    if values.dtype.kind == "f":
        values = values.astype(np.int64)
    if values.size and int(values.max()) < 2**16:
        counts = np.bincount(values.astype(np.int64, copy=False))
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    unique, counts = np.unique(values, return_counts=True)
    return {int(v): int(c) for v, c in zip(unique, counts)}


def label_value_problem(values: np.ndarray, declared: frozenset[int] | None) -> str | None:
    """What is wrong with label values (any shape), or ``None`` when they are fit for training.

    Float label maps are common (tools that save everything as float); they pass only when every
    value is a whole number, since rounding would invent labels. ``declared`` (from dataset.json)
    limits the allowed values; ``None`` allows any non-negative integer.
    """
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            return "label map holds NaN or infinite values"
        fractional = values != np.round(values)
        if fractional.any():
            example = float(values[fractional][0])
            return f"label map holds non-integer values (e.g. {example:g}); labels must be integers"
    elif values.dtype.kind not in "iub":
        return f"label map has non-numeric dtype {values.dtype}"
    if values.size and values.min() < 0:
        return f"label map holds negative values (min {values.min():g})"
    if declared is None:
        return None
    undeclared = sorted(set(value_counts(values)) - declared)
    if undeclared:
        shown = undeclared[:10] + (["..."] if len(undeclared) > 10 else [])
        return f"label values {shown} are not declared in dataset.json (declared: {sorted(declared)})"
    return None
