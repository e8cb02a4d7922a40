"""Training losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (opset 12+).

Both pick, per sample and spatial position, minus the log-probability of the target class,
times the class weight; `ignore_index` targets count nothing (weight 0, loss 0).  'mean' is the
weighted mean: sum(loss) / sum(weights of the targets counted), NaN when nothing counts.
float16/bfloat16 compute in float32.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .shape import input_at, str_attr


def _work(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.itemsize < 4 else x


def _nll(name, ctx, log_prob, target, weight, attrs):
    """The loss of `log_prob` [N, C, *D] against int `target` [N, *D], reduced per `attrs`."""
    reduction = str_attr(attrs, "reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise DczError(f"{name} node {ctx.node_name!r}: reduction {reduction!r} is not one of "
                       f"none, sum, mean.")
    if log_prob.ndim < 2 or target.shape != log_prob.shape[:1] + log_prob.shape[2:]:
        raise DczError(f"{name} node {ctx.node_name!r}: target {list(target.shape)} does not fit "
                       f"input {list(log_prob.shape)} (expected [N, d1, ...] of [N, C, d1, ...]).")
    classes = log_prob.shape[1]
    target = target.astype(np.int64, copy=False)
    ignore_index = attrs.get("ignore_index")
    ignored = target == ignore_index if ignore_index is not None else np.zeros(target.shape, bool)
    safe = np.where(ignored, 0, target)  # ignore_index may be any value, even outside [0, C)
    if safe.size and (safe.min() < 0 or safe.max() >= classes):
        raise DczError(f"{name} node {ctx.node_name!r}: a target is outside [0, {classes}).")
    picked = np.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    w = np.ones(target.shape, log_prob.dtype) if weight is None else _work(weight)[safe]
    w = np.where(ignored, np.zeros((), log_prob.dtype), w)
    loss = np.where(ignored, np.zeros((), log_prob.dtype), -picked * w)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(loss) / np.sum(w)


@op("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(inputs, attrs, ctx):
    x, target = inputs[0], inputs[1]
    loss = _nll("NegativeLogLikelihoodLoss", ctx, _work(x), target, input_at(inputs, 2), attrs)
    return [np.asarray(loss).astype(x.dtype, copy=False)]


@op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(inputs, attrs, ctx):
    """NegativeLogLikelihoodLoss of log_softmax(scores) over the class axis 1; the second,
    optional output is that log_softmax."""
    scores, labels = inputs[0], inputs[1]
    if scores.ndim < 2 or scores.shape[1] == 0:
        raise DczError(f"SoftmaxCrossEntropyLoss node {ctx.node_name!r}: scores must be "
                       f"[N, C, ...] with C > 0, got {list(scores.shape)}.")
    s = _work(scores)
    peak = np.max(s, axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)  # all -inf or inf rows: no shift
    shifted = s - peak
    log_prob = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    loss = _nll("SoftmaxCrossEntropyLoss", ctx, log_prob, labels, input_at(inputs, 2), attrs)
    outputs = [np.asarray(loss).astype(scores.dtype, copy=False),
               log_prob.astype(scores.dtype, copy=False)]
    return outputs[:max(ctx.num_outputs, 1)]
