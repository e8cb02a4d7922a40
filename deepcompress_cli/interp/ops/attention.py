"""Transformer blocks: Attention (opset 23-25) and RotaryEmbedding (opset 23).

Attention works on [batch, heads, sequence, head size] arrays; 3-D inputs [batch, sequence,
heads * head size] are split into heads first and Y is packed back.  Grouped-query attention
(fewer key/value heads than query heads) is one batched matmul: the query heads are viewed as
[batch, kv heads, group, ...] against [batch, kv heads, 1, ...] keys, so keys are never copied.
Like the spec's function body, every step computes in the input type T1 (matmuls accumulate in
float32 and round to T1), so float16/bfloat16 results round where the spec rounds.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ...errors import DczError
from . import op


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; narrower floats (float16, bfloat16) compute in float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def split_heads(x: np.ndarray, num_heads, name: str, node: str) -> np.ndarray:
    """[B, S, H * D] -> [B, H, S, D] (a view); 4-D inputs are already split."""
    if x.ndim == 4:
        return x
    if x.ndim != 3 or not num_heads or x.shape[2] % num_heads:
        raise DczError(f"Attention node {node!r}: {name} of shape {list(x.shape)} needs 4 dimensions, "
                       f"or 3 with a hidden size divisible by the number of heads ({num_heads}).")
    b, s, hidden = x.shape
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def grouped_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[B, Hq, M, K] @ [B, Hkv, K, N] -> [B, Hq, M, N], query head h reading kv head h // (Hq / Hkv);
    computed in float32 (float64 for float64) on BLAS, returned in a's type."""
    batch, hq, m, k = a.shape
    hkv = b.shape[1]
    work = compute_dtype(a.dtype)
    out = np.matmul(a.astype(work, copy=False).reshape(batch, hkv, hq // hkv, m, k),
                    b.astype(work, copy=False)[:, :, None])
    return out.reshape(batch, hq, m, b.shape[-1]).astype(a.dtype, copy=False)


def allowed_keys(attrs: dict, q_len: int, total: int, past_len: int, nonpad) -> np.ndarray | None:
    """Boolean [B or 1, 1, Sq, T]: which keys each query may see (causal, window, padding), or None.

    Query i sits at absolute position i + offset, offset being the cached keys before the block:
    past_len with past_key, nonpad_kv_seqlen - Sq per batch for an external cache (bottom-right
    causal alignment, opset 23 errata and 24).
    """
    causal = attrs.get("is_causal", 0)
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    if not causal and left < 0 and right < 0 and nonpad is None:
        return None
    keys = np.arange(total)
    if nonpad is not None:
        nonpad = np.asarray(nonpad, dtype=np.int64).reshape(-1, 1, 1, 1)
        offset = nonpad - q_len if past_len == 0 else past_len
    else:
        offset = past_len
    position = np.arange(q_len).reshape(-1, 1) + offset  # [Sq, 1] or [B, 1, Sq, 1]
    allowed = np.ones(np.broadcast_shapes(np.shape(position)[:-1] + (total,), (1, 1, 1, total)), dtype=bool)
    if causal:
        allowed &= keys <= position
    if left >= 0:
        allowed &= keys >= position - left
    if right >= 0:
        allowed &= keys <= position + right
    if nonpad is not None:
        allowed &= keys < nonpad
    return allowed


def attention_bias(mask, allowed, total: int, dtype) -> np.ndarray | None:
    """The additive bias of a boolean or float attn_mask (its last axis padded to `total` with
    -inf) plus -inf wherever `allowed` says no."""
    bias = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape[-1] < total:  # opset 24: a shorter mask is padded with -inf / False
            pad = [(0, 0)] * (mask.ndim - 1) + [(0, total - mask.shape[-1])]
            mask = np.pad(mask, pad, constant_values=False if mask.dtype == bool else -np.inf)
        bias = np.where(mask, dtype.type(0), dtype.type(-np.inf)) if mask.dtype == bool else mask.astype(dtype)
    if allowed is not None:
        blocked = np.where(allowed, dtype.type(0), dtype.type(-np.inf))
        bias = blocked if bias is None else bias + blocked
    return bias


@op("Attention")
def attention(inputs, attrs, ctx):
    """Scaled dot-product attention; outputs Y, present_key, present_value, qk_matmul_output."""
    inputs = list(inputs) + [None] * (7 - len(inputs))
    query, key, value, mask, past_key, past_value, nonpad = inputs[:7]
    if (past_key is None) != (past_value is None):
        raise DczError(f"Attention node {ctx.node_name!r}: past_key and past_value go together.")
    q = split_heads(query, attrs.get("q_num_heads"), "Q", ctx.node_name)
    k = split_heads(key, attrs.get("kv_num_heads"), "K", ctx.node_name)
    v = split_heads(value, attrs.get("kv_num_heads"), "V", ctx.node_name)
    past_len = 0
    if past_key is not None:
        past_len = past_key.shape[2]
        k = np.concatenate([past_key, k], axis=2)
        v = np.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    batch, q_heads, q_len, head_size = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    if kv_heads == 0 or q_heads % kv_heads or k.shape[3] != head_size or v.shape[:3] != k.shape[:3]:
        raise DczError(f"Attention node {ctx.node_name!r}: Q {list(q.shape)}, K {list(k.shape)} and "
                       f"V {list(v.shape)} do not fit (query heads must be a multiple of kv heads, head sizes agree).")
    dtype = query.dtype
    # The spec scales Q and K by sqrt(scale) each before the matmul (against overflow).
    root_scale = dtype.type(math.sqrt(attrs.get("scale") or 1.0 / math.sqrt(head_size)))
    scores = grouped_matmul(q * root_scale, (k * root_scale).swapaxes(-1, -2))
    qk_outputs = [scores]
    softcap = attrs.get("softcap", 0.0)
    if softcap > 0:
        scores = np.tanh(scores / dtype.type(softcap)) * dtype.type(softcap)
    qk_outputs.append(scores)
    bias = attention_bias(mask, allowed_keys(attrs, q_len, total, past_len, nonpad), total, dtype)
    if bias is not None:
        scores = scores + bias
    qk_outputs.append(scores)
    precision = attrs.get("softmax_precision")
    probs = softmax_rows(scores.astype(helper.tensor_dtype_to_np_dtype(precision)) if precision else scores,
                         None if bias is None else np.all(np.isneginf(bias), axis=-1, keepdims=True))
    probs = probs.astype(dtype, copy=False)
    qk_outputs.append(probs)
    y = grouped_matmul(probs, v)
    if query.ndim == 3:
        y = y.transpose(0, 2, 1, 3).reshape(batch, q_len, -1)
    outputs = [y, present_key, present_value]
    if ctx.num_outputs > 3:
        mode = attrs.get("qk_matmul_output_mode", 0)
        if not 0 <= mode < len(qk_outputs):
            raise DczError(f"Attention node {ctx.node_name!r}: qk_matmul_output_mode {mode} is not 0-3.")
        outputs.append(qk_outputs[mode])
    return outputs


def softmax_rows(scores: np.ndarray, masked_rows: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis; rows whose every key is masked out are 0, not NaN."""
    peak = scores.max(axis=-1, keepdims=True)
    if masked_rows is None:
        e = np.exp(scores - peak)
        return e / e.sum(axis=-1, keepdims=True)
    e = np.where(masked_rows, 0, np.exp(scores - np.where(masked_rows, 0, peak)))
    return e / np.where(masked_rows, 1, e.sum(axis=-1, keepdims=True))


@op("RotaryEmbedding")
def rotary_embedding(inputs, attrs, ctx):
    """Rotates pairs of features by position-dependent angles (RoPE): halves, or even/odd
    features when interleaved, of the first rotary_embedding_dim features of each head."""
    x, cos, sin = inputs[:3]
    position_ids = inputs[3] if len(inputs) > 3 else None
    if x.ndim == 4:  # [B, H, S, D] -> [B, S, H, D]
        heads = x.transpose(0, 2, 1, 3)
    elif x.ndim == 3 and attrs.get("num_heads") and x.shape[2] % attrs["num_heads"] == 0:
        heads = x.reshape(*x.shape[:2], attrs["num_heads"], -1)
    else:
        raise DczError(f"RotaryEmbedding node {ctx.node_name!r}: input {list(x.shape)} needs 4 dimensions, "
                       f"or 3 with num_heads dividing the hidden size.")
    head_size = heads.shape[3]
    dim = attrs.get("rotary_embedding_dim", 0) or head_size
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]  # [B, S, dim / 2]
    if dim % 2 or dim > head_size or cos.shape[-1] != dim // 2 or sin.shape != cos.shape:
        raise DczError(f"RotaryEmbedding node {ctx.node_name!r}: caches {list(cos.shape)} do not fit a "
                       f"rotary dimension of {dim} (head size {head_size}).")
    cos, sin = cos[:, :, None], sin[:, :, None]
    rotated = heads[..., :dim]
    if attrs.get("interleaved", 0):
        first, second = rotated[..., 0::2], rotated[..., 1::2]
    else:
        first, second = rotated[..., :dim // 2], rotated[..., dim // 2:]
    real = cos * first - sin * second
    imag = sin * first + cos * second
    if attrs.get("interleaved", 0):
        rotated = np.stack([real, imag], axis=-1).reshape(rotated.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rotated, heads[..., dim:]], axis=-1).astype(x.dtype, copy=False)
    return [out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)]
