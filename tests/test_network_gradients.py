"""Whole-network gradients of modern architectures against directional finite differences.

Each check perturbs a whole parameter tensor along a random direction d and compares
(L(W + εd) − L(W − εd)) / 2ε, computed in float64, with ⟨∇L, d⟩ from one backward pass, for
L = Σ logits · r: a wrong rule anywhere on the path between the parameter and the logits shows.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import shared_path
from deepcompress_cli.files import read_model
from deepcompress_cli.onnx_io import from_onnx
from deepcompress_cli.train.network import Network, cross_entropy


def entrywise_check(network: Network, feeds: dict, labels: np.ndarray, rng: np.random.Generator, names=None,
                    points: int = 6, atol: float = 1e-3) -> None:
    """Cross-entropy gradients of `names` (default: every parameter that gets one) against
    central differences at `points` entries each drawn from `rng`, in the network's own float32."""

    def loss():
        return cross_entropy(network.forward(feeds)[0].astype(np.float64), labels)[0]

    logits, values = network.forward(feeds)
    grads = network.backward(values, cross_entropy(logits, labels)[1])
    for name in names or list(grads):
        g, p = grads[name], network.params[name]
        for j in rng.choice(p.size, size=min(points, p.size), replace=False):
            old = p.flat[j]
            p.flat[j] = old + 1e-2
            up = loss()
            p.flat[j] = old - 1e-2
            down = loss()
            p.flat[j] = old
            assert g.flat[j] == pytest.approx((up - down) / 2e-2, rel=3e-2, abs=atol), (name, j)


def directional_check(network: Network, feeds: dict, names: list[str], seed: int = 0, eps: float = 1e-7,
                      rtol: float = 1e-3) -> None:
    """eps is tiny because the loss is evaluated in float64: larger steps cross the kinks of
    ReLU6 (Clip) of the many activations near 0 or 6, and a 3x3 stem conv's check was 5 % off at
    1e-5, 0.001 % at 1e-7."""
    rng = np.random.default_rng(seed)
    logits, values = network.forward(feeds)
    r = rng.standard_normal(logits.shape).astype(np.float32)
    grads = network.backward(values, r)
    del values
    original = {name: p.copy() for name, p in network.params.items()}
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}

    def loss(name, step):
        network.params.update({k: v.astype(np.float64) for k, v in original.items()})
        network.params[name] = network.params[name] + step
        out = network.forward(wide)[0]
        return float(np.sum(out.astype(np.float64) * r))

    try:
        for name in names:
            assert name in grads, f"no gradient reached {name}"
            d = rng.standard_normal(original[name].shape) * (np.abs(original[name]).mean() + 1e-3)
            numeric = (loss(name, eps * d) - loss(name, -eps * d)) / (2 * eps)
            analytic = float(np.sum(grads[name].astype(np.float64) * d))
            assert analytic == pytest.approx(numeric, rel=rtol, abs=1e-6 * abs(numeric) + 1e-9), name
    finally:
        network.params.update(original)


def test_efficientnet_lite0_gradients():
    path = shared_path("models", "efficientnet_lite0.onnx")
    network = Network(read_model(str(path)))
    convs = [n for n in network.nodes if n.op_type == "Conv"]
    depthwise = next(n for n, a in zip(network.nodes, network.attrs) if n.op_type == "Conv" and a.get("group", 1) > 1)
    gemm = next(n for n in network.nodes if n.op_type == "Gemm")
    names = [convs[0].input[1], depthwise.input[1], convs[-1].input[1], gemm.input[1]]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    directional_check(network, {"input": x}, names)


def small_encoder():
    """Embedding Gather, LayerNormalization, self-attention with a padding mask (Where, batched
    MatMul, Softmax), an Erf GELU feed-forward with a residual, mean pooling, a classifier."""
    rng = np.random.default_rng(0)
    d, heads, vocab, classes = 8, 2, 20, 3
    dh = d // heads

    def w(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {"emb": w(vocab, d), "ln_s": 1 + w(d, scale=0.1), "ln_b": w(d, scale=0.1), "wq": w(d, d), "wk": w(d, d),
             "wv": w(d, d), "wo": w(d, d), "w1": w(d, 2 * d), "b1": w(2 * d), "w2": w(2 * d, d), "wc": w(d, classes),
             "qkv_shape": np.array([0, 0, heads, dh], np.int64), "merged": np.array([0, 0, d], np.int64),
             "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
             "rsqrt2": np.array(1 / np.sqrt(2), np.float32), "neg": np.array(-1e4, np.float32),
             "scale": np.array(1 / np.sqrt(dh), np.float32), "zero": np.array(0, np.int64), "axis1": np.array([1], np.int64)}
    node = helper.make_node
    nodes = [
        node("Gather", ["emb", "ids"], ["e"]),
        # stash_type double: its statistics would otherwise be float32 even in the float64 runs
        node("LayerNormalization", ["e", "ln_s", "ln_b"], ["h"], axis=-1, stash_type=TensorProto.DOUBLE),
        *[node("MatMul", ["h", f"w{k}"], [f"{k}0"]) for k in "qkv"],
        *[node("Reshape", [f"{k}0", "qkv_shape"], [f"{k}1"]) for k in "qkv"],
        node("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]), node("Transpose", ["k1"], ["k"], perm=[0, 2, 3, 1]),
        node("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        node("MatMul", ["q", "k"], ["s0"]), node("Mul", ["s0", "scale"], ["s1"]),
        node("Equal", ["ids", "zero"], ["pad"]), node("Unsqueeze", ["pad", "axis1"], ["pad1"]),
        node("Unsqueeze", ["pad1", "axis1"], ["pad2"]),
        node("Where", ["pad2", "neg", "s1"], ["s2"]), node("Softmax", ["s2"], ["p"], axis=-1),
        node("MatMul", ["p", "v"], ["a0"]), node("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        node("Reshape", ["a1", "merged"], ["a2"]), node("MatMul", ["a2", "wo"], ["a3"]), node("Add", ["h", "a3"], ["r1"]),
        node("MatMul", ["r1", "w1"], ["f0"]), node("Add", ["f0", "b1"], ["f1"]),
        node("Mul", ["f1", "rsqrt2"], ["f2"]), node("Erf", ["f2"], ["f3"]), node("Add", ["f3", "one"], ["f4"]),
        node("Mul", ["f1", "f4"], ["f5"]), node("Mul", ["f5", "half"], ["f6"]), node("MatMul", ["f6", "w2"], ["f7"]),
        node("Add", ["r1", "f7"], ["r2"]), node("ReduceMean", ["r2"], ["pooled"], axes=[1], keepdims=0),
        node("MatMul", ["pooled", "wc"], ["logits"])]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              initializer=tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_encoder_gradients():
    network = Network(from_onnx(small_encoder(), None))
    ids = np.random.default_rng(1).integers(1, 20, (4, 6)).astype(np.int64)
    ids[1, 4:] = 0  # padding, masked out of the attention
    directional_check(network, {"ids": ids}, ["emb", "wq", "wk", "wv", "wo", "w1", "b1", "w2", "wc"])
