"""Attention, RotaryEmbedding, RMS/Group normalization, LinearAttention and CausalConvWithState
kernels against onnxruntime on one-node models, plus hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from deepcompress_cli.errors import DczError  # noqa: E402
from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all  # noqa: E402

load_all()
RNG = np.random.default_rng(7)
F = TensorProto.FLOAT


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def run_both(op_type, inputs, attrs, opset, out_types):
    """(our outputs, onnxruntime's) for one node; `inputs` are arrays or None (omitted)."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    outs = [f"out{i}" for i in range(len(out_types))]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in zip(names, inputs) if n]
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(n, t, None) for n, t in zip(outs, out_types)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = sess.run(None, {n: a for n, a in zip(names, inputs) if n})
    node_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ctx = OpContext(opset=opset, num_outputs=len(outs))
    got = KERNELS[op_type](list(inputs[:len(names)]), node_attrs, ctx)
    return got, expected


def check(op_type, inputs, attrs=None, opset=23, out_types=(F,), tol=1e-5):
    got, expected = run_both(op_type, inputs, attrs or {}, opset, list(out_types))
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=tol, atol=tol)
    return got


def naive_attention(q, k, v, scale=None, bias=None):
    """Reference: per-head loops, [B, H, S, D] inputs, kv heads repeated for GQA."""
    b, hq, sq, d = q.shape
    group = hq // k.shape[1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    y = np.zeros((b, hq, sq, v.shape[3]))
    for i in range(b):
        for h in range(hq):
            s = q[i, h].astype(np.float64) @ k[i, h // group].T.astype(np.float64) * scale
            if bias is not None:
                s = s + np.broadcast_to(bias, (b, hq, sq, k.shape[2]))[i, h]
            p = np.exp(s - s.max(-1, keepdims=True))
            y[i, h] = (p / p.sum(-1, keepdims=True)) @ v[i, h // group]
    return y


# ----------------------------------------------------------------------------------- Attention

ATTENTION_CASES = {
    "mha": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), {}),
    "gqa": ((2, 6, 4, 8), (2, 2, 6, 8), (2, 2, 6, 8), {}),
    "mqa_scaled": ((1, 4, 5, 8), (1, 1, 5, 8), (1, 1, 5, 8), dict(scale=0.3)),
    "v_head_size": ((2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 4), {}),
    "causal": ((2, 3, 4, 8), (2, 3, 4, 8), (2, 3, 4, 8), dict(is_causal=1)),
    "softcap": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), dict(softcap=1.5)),
    "packed_3d": ((2, 4, 24), (2, 6, 8), (2, 6, 10), dict(q_num_heads=6, kv_num_heads=2)),
    "packed_3d_causal": ((2, 4, 16), (2, 4, 16), (2, 4, 16), dict(q_num_heads=4, kv_num_heads=4, is_causal=1)),
}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=list(ATTENTION_CASES))
def test_attention_matches_onnxruntime(case):
    q_shape, k_shape, v_shape, attrs = ATTENTION_CASES[case]
    check("Attention", [rand(*q_shape), rand(*k_shape), rand(*v_shape)], attrs)


