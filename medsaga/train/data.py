"""Training slices: the chosen cases, sliced and normalised exactly as prediction will do it.

Slices are kept at their native size (letterboxing happens per batch), so memory grows with the
data, not with the model's input size. Only the slices that hold foreground train, plus a capped
number of empty ones (the model must also learn to say "nothing here", but a volume is mostly
empty slices that would drown the few-shot signal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medsaga.data.checks import iter_checked_cases
from medsaga.data.dataset import Dataset
from medsaga.data.intensity import presets_for_channels
from medsaga.data.resize import letterbox_images, letterbox_labels
from medsaga.data.slices import volume_to_slices
from medsaga.errors import InputError


@dataclass(frozen=True)
class SliceSettings:
    """How volumes become model inputs; recorded in config.json so prediction repeats it.

    Attributes:
        plane: ``axial``, ``coronal`` or ``sagittal``.
        mode: how the 3 input channels are filled: ``repeat``, ``neighbours`` or ``modalities``.
        presets: one intensity preset name per image channel.
        image_size: the model's square input side.
        empty_ratio: at most this many empty slices per foreground slice train.
    """

    plane: str
    mode: str
    presets: tuple[str, ...]
    image_size: int
    empty_ratio: float = 0.25


@dataclass(frozen=True)
class LabelMapping:
    """Dataset label values → model classes ``0..C`` (background 0), e.g. ``{0:0, 1:1, 4:2}``."""

    values: tuple[int, ...]  # dataset value of class c at index c (values[0] == 0)
    names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C``."""
        return len(self.values) - 1

    def lookup_table(self) -> np.ndarray:
        """``table[value] = class``: maps a label array in one vectorised indexing step."""
        table = np.zeros(max(self.values) + 1, dtype=np.int64)
        table[list(self.values)] = np.arange(len(self.values))
        return table


def label_mapping(dataset: Dataset) -> LabelMapping:
    """The classes from ``dataset.json``'s labels (background must be 0)."""
    if not dataset.labels:
        raise InputError("dataset.json must declare 'labels' (name -> value) to fine-tune", dataset.root)
    by_value = {value: name for name, value in dataset.labels.items()}
    if 0 not in by_value:
        raise InputError("dataset.json must declare a background label with value 0", dataset.root / "dataset.json")
    values = tuple(sorted(by_value))
    return LabelMapping(values, tuple(by_value[v] for v in values))


def default_presets(dataset: Dataset, explicit: str | None = None) -> tuple[str, ...]:
    """One intensity preset per channel, chosen from the channel names (or ``explicit``)."""
    choices = presets_for_channels({str(i): name for i, name in enumerate(dataset.channel_names)}, explicit)
    return tuple(choice.name for choice in choices)


@dataclass
class CaseStack:
    """One case's kept slices at native size: images ``(N, 3, H, W)`` float32, labels ``(N, H, W)`` int64."""

    case_id: str
    images: torch.Tensor
    labels: torch.Tensor


class TrainingSlices:
    """All kept slices of the training cases, served as letterboxed batches."""

    def __init__(self, stacks: Sequence[CaseStack], image_size: int) -> None:
        self.stacks = list(stacks)
        self.image_size = image_size
        self.index = [(c, s) for c, stack in enumerate(self.stacks) for s in range(stack.images.shape[0])]
        if not self.index:
            raise InputError("the chosen cases hold no labelled slices to train on")

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Slices at ``positions`` → images ``(B, 3, S, S)`` float32, labels ``(B, S, S)`` int64."""
        images, labels = [], []
        for position in positions:
            case, slice_index = self.index[position]
            stack = self.stacks[case]
            boxed, box = letterbox_images(stack.images[slice_index:slice_index + 1], self.image_size)
            images.append(boxed)
            labels.append(letterbox_labels(stack.labels[slice_index:slice_index + 1], box))
        return torch.cat(images), torch.cat(labels)


def select_slices(labels: np.ndarray, empty_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the slices to keep from ``labels (N, H, W)``: every slice with foreground, plus
    at most ``empty_ratio`` × that many empty slices, drawn by ``rng``; sorted."""
    has_foreground = labels.reshape(labels.shape[0], -1).any(axis=1)
    foreground = np.flatnonzero(has_foreground)
    empty = np.flatnonzero(~has_foreground)
    keep_empty = min(len(empty), int(round(empty_ratio * len(foreground))))
    chosen_empty = rng.choice(empty, size=keep_empty, replace=False) if keep_empty else np.empty(0, np.int64)
    return np.sort(np.concatenate([foreground, chosen_empty]).astype(np.int64))


def load_case_stacks(dataset: Dataset, case_ids: Sequence[str], settings: SliceSettings, mapping: LabelMapping,
                     seed: int, on_case: Callable[[str], None] | None = None) -> list[CaseStack]:
    """Read, check, slice and normalise each case; keep its training slices.

    Raises:
        InputError: a case fails its checks (grid, label values) or cannot be read.
    """
    files = tuple(dataset.case(case_id) for case_id in case_ids)
    table = mapping.lookup_table()
    stacks = []
    for index, case in enumerate(iter_checked_cases(dataset, files)):
        assert case.label is not None
        slices = volume_to_slices(list(case.images), case.label, presets=list(settings.presets),
                                  plane=settings.plane, mode=settings.mode)
        assert slices.labels is not None
        classes = table[slices.labels]
        keep = select_slices(classes, settings.empty_ratio, np.random.default_rng([seed, index]))
        stacks.append(CaseStack(case.case_id, torch.from_numpy(slices.images[keep]),
                                torch.from_numpy(classes[keep])))
        if on_case is not None:
            on_case(case.case_id)
    return stacks
