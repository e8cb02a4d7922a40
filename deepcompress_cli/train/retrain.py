"""The training loops: masked SGD after pruning, and centroid training after sharing.

Both run minibatch SGD on the model's parameters; what differs is the constraint:

- a *mask* (pruned tensor): momentum SGD where the gradient of pruned positions is dropped, so
  they stay exactly 0 (biases train freely);
- a *cluster map* (shared tensor): the gradients of all weights of a cluster are summed and the
  centroid moves by lr x that sum (the paper's trained quantization); indices never change,
  positions outside any cluster (pruned) and the reserved 0.0 centroid stay fixed.

Data follows `bench --data`: arrays keyed by graph input name, optional `labels` (class ids).
Without labels the loss is distillation to the original model's logits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..data import check_classes, pick, sample_count, sample_layout, take
from ..errors import DczError
from .network import Network, cross_entropy, distillation


@dataclass
class TrainConfig:
    """Retraining settings (`--train DATA.npz` and its options), checked when made."""
    data: str
    epochs: float = 2.0
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    momentum: float = 0.9
    val: str | None = None
    logits: str | None = None  # the value the loss is on (default: the first float output)
    max_data_bytes: int | None = None  # cap on the decoded arrays of each file (data.MAX_DATA_BYTES)

    def __post_init__(self):
        import numbers

        def number(v, low, high, integral=False):
            kind = numbers.Integral if integral else numbers.Real
            return isinstance(v, kind) and not isinstance(v, bool) and low <= v <= high

        self.data = os.fspath(self.data)
        if not self.data:
            raise DczError("--train needs a data file")
        if self.val is not None:
            self.val = os.fspath(self.val)
        for option, value, high in (("--epochs", self.epochs, 10000), ("--lr", self.lr, 1e6)):
            if not (number(value, 0, high) and value > 0):  # also rejects nan
                raise DczError(f"{option} must be a number in (0, {high:g}], got {value!r}")
        if not number(self.batch_size, 1, 1 << 20, integral=True):
            raise DczError(f"--batch-size must be an integer 1..{1 << 20}, got {self.batch_size!r}")
        if not number(self.momentum, 0, 1) or self.momentum == 1:
            raise DczError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not number(self.seed, -(1 << 63), (1 << 64) - 1, integral=True):
            raise DczError(f"--seed must be an integer, got {self.seed!r}")


@dataclass
class Grid:
    """A weight held on a linear grid while it trains: forward passes use its codes
    clip(rint(w / steps), ±levels) · steps (0 where not `keep`), and the gradient at those
    codes moves a float shadow of w (the straight-through estimator)."""
    steps: np.ndarray  # float32, the weight's shape (per-row steps broadcast)
    levels: int
    keep: np.ndarray  # bool, the weight's shape

    def codes(self, shadow: np.ndarray) -> np.ndarray:
        n = np.clip(np.rint(shadow / self.steps), -self.levels, self.levels)
        n[~self.keep] = 0
        return n

    def weights(self, shadow: np.ndarray) -> np.ndarray:
        return (self.codes(shadow) * self.steps).astype(np.float32)


@dataclass
class Clusters:
    """A shared tensor's trainable form: dense cluster ids (-1: not stored) and centroids."""
    ids: np.ndarray  # int, the tensor's shape
    centroids: np.ndarray  # float64 while training
    fixed: np.ndarray  # bool per centroid: the reserved exact 0.0

    def weights(self) -> np.ndarray:
        table = np.append(self.centroids, 0.0)  # id -1 reads the appended 0
        return table[self.ids].astype(np.float32)