def test_attention_matches_a_naive_loop():
    q, k, v = rand(2, 4, 3, 8), rand(2, 2, 5, 8), rand(2, 2, 5, 6)
    mask = rand(3, 5)
    y = KERNELS["Attention"]([q, k, v, mask], {"scale": 0.25}, OpContext(opset=23))[0]
    np.testing.assert_allclose(y, naive_attention(q, k, v, 0.25, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_shape", [(4, 6), (2, 1, 4, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("boolean", [False, True])
def test_attention_masks(mask_shape, boolean):
    mask = RNG.random(mask_shape) > 0.3 if boolean else rand(*mask_shape)
    if boolean:
        mask[..., 0] = True  # onnxruntime gives NaN for fully masked rows; the spec gives 0
    check("Attention", [rand(2, 3, 4, 8), rand(2, 3, 6, 8), rand(2, 3, 6, 8), mask])


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_kv_cache_and_qk_outputs(mode):
    """past_key/past_value are concatenated before K/V (present_*), the mask covers past + new."""
    inputs = [rand(2, 3, 4, 8), rand(2, 3, 2, 8), rand(2, 3, 2, 8), rand(4, 7), rand(2, 3, 5, 8), rand(2, 3, 5, 8)]
    got = check("Attention", inputs, dict(qk_matmul_output_mode=mode, softcap=2.0), out_types=(F,) * 4)
    np.testing.assert_array_equal(got[1], np.concatenate([inputs[4], inputs[1]], axis=2))


def test_attention_causal_with_past_is_bottom_right_aligned():
    """Query i sees keys j <= i + past length: a one-token decode step sees every key."""
    q, k, v = rand(1, 2, 1, 8), rand(1, 2, 1, 8), rand(1, 2, 1, 8)
    past_k, past_v = rand(1, 2, 3, 8), rand(1, 2, 3, 8)
    causal = KERNELS["Attention"]([q, k, v, None, past_k, past_v], {"is_causal": 1}, OpContext(opset=23))
    plain = KERNELS["Attention"]([q, k, v, None, past_k, past_v], {}, OpContext(opset=23))
    np.testing.assert_allclose(causal[0], plain[0], rtol=1e-6)
    check("Attention", [rand(2, 3, 3, 8), rand(2, 3, 3, 8), rand(2, 3, 3, 8), None, rand(2, 3, 2, 8),
                        rand(2, 3, 2, 8)], dict(is_causal=1), out_types=(F,) * 3)


def test_attention_fully_masked_row_is_zero():
    q, k, v = rand(1, 1, 2, 4), rand(1, 1, 3, 4), rand(1, 1, 3, 4)
    mask = np.array([[True, False, True], [False, False, False]])
    y, _, _, probs = KERNELS["Attention"]([q, k, v, mask], {"qk_matmul_output_mode": 3},
                                         OpContext(opset=23, num_outputs=4))
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[0, 0, 1], 0)
    np.testing.assert_array_equal(probs[0, 0, 1], 0)
    np.testing.assert_allclose(y[0, 0, 0], naive_attention(q, k, v, bias=np.where(mask, 0, -np.inf)[:1])[0, 0, 0],
                               rtol=1e-5)


def test_attention_nonpad_kv_seqlen():
    """opset 24 external cache: keys past nonpad_kv_seqlen[b] are padding; causal offset is
    nonpad - Sq, so the last query of batch b sees exactly keys 0..nonpad[b]-1."""
    q, k, v = rand(2, 2, 2, 8), rand(2, 2, 6, 8), rand(2, 2, 6, 8)
    lengths = np.array([3, 6], np.int64)
    got = KERNELS["Attention"]([q, k, v, None, None, None, lengths], {"is_causal": 1}, OpContext(opset=24))[0]
    for b, n in enumerate(lengths):
        allowed = np.arange(6)[None, :] <= np.arange(2)[:, None] + (n - 2)
        bias = np.where(allowed, 0.0, -np.inf)[None, None]
        expected = naive_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], bias=bias[..., :n])
        np.testing.assert_allclose(got[b:b + 1], expected, rtol=1e-5, atol=1e-6)


def test_attention_sliding_window():
    """opset 25: left/right windows around the query's position, composed with is_causal."""
    q, k, v = rand(1, 2, 5, 4), rand(1, 2, 5, 4), rand(1, 2, 5, 4)
    got = KERNELS["Attention"]([q, k, v], {"left_window_size": 1, "right_window_size": 2}, OpContext(opset=25))[0]
    i, j = np.arange(5)[:, None], np.arange(5)[None, :]
    bias = np.where((j >= i - 1) & (j <= i + 2), 0.0, -np.inf)
    np.testing.assert_allclose(got, naive_attention(q, k, v, bias=bias), rtol=1e-5, atol=1e-6)
    check("Attention", [q, k, v], dict(is_causal=1, left_window_size=2), opset=25)


def test_attention_float16_and_softmax_precision():
    q, k, v = (rand(1, 2, 3, 8, dtype=np.float16) for _ in range(3))
    check("Attention", [q, k, v], dict(softmax_precision=1), out_types=(TensorProto.FLOAT16,), tol=2e-3)


def test_attention_shape_errors_are_dcz_errors():
    with pytest.raises(DczError, match="kv heads"):
        KERNELS["Attention"]([rand(1, 3, 2, 4), rand(1, 2, 2, 4), rand(1, 2, 2, 4)], {}, OpContext(opset=23))
    with pytest.raises(DczError, match="divisible"):
        KERNELS["Attention"]([rand(1, 2, 10), rand(1, 2, 10), rand(1, 2, 10)], {"q_num_heads": 3},
                             OpContext(opset=23))


