"""Stateful blocks of linear-attention and state-space models (opset 27): LinearAttention and
CausalConvWithState.  Both carry a state between calls (decode steps) and compute in float32
(float64 stays float64), rounding to the input type at the end.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import DczError
from . import op
from .attention import compute_dtype, split_heads
from .conv import attr_str

UPDATE_RULES = {"linear": (False, False), "gated": (True, False), "delta": (False, True),
                "gated_delta": (True, True)}  # rule -> (decays, delta correction)


def per_head(x: np.ndarray, heads: int, width: int, name: str, node: str) -> np.ndarray:
    """A packed gate [B, T, heads * width] or [B, T, heads or 1] as [B, heads or 1, T, width or 1]."""
    if x.ndim != 3 or x.shape[2] not in (heads * width, heads, 1):
        raise DczError(f"LinearAttention node {node!r}: {name} of shape {list(x.shape)} does not fit "
                       f"{heads} heads of size {width}.")
    if x.shape[2] == heads * width and width > 1:
        return split_heads(x, heads, name, node)
    return x.transpose(0, 2, 1)[..., None]


@op("LinearAttention")
def linear_attention(inputs, attrs, ctx):
    """The recurrence S_t = decay * S_{t-1} + k_t (x) (v_t or its delta-rule correction), o_t =
    scale * q_t S_t, one time step at a time over all batches and heads at once."""
    inputs = list(inputs) + [None] * (6 - len(inputs))
    query, key, value, past_state, decay, beta = inputs[:6]
    rule = attr_str(attrs, "update_rule", "gated_delta")
    if rule not in UPDATE_RULES:
        raise DczError(f"LinearAttention node {ctx.node_name!r}: update_rule {rule!r} is not one of "
                       f"{', '.join(UPDATE_RULES)}.")
    decays, delta = UPDATE_RULES[rule]
    if decays != (decay is not None) or delta != (beta is not None):
        raise DczError(f"LinearAttention node {ctx.node_name!r}: update_rule {rule!r} "
                       f"{'needs' if decays else 'takes no'} decay and {'needs' if delta else 'takes no'} beta.")
    q_heads, kv_heads = attrs.get("q_num_heads", 0), attrs.get("kv_num_heads", 0)
    if not q_heads or not kv_heads or q_heads % kv_heads:
        raise DczError(f"LinearAttention node {ctx.node_name!r}: q_num_heads {q_heads} must be a "
                       f"multiple of kv_num_heads {kv_heads}.")
    work = compute_dtype(query.dtype)
    q = split_heads(query, q_heads, "query", ctx.node_name).astype(work)
    k = split_heads(key, kv_heads, "key", ctx.node_name).astype(work)
    v = split_heads(value, kv_heads, "value", ctx.node_name).astype(work)
    batch, _, steps, key_size = k.shape
    value_size = v.shape[3]
    group = q_heads // kv_heads
    if past_state is None:
        state = np.zeros((batch, kv_heads, key_size, value_size), dtype=work)
    else:
        state = past_state.astype(work)
    if decay is not None:
        decay = np.exp(per_head(decay, kv_heads, key_size, "decay", ctx.node_name).astype(work))
    if beta is not None:
        beta = per_head(beta, kv_heads, 1, "beta", ctx.node_name).astype(work)
    scale = attrs.get("scale", 0.0) or 1.0 / math.sqrt(query.shape[2] / q_heads)
    # Query heads h read kv head h // group: view them as [B, kv heads, group, T, dk].
    q = q.reshape(batch, kv_heads, group, steps, -1) * work.type(scale)
    out = np.empty((batch, kv_heads, group, steps, value_size), dtype=work)
    for t in range(steps):
        k_t, v_t = k[:, :, t], v[:, :, t]  # [B, Hkv, dk], [B, Hkv, dv]
        if decay is not None:
            state = state * decay[:, :, t, :, None]  # per key dimension or per head
        if beta is not None:
            recalled = np.einsum("bhkv,bhk->bhv", state, k_t)
            v_t = beta[:, :, t] * (v_t - recalled)
        state = state + k_t[..., :, None] * v_t[..., None, :]
        out[:, :, :, t] = np.matmul(q[:, :, :, t], state)
    y = out.reshape(batch, q_heads, steps, value_size).transpose(0, 2, 1, 3).reshape(batch, steps, -1)
    state_dtype = query.dtype if past_state is None else past_state.dtype
    return [y.astype(query.dtype), state.astype(state_dtype)]


@op("CausalConvWithState")
def causal_conv_with_state(inputs, attrs, ctx):
    """Depthwise causal 1-D conv over [B, C, L], the k - 1 positions before the input coming from
    past_state (zeros by default); returns the output and the last k - 1 positions as the new state."""
    inputs = list(inputs) + [None] * (4 - len(inputs))
    x, weight, bias, past_state = inputs[:4]
    activation = attr_str(attrs, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise DczError(f"CausalConvWithState node {ctx.node_name!r}: activation {activation!r} is not "
                       f"none, silu or swish.")
    batch, channels, length = x.shape
    if weight.ndim != 3 or weight.shape[:2] != (channels, 1):
        raise DczError(f"CausalConvWithState node {ctx.node_name!r}: weight {list(weight.shape)} is not "
                       f"[{channels}, 1, k].")
    taps = weight.shape[2]
    work = compute_dtype(x.dtype)
    if past_state is None:
        past_state = np.zeros((batch, channels, taps - 1), dtype=x.dtype)
    padded = np.concatenate([past_state.astype(work), x.astype(work)], axis=2)
    w = weight.astype(work)[:, 0]
    y = np.zeros((batch, channels, length), dtype=work)
    for tap in range(taps):  # kernel taps are few: one multiply-add over the whole input each
        y += w[:, tap, None] * padded[:, :, tap:tap + length]
    if bias is not None:
        y += bias.astype(work)[:, None]
    if activation != "none":
        y *= 1 / (1 + np.exp(-y))
    present = padded[:, :, padded.shape[2] - (taps - 1):]
    return [y.astype(x.dtype), present.astype(past_state.dtype)]