def load_data(path: str, network: Network, option: str = "--train",
              max_bytes: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    from ..data import check_labels, load_npz

    feeds = load_npz(path, network.specs, option, max_bytes)  # in the declared dtypes, >= 1 sample
    labels = feeds.pop("labels", None)
    labels = check_labels(labels, feeds, option, sample_layout(network.specs, feeds, option))
    for name, array in feeds.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DczError(f"{option} {path}: {name!r} holds NaN or infinite values")
    return feeds, labels


def logits_of(network: Network, feeds: dict, batch: int = 256) -> np.ndarray:
    layout = sample_layout(network.specs, feeds)
    n = sample_count(feeds, layout)
    batch = network.fixed_batch(layout) or batch
    if n % batch and network.fixed_batch(layout):
        raise DczError(f"the model takes batches of exactly {batch}; the data has {n} samples")
    return np.concatenate([network.forward(take(feeds, layout, i, i + batch))[0] for i in range(0, n, batch)])


def accuracy(network: Network, feeds: dict, labels: np.ndarray) -> float:
    logits = logits_of(network, feeds)
    return float((logits.reshape(len(logits), -1).argmax(1) == labels).mean())


class Trainer:
    """Trains one Network on one data set, under per-tensor masks or cluster maps."""

    def __init__(self, network: Network, config: TrainConfig, progress=None, teacher: np.ndarray | None = None,
                 samples: np.ndarray | None = None):
        """`samples`: train on these samples of the file only (others judge the result)."""
        self.network = network
        self.config = config
        self.progress = progress
        self.feeds, self.labels = load_data(config.data, network, "--train", config.max_data_bytes)
        self.layout = sample_layout(network.specs, self.feeds)
        if samples is not None:
            self.feeds = pick(self.feeds, self.layout, samples)
            self.labels = None if self.labels is None else self.labels[samples]
        self.samples = sample_count(self.feeds, self.layout)
        fixed = network.fixed_batch(self.layout)
        self.batch = fixed or min(config.batch_size, self.samples)
        if fixed and self.samples < fixed:
            raise DczError(f"the model takes batches of exactly {fixed}; --train has {self.samples} samples")
        first = network.forward(take(self.feeds, self.layout, 0, self.batch))[0]
        check_classes(first, self.labels, "--train")
        self.teacher = None
        if self.labels is None:  # distillation targets: the model as it was before compression
            self.teacher = teacher if teacher is not None else logits_of(network, self.feeds)
        self.val = load_data(config.val, network, "--val", config.max_data_bytes) if config.val else None
        if self.val is not None:
            if self.val[1] is None:
                raise DczError(f"--val {config.val}: needs `labels`")
            check_classes(first, self.val[1], "--val")
        self.rng = np.random.default_rng(config.seed)

    def validate(self) -> float | None:
        return accuracy(self.network, *self.val) if self.val is not None else None

    def fit(self, masks: dict[str, np.ndarray] | None = None, clusters: dict[str, Clusters] | None = None,
            frozen=(), epochs: float | None = None, desc: str = "retrain",
            grids: dict[str, Grid] | None = None) -> dict:
        """Train in place (parameters in `frozen` excepted); returns {"loss": mean loss over the
        last epoch, "steps": n}.  Parameters in `grids` end on their grid; their float shadows
        are left in `self.shadows`."""
        net, cfg = self.network, self.config
        masks, clusters, grids = masks or {}, clusters or {}, grids or {}
        for name, mask in masks.items():
            net.params[name] *= mask  # pruned positions are exactly 0 from the start
        for name, c in clusters.items():
            net.params[name] = c.weights()
        shadows = {name: net.params[name].astype(np.float32) for name in grids}
        for name, grid in grids.items():
            net.params[name] = grid.weights(shadows[name])
        velocity = {name: np.zeros_like(p, dtype=np.float32) for name, p in net.params.items() if name not in clusters}
        n, batch = self.samples, self.batch
        epochs = cfg.epochs if epochs is None else epochs
        steps = max(1, int(round(epochs * n / batch)))
        losses = []
        batches = range(steps)
        if self.progress is not None:
            batches = self.progress(batches, desc=desc, total=steps, unit="step")
        order = np.empty(0, dtype=np.int64)
        for step in batches:
            while len(order) < batch:  # a fresh shuffle of the data each epoch
                order = np.concatenate([order, self.rng.permutation(n)])
            index, order = np.sort(order[:batch]), order[batch:]
            feeds = pick(self.feeds, self.layout, index)
            logits, values = net.forward(feeds)
            if self.labels is not None:
                loss, grad_logits = cross_entropy(logits, self.labels[index])
            else:
                loss, grad_logits = distillation(logits, self.teacher[index])
            if not np.isfinite(loss):
                raise DczError(f"retraining diverged at step {step + 1} (loss is not finite): lower --lr")
            losses.append(loss)
            grads = net.backward(values, grad_logits)
            del values
            for name, g in grads.items():
                if name in frozen:
                    continue
                if name in clusters:
                    c = clusters[name]
                    valid = c.ids >= 0
                    summed = np.bincount(c.ids[valid], weights=g[valid].astype(np.float64),
                                         minlength=len(c.centroids))
                    summed[c.fixed] = 0
                    c.centroids -= cfg.lr * summed  # the paper's update: lr x the summed gradients
                    net.params[name] = c.weights()
                    continue
                if name in masks:
                    g = g * masks[name]
                if name in grids:  # straight through the rounding, onto the shadow
                    g = g * grids[name].keep
                v = velocity[name]
                v *= cfg.momentum
                v -= cfg.lr * g
                if name in grids:
                    shadows[name] += v
                    net.params[name] = grids[name].weights(shadows[name])
                else:
                    net.params[name] += v
        if not all(np.isfinite(p).all() for p in net.params.values()):
            raise DczError("retraining diverged (weights are not finite): lower --lr")
        tail = losses[-max(1, min(steps, int(np.ceil(n / batch)))):]  # about the last epoch
        self.shadows = shadows
        return {"loss": round(float(np.mean(tail)), 6), "steps": steps}
