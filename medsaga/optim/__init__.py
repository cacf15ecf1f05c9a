"""Optimizers: our GaLore AdamW (resume-safe, layer-wise, randomized SVD) and the lr schedule.

Importing this package never imports ``galore_torch`` (a test-only reference).
"""

from medsaga.optim.defaults import (
    DEFAULT_BETAS,
    DEFAULT_EPS,
    DEFAULT_LR,
    DEFAULT_PROJ_TYPE,
    DEFAULT_RANK,
    DEFAULT_SCALE,
    DEFAULT_SVD,
    DEFAULT_UPDATE_PROJ_GAP,
    DEFAULT_WEIGHT_DECAY,
)
from medsaga.optim.galore import GaLoreAdamW, check_layerwise_compatible, galore_param_groups
from medsaga.optim.lowrank import randomized_svd, top_singular_basis
from medsaga.optim.projector import projection_side
from medsaga.optim.schedule import warmup_poly_lr

__all__ = [
    "DEFAULT_BETAS",
    "DEFAULT_EPS",
    "DEFAULT_LR",
    "DEFAULT_PROJ_TYPE",
    "DEFAULT_RANK",
    "DEFAULT_SCALE",
    "DEFAULT_SVD",
    "DEFAULT_UPDATE_PROJ_GAP",
    "DEFAULT_WEIGHT_DECAY",
    "GaLoreAdamW",
    "check_layerwise_compatible",
    "galore_param_groups",
    "projection_side",
    "randomized_svd",
    "top_singular_basis",
    "warmup_poly_lr",
]
