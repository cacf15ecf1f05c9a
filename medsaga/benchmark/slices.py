"""The benchmark's input: a few real training slices, cut once by the parent, read by every worker.

The parent reads a couple of cases through finetune's own data path (:func:`load_case_stacks`:
same checks, canonical slicing, intensity presets, foreground selection), keeps a few evenly spaced
slices of each at their native size, and writes them to one safetensors file. Every worker trains
on exactly these slices through :class:`~medsaga.train.data.TrainingSlices`, so letterboxing and
augmentation cost what they cost in ``medsaga finetune``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsaga.train.data import CaseStack

CASES_KEY = "case_ids"


def thin_stacks(stacks: Sequence[CaseStack], total: int) -> list[CaseStack]:
    """Keep about ``total`` slices in all, evenly spaced within each case (at least one per case).

    Images ``(N, 3, H, W)`` and labels ``(N, H, W)`` keep their native ``H, W``.
    """
    per_case = max(1, math.ceil(total / max(len(stacks), 1)))
    thinned = []
    for stack in stacks:
        count = stack.images.shape[0]
        keep = np.unique(np.linspace(0, count - 1, num=min(per_case, count)).round().astype(np.int64))
        thinned.append(CaseStack(stack.case_id, stack.images[keep].contiguous(), stack.labels[keep].contiguous()))
    return thinned


def save_slices(stacks: Sequence[CaseStack], path: Path) -> None:
    """Write the stacks to ``path`` (safetensors: ``images.i``, ``labels.i``; the case ids as metadata)."""
    from safetensors.torch import save_file

    tensors = {}
    for index, stack in enumerate(stacks):
        tensors[f"images.{index}"] = stack.images.contiguous()
        tensors[f"labels.{index}"] = stack.labels.contiguous()
    save_file(tensors, str(path), metadata={CASES_KEY: json.dumps([stack.case_id for stack in stacks])})


def load_slices(path: Path) -> list[CaseStack]:
    """The stacks :func:`save_slices` wrote, in order."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        case_ids = json.loads(handle.metadata()[CASES_KEY])
        return [CaseStack(case_id, handle.get_tensor(f"images.{index}"), handle.get_tensor(f"labels.{index}"))
                for index, case_id in enumerate(case_ids)]
