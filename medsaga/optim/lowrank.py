"""Top singular vectors of a gradient matrix: exact SVD or a seeded randomized SVD.

GaLore refreshes its projection from the top-``rank`` singular vectors of the current gradient.
The exact ``torch.linalg.svd`` costs O(m n min(m, n)); the randomized range finder of Halko,
Martinsson & Tropp (2011, Alg. 4.4) costs O(m n k) with ``k = rank + oversample`` and is what
``torch.svd_lowrank`` does. We implement it here rather than call ``torch.svd_lowrank`` because
that function draws its sketch from torch's *global* RNG (it has no ``generator`` argument):
every refresh would shift the user's random stream (data order, dropout, augmentation), and
making it reproducible would mean reseeding the global generators of every device. Ours takes an
explicit seed, draws from a private ``torch.Generator`` on the matrix's device, and leaves the
global RNG untouched, so a resumed run re-creates exactly the same sketch.

Both paths compute in float32 whatever the gradient's dtype (galore-torch does the same: half
precision SVD is unsupported or inaccurate; float64 is downcast too) and return the basis in the
gradient's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Side = Literal["left", "right"]
"""Which singular vectors span the projection: ``"left"`` -> U[:, :r] of shape (m, r);
``"right"`` -> Vh[:r] of shape (r, n)."""


def randomized_svd(
    matrix: Tensor, rank: int, *, niter: int, oversample: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Approximate truncated SVD of a 2-D float matrix with a seeded Gaussian sketch.

    Args:
        matrix: (m, n) floating-point matrix (float32 recommended).
        rank: number of singular triplets wanted; clipped to min(m, n).
        niter: subspace (power) iterations; each sharpens the gap between the kept and the dropped
            singular values, which gradients (slowly decaying spectra) need.
        oversample: extra sketch columns beyond ``rank`` (better capture of the top ``rank``).
        seed: seed of the private generator the sketch is drawn from.

    Returns:
        ``(U, S, Vh)`` with shapes (m, r), (r,), (r, n), r = min(rank, m, n); singular values in
        descending order, as ``torch.linalg.svd(..., full_matrices=False)`` truncated to r.
    """
    rows, cols = matrix.shape
    width = min(rank + oversample, rows, cols)
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    sketch = torch.randn(cols, width, generator=generator, device=matrix.device, dtype=matrix.dtype)
    # (m, k) orthonormal basis of the sketched range of the matrix.
    basis = torch.linalg.qr(matrix @ sketch).Q
    for _ in range(niter):
        # Re-orthonormalise at each half step: plain powers of A Aᵀ would round the smaller kept
        # singular directions away in float32.
        basis = torch.linalg.qr(matrix.mT @ basis).Q  # (n, k)
        basis = torch.linalg.qr(matrix @ basis).Q  # (m, k)
    # The small (k, n) problem holds the top of the spectrum; its exact SVD is cheap.
    u_small, singular, vh = torch.linalg.svd(basis.mT @ matrix, full_matrices=False)
    kept = min(rank, width)
    return (basis @ u_small)[:, :kept], singular[:kept], vh[:kept]


def top_singular_basis(
    grad: Tensor,
    rank: int,
    side: Side,
    *,
    method: str = "full",
    seed: int = 0,
    niter: int = 2,
    oversample: int = 8,
) -> Tensor:
    """Orthonormal basis of the top-``rank`` singular subspace of ``grad`` on one side.

    Args:
        grad: (m, n) gradient of a 2-D weight, any float dtype.
        rank: subspace dimension; clipped to min(m, n) (as ``U[:, :rank]`` would be).
        side: ``"left"`` for the column space (U), ``"right"`` for the row space (Vh).
        method: ``"full"`` (``torch.linalg.svd``) or ``"randomized"`` (:func:`randomized_svd`).
        seed, niter, oversample: randomized method only.

    Returns:
        (m, r) with orthonormal columns for ``"left"``; (r, n) with orthonormal rows for
        ``"right"``; r = min(rank, m, n); dtype and device of ``grad``.
    """
    matrix = grad if grad.dtype == torch.float32 else grad.float()
    if method == "full":
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    elif method == "randomized":
        u, _, vh = randomized_svd(matrix, rank, niter=niter, oversample=oversample, seed=seed)
    else:
        raise ValueError(f"unknown SVD method {method!r}: expected 'full' or 'randomized'")
    basis = u[:, :rank] if side == "left" else vh[:rank, :]
    # Contiguous, as it will be after a checkpoint round trip: a strided slice of U takes another
    # BLAS path in the projections and rounds differently, so a resumed run would drift by an ulp
    # per step from the uninterrupted one.
    return basis.to(grad.dtype).contiguous()
