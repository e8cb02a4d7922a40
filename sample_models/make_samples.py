"""Generate the sample ONNX models used by deepcompress's tests and docs.

Trains two small classifiers on scikit-learn's bundled digits dataset (1797 8x8
grayscale images, pixel values 0..16) with NumPy only, then exports them to ONNX:

  lenet300.onnx    MLP: Flatten -> Gemm(64,300) -> Relu -> Gemm(300,100) -> Relu
                        -> Gemm(100,10)
  lenet5.onnx      CNN: Conv(1,6,3x3,pad 1) -> Relu -> MaxPool 2x2
                        -> Conv(6,16,3x3,pad 1) -> Relu -> MaxPool 2x2
                        -> Flatten(64) -> Gemm(64,32) -> Relu -> Gemm(32,10)
  digits_test.npz  held-out test split: "input" float32 [N,1,8,8], "labels" int64 [N]
  digits_train.npz the split the models were trained on (same arrays), for `--train`

Both models have one input "input" float32 [N,1,8,8] and one output "logits"
float32 [N,10] (no softmax). Preprocessing: pixel / 16.0, so inputs are in [0, 1];
the npz already holds preprocessed inputs and feeds both models as-is.

Everything is seeded, BLAS is pinned to one thread (multi-threaded OpenBLAS gemm
rounds differently) and files are written without timestamps, so re-running
produces byte-identical files. Bytes can still differ across CPU families or
NumPy/BLAS builds, since the SIMD kernels round differently (on x86-64 the OpenBLAS kernel
family is pinned to Haswell for that reason).

Usage: python sample_models/make_samples.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import zipfile
from pathlib import Path

# One OpenBLAS kernel family on every x86-64 machine (its SIMD kernels round differently, and
# OpenBLAS picks them by CPU): AVX2 "Haswell" runs on every CPU these files are made on.
if platform.machine() in ("x86_64", "AMD64"):
    os.environ["OPENBLAS_CORETYPE"] = "Haswell"

import numpy as np  # noqa: E402
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits  # installed with scikit-learn

SEED = 0
N_TEST = 450
BATCH = 32
F32 = np.float32


# --------------------------------------------------------------------------- layers
# Each layer does forward/backward for training *and* emits its own ONNX node, so
# the exported graph is built from exactly the structure that was trained.


class Layer:
    def __init__(self, name: str):
        self.name = name
        self.params: dict[str, np.ndarray] = {}  # ONNX initializer name -> array (updated in place)
        self.grads: dict[str, np.ndarray] = {}


class Linear(Layer):
    def __init__(self, name, n_in, n_out, rng):
        super().__init__(name)
        self.w = he_init(rng, (n_out, n_in), fan_in=n_in)  # [out, in] -> Gemm transB=1
        self.b = np.zeros(n_out, F32)
        self.params = {f"{name}.weight": self.w, f"{name}.bias": self.b}

    def forward(self, x):
        self.x = x
        return x @ self.w.T + self.b

    def backward(self, g):
        self.grads = {f"{self.name}.weight": g.T @ self.x, f"{self.name}.bias": g.sum(0)}
        return g @ self.w

    def onnx_node(self, x, y):
        return helper.make_node("Gemm", [x, *self.params], [y], name=self.name, transB=1)


class Conv3x3(Layer):
    """3x3 convolution, stride 1, padding 1, via im2col (one matmul per batch)."""

    def __init__(self, name, c_in, c_out, rng):
        super().__init__(name)
        self.w = he_init(rng, (c_out, c_in, 3, 3), fan_in=c_in * 9)
        self.b = np.zeros(c_out, F32)
        self.params = {f"{name}.weight": self.w, f"{name}.bias": self.b}

    def forward(self, x):
        n, c, h, w = self.in_shape = x.shape
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        # cols[n, y, x, c*9 + k]: (channel, kernel offset) order matches w.reshape(out, -1)
        cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
        self.cols = cols.reshape(n, c * 9, h * w).transpose(0, 2, 1).reshape(n * h * w, c * 9)
        out = self.cols @ self.w.reshape(len(self.b), -1).T + self.b
        return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2)

    def backward(self, g):
        n, c, h, w = self.in_shape
        g2 = g.transpose(0, 2, 3, 1).reshape(n * h * w, -1)
        self.grads = {f"{self.name}.weight": (g2.T @ self.cols).reshape(self.w.shape),
                      f"{self.name}.bias": g2.sum(0)}
        dcols = (g2 @ self.w.reshape(len(self.b), -1)).reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)
        dxp = np.zeros((n, c, h + 2, w + 2), F32)
        for k in range(9):  # col2im: scatter-add each kernel offset back (9 vectorized adds)
            i, j = divmod(k, 3)
            dxp[:, :, i:i + h, j:j + w] += dcols[:, :, k]
        return dxp[:, :, 1:-1, 1:-1]

    def onnx_node(self, x, y):
        return helper.make_node("Conv", [x, *self.params], [y], name=self.name,
                                kernel_shape=[3, 3], pads=[1, 1, 1, 1])


class Relu(Layer):
    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, g):
        return g * self.mask

    def onnx_node(self, x, y):
        return helper.make_node("Relu", [x], [y], name=self.name)


class MaxPool2(Layer):
    def forward(self, x):
        n, c, h, w = self.in_shape = x.shape
        win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        self.argmax = win.argmax(-1)[..., None]  # route gradient to exactly one element on ties
        return np.take_along_axis(win, self.argmax, -1)[..., 0]

    def backward(self, g):
        n, c, h, w = self.in_shape
        dwin = np.zeros((n, c, h // 2, w // 2, 4), F32)
        np.put_along_axis(dwin, self.argmax, g[..., None], -1)
        return dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)

    def onnx_node(self, x, y):
        return helper.make_node("MaxPool", [x], [y], name=self.name, kernel_shape=[2, 2], strides=[2, 2])


class Flatten(Layer):
    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(len(x), -1)  # NCHW -> N,(C*H*W): same order as ONNX Flatten(axis=1)

    def backward(self, g):
        return g.reshape(self.in_shape)

    def onnx_node(self, x, y):
        return helper.make_node("Flatten", [x], [y], name=self.name, axis=1)


def he_init(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(F32)


def lenet300(rng):
    return [Flatten("flatten"), Linear("fc1", 64, 300, rng), Relu("relu1"),
            Linear("fc2", 300, 100, rng), Relu("relu2"), Linear("fc3", 100, 10, rng)]


def lenet5(rng):
    return [Conv3x3("conv1", 1, 6, rng), Relu("relu1"), MaxPool2("pool1"),
            Conv3x3("conv2", 6, 16, rng), Relu("relu2"), MaxPool2("pool2"),
            Flatten("flatten"), Linear("fc1", 64, 32, rng), Relu("relu3"), Linear("fc2", 32, 10, rng)]


# --------------------------------------------------------------------------- training


def forward(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def train(layers, x, y, rng, epochs, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    """Minibatch Adam on softmax cross-entropy; updates the layer params in place."""
    params = {k: p for layer in layers for k, p in layer.params.items()}
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            logits = forward(layers, x[idx])
            # d(mean CE)/d(logits) = (softmax - onehot) / batch
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            g = p / F32(len(idx))
            for layer in reversed(layers):
                g = layer.backward(g)
            t += 1
            step = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)  # bias-corrected step size
            for layer in layers:
                for k, grad in layer.grads.items():
                    m[k] = beta1 * m[k] + (1 - beta1) * grad
                    v[k] = beta2 * v[k] + (1 - beta2) * grad * grad
                    params[k] -= (step * m[k] / (np.sqrt(v[k]) + eps)).astype(F32)


def accuracy(logits, labels):
    return float((logits.argmax(1) == labels).mean())


# --------------------------------------------------------------------------- export


def to_onnx(layers, graph_name):
    nodes, inits, x = [], [], "input"
    for i, layer in enumerate(layers):
        y = "logits" if i == len(layers) - 1 else f"{layer.name}_out"
        nodes.append(layer.onnx_node(x, y))
        inits += [numpy_helper.from_array(p, k) for k, p in layer.params.items()]
        x = y
    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="deepcompress-samples",
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def check_with_onnxruntime(model, x, ref_logits):
    """Cross-check the exported graph against the NumPy forward (skipped without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime not installed, skipped"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(None, {"input": x})
    diff = float(np.abs(ort_logits - ref_logits).max())
    if not (ort_logits.argmax(1) == ref_logits.argmax(1)).all() or diff > 1e-3:
        raise RuntimeError(f"onnxruntime disagrees with the NumPy forward (max |diff| {diff:.2e})")
    return f"onnxruntime agrees (max |diff| {diff:.1e})"


def save_npz(path, **arrays):
    """Like np.savez, but with a fixed zip timestamp so the file is byte-reproducible."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


# --------------------------------------------------------------------------- main


def load_split():
    digits = load_digits()
    x = (digits.images / 16.0).astype(F32)[:, None]  # [1797,1,8,8] in [0,1]
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(SEED).permutation(len(x))
    test, train_ = perm[:N_TEST], perm[N_TEST:]
    return x[train_], y[train_], x[test], y[test]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: this script's folder)")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_split()
    save_npz(out / "digits_test.npz", input=x_test, labels=y_test)
    save_npz(out / "digits_train.npz", input=x_train, labels=y_train)  # for retraining (--train)

    for name, build, epochs in [("lenet300", lenet300, 20), ("lenet5", lenet5, 60)]:
        t0 = time.perf_counter()
        rng = np.random.default_rng(SEED)  # fresh per model: each is reproducible on its own
        layers = build(rng)
        with threadpool_limits(limits=1, user_api="blas"):  # thread count must not change the bytes
            train(layers, x_train, y_train, rng, epochs)
            logits = forward(layers, x_test)
        model = to_onnx(layers, name)
        onnx.save_model(model, out / f"{name}.onnx")
        n_params = sum(p.size for layer in layers for p in layer.params.values())
        print(f"{name}: test accuracy {accuracy(logits, y_test):.4f}, {n_params} params, "
              f"{time.perf_counter() - t0:.1f}s; {check_with_onnxruntime(model, x_test, logits)}")


if __name__ == "__main__":
    main()