# ------------------------------------------------------------------------------ RotaryEmbedding

@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 4])
def test_rotary_embedding(interleaved, rotary_dim):
    half = (rotary_dim or 8) // 2
    angles = RNG.random((10, half)).astype(np.float32) * 3
    x, positions = rand(2, 3, 4, 8), RNG.integers(0, 10, (2, 4))
    attrs = dict(interleaved=interleaved, rotary_embedding_dim=rotary_dim)
    check("RotaryEmbedding", [x, np.cos(angles), np.sin(angles), positions], attrs)
    packed = x.transpose(0, 2, 1, 3).reshape(2, 4, 24)
    check("RotaryEmbedding", [packed, np.cos(angles), np.sin(angles), positions], dict(attrs, num_heads=3))
    caches = [np.cos(angles)[positions], np.sin(angles)[positions]]
    check("RotaryEmbedding", [x, *caches], attrs)


def test_rotary_embedding_rotates_pairs():
    """Half split: features (0, 2) and (1, 3) of a head of 4 are rotated by the position's angles."""
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 1, 4)
    cos = np.array([[0.0, 1.0]], np.float32)
    sin = np.array([[1.0, 0.0]], np.float32)
    y = KERNELS["RotaryEmbedding"]([x, cos, sin, np.zeros((1, 1), np.int64)], {}, OpContext(opset=23))[0]
    np.testing.assert_array_equal(y.ravel(), [-3.0, 2.0, 1.0, 4.0])


# -------------------------------------------------------------------------------- norms

@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_rms_normalization(axis):
    x = rand(2, 3, 5)
    scale = rand(*x.shape[axis % 3:])
    check("RMSNormalization", [x, scale], dict(axis=axis, epsilon=1e-3))
    y = KERNELS["RMSNormalization"]([x, scale], {"axis": axis}, OpContext(opset=23))[0]
    axes = tuple(range(axis % 3, 3))
    np.testing.assert_allclose(y, x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=axes, keepdims=True) + 1e-5)
                               * scale, rtol=1e-5)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization(opset):
    """opset 18 scales per group, 21 per channel."""
    x = rand(2, 6, 3, 2)
    params = 3 if opset == 18 else 6
    check("GroupNormalization", [x, rand(params), rand(params)], dict(num_groups=3, epsilon=1e-3), opset=opset,
          tol=1e-4)


def test_group_normalization_float16_stashes_in_float32():
    x = (rand(1, 4, 8) * 100).astype(np.float16)
    got = KERNELS["GroupNormalization"]([x, np.ones(4, np.float16), np.zeros(4, np.float16)],
                                        {"num_groups": 2}, OpContext(opset=21))[0]
    grouped = x.astype(np.float64).reshape(1, 2, -1)
    expected = (grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True) + 1e-5)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), expected.reshape(x.shape), atol=2e-3)


# ------------------------------------------------------------ LinearAttention, CausalConvWithState

def naive_linear_attention(q, k, v, rule, decay=None, beta=None, state=None, scale=None):
    """Per-token, per-head loops over [B, T, H, d] arrays."""
    b, t, hq, dk = q.shape
    hkv, dv = k.shape[2], v.shape[3]
    scale = 1 / math.sqrt(dk) if scale is None else scale
    s = np.zeros((b, hkv, dk, dv)) if state is None else state.astype(np.float64).copy()
    y = np.zeros((b, t, hq, dv))
    for i in range(b):
        for step in range(t):
            for h in range(hkv):
                if decay is not None:
                    s[i, h] *= np.exp(decay[i, step, h])[:, None]
                update = v[i, step, h]
                if beta is not None:
                    update = beta[i, step, h] * (update - s[i, h].T @ k[i, step, h])
                s[i, h] += np.outer(k[i, step, h], update)
            for h in range(hq):
                y[i, step, h] = scale * q[i, step, h] @ s[i, h // (hq // hkv)]
    return y.reshape(b, t, -1), s


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention_matches_a_naive_loop(rule):
    b, t, hq, hkv, dk, dv = 2, 3, 4, 2, 4, 3
    q, k, v = rand(b, t, hq, dk), rand(b, t, hkv, dk) * 0.5, rand(b, t, hkv, dv)
    state = rand(b, hkv, dk, dv)
    decay = -RNG.random((b, t, hkv, dk)).astype(np.float32) if "gated" in rule else None
    beta = RNG.random((b, t, hkv, 1)).astype(np.float32) if "delta" in rule else None
    inputs = [q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1), state,
              None if decay is None else decay.reshape(b, t, -1), None if beta is None else beta.reshape(b, t, -1)]
    attrs = {"update_rule": rule.encode(), "q_num_heads": hq, "kv_num_heads": hkv}
    y, present = KERNELS["LinearAttention"](inputs, attrs, OpContext(opset=27, num_outputs=2))
    expected_y, expected_state = naive_linear_attention(q, k, v, rule, decay, beta, state)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(present, expected_state, rtol=1e-4, atol=1e-5)


