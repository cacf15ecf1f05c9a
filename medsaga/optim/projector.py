"""GaLore's one-sided projection of a 2-D gradient, and its way back.

For a weight W of shape (m, n) and rank r, GaLore keeps Adam's moments in a low-rank space:

- ``"right"`` side, basis P of shape (r, n) (top right singular vectors):
  ``G -> G Pᵀ`` of shape (m, r), and back ``N -> N P`` of shape (m, n);
- ``"left"`` side, basis P of shape (m, r) (top left singular vectors):
  ``G -> Pᵀ G`` of shape (r, n), and back ``N -> P N``.

``proj_type="std"`` projects the longer dimension away (tall or square matrices, m >= n, use the
right side; wide ones the left), so the moments take r * max(m, n) numbers instead of m * n.
"""

from __future__ import annotations

from torch import Tensor

from medsaga.optim.lowrank import Side


def projection_side(shape: tuple[int, ...], proj_type: str) -> Side:
    """Which side a (m, n) weight is projected on, with galore-torch's rule for each proj_type.

    ``"std"``: right if m >= n else left; ``"reverse_std"``: the opposite; ``"left"`` /
    ``"right"``: always that side.
    """
    rows, cols = shape
    tall = rows >= cols
    if proj_type == "std":
        return "right" if tall else "left"
    if proj_type == "reverse_std":
        return "left" if tall else "right"
    if proj_type in ("left", "right"):
        return proj_type  # type: ignore[return-value]
    raise ValueError(
        f"unsupported proj_type {proj_type!r}: expected 'std', 'reverse_std', 'left' or 'right'"
    )


def project(grad: Tensor, basis: Tensor, side: Side) -> Tensor:
    """(m, n) gradient -> (m, r) on the right side, (r, n) on the left side."""
    return grad @ basis.t() if side == "right" else basis.t() @ grad


def project_back(low_rank: Tensor, basis: Tensor, side: Side, scale: float) -> Tensor:
    """(m, r) or (r, n) low-rank update -> (m, n), multiplied by ``scale``.

    The product is formed first and scaled after (not folded into the step size) so that the
    rounding matches galore-torch bit for bit.
    """
    full = low_rank @ basis if side == "right" else basis @ low_rank
    return full * scale
