"""The training loops: masked SGD after pruning, centroid training after sharing, and
fine-tuning on a plan's grids (targeted.py).

All run minibatch updates on the model's parameters (momentum SGD, or Adam: optim.py); what
differs is the constraint:

- a *mask* (pruned tensor): momentum SGD where the gradient of pruned positions is dropped, so
  they stay exactly 0 (biases train freely);
- a *cluster map* (shared tensor): the gradients of all weights of a cluster are summed and the
  centroid moves by lr x that sum (the paper's trained quantization); indices never change,
  positions outside any cluster (pruned) and the reserved 0.0 centroid stay fixed;
- a *grid* (a planned weight's per-row step and mask): forward passes use the shadow weights
  rounded onto the grid, the gradient moves the shadows (straight-through), in step units.

Data follows `bench --data`: arrays keyed by graph input name, optional `labels` (class ids).
Without labels the loss is distillation to the original model's logits (a frozen copy of it runs
on each batch when `--augment` flips and crops the images).

Guards against a small data set and a too-high learning rate:
- the global gradient norm is clipped to `clip_norm` (5: about twice the largest norm measured on
  mnist_cnn just after pruning to the `--train` defaults, 2.6; a trained model's is 0.1-0.5), so
  one step moves the weights by at most lr x 5 (x 10 with momentum);
- divergence (a loss that is not finite, or a running mean of the loss above 1.5 x the loss at
  the start + 0.1 nats): the last checkpoint's parameters come back and the learning rate halves,
  at most MAX_HALVINGS times, then a one-line error; the history lists the steps (`lr_halved_at`);
- with `--val`, early stopping: the parameters at the checkpoint (every epoch, every half epoch
  when an epoch has LONG_EPOCH steps or more, the start and the end included) that score best
  on it are kept.  The score is top-1 accuracy when --val has labels, else top-1 agreement with
  the original model (what unlabeled data can tell; the loss itself is only a proxy for it).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import numpy as np

from ..data import check_classes, pick, sample_count, sample_layout, take
from ..errors import DczError
from .augment import augment, image_layouts
from .network import Network, cross_entropy, distillation
from .optim import OPTIMIZERS, Optimizer

CLIP_NORM = 5.0  # default global gradient norm clip (see the module docstring)
MAX_HALVINGS = 20  # lr down by 10^6 at most, then the run is an error
LONG_EPOCH = 100  # steps: an epoch this long is checkpointed (and validated) every half epoch
DIVERGED_FACTOR, DIVERGED_MARGIN = 1.5, 0.1  # running loss above factor x start + margin (nats)


@dataclass
class TrainConfig:
    """Retraining settings (`--train DATA.npz` and its options), checked when made."""
    data: str
    epochs: float = 2.0
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    momentum: float = 0.9
    optimizer: str = "sgd"  # or "adam" (optim.py)
    val: str | None = None
    logits: str | None = None  # the value the loss is on (default: the first float output)
    augment: bool = False  # random flips and crops of image inputs (augment.py)
    clip_norm: float = CLIP_NORM  # the global gradient norm is clipped to this (inf: no clipping)
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
        if not (number(self.clip_norm, 0, float("inf")) and self.clip_norm > 0):
            raise DczError(f"clip_norm must be a positive number, got {self.clip_norm!r}")
        if not isinstance(self.augment, bool):
            raise DczError(f"--augment is a flag (True or False), got {self.augment!r}")
        if not number(self.batch_size, 1, 1 << 20, integral=True):
            raise DczError(f"--batch-size must be an integer 1..{1 << 20}, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise DczError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not number(self.momentum, 0, 1) or self.momentum == 1:
            raise DczError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not number(self.seed, -(1 << 63), (1 << 64) - 1, integral=True):
            raise DczError(f"--seed must be an integer, got {self.seed!r}")


@dataclass
class Grid:
    """A weight held on a linear grid while it trains: forward passes use its codes
    clip(rint(w / steps), ±levels) · steps (0 where not `keep`), and the gradient at those
    codes moves a float shadow of w (the straight-through estimator).  The shadow trains in
    units of its step (u = w / step): the optimizer sees g · step and its update is scaled back
    by the step, so one learning rate is the same fraction of a step in every layer."""
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


def top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(1)


def frozen_copy(network: Network) -> Network:
    """The network as it is now, for distillation targets: its own copy of the parameters (the
    constants are shared; training never writes them)."""
    teacher = copy.copy(network)
    teacher.params = {name: p.copy() for name, p in network.params.items()}
    return teacher


class Trainer:
    """Trains one Network on one data set, under per-tensor masks or cluster maps.

    `teacher`: the original model (a Network that is never trained) the loss distills towards
    when the data has no labels, and the reference of an unlabeled --val; by default a frozen
    copy of `network` as it is when the Trainer is made."""

    def __init__(self, network: Network, config: TrainConfig, progress=None, teacher: Network | None = None,
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
        self.augment = image_layouts(network.specs, self.feeds, self.layout) if config.augment else None
        fixed = network.fixed_batch(self.layout)
        self.batch = fixed or min(config.batch_size, self.samples)
        if fixed and self.samples < fixed:
            raise DczError(f"the model takes batches of exactly {fixed}; --train has {self.samples} samples")
        first = network.forward(take(self.feeds, self.layout, 0, self.batch))[0]
        check_classes(first, self.labels, "--train")
        self.val = load_data(config.val, network, "--val", config.max_data_bytes) if config.val else None
        if self.val is not None and self.val[1] is not None:
            check_classes(first, self.val[1], "--val")
        unlabeled_val = self.val is not None and self.val[1] is None
        self.teacher = None
        if self.labels is None or unlabeled_val:
            self.teacher = teacher if teacher is not None else frozen_copy(network)
        self.teacher_logits = None  # on the un-augmented training data, computed once
        if self.labels is None and self.augment is None:
            self.teacher_logits = logits_of(self.teacher, self.feeds)
        self.val_reference = top1(logits_of(self.teacher, self.val[0])) if unlabeled_val else None
        self.val_key = "val_agreement" if unlabeled_val else "val_accuracy"
        self.rng = np.random.default_rng(config.seed)
        self.lr = config.lr  # halved on divergence, for this and later fits
        self.halvings = 0

    def validate(self) -> float | None:
        """Top-1 accuracy on --val (with labels), else top-1 agreement with the original model."""
        if self.val is None:
            return None
        feeds, labels = self.val
        return float((top1(logits_of(self.network, feeds)) == (labels if labels is not None
                                                                else self.val_reference)).mean())

    def fit(self, masks: dict[str, np.ndarray] | None = None, clusters: dict[str, Clusters] | None = None,
            frozen=(), epochs: float | None = None, desc: str = "retrain",
            grids: dict[str, Grid] | None = None) -> dict:
        """Train in place (parameters in `frozen` excepted); returns {"loss": mean loss over the
        last epoch, "steps": n, "samples_per_s", "lr" (at the end), "lr_halved_at": [step, ...],
        and the --val score before and after (`val_key`, None without --val), "epoch_kept"}.
        Parameters in `grids` end on their grid; their float shadows are left in `self.shadows`."""
        net, cfg = self.network, self.config
        masks, clusters, grids = masks or {}, clusters or {}, grids or {}
        for name, mask in masks.items():
            net.params[name] *= mask  # pruned positions are exactly 0 from the start
        for name, c in clusters.items():
            net.params[name] = c.weights()
        shadows = {name: net.params[name].astype(np.float32) for name in grids}
        for name, grid in grids.items():
            net.params[name] = grid.weights(shadows[name])
        n, batch = self.samples, self.batch
        epochs = cfg.epochs if epochs is None else epochs
        steps = max(1, int(round(epochs * n / batch)))
        per_epoch = -(-n // batch)
        every = min(steps, per_epoch if per_epoch < LONG_EPOCH else -(-per_epoch // 2))
        run = _Run(self, masks, clusters, grids, shadows, [p for p in net.params if p not in frozen])
        ticks = run.steps(steps, every)
        for _ in ticks if self.progress is None else self.progress(ticks, desc=desc, total=steps, unit="step"):
            pass
        self.shadows = shadows
        tail = run.losses[-max(1, min(steps, per_epoch)):]  # about the last epoch
        return {"loss": round(float(np.mean(tail)), 6), "steps": steps,
                "samples_per_s": round(run.samples / run.seconds, 1) if run.seconds > 0 else None,
                "lr": self.lr, "lr_halved_at": run.halved_at,
                f"{self.val_key}_before": run.val_before, self.val_key: run.best[0],
                "epoch_kept": None if self.val is None else round(run.best[1] / per_epoch, 2)}


class _Run:
    """One fit's state: the step, momentum, checkpoints (the start and the last two good ones,
    the best on --val), timings."""

    def __init__(self, trainer: Trainer, masks: dict, clusters: dict, grids: dict, shadows: dict, trained: list[str]):
        self.trainer, self.masks, self.clusters, self.trained = trainer, masks, clusters, trained
        self.grids, self.shadows = grids, shadows  # shadows: updated in place
        self.optimizer = Optimizer(trainer.config.optimizer, trainer.config.momentum)
        self.step, self.losses, self.halved_at = 0, [], []
        self.samples, self.seconds = 0, 0.0
        self.reference = self.smoothed = None
        self.order = np.empty(0, dtype=np.int64)
        self.good = [(0, self.snapshot(), 0)]  # (step, state, len(losses)): the start, then the last two
        self.retrying = False  # restored a checkpoint and not past the next one yet
        self.val_before = trainer.validate()
        self.best = (self.val_before, 0, self.good[0][1])  # (score, step, state)

    def snapshot(self):
        net = self.trainer.network
        return ({k: v.copy() for k, v in net.params.items()}, {k: c.centroids.copy() for k, c in self.clusters.items()},
                {k: v.copy() for k, v in self.shadows.items()})

    def restore(self, state) -> None:
        params, centroids, shadows = state
        net = self.trainer.network
        for name, value in params.items():
            net.params[name] = value.copy()
        for name, c in self.clusters.items():
            c.centroids = centroids[name].copy()
        for name, value in shadows.items():
            self.shadows[name][...] = value

    def steps(self, steps: int, every: int):
        """Train until `steps` steps are done, yielding after each (a rewind redoes steps)."""
        while self.step < steps:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is handled
                self.train_step()
                if self.step and (self.step % every == 0 or self.step == steps) and self.step > self.good[-1][0]:
                    self.checkpoint()
            yield self.step
        if self.trainer.val is not None and self.best[1] != self.step:
            self.restore(self.best[2])  # early stop: the parameters that scored best on --val

    def train_step(self) -> None:
        trainer = self.trainer
        net, batch = trainer.network, trainer.batch
        start = time.perf_counter()
        while len(self.order) < batch:  # a fresh shuffle of the data each epoch
            self.order = np.concatenate([self.order, trainer.rng.permutation(trainer.samples)])
        index, self.order = np.sort(self.order[:batch]), self.order[batch:]
        feeds = pick(trainer.feeds, trainer.layout, index)
        if trainer.augment is not None:
            feeds = augment(feeds, trainer.augment, trainer.rng)
        logits, values = net.forward(feeds)
        if trainer.labels is not None:
            loss, grad_logits = cross_entropy(logits, trainer.labels[index])
        else:
            target = trainer.teacher_logits[index] if trainer.augment is None else trainer.teacher.forward(feeds)[0]
            loss, grad_logits = distillation(logits, target)
        if self.reference is None:
            if not np.isfinite(loss):
                raise DczError("retraining: the loss is not finite before any update (the model's outputs "
                               "on --train are NaN or infinite)")
            self.reference = self.smoothed = loss
        self.smoothed = 0.75 * self.smoothed + 0.25 * loss  # about the last 4 steps
        if not np.isfinite(loss) or self.smoothed > DIVERGED_FACTOR * self.reference + DIVERGED_MARGIN:
            self.seconds += time.perf_counter() - start
            return self.diverged()
        self.losses.append(loss)
        grads = net.backward(values, grad_logits)
        del values
        grads = {name: grads[name] * self.masks[name] if name in self.masks else grads[name]
                 for name in self.trained if name in grads}
        for name, grid in self.grids.items():  # straight through the rounding, onto the shadow
            if name in grads:
                grads[name] = grads[name] * grid.keep
        norm = np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))
        scale = min(1.0, trainer.config.clip_norm / norm) if norm > 0 else 1.0
        for name, g in grads.items():
            if name in self.clusters:
                c = self.clusters[name]
                valid = c.ids >= 0
                summed = np.bincount(c.ids[valid], weights=g[valid].astype(np.float64), minlength=len(c.centroids))
                summed[c.fixed] = 0
                c.centroids -= trainer.lr * scale * summed  # the paper's update: lr x the summed gradients
                net.params[name] = c.weights()
                continue
            if name in self.grids:  # trained in units of its grid step: u = w / step
                steps = self.grids[name].steps
                self.shadows[name] += steps * self.optimizer.step(name, g * scale * steps, trainer.lr)
                net.params[name] = self.grids[name].weights(self.shadows[name])
            else:
                net.params[name] += self.optimizer.step(name, g * scale, trainer.lr)
        self.step += 1
        self.samples += batch
        self.seconds += time.perf_counter() - start

    def checkpoint(self) -> None:
        net = self.trainer.network
        if not all(np.isfinite(p).all() for p in net.params.values()):
            return self.diverged()
        state = self.snapshot()
        self.good = [self.good[0], *self.good[1:][-1:], (self.step, state, len(self.losses))]
        self.retrying = False
        if self.trainer.val is not None:
            score = self.trainer.validate()
            if score > self.best[0]:
                self.best = (score, self.step, state)

    def diverged(self) -> None:
        """Back to the last good checkpoint with half the learning rate (momentum reset); when
        that checkpoint diverged again before the next one, it was not good: the one before."""
        trainer = self.trainer
        if trainer.halvings == MAX_HALVINGS:
            raise DczError(f"retraining diverged at --lr {trainer.config.lr:g} and after {MAX_HALVINGS} "
                           f"halvings of it ({trainer.lr:g}): lower --lr")
        self.halved_at.append(self.step + 1)
        trainer.lr /= 2
        trainer.halvings += 1
        if self.retrying and len(self.good) > 1:
            self.good.pop()
        self.retrying = True
        self.step, state, kept = self.good[-1]
        self.restore(state)
        del self.losses[kept:]
        self.smoothed = self.reference
        self.optimizer.reset()