def test_linear_attention_per_head_decay_and_rule_errors():
    q, k, v = rand(1, 2, 8), rand(1, 2, 8), rand(1, 2, 8)
    decay = -RNG.random((1, 2, 2)).astype(np.float32)
    attrs = {"update_rule": b"gated", "q_num_heads": 2, "kv_num_heads": 2}
    y = KERNELS["LinearAttention"]([q, k, v, None, decay], attrs, OpContext(opset=27))[0]
    expected, _ = naive_linear_attention(q.reshape(1, 2, 2, 4), k.reshape(1, 2, 2, 4), v.reshape(1, 2, 2, 4),
                                         "gated", np.repeat(decay[..., None], 4, axis=-1))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(DczError, match="needs decay"):
        KERNELS["LinearAttention"]([q, k, v], attrs, OpContext(opset=27))


@pytest.mark.parametrize("with_past", [False, True])
def test_causal_conv_with_state(with_past):
    """Equals a left-padded depthwise Conv; the state is the last k - 1 positions of past + input."""
    x, w, bias = rand(2, 3, 5), rand(3, 1, 3), rand(3)
    past = rand(2, 3, 2) if with_past else np.zeros((2, 3, 2), np.float32)
    y, present = KERNELS["CausalConvWithState"]([x, w, bias, past if with_past else None], {"activation": b"silu"},
                                                OpContext(opset=27, num_outputs=2))
    full = np.concatenate([past, x], axis=2)
    conv = np.stack([sum(w[:, 0, j] * full[:, :, t + j] for j in range(3)) for t in range(5)], axis=-1)
    conv = conv + bias[:, None]
    np.testing.assert_allclose(y, conv / (1 + np.exp(-conv)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(present, full[:, :, -2:])


def test_decoder_block_runs_like_onnxruntime():
    """RMSNormalization -> q/k/v projections -> RotaryEmbedding -> causal GQA Attention with a KV
    cache -> output projection + residual, through the interpreter, against onnxruntime."""
    from onnx import numpy_helper

    from deepcompress_cli.interp.graph import Interpreter
    from deepcompress_cli.onnx_io import from_onnx

    hidden, heads, kv_heads, head = 16, 4, 2, 4
    angles = np.arange(32)[:, None] * 0.1 / (1 + np.arange(head // 2))
    weights = {"norm": rand(hidden), "wq": rand(hidden, heads * head) * 0.3, "wk": rand(hidden, kv_heads * head) * 0.3,
               "wv": rand(hidden, kv_heads * head) * 0.3, "wo": rand(heads * head, hidden) * 0.3,
               "cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}
    nodes = [helper.make_node("RMSNormalization", ["x", "norm"], ["n"]),
             helper.make_node("MatMul", ["n", "wq"], ["q"]),
             helper.make_node("MatMul", ["n", "wk"], ["k"]),
             helper.make_node("MatMul", ["n", "wv"], ["v"]),
             helper.make_node("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["qr"], num_heads=heads),
             helper.make_node("RotaryEmbedding", ["k", "cos", "sin", "pos"], ["kr"], num_heads=kv_heads),
             helper.make_node("Attention", ["qr", "kr", "v", "", "past_k", "past_v"], ["a", "present_k", "present_v"],
                              q_num_heads=heads, kv_num_heads=kv_heads, is_causal=1),
             helper.make_node("MatMul", ["a", "wo"], ["o"]),
             helper.make_node("Add", ["x", "o"], ["y"])]
    inputs = {"x": rand(2, 3, hidden), "pos": np.array([[4, 5, 6]] * 2, np.int64),
              "past_k": rand(2, kv_heads, 4, head), "past_v": rand(2, kv_heads, 4, head)}
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, F, None) for n in ("y", "present_k", "present_v")],
        [numpy_helper.from_array(w, n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = Interpreter(from_onnx(model, None)).run(inputs)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
