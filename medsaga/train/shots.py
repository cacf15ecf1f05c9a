"""Which cases train and which validate: K shots chosen reproducibly from the seed, or named."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsaga.data.dataset import Dataset
from medsaga.errors import InputError


@dataclass(frozen=True)
class CaseSplit:
    """Case ids for training (the shots) and for validation (held out)."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def choose_cases(dataset: Dataset, shots: int, seed: int, *, cases: tuple[str, ...] = (),
                 val: int = 0) -> CaseSplit:
    """Pick ``shots`` labelled cases (or take ``cases``), and ``val`` others for validation.

    The draw is a permutation of the sorted labelled case ids by ``numpy.random.default_rng(seed)``:
    the same dataset and seed give the same shots on any machine. Validation cases come from the
    rest of the same permutation.

    Raises:
        InputError: no labelled cases, ``shots`` or ``val`` out of range, unknown or unlabelled
            names in ``cases``.
    """
    labelled = sorted(case.case_id for case in dataset.labelled_cases)
    if not labelled:
        raise InputError("the dataset has no label maps (labelsTr/ or *_seg files): nothing to fine-tune on",
                         dataset.root)
    if cases:
        known = {case.case_id for case in dataset.cases}
        for case_id in cases:
            if case_id not in known:
                dataset.case(case_id)  # raises, listing the known ids
            if case_id not in labelled:
                raise InputError(f"case {case_id} has no label map", dataset.root)
        if len(set(cases)) != len(cases):
            raise InputError(f"--cases names a case twice: {', '.join(cases)}")
        train = tuple(cases)
    else:
        if shots < 1:
            raise InputError(f"--shots must be at least 1, got {shots}")
        if shots > len(labelled):
            raise InputError(f"--shots {shots} is more than the {len(labelled)} labelled cases", dataset.root)
        order = np.random.default_rng(seed).permutation(len(labelled))
        train = tuple(labelled[i] for i in sorted(order[:shots]))
    rest = [case_id for case_id in _permuted(labelled, seed) if case_id not in train]
    if val < 0 or val > len(rest):
        raise InputError(f"--val {val}: only {len(rest)} labelled cases remain after the {len(train)} shots",
                         dataset.root)
    return CaseSplit(train, tuple(sorted(rest[:val])))


def _permuted(ids: list[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]
