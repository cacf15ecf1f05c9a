"""Default hyper-parameters of MedSAGa's GaLore AdamW.

They follow the MedSAGa training code (``train.py`` / ``trainer.py`` of the MedSAGa repository)
where it sets a value, and ``galore_torch.GaLoreAdamW`` (galore-torch 1.0) where it does not:

- ``DEFAULT_LR = 0.005``: MedSAGa's ``--base_lr`` (the SAMed value).
- ``DEFAULT_WEIGHT_DECAY = 0.1``: MedSAGa builds its optimizer with ``weight_decay=0.1``
  (galore-torch's own default is 0.0). Like galore-torch, the decay is decoupled and applied to the
  full weight after the update: ``w <- w - lr * wd * w``. It shrinks pretrained weights too (about
  ``exp(-wd * sum(lr))`` over a run); pass 0.0 to switch it off.
- ``DEFAULT_BETAS = (0.9, 0.999)``: MedSAGa's value, also galore-torch's default.
- ``DEFAULT_EPS = 1e-6``: MedSAGa does not set eps, so galore-torch's AdamW default applies. Note it
  is 1e-6 (the Hugging Face ``transformers`` AdamW default), not torch.optim.AdamW's 1e-8, and it is
  added to ``sqrt(v)`` *before* bias correction.
- ``DEFAULT_RANK = 8``: the projection rank of each 2-D weight. 4 to 8 is the useful range for
  SAM's ViT-B encoder (MedSAGa's own GaLore used 4); higher ranks cost memory and rarely help in
  few-shot fine-tuning.
- ``DEFAULT_UPDATE_PROJ_GAP = 200``: steps between two refreshes of the projection (an SVD of the
  current gradient); MedSAGa's ``update_freq`` and galore-torch's default.
- ``DEFAULT_SCALE = 0.25``: the factor applied to the projected-back update (GaLore's ``alpha``),
  the value the GaLore authors recommend for fine-tuning.
- ``DEFAULT_PROJ_TYPE = "std"``: project the smaller side of each matrix (see
  :func:`medsaga.optim.projector.projection_side`).
- ``DEFAULT_SVD = "full"``: exact ``torch.linalg.svd`` at each refresh, as galore-torch. Use
  ``"randomized"`` for the much cheaper randomized range finder (:mod:`medsaga.optim.lowrank`).
- ``DEFAULT_SVD_NITER = 2`` / ``DEFAULT_SVD_OVERSAMPLE = 8``: power iterations and extra sketch
  columns of the randomized SVD (``torch.svd_lowrank`` uses 2 iterations too).
- ``DEFAULT_SVD_SEED = 0``: base seed of the randomized SVD; the sketch at a refresh is drawn from a
  local generator seeded with ``svd_seed + step``, so it is reproducible and resume-exact.
"""

from __future__ import annotations

DEFAULT_LR: float = 0.005
DEFAULT_WEIGHT_DECAY: float = 0.1
DEFAULT_BETAS: tuple[float, float] = (0.9, 0.999)
DEFAULT_EPS: float = 1e-6
DEFAULT_RANK: int = 8
DEFAULT_UPDATE_PROJ_GAP: int = 200
DEFAULT_SCALE: float = 0.25
DEFAULT_PROJ_TYPE: str = "std"
DEFAULT_SVD: str = "full"
DEFAULT_SVD_NITER: int = 2
DEFAULT_SVD_OVERSAMPLE: int = 8
DEFAULT_SVD_SEED: int = 0

PROJ_TYPES: tuple[str, ...] = ("std", "reverse_std", "left", "right")
"""galore-torch projection types we implement ('full', two-sided, is not supported)."""

SVD_METHODS: tuple[str, ...] = ("full", "randomized")
