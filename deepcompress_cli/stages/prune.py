"""Magnitude pruning with the seed's relative-index storage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..encoding import build, dense_form, entropy_of, sparse_form
from ..errors import DczError
from ..tensors import Package, Tensor
from . import PerKind, map_weights, no_progress, require_finite

DEFAULT_SPARSITY = (0.6, 0.9)  # conv, fc: the defaults
DEFAULT_INDEX_BITS = (8, 5)  # conv, fc: the paper's relative-index widths
# With retraining (--train): sparsity by layer size (SparsityBySize), and 8-bit fc gaps, which
# under Huffman coding beat 5-bit ones at the 1-3 % densities retraining allows (no fillers).
DEFAULT_TRAIN_INDEX_BITS = (5, 8)
DEFAULT_TRAIN_STEPS = 4


@dataclass
class PruneConfig:
    sparsity: PerKind = field(default_factory=lambda: PerKind(*DEFAULT_SPARSITY))
    index_bits: PerKind = field(default_factory=lambda: PerKind(*DEFAULT_INDEX_BITS))
    threshold_std: float | None = None  # paper's rule: threshold = Q x the layer's std (overrides sparsity)


def magnitude_mask(values: np.ndarray, sparsity: float | None = None, threshold_std: float | None = None):
    """(keep mask, threshold).  Weights with |w| <= threshold are dropped, and exact zeros always.

    By sparsity the threshold is the n·S-th smallest magnitude, so at least that fraction goes
    (ties at the threshold go too: the result never depends on element order).
    """
    if threshold_std is not None:
        threshold = float(threshold_std * values.std(dtype=np.float64))
    else:
        drop = int(round(sparsity * values.size))
        if not drop:
            return values != 0, -1.0
        magnitude = np.abs(values).reshape(-1)
        magnitude.partition(drop - 1)  # in place: our own array, no second copy of a big layer
        threshold = float(magnitude[drop - 1])
        del magnitude
    threshold_ = values.dtype.type(max(threshold, 0.0))  # |w| > t >= 0 also drops exact zeros
    return (values > threshold_) | (values < -threshold_), threshold


def prune_tensor(tensor: Tensor, sparsity: float | None, index_bits: int,
                 threshold_std: float | None = None) -> tuple[Tensor, dict]:
    dense = tensor.decode()
    require_finite(tensor, dense)
    keep, threshold = magnitude_mask(dense, sparsity, threshold_std)
    new, row = store_pruned(tensor, dense, keep, index_bits)
    row["threshold"] = threshold
    return new, row


def store_pruned(tensor: Tensor, dense: np.ndarray, keep: np.ndarray, index_bits: int) -> tuple[Tensor, dict]:
    """`dense` stored with the relative index of its `keep` positions (kept values exact)."""
    form = sparse_form(dense, keep, index_bits, tensor.dtype).with_(entropy=entropy_of(tensor))
    new = build(tensor, form)
    if new.stored_bytes >= tensor.nbytes:  # nearly dense: the index costs more than it saves
        new = build(tensor, dense_form(np.where(keep, dense, 0), tensor.dtype))
    kept = int(np.count_nonzero(keep))
    return new, {
        "name": tensor.name, "kind": tensor.kind, "weights": tensor.numel, "kept": kept,
        "sparsity": round(1 - kept / tensor.numel, 6) if tensor.numel else 0.0,
        "threshold": None, "index_bits": index_bits,
        "entries": len(form.gaps), "fillers": len(form.gaps) - kept,
        "stored_sparse": new.chain[0].codec == "sparse",
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def prune(package: Package, config: PruneConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    def encode(tensor):
        sparsity = None if config.threshold_std is not None else config.sparsity.value(tensor)
        if sparsity is not None and not 0 <= sparsity < 1:
            raise DczError(f"sparsity for {tensor.name!r} must be in [0, 1), got {sparsity}")
        return prune_tensor(tensor, sparsity, int(config.index_bits.value(tensor)), config.threshold_std)

    return map_weights(package, encode, progress, "prune", jobs)
