"""Reading a case and checking it: channels and label on one grid, integer and declared labels.

Nothing is resampled: a label map on another grid is a problem to report, not to fix silently,
because a silent resample hides a wrong file pairing or a flipped export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from medsaga.data.dataset import CaseFiles, Dataset
from medsaga.data.labels import label_value_problem, value_counts
from medsaga.errors import InputError
from medsaga.io import Volume, read_volume


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a case: the file it concerns and what is wrong.

    ``kind`` is ``"read"`` (unreadable file), ``"grid"`` (channels or label on another grid) or
    ``"values"`` (label values that are not non-negative, declared integers).
    """

    case_id: str
    path: Path
    message: str
    kind: str

    def to_error(self) -> InputError:
        return InputError(f"case {self.case_id}: {self.message}", self.path)

    def __str__(self) -> str:
        return str(self.to_error())


@dataclass(frozen=True)
class Case:
    """A read case.

    Attributes:
        case_id: the case identifier.
        images: one :class:`Volume` per channel, each ``(I, J, K)``, on one grid.
        label: the label map ``(I, J, K)`` as stored, or ``None``.
    """

    case_id: str
    images: tuple[Volume, ...]
    label: Volume | None


@dataclass(frozen=True)
class CaseSummary:
    """What ``medsaga inspect`` shows of a case."""

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    channels: int
    label_counts: dict[int, int] | None
    problems: tuple[Problem, ...]


def load_case(files: CaseFiles) -> Case:
    """Read every channel and the label of a case (raises :class:`InputError` on unreadable files)."""
    images = tuple(read_volume(path) for path in files.images)
    label = read_volume(files.label) if files.label is not None else None
    return Case(files.case_id, images, label)


def check_case(dataset: Dataset, files: CaseFiles, case: Case) -> list[Problem]:
    """Everything wrong with a read case; empty when it is fit for training."""
    problems: list[Problem] = []
    reference = case.images[0]
    for path, channel in zip(files.images[1:], case.images[1:]):
        for difference in reference.same_grid(channel):
            problems.append(Problem(files.case_id, path, f"channel grid differs from channel 0: {difference}",
                                    "grid"))
    if case.label is not None and files.label is not None:
        for difference in reference.same_grid(case.label):
            problems.append(Problem(files.case_id, files.label, f"label grid differs from the image: {difference}",
                                    "grid"))
        problems.extend(_label_value_problems(dataset, files, case.label))
    return problems


def label_counts(label: Volume) -> dict[int, int]:
    """Voxel count per label value present, e.g. ``{0: 5_000_000, 1: 20_000}``.

    Assumes integer, non-negative values (see :func:`check_case`).
    """
    return value_counts(np.asarray(label.array))


def summarize_case(dataset: Dataset, files: CaseFiles) -> CaseSummary:
    """Read a case and describe it; unreadable files become problems, not exceptions."""
    try:
        case = load_case(files)
    except InputError as error:
        path = error.path or files.images[0]
        return CaseSummary(files.case_id, (0, 0, 0), (0.0, 0.0, 0.0), "?", len(files.images), None,
                           (Problem(files.case_id, path, error.message, "read"),))
    problems = check_case(dataset, files, case)
    image = case.images[0]
    value_problem = any(p.kind == "values" for p in problems)
    counts = label_counts(case.label) if case.label is not None and not value_problem else None
    return CaseSummary(files.case_id, image.shape, tuple(float(s) for s in image.spacing),  # type: ignore[arg-type]
                       image.orientation, len(case.images), counts, tuple(problems))


def iter_checked_cases(dataset: Dataset, cases: tuple[CaseFiles, ...] | None = None) -> Iterator[Case]:
    """Read and check cases in order, raising the first problem as an :class:`InputError`."""
    for files in dataset.cases if cases is None else cases:
        case = load_case(files)
        problems = check_case(dataset, files, case)
        if problems:
            raise problems[0].to_error()
        yield case


def _label_value_problems(dataset: Dataset, files: CaseFiles, label: Volume) -> list[Problem]:
    assert files.label is not None
    message = label_value_problem(np.asarray(label.array), dataset.declared_values)
    return [] if message is None else [Problem(files.case_id, files.label, message, "values")]
