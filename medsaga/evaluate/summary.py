"""Per-class means over cases, with the empty-mask cases counted rather than averaged in.

- **Dice and NSD means** are over the cases whose reference holds the class (a missed structure
  counts as 0). Cases where the reference lacks the class say nothing about how well it is
  delineated: a correct "both empty" would inflate the mean, a false positive would pull it down
  for a detection error; both are counted instead (``both_empty``, ``false_positive``).
- **HD95 mean** is over the cases where both masks hold the class (HD95 is undefined otherwise);
  ``missed`` and ``false_positive`` say how many cases that leaves out.
- ``dice_mean_gt_or_pred`` is the convention of nnU-Net's evaluation, for comparison with papers
  that use it: the mean over the cases where the reference *or* the prediction holds the class,
  false positives counting as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsaga.evaluate.classes import EvalClass
from medsaga.evaluate.metrics import ClassMetrics


@dataclass(frozen=True)
class ClassSummary:
    """One class over all evaluated cases (module docstring for what each mean covers).

    Attributes:
        eval_class: the class.
        cases: cases evaluated.
        reference_cases: cases whose reference holds the class (the Dice/NSD means' cases).
        dice_mean: mean Dice over ``reference_cases``; NaN when there are none.
        nsd_mean: mean NSD over ``reference_cases``; NaN when there are none.
        hd95_mean_mm: mean HD95 over the ``hd95_cases``; NaN when there are none.
        hd95_cases: cases where both the reference and the prediction hold the class.
        missed: reference holds the class, prediction does not.
        false_positive: prediction holds the class, reference does not.
        both_empty: neither holds it.
        dice_mean_gt_or_pred: mean Dice over the cases where either holds the class.
    """

    eval_class: EvalClass
    cases: int
    reference_cases: int
    dice_mean: float
    nsd_mean: float
    hd95_mean_mm: float
    hd95_cases: int
    missed: int
    false_positive: int
    both_empty: int
    dice_mean_gt_or_pred: float


def summarise_class(eval_class: EvalClass, metrics: Sequence[ClassMetrics]) -> ClassSummary:
    """The :class:`ClassSummary` of one class from its metrics in each case."""
    with_reference = [m for m in metrics if m.gt_voxels > 0]
    both = [m for m in metrics if m.status == "ok"]
    either = [m for m in metrics if m.status != "both empty"]
    return ClassSummary(
        eval_class=eval_class,
        cases=len(metrics),
        reference_cases=len(with_reference),
        dice_mean=_mean([m.dice for m in with_reference]),
        nsd_mean=_mean([m.nsd for m in with_reference]),
        hd95_mean_mm=_mean([m.hd95_mm for m in both]),
        hd95_cases=len(both),
        missed=sum(m.status == "missed" for m in metrics),
        false_positive=sum(m.status == "false positive" for m in metrics),
        both_empty=sum(m.status == "both empty" for m in metrics),
        dice_mean_gt_or_pred=_mean([m.dice for m in either]),
    )


def mean_over_classes(summaries: Sequence[ClassSummary]) -> dict[str, float]:
    """Unweighted mean of the class means (classes without any defined mean left out)."""
    return {
        "dice": _nanmean([s.dice_mean for s in summaries]),
        "nsd": _nanmean([s.nsd_mean for s in summaries]),
        "hd95_mm": _nanmean([s.hd95_mean_mm for s in summaries]),
    }


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _nanmean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return _mean(defined)
