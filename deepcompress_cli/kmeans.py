"""1-D k-means for weight sharing, exact Lloyd iterations on sorted values.

With the values sorted once, every cluster is a contiguous run between two centroid midpoints:
assignment is a binary search per centroid and each mean comes from prefix sums, so one
iteration costs O(k log n) instead of O(n k).
"""

from __future__ import annotations

import numpy as np

INITS = ("linear", "density", "forgy")


def initial_centroids(sorted_values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    n = len(sorted_values)
    if init == "linear":  # the paper's choice: spread over [min, max], so large weights get centroids
        return np.linspace(sorted_values[0], sorted_values[-1], k)
    if init == "density":  # equal steps of the CDF
        return sorted_values[np.minimum(((np.arange(k) + 0.5) / k * n).astype(np.int64), n - 1)]
    if init == "forgy":  # k distinct observations at random
        rng = np.random.default_rng(seed)
        return np.sort(sorted_values[rng.choice(n, size=min(k, n), replace=False)])
    raise ValueError(f"unknown init {init!r} (choose from {', '.join(INITS)})")


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", max_iter: int = 100,
              tol: float = 1e-6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Cluster `values` into at most k centroids.

    Returns (centroids ascending, label of each value, iterations run).  Stops when no centroid
    moves more than `tol` × the value range.  An empty cluster keeps its centroid.
    """
    if len(values) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), 0
    x = np.sort(values.astype(np.float64))
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    centroids = np.sort(initial_centroids(x, k, init, seed).astype(np.float64))
    limit = tol * (x[-1] - x[0])
    iterations = 0
    for iterations in range(1, max_iter + 1):
        midpoints = (centroids[:-1] + centroids[1:]) / 2
        bounds = np.concatenate(([0], np.searchsorted(x, midpoints, side="right"), [len(x)]))
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        moved = np.max(np.abs(updated - centroids))
        centroids = np.sort(updated)
        if moved <= limit:
            break
    midpoints = (centroids[:-1] + centroids[1:]) / 2
    return centroids, np.searchsorted(midpoints, values, side="left"), iterations
