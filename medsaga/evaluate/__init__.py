"""``medsaga evaluate``: predicted label maps against reference label maps, in millimetres.

Per case and class: Dice, HD95 (mm) and normalised surface Dice at a tolerance (mm), from MONAI,
with empty masks decided by an explicit rule (:mod:`medsaga.evaluate.metrics`) and per-class
means that count, rather than average in, the cases where the reference lacks the class
(:mod:`medsaga.evaluate.summary`). Outputs: :mod:`medsaga.evaluate.outputs` (CSV, JSON, and the
layout of ``--out``); the pictures of ``--overlay`` and the page are drawn by :mod:`medsaga.report`,
which imports this package, never the other way round.

Importing this package is cheap: torch and MONAI are imported when metrics are computed.
"""

from medsaga.evaluate.classes import ClassSet, EvalClass, classes_from_values, load_class_set
from medsaga.evaluate.matching import CasePair, Matching, match_cases, match_images
from medsaga.evaluate.metrics import STATUSES, ClassMetrics, Status, binary_metrics
from medsaga.evaluate.run import (DEFAULT_TOLERANCE_MM, CaseResult, Evaluation, case_metrics, check_inputs,
                                  evaluate, present_classes)
from medsaga.evaluate.summary import ClassSummary, mean_over_classes

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "STATUSES",
    "CasePair",
    "CaseResult",
    "ClassMetrics",
    "ClassSet",
    "ClassSummary",
    "EvalClass",
    "Evaluation",
    "Matching",
    "Status",
    "binary_metrics",
    "case_metrics",
    "check_inputs",
    "classes_from_values",
    "evaluate",
    "load_class_set",
    "match_cases",
    "match_images",
    "mean_over_classes",
    "present_classes",
]
