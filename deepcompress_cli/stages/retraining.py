"""The stages with retraining (`--train`): prune -> retrain in steps, share -> train centroids.

The paper's loop: prune the smallest weights, retrain the sparse network (pruned weights stay
exactly 0), prune further, ...; then share weights per layer and fine-tune the shared centroids
with the summed gradients of their weights.  Each phase rewrites the package's tensors in the
same stored forms as the plain stages, so every later stage (huffman, export, bench) is unchanged.
"""

from __future__ import annotations

import numpy as np

from ..encoding import Shared, build, parse
from ..errors import DczError
from ..codecs import sparse
from ..tensors import Package, Slot, Tensor
from ..train.network import Network
from ..train.retrain import Clusters, Trainer, TrainConfig
from . import compressible, no_progress
from .prune import PruneConfig, magnitude_mask, prune_tensor, store_pruned
from .share import ShareConfig, share


def _table_index(package: Package) -> dict[str, int]:
    return {t.name: i for i, t in enumerate(package.tensors)}


def _store_free_params(package: Package, network: Network, names) -> None:
    """Biases and other trained tensors that no stage encodes: stored raw, as trained."""
    index = _table_index(package)
    for value in names:
        i = index[network.table_name[value]]
        old = package.tensors[i]
        package.tensors[i] = Tensor.raw(old.name, network.params[value].astype(old.decode().dtype), old.kind, old.op)


def teacher_model(package: Package, train: TrainConfig) -> Network:
    """The uncompressed model, never trained: every phase distills towards the original (and an
    unlabeled --val is scored against it), not towards the previous phase's result."""
    return Network(package, train.logits)


def prune_schedule(sparsity: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps`: the kept fraction shrinks geometrically to its target."""
    return 1 - (1 - sparsity) ** (step / steps)


def prune_retrain(package: Package, config: PruneConfig, train: TrainConfig, steps: int = 1,
                  progress=no_progress, teacher=None) -> tuple[list[dict], list[dict]]:
    """(per-layer rows as `prune` reports them, per-step history).  `teacher`: the original
    model (teacher_model), for distillation when the data has no labels; by default the model
    as `package` has it."""
    config = config.resolved(train=True)  # None: the --train defaults
    network = Network(package, train.logits)
    trainer = Trainer(network, train, progress, teacher)
    index = _table_index(package)
    weights = {v: package.tensors[index[network.table_name[v]]] for v in network.params
               if compressible(package.tensors[index[network.table_name[v]]])}
    # the paper's rule measures each layer's spread once, on the weights before any pruning
    stds = {v: float(network.params[v].std(dtype=np.float64)) for v in weights}
    history = [{"phase": "original", trainer.val_key: trainer.validate()}]
    masks = {}
    for step in range(1, steps + 1):
        for value, tensor in weights.items():
            w = network.params[value]
            if config.threshold_std is not None:
                keep = (np.abs(w) > config.threshold_std * stds[value] * step / steps) & (w != 0)
            else:
                keep, _ = magnitude_mask(w, prune_schedule(config.sparsity.value(tensor), step, steps))
            masks[value] = keep
            w *= keep  # pruned now: "before" below is the pruned, not yet retrained, model
        history.append({"phase": f"prune {step}/{steps}", **trainer.fit(masks=masks, desc=f"retrain {step}/{steps}")})
    rows = []
    trained = set()
    for value, tensor in weights.items():
        i = index[tensor.name]
        dense = network.params[value].astype(tensor.decode().dtype)
        package.tensors[i], row = store_pruned(tensor, dense, masks[value], int(config.index_bits.value(tensor)))
        row["threshold"] = float(np.abs(dense[masks[value]]).min()) if masks[value].any() else None  # smallest kept
        rows.append(row)
        trained.add(tensor.name)
    _store_free_params(package, network, [v for v in network.params if v not in weights])
    for i, tensor in enumerate(package.tensors):  # weights the network could not train
        if compressible(tensor) and tensor.name not in trained:
            sparsity = None if config.threshold_std is not None else config.sparsity.value(tensor)
            package.tensors[i], row = prune_tensor(tensor, sparsity, int(config.index_bits.value(tensor)),
                                                   config.threshold_std)
            rows.append(row)
    return rows, history


def cluster_map(tensor: Tensor) -> Clusters | None:
    """The dense cluster ids of a shared tensor (-1 where nothing is stored), or None."""
    form = parse(tensor)
    if not isinstance(form.values, Shared) or form.is_scaled:  # a scaled codebook has no shared weights to train
        return None
    indices = form.values.indices.astype(np.int32)
    if form.is_sparse:
        numel = int(np.prod(form.shape, dtype=np.int64))
        ids = sparse.decode({"index_bits": form.index_bits}, Slot("int32", numel),
                            {"gaps": form.gaps, "values": indices + 1}) - 1
    else:
        ids = indices
    centroids = form.values.centroids.astype(np.float64)
    return Clusters(ids.reshape(form.shape), centroids, centroids == 0)


def share_retrain(package: Package, config: ShareConfig, train: TrainConfig,
                  progress=no_progress, teacher=None) -> tuple[list[dict], list[dict]]:
    """Share as `share` does, then train the centroids; (rows, history)."""
    config = config.resolved(train=True)  # None: the --train defaults
    if config.per_channel:  # the trainer ties each weight to one centroid, with no channel factor
        raise DczError("--per-channel sharing cannot be combined with --train (trained centroids are per layer)")
    if teacher is None:  # distill towards the model as it was before sharing
        teacher = teacher_model(package, train)
    rows = share(package, config, progress)
    network = Network(package, train.logits)
    trainer = Trainer(network, train, progress, teacher)
    index = _table_index(package)
    clusters, frozen = {}, set()
    for value in network.params:
        tensor = package.tensors[index[network.table_name[value]]]
        if compressible(tensor):
            c = cluster_map(tensor)
            if c is not None:
                clusters[value] = c
            else:
                frozen.add(value)  # stored flat (a tiny layer): keep its shared values as they are
    history = [{"phase": "share", **trainer.fit(clusters=clusters, frozen=frozen, desc="train centroids")}]
    by_name = {r["name"]: r for r in rows}
    for value, c in clusters.items():
        i = index[network.table_name[value]]
        tensor = package.tensors[i]
        form = parse(tensor)
        before = form.values.centroids
        centroids = c.centroids.astype(before.dtype)
        package.tensors[i] = build(tensor, form.with_(values=Shared(centroids, form.values.indices, form.values.bits)))
        by_name[tensor.name]["centroid_shift"] = float(np.abs(centroids.astype(np.float64) - before).max(initial=0))
    _store_free_params(package, network, [v for v in network.params if v not in clusters and v not in frozen])
    return rows, history
