"""Weight sharing: per-layer 1-D k-means, the layer's weights replaced by centroid indices."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..encoding import Shared, build, dense_form, parse
from ..kmeans import kmeans_1d
from ..tensors import Package, Tensor, uint_dtype
from ..errors import DczError
from . import (PerKind, valid_number, check_patterns, check_values, is_int_in, map_weights, no_progress, per_kind,
               require_finite)

DEFAULT_BITS = (8, 5)  # conv, fc: 256 and 32 shared weights, as in the paper
DEFAULT_TRAIN_BITS = (4, 4)  # with trained centroids 16 shared weights per layer suffice


INITS = ("linear", "density", "forgy")


@dataclass
class ShareConfig:
    """What `share` does. `bits` (a PerKind, one integer, or {"conv": .., "fc": ..}) None means the
    mode's default: conv 8 / fc 5, or 4 / 4 with trained centroids (`share_retrain`, `--train`)."""
    bits: PerKind | int | dict | None = None
    init: str = "linear"
    max_iter: int = 100
    tol: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        self.bits = per_kind(self.bits, option="--bits")
        check_values(self.bits, "--bits", "--layer-bits", is_int_in(1, 16), "an integer 1..16")
        if self.init not in INITS:
            raise DczError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if not valid_number(is_int_in(1, 10000), self.max_iter):
            raise DczError(f"--max-iter must be an integer 1..10000, got {self.max_iter!r}")
        if not valid_number(lambda v: 0 <= v < math.inf, self.tol):
            raise DczError(f"--tol must be a finite number >= 0, got {self.tol!r}")
        if not valid_number(is_int_in(-(1 << 63), (1 << 64) - 1), self.seed):
            raise DczError(f"--seed must be an integer, got {self.seed!r}")

    def resolved(self, train: bool = False) -> "ShareConfig":
        """This config with every None replaced by the mode's default."""
        return replace(self, bits=self.bits.with_defaults(DEFAULT_TRAIN_BITS if train else DEFAULT_BITS))

    def check_names(self, names: list[str]) -> None:
        check_patterns("--layer-bits", [p for p, _ in self.bits.layers], names, "weight")


def cluster(values: np.ndarray, bits: int, config: ShareConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(centroids, indices, k-means iterations).  Exact zeros keep a centroid of their own, 0.0.

    Zeros are pruned weights (or sparse fillers): they must stay exactly zero, so they are not
    clustered; the other values share the remaining 2^bits - 1 (or 2^bits) centroids.
    """
    zero = values == 0
    reserve = bool(zero.any())
    centroids, labels, iterations = kmeans_1d(values[~zero], (1 << bits) - reserve, config.init,
                                              config.max_iter, config.tol, config.seed)
    centroids = centroids.astype(values.dtype)
    indices = np.zeros(len(values), dtype=np.int64)
    indices[~zero] = labels + reserve
    table = np.concatenate(([0], centroids)).astype(values.dtype) if reserve else centroids
    used, compact = np.unique(indices, return_inverse=True)  # drop centroids no weight uses
    return table[used], compact.astype(uint_dtype(bits)), iterations


def share_tensor(tensor: Tensor, bits: int, config: ShareConfig) -> tuple[Tensor, dict]:
    if not valid_number(is_int_in(1, 16), bits):  # more would not fit the codebook's index width
        raise DczError(f"--bits must be an integer 1..16, got {bits!r}")
    form = parse(tensor)
    values = form.entry_values()
    require_finite(tensor, values)
    centroids, indices, iterations = cluster(values, bits, config)
    error = centroids[indices].astype(np.float64) - values
    new = build(tensor, form.with_(values=Shared(centroids, indices, bits)))
    if new.stored_bytes > tensor.nbytes:  # tiny layer: the codebook costs more than it saves
        new = build(tensor, dense_form(new.decode(), tensor.dtype))  # same shared values, stored flat
    return new, {
        "name": tensor.name, "kind": tensor.kind, "weights": tensor.numel, "clustered": len(values),
        "bits": bits, "centroids": len(centroids), "iterations": iterations,
        "rmse": float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0,
        "max_error": float(np.max(np.abs(error))) if len(error) else 0.0,
        "stored_shared": any(s.codec == "codebook" for s in new.chain),
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def share(package: Package, config: ShareConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    config = config.resolved(train=False)
    return map_weights(package, lambda t: share_tensor(t, int(config.bits.value(t)), config), progress, "share", jobs)
