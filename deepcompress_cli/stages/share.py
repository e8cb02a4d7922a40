"""Weight sharing: per-layer 1-D k-means, the layer's weights replaced by centroid indices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..codecs import sparse
from ..encoding import Plain, Shared, build, dense_form, parse, readable
from ..kmeans import kmeans_1d
from ..tensors import Package, Slot, Tensor, uint_dtype
from . import PerKind, map_weights, no_progress, require_compressible, require_finite

DEFAULT_BITS = (8, 5)  # conv, fc: 256 and 32 shared weights, as in the paper
DEFAULT_TRAIN_BITS = (4, 4)  # with trained centroids 16 shared weights per layer suffice


@dataclass
class ShareConfig:
    bits: PerKind = field(default_factory=lambda: PerKind(*DEFAULT_BITS))
    init: str = "linear"
    max_iter: int = 100
    tol: float = 1e-6
    seed: int = 0


def cluster(values: np.ndarray, bits: int, config: ShareConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(centroids, indices, k-means iterations).  Exact zeros keep a centroid of their own, 0.0,
    and so does a layer with no values at all (the format's codebook holds at least one value).

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
    table = np.concatenate(([0], centroids)).astype(values.dtype) if reserve or not len(centroids) else centroids
    # drop centroids no weight uses (counting, not sorting: indices are < 2^bits)
    used = np.flatnonzero(np.bincount(indices, minlength=len(table)))
    if not len(used):  # nothing to cluster (a layer pruned to nothing): a codebook holds >= 1 value
        used = np.zeros(1, dtype=np.int64)
    renumber = np.zeros(len(table), dtype=uint_dtype(bits))
    renumber[used] = np.arange(len(used))
    return table[used], renumber[indices], iterations


def share_tensor(tensor: Tensor, bits: int, config: ShareConfig) -> tuple[Tensor, dict]:
    require_compressible(tensor, "shared")
    form = parse(tensor)
    values = form.entry_values()
    require_finite(tensor, values)
    centroids, indices, iterations = cluster(values, bits, config)
    shared = centroids[indices]
    error = shared.astype(np.float64) - values
    new = build(tensor, form.with_(values=Shared(centroids, indices, bits)))
    if _value_bytes(new) > len(values) * (tensor.nbytes // tensor.numel) or not readable(new):  # tiny layer: the codebook
        new = build(tensor, form.with_(values=Plain(shared)))  # costs more than it saves: values flat
    if new.stored_bytes > tensor.nbytes or not readable(new):  # sparse entries costing more than dense
        new = build(tensor, dense_form(_dense(form, shared), tensor.dtype))
    return new, {
        "name": tensor.name, "kind": tensor.kind, "weights": tensor.numel, "clustered": len(values),
        "bits": bits, "centroids": len(centroids), "iterations": iterations,
        "rmse": float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0,
        "max_error": float(np.max(np.abs(error))) if len(error) else 0.0,
        "stored_shared": any(s.codec == "codebook" for s in new.chain),
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def _value_bytes(tensor: Tensor) -> int:
    """Stored bytes of everything but the position index."""
    return sum(s.length for slot, s in tensor.streams.items() if not slot.startswith("gaps"))


def _dense(form, values: np.ndarray) -> np.ndarray:
    """Entry values of `form` placed at their positions (zeros elsewhere)."""
    if not form.is_sparse:
        return values
    numel = int(np.prod(form.shape, dtype=np.int64))
    return sparse.decode({"index_bits": form.index_bits}, Slot(form.dtype, numel), {"gaps": form.gaps, "values": values})


def share(package: Package, config: ShareConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    return map_weights(package, lambda t: share_tensor(t, int(config.bits.value(t)), config), progress, "share", jobs)
