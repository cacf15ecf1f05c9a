"""Which K of N scans to label: selection rules on a distance matrix between scan descriptors.

Two rules, both deterministic (ties go to the lower index, i.e. the first case id in sorted order):

- ``kcenter``: greedy k-center (Gonzalez's farthest-first traversal). The first pick is the
  cohort's medoid (the scan with the smallest summed distance to all others); each next pick is
  the scan farthest from every pick so far. It minimises, within a factor of 2, the *largest*
  distance from any scan to its nearest pick: the picks cover the cohort, outliers included.
- ``kmedoids``: the K scans that minimise the *summed* distance from every scan to its nearest
  pick (PAM: greedy build, then swaps while one lowers the sum). The picks are typical scans,
  each standing for a group; an outlier is picked only when it is a group of its own.

For K = 1 both give the medoid. ``kmedoids`` is the default: on MALF brain MRI its picks trained
better models than k-center's wherever the two differed (docs/performance.md, *Selected against random shots*).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES: tuple[str, ...] = ("kcenter", "kmedoids")
DEFAULT_RULE = "kmedoids"


@dataclass(frozen=True)
class Picks:
    """The chosen scans, in the order they were picked.

    Attributes:
        indices: ``(K,)`` indices into the cohort.
        radius: ``(K,)`` after each pick, the largest distance from any scan to its nearest pick so
            far (k-center's objective): how well the picks cover the cohort.
        cost: ``(K,)`` after each pick, the mean distance from every scan to its nearest pick
            (k-medoids' objective).
        nearest_pick: ``(N,)`` index into ``indices`` of each scan's nearest pick.
    """

    indices: np.ndarray
    radius: np.ndarray
    cost: np.ndarray
    nearest_pick: np.ndarray


def pairwise_distances(descriptors: np.ndarray) -> np.ndarray:
    """``(N, D)`` descriptors → ``(N, N)`` Euclidean distances (float64, exact zeros on the diagonal)."""
    x = np.asarray(descriptors, dtype=np.float64)
    squared = np.einsum("nd,nd->n", x, x)
    gram = x @ x.T
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0.0))
    np.fill_diagonal(distances, 0.0)
    return distances


def pick(distances: np.ndarray, k: int, rule: str = DEFAULT_RULE) -> Picks:
    """Choose ``k`` of the ``N`` scans of the ``(N, N)`` distance matrix by ``rule``."""
    n = distances.shape[0]
    if distances.shape != (n, n):
        raise ValueError(f"expected a square distance matrix, got {distances.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n} scans")
    if rule == "kcenter":
        order = _k_center(distances, k)
    elif rule == "kmedoids":
        order = _k_medoids(distances, k)
    else:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of: {', '.join(RULES)}")
    return _describe(distances, order)


def _medoid(distances: np.ndarray) -> int:
    return int(np.argmin(distances.sum(axis=1)))


def _k_center(distances: np.ndarray, k: int) -> list[int]:
    order = [_medoid(distances)]
    nearest = distances[order[0]].copy()  # each scan's distance to its nearest pick
    for _ in range(1, k):
        candidate = int(np.argmax(nearest))
        order.append(candidate)
        np.minimum(nearest, distances[candidate], out=nearest)
    return order


def _k_medoids(distances: np.ndarray, k: int) -> list[int]:
    """PAM: build greedily (each step adds the scan that lowers the summed distance most), then
    swap a pick for a non-pick while that lowers the sum. The picks keep their build order."""
    order = [_medoid(distances)]
    nearest = distances[order[0]].copy()
    for _ in range(1, k):
        # Summed distance if each candidate c were added: sum over scans of min(nearest, d[c]).
        totals = np.minimum(nearest[None, :], distances).sum(axis=1)
        totals[order] = np.inf
        candidate = int(np.argmin(totals))
        order.append(candidate)
        np.minimum(nearest, distances[candidate], out=nearest)
    best = float(nearest.sum())
    improved = True
    while improved:
        improved = False
        for slot in range(k):
            others = [index for position, index in enumerate(order) if position != slot]
            base = distances[others].min(axis=0) if others else np.full(distances.shape[0], np.inf)
            totals = np.minimum(base[None, :], distances).sum(axis=1)
            totals[order] = np.inf
            candidate = int(np.argmin(totals))
            # A relative margin: float sums that differ only by rounding must not swap forever.
            if totals[candidate] < best * (1 - 1e-12):
                order[slot] = candidate
                best = float(totals[candidate])
                improved = True
    return order


def _describe(distances: np.ndarray, order: list[int]) -> Picks:
    radius, cost = [], []
    nearest = np.full(distances.shape[0], np.inf)
    for index in order:
        np.minimum(nearest, distances[index], out=nearest)
        radius.append(float(nearest.max()))
        cost.append(float(nearest.mean()))
    indices = np.asarray(order, dtype=np.int64)
    return Picks(indices, np.asarray(radius), np.asarray(cost), np.argmin(distances[indices], axis=0))
