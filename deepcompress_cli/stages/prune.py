"""Magnitude pruning with the seed's relative-index storage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..encoding import build, dense_form, entropy_of, readable, sparse_form
from ..errors import DczError
from ..tensors import Package, Tensor
from . import (PerKind, SparsityBySize, valid_number, check_patterns, check_values, is_int_in, map_weights, no_progress,
               per_kind, require_compressible, require_finite)

DEFAULT_SPARSITY = (0.6, 0.9)  # conv, fc: the defaults
DEFAULT_INDEX_BITS = (8, 5)  # conv, fc: the paper's relative-index widths
# With retraining (--train): sparsity by layer size (SparsityBySize), and 8-bit fc gaps, which
# under Huffman coding beat 5-bit ones at the 1-3 % densities retraining allows (no fillers).
DEFAULT_TRAIN_INDEX_BITS = (5, 8)
DEFAULT_TRAIN_STEPS = 4


@dataclass
class PruneConfig:
    """What `prune` does. None (the default) means the mode's default: without retraining conv 60 % /
    fc 90 % pruned and index bits conv 8 / fc 5; with retraining (`prune_retrain`, `--train`)
    sparsity by layer size (`SparsityBySize`) and index bits conv 5 / fc 8.

    `sparsity` and `index_bits` take a PerKind, one number, or {"conv": .., "fc": ..}.
    """
    sparsity: PerKind | float | dict | None = None
    index_bits: PerKind | int | dict | None = None
    threshold_std: float | None = None  # paper's rule: threshold = Q x the layer's std (overrides sparsity)

    def __post_init__(self):
        self.sparsity = per_kind(self.sparsity, option="--sparsity")
        self.index_bits = per_kind(self.index_bits, option="--index-bits")
        if self.threshold_std is not None:
            if self.sparsity.given:
                raise DczError("give either --threshold-std or --sparsity/--layer-sparsity, not both")
            if not valid_number(lambda v: v >= 0 and math.isfinite(v), self.threshold_std):
                raise DczError(f"--threshold-std must be a finite number >= 0, got {self.threshold_std!r}")
        check_values(self.sparsity, "--sparsity", "--layer-sparsity", lambda v: 0 <= v < 1,
                     "a fraction in [0, 1)")  # also rejects nan
        check_values(self.index_bits, "--index-bits", "--layer-index-bits", is_int_in(1, 16), "an integer 1..16")

    def resolved(self, train: bool = False) -> "PruneConfig":
        """This config with every None replaced by the mode's default."""
        if self.threshold_std is not None:
            sparsity = self.sparsity  # unused: the threshold rule decides
        elif train and not isinstance(self.sparsity, SparsityBySize):
            sparsity = SparsityBySize(self.sparsity.conv, self.sparsity.fc, list(self.sparsity.layers))
        else:
            sparsity = self.sparsity.with_defaults(DEFAULT_SPARSITY)
        index_bits = self.index_bits.with_defaults(DEFAULT_TRAIN_INDEX_BITS if train else DEFAULT_INDEX_BITS)
        return PruneConfig(sparsity, index_bits, self.threshold_std)

    def check_names(self, names: list[str]) -> None:
        check_patterns("--layer-sparsity", [p for p, _ in self.sparsity.layers], names, "weight")
        check_patterns("--layer-index-bits", [p for p, _ in self.index_bits.layers], names, "weight")


def magnitude_mask(values: np.ndarray, sparsity: float | None = None, threshold_std: float | None = None):
    """(keep mask, threshold).

    By `sparsity` exactly round(n·S) weights go, the smallest magnitudes first.  Among weights of
    equal magnitude at the threshold the lowest flat (C-order) indices go first, so a layer of
    equal weights (a box filter) loses the requested fraction, not all of it, and the result is
    deterministic.  Exact zeros always go, even beyond that count: a pruned weight is a zero, so
    dropping one changes nothing but the size.  The threshold is the largest magnitude that went
    (None when none did).
    By `threshold_std` (the paper's rule) every |w| <= Q x the layer's std goes.
    """
    if threshold_std is not None:
        threshold = float(threshold_std * values.std(dtype=np.float64))
        t = values.dtype.type(max(threshold, 0.0))  # |w| > t >= 0 also drops exact zeros
        return (values > t) | (values < -t), threshold
    drop = int(round(sparsity * values.size))
    if not drop:
        return values != 0, None
    magnitude = np.abs(values).reshape(-1)
    magnitude.partition(drop - 1)  # in place: our own array, no second copy of a big layer
    t = magnitude[drop - 1]  # the drop-th smallest magnitude
    del magnitude
    if t == 0:  # at least `drop` zeros: exactly the zeros go
        return values != 0, 0.0
    flat = values.reshape(-1)
    keep = (flat > t) | (flat < -t)
    ties = np.flatnonzero((flat == t) | (flat == -t))
    below = flat.size - int(np.count_nonzero(keep)) - len(ties)  # all of these go
    keep[ties[drop - below:]] = True  # of the ties, the first (drop - below) go, the rest stay
    return keep.reshape(values.shape), float(t)


def prune_tensor(tensor: Tensor, sparsity: float | None, index_bits: int,
                 threshold_std: float | None = None) -> tuple[Tensor, dict]:
    require_compressible(tensor, "pruned")
    dense = tensor.decode()
    require_finite(tensor, dense)
    keep, threshold = magnitude_mask(dense, sparsity, threshold_std)
    new, row = store_pruned(tensor, dense, keep, index_bits)
    row["threshold"] = threshold
    return new, row


def store_pruned(tensor: Tensor, dense: np.ndarray, keep: np.ndarray, index_bits: int) -> tuple[Tensor, dict]:
    """`dense` stored with the relative index of its `keep` positions (kept values exact).

    Stored flat instead (zeros included) when the index would cost more than it saves, or when
    the reader would refuse the sparse entry: a layer pruned to (almost) nothing over more
    positions than its few entries may claim (the format's expansion bound).
    """
    form = sparse_form(dense, keep, index_bits, tensor.dtype).with_(entropy=entropy_of(tensor))
    new = build(tensor, form)
    if new.stored_bytes >= tensor.nbytes or not readable(new):
        new = build(tensor, dense_form(np.where(keep, dense, 0), tensor.dtype))
    kept = int(np.count_nonzero(keep))
    return new, {
        "name": tensor.name, "kind": tensor.kind, "weights": tensor.numel, "kept": kept,
        "sparsity": round(1 - kept / tensor.numel, 6) if tensor.numel else 0.0,  # achieved, zeros included
        "threshold": None, "index_bits": index_bits,
        "entries": len(form.gaps), "fillers": len(form.gaps) - kept,
        "stored_sparse": new.chain[0].codec == "sparse",
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def prune(package: Package, config: PruneConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    config = config.resolved(train=False)

    def encode(tensor):
        sparsity = None if config.threshold_std is not None else config.sparsity.value(tensor)
        if sparsity is not None and not 0 <= sparsity < 1:
            raise DczError(f"sparsity for {tensor.name!r} must be in [0, 1), got {sparsity}")
        return prune_tensor(tensor, sparsity, int(config.index_bits.value(tensor)), config.threshold_std)

    return map_weights(package, encode, progress, "prune", jobs)
