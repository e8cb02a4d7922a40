"""The int8 interpreter: exact integer kernels, quantization grids, where weights are found, quality."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, ort_outputs, shared_path
from deepcompress_cli.blas import single_threaded
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model
from deepcompress_cli.interp.graph import Interpreter
from deepcompress_cli.interp import quant
from deepcompress_cli.interp.quant import (EXACT_FLOAT32, Int8Interpreter, activation_range, centered_codes,
                                           code_magnitudes, exact_chunks, exact_matmul, integer_conv,
                                           quantization_grid, quantize_activation, quantize_images, qweight)

RNG = np.random.default_rng(0)


def load(tmp_path, model: onnx.ModelProto):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return read_model(str(path))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------ exact kernels

@pytest.mark.parametrize("k", [7, 300, 5000])
def test_exact_matmul_equals_int64_reference(k):
    a = RNG.integers(-255, 256, (5, k)).astype(np.float32)
    w = RNG.integers(-127, 128, (k, 9)).astype(np.int16)
    got = exact_matmul(a, qweight(w, np.ones(9), "gemm"))
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ w.astype(np.int64))


def test_exact_matmul_cuts_k_only_when_a_partial_sum_could_pass_2_24():
    k = 4096
    w = qweight(np.full((k, 2), 127, np.int16), np.ones(2), "gemm")  # worst case: 255 * 127 * 4096 > 2^24
    worst = np.full((1, k), 255, np.float32)
    got = exact_matmul(worst, w)
    assert got.dtype == np.float64 and got[0, 0] == k * 255 * 127  # float32 alone would round it
    small = np.full((3, k), 2, np.float32)  # these codes cannot reach 2^24: one float32 BLAS call
    assert exact_matmul(small, w).dtype == np.float32
    assert np.array_equal(exact_matmul(small, w), np.full((3, 2), 2 * 127 * k))


def test_exact_chunks_keep_every_partial_sum_below_2_24():
    abs_sums = RNG.integers(0, 127 * 64, (40, 6)).astype(np.float64)
    magnitudes = RNG.integers(0, 256, 40).astype(np.float64)
    chunks = exact_chunks(abs_sums, magnitudes)
    assert chunks[0][0] == 0 and chunks[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for g0, g1 in chunks:
        assert (abs_sums[g0:g1] * magnitudes[g0:g1, None]).sum(0).max() < EXACT_FLOAT32 or g1 - g0 == 1
        if g1 < 40:  # greedy: one more group would have passed
            assert (abs_sums[g0:g1 + 1] * magnitudes[g0:g1 + 1, None]).sum(0).max() >= EXACT_FLOAT32


def direct_conv(xc: np.ndarray, w: np.ndarray, stride: int, pads) -> np.ndarray:
    """int64 convolution by direct summation (pads: top, left, bottom, right)."""
    xp = np.pad(xc.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((len(xc), len(w), oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, stride * i:stride * i + kh, stride * j:stride * j + kw]
            out[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w.astype(np.int64))
    return out


@pytest.mark.parametrize("shape,channels_in", [((2, 3, 9, 9), 3), ((1, 300, 6, 5), 300)])
def test_integer_conv_is_exact(shape, channels_in):
    """Small C: one float32 pass; C = 300 with extreme codes: chunks of channels in float64."""
    xc = RNG.integers(-255, 256, shape).astype(np.float32)
    w = RNG.integers(-127, 128, (4, channels_in, 3, 3)).astype(np.int16)
    if channels_in == 300:
        xc[:] = 255
        w[:] = 127
    weight = qweight(w, np.ones(4), "conv")
    assert (weight.worst_bound >= EXACT_FLOAT32) == (channels_in == 300)
    attrs = {"pads": [1, 0, 1, 2], "strides": [2, 2]}
    got = integer_conv(xc, weight, attrs)
    assert np.array_equal(got.astype(np.int64), direct_conv(xc, w, 2, [1, 0, 1, 2]))


def qlinear_model(op: str, x_shape, w, sx, zx, sw, zw, sy, zy, **attrs):
    """One QLinearConv / QLinearMatMul node."""
    inits = [numpy_helper.from_array(np.float32(sx), "sx"), numpy_helper.from_array(np.uint8(zx), "zx"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(sw), "sw"),
             numpy_helper.from_array(np.uint8(zw), "zw"), numpy_helper.from_array(np.float32(sy), "sy"),
             numpy_helper.from_array(np.uint8(zy), "zy")]
    node = helper.make_node(op, ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"], **attrs)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def requantize(acc, sx, sw, sy, zy):
    return np.clip(np.rint(acc * (sx * sw / sy)) + zy, 0, 255).astype(np.uint8)


def test_integer_conv_equals_onnxruntime_qlinearconv():
    q = RNG.integers(0, 256, (2, 8, 12, 10)).astype(np.uint8)
    w = RNG.integers(0, 256, (6, 8, 3, 3)).astype(np.uint8)
    zx, zw, sx, sw, sy, zy = 113, 131, 0.02, 0.004, 0.9, 100
    attrs = {"pads": [1, 0, 1, 2], "strides": [2, 1]}
    acc = integer_conv(q.astype(np.float32) - zx, qweight(w.astype(np.int16) - zw, np.ones(6), "conv"), attrs)
    expected = ort_outputs(qlinear_model("QLinearConv", list(q.shape), w, sx, zx, sw, zw, sy, zy, **attrs), {"x": q})[0]
    assert np.abs(requantize(acc, sx, sw, sy, zy).astype(int) - expected.astype(int)).max() <= 1


def test_exact_matmul_equals_onnxruntime_qlinearmatmul():
    q = RNG.integers(0, 256, (4, 300)).astype(np.uint8)
    w = RNG.integers(0, 256, (300, 20)).astype(np.uint8)
    zx, zw, sx, sw, sy, zy = 90, 120, 0.03, 0.002, 2.0, 128
    acc = exact_matmul(q.astype(np.float32) - zx, qweight(w.astype(np.int16) - zw, np.ones(20), "gemm"))
    assert np.array_equal(acc.astype(np.int64), (q.astype(np.int64) - zx) @ (w.astype(np.int64) - zw))
    expected = ort_outputs(qlinear_model("QLinearMatMul", [4, 300], w, sx, zx, sw, zw, sy, zy), {"x": q})[0]
    assert np.abs(requantize(acc, sx, sw, sy, zy).astype(int) - expected.astype(int)).max() <= 1


# ------------------------------------------------------------------------------ grids

def test_activation_quantization_keeps_zero_exact():
    x = RNG.standard_normal(1000).astype(np.float32)
    x[::7] = 0
    c, scale = quantize_activation(x)
    assert np.all(c[::7] == 0) and c.min() >= -255 and c.max() <= 255 and np.array_equal(c, np.rint(c))
    assert np.abs(c * scale - x).max() <= scale / 2 + 1e-6


def test_grids_per_row_are_independent():
    x = RNG.standard_normal((3, 50)).astype(np.float32)
    x[1] *= 1000  # an outlier token must not coarsen the others' grid
    scale, zero_point = quantization_grid(x.min(1, keepdims=True).astype(np.float64),
                                          x.max(1, keepdims=True).astype(np.float64), "x")
    c = centered_codes(x, scale, zero_point, clip=False)  # the measured range needs no clipping
    assert np.array_equal(c, centered_codes(x, scale, zero_point))
    assert np.all(c + zero_point >= 0) and np.all(c + zero_point <= 255)
    error = np.abs(c * scale - x).max(1)
    assert error[0] < 0.02 and error[2] < 0.02 and error[1] < 20
    assert np.allclose(scale[[0, 2], 0], (np.maximum(x.max(1), 0) - np.minimum(x.min(1), 0))[[0, 2]] / 254)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_int8_refuses_non_finite_layer_inputs_in_one_line(tmp_path, bad):
    nodes = [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("MatMul", ["m", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
                               numpy_helper.from_array(np.array([bad], np.float32), "k")])
    interp = Int8Interpreter(load(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    with pytest.raises(DczError, match="int8: 'm' holds NaN or Inf"):
        interp.run({"x": np.ones((2, 4), np.float32)})


# ------------------------------------------------------------------------------ where weights are

def conv_gemm_graph(name: str, weights_as_constants: bool) -> onnx.GraphProto:
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = RNG.standard_normal((4 * 6 * 6, 5)).astype(np.float32)
    values = [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(g, f"{name}_g")]
    nodes = [helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"]),
             helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]),
             helper.make_node("Flatten", [f"{name}_r"], [f"{name}_f"]),
             helper.make_node("Gemm", [f"{name}_f", f"{name}_g"], [f"{name}_y"])]
    if weights_as_constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in values] + nodes
        values = []
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
                             initializer=values)


def test_weights_in_constant_nodes_and_if_branches_run_in_int8(tmp_path):
    then_graph, else_graph = conv_gemm_graph("then", True), conv_gemm_graph("else", False)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              initializer=[numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    package = load(tmp_path, model)
    int8 = Int8Interpreter(package)
    assert len(int8.layers) == 4  # both branches' Conv and Gemm, Constant-node weights included
    for sign in (1, -1):
        x = sign * np.abs(RNG.standard_normal((2, 3, 8, 8))).astype(np.float32)
        expected = ort_outputs(model.SerializeToString(), {"x": x})[0]
        assert np.allclose(Interpreter(package).run({"x": x})[0], expected, rtol=1e-4, atol=1e-4)
        assert cosine(int8.run({"x": x})[0], expected) > 0.999


# ------------------------------------------------------------------------------ quality

def encoder_layer(rng: np.random.Generator, d: int = 64, tokens: int = 16) -> onnx.ModelProto:
    """One post-LN transformer layer, BERT-style (MatMul + Add bias, Softmax, Erf GELU), with an
    outlier feature as trained encoders have."""
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def dense(x, name, n_in, n_out):
        nodes.append(helper.make_node("MatMul", [x, const(f"{name}_w", rng.standard_normal((n_in, n_out)) / np.sqrt(n_in))],
                                      [f"{name}_mm"]))
        nodes.append(helper.make_node("Add", [f"{name}_mm", const(f"{name}_b", 0.1 * rng.standard_normal(n_out))], [name]))
        return name

    q, k, v = (dense("x", n, d, d) for n in ("q", "k", "v"))
    nodes += [helper.make_node("Transpose", [k], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, "kt"], ["scores"]),
              helper.make_node("Mul", ["scores", const("inv_sqrt_d", 1 / np.sqrt(d))], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["attention"], axis=-1),
              helper.make_node("MatMul", ["attention", v], ["context"])]
    out = dense("context", "o", d, d)
    nodes += [helper.make_node("Add", [out, "x"], ["res1"]),
              helper.make_node("LayerNormalization", ["res1", const("g1", np.ones(d)), const("b1", np.zeros(d))], ["ln1"])]
    up = dense("ln1", "up", d, 4 * d)
    nodes += [helper.make_node("Div", [up, const("sqrt2", np.sqrt(2))], ["gd"]),
              helper.make_node("Erf", ["gd"], ["ge"]),
              helper.make_node("Add", ["ge", const("one", 1)], ["g1p"]),
              helper.make_node("Mul", [up, "g1p"], ["gm"]),
              helper.make_node("Mul", ["gm", const("half", 0.5)], ["gelu"])]
    down = dense("gelu", "down", 4 * d, d)
    nodes += [helper.make_node("Add", [down, "ln1"], ["res2"]),
              helper.make_node("LayerNormalization", ["res2", const("g2", np.ones(d)), const("b2", np.zeros(d))], ["y"])]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("seed", [0, 3])
def test_int8_transformer_layer_stays_close(tmp_path, seed):
    rng = np.random.default_rng(seed)
    package = load(tmp_path, encoder_layer(rng))
    x = rng.standard_normal((4, 16, 64)).astype(np.float32)
    x[:, :, 5] *= 30  # an outlier feature
    x[:, 0] *= 10  # and an outlier token
    int8 = Int8Interpreter(package)
    assert len(int8.layers) == 6  # the six weight MatMuls; attention products stay float
    expected = Interpreter(package).run({"x": x})[0]
    assert cosine(int8.run({"x": x})[0], expected) > 0.995  # 0.997-0.9999 over seeds


def test_int8_interpreter_stays_close_and_uses_stored_codes(tmp_path, cli):
    source = SAMPLES / "lenet5.onnx"
    data = np.load(SAMPLES / "digits_test.npz")
    x = {"input": data["input"]}
    fp32 = Interpreter(read_model(str(source))).run(x)[0]
    int8 = Int8Interpreter(read_model(str(source))).run(x)[0]
    assert (int8.argmax(1) == data["labels"]).mean() >= (fp32.argmax(1) == data["labels"]).mean() - 0.01
    assert cli("quantize", source, "-o", tmp_path / "q.dcz", "--per-channel").exit_code == 0
    quantized = Int8Interpreter(read_model(str(tmp_path / "q.dcz")))
    assert len(quantized.layers) == 4  # every Conv and Gemm runs in int8
    assert ((quantized.run(x)[0]).argmax(1) == data["labels"]).mean() >= 0.95


def test_int8_mnist_within_half_a_point():
    """Issue 5: int8 top-1 on MNIST (10k, mnist_cnn.onnx) within 0.5 points of fp32."""
    source = shared_path("models", "mnist_cnn.onnx")
    data = np.load(shared_path("data", "mnist_test.npz"), allow_pickle=False)
    x = ((data["images"].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    package = read_model(str(source))
    accuracy = {}
    for mode, interp in (("fp32", Interpreter(package)), ("int8", Int8Interpreter(package))):
        with single_threaded():  # BLAS threads on a loaded machine make this minutes instead of seconds
            out = np.concatenate([interp.run({"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
        accuracy[mode] = float((out.argmax(1) == data["labels"]).mean())
    assert accuracy["fp32"] == pytest.approx(0.9877, abs=1e-4)
    assert accuracy["int8"] >= accuracy["fp32"] - 0.005


def test_carried_ranges_follow_the_image_axis(tmp_path, monkeypatch):
    """A Conv's per-image ranges reach the next Conv through Relu, but not as per-image ranges
    through a Transpose that moves the image axis: every code stays in 0..255."""
    w1, w2 = RNG.standard_normal((4, 4, 1, 1)), RNG.standard_normal((3, 4, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["t", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), n) for w, n in ((w1, "w1"), (w2, "w2"))])
    package = load(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    codes = []
    original = quant.centered_codes

    def recorded(x, s, z, clip=True, out=None):
        c = original(x, s, z, clip, out)
        codes.append((c.copy(), z))  # a copy: the next Conv reuses the buffer
        return c
    monkeypatch.setattr(quant, "centered_codes", recorded)
    x = RNG.standard_normal((4, 4, 6, 6)).astype(np.float32)
    x[2] *= 50  # one image with a far wider range than the others
    got = Int8Interpreter(package).run({"x": x})[0]
    assert len(codes) == 2 and all(((c + z) >= 0).all() and ((c + z) <= 255).all() for c, z in codes)
    assert cosine(got, Interpreter(package).run({"x": x})[0]) > 0.999


# ------------------------------------------------------------------------------ one pass per input

@pytest.mark.parametrize("images_per_chunk", [1, 5, 7])  # 5: chunks of 4 (whole GEMV row groups) and 3
@pytest.mark.parametrize("calibrated", [False, True])
def test_chunked_image_quantization_equals_the_whole_tensors(monkeypatch, images_per_chunk, calibrated):
    x = RNG.standard_normal((7, 8, 5, 5)).astype(np.float32)
    x[[1, 4]] = np.abs(x[[1, 4]])  # images whose zero point is 0: unsigned codes
    x[2] *= 40
    axes, ones = (1, 2, 3), np.ones(25, np.float32)
    monkeypatch.setattr(quant, "CHUNK_BYTES", images_per_chunk * x[0].nbytes)
    grid = quantization_grid(*activation_range(x, axes, (-1, 2) if calibrated else None), "x")
    got = quantize_images(x, "x", grid if calibrated else None, clip=calibrated, magnitude=True)
    codes = centered_codes(x, *grid, clip=calibrated)
    assert np.array_equal(got.scale, grid[0]) and np.array_equal(got.zero_point, grid[1])
    assert np.array_equal(got.codes, codes)
    assert np.array_equal(got.magnitude, code_magnitudes(codes))
    # As one GEMV over all images would sum them (the bias correction's inputs, bit for bit).
    assert np.array_equal(got.means[:, 0], (x.reshape(56, 25) @ ones).reshape(7, 8) / np.float32(25))
    assert np.array_equal(got.means[:, 1], (codes.reshape(56, 25) @ ones).reshape(7, 8)
                          * (-grid[0].reshape(-1, 1) / 25).astype(np.float32))


def shared_input_model() -> onnx.ModelProto:
    """One Relu output read by two Convs with another Conv between them (a ResNet block's first
    and downsampling Convs; the first, narrower than its input, corrects by its output's mean, the
    second by the codes'), one Add output read by three MatMuls (Q, K, V projections)."""
    w = {name: numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)
         for name, shape in (("wa", (2, 4, 3, 3)), ("wb", (2, 4, 1, 1)), ("wc", (2, 2, 1, 1)),
                             ("q", (2, 5)), ("k", (2, 5)), ("v", (2, 5)))}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "wb"], ["b"]),
             helper.make_node("Conv", ["b", "wc"], ["bc"]), helper.make_node("Conv", ["r", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "bc"], ["s"]), helper.make_node("Transpose", ["s"], ["t"], perm=[0, 2, 3, 1])]
    nodes += [helper.make_node("MatMul", ["t", m], [f"{m}_out"]) for m in ("q", "k", "v")]
    nodes += [helper.make_node("Concat", ["q_out", "k_out", "v_out"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(w.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_layers_reading_one_value_quantize_it_once_per_run(tmp_path, monkeypatch):
    package = load(tmp_path, shared_input_model())
    alone = Int8Interpreter(package)
    alone._readers.clear()  # every layer quantizes its own input
    shared = Int8Interpreter(package)
    calls = []
    original = quant.centered_codes
    monkeypatch.setattr(quant, "centered_codes", lambda *a, **k: calls.append(1) or original(*a, **k))
    for batch in (2, 3):  # a new run's input is quantized anew
        x = RNG.standard_normal((batch, 4, 6, 6)).astype(np.float32)
        calls.clear()
        got = shared.run({"x": x})[0]
        assert len(calls) == 3  # the Relu output once, the first Conv's output, the Add output once
        assert not shared._shared  # each entry dropped after its last reader
        assert np.array_equal(got, alone.run({"x": x})[0])
        assert cosine(got, Interpreter(package).run({"x": x})[0]) > 0.999


def test_a_relu_output_needs_only_its_maximum():
    x = np.maximum(RNG.standard_normal((3, 4, 5, 5)), 0).astype(np.float32)
    x[1] += 0.5  # an image without zeros: its grid still starts at 0
    whole = quantize_images(x, "r")
    assert np.array_equal(quantize_images(x, "r", non_negative=True).codes, whole.codes)
    assert np.array_equal(quantize_images(x, "r", non_negative=True).scale, whole.scale)
    x[2, 1, 1, 1] = np.nan
    with pytest.raises(DczError, match="NaN or Inf"):
        quantize_images(x, "r", non_negative=True)


def test_fused_shortcut_equals_the_separate_add(tmp_path, monkeypatch):
    """Conv -> Add -> Relu in one int8 Conv (the addend in its epilogue, the range measured
    after it) gives what the int8 Conv, then a float Add and Relu give, up to the rounding of
    the next layer's grid (a measured range, not one computed from the tensor); so does an
    addend that broadcasts (the fallback)."""
    rng = np.random.default_rng(4)

    def weight(m, c, k=3):
        return numpy_helper.from_array(rng.standard_normal((m, c, k, k)).astype(np.float32) * 0.3)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]),  # pointwise: corrected by its output's mean
             helper.make_node("Add", ["c1", "x"], ["s1"]), helper.make_node("Relu", ["s1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "row"], ["s2"]), helper.make_node("Relu", ["s2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["y"], pads=[1, 1, 1, 1])]
    inits = [weight(4, 4, 1), weight(4, 4), weight(2, 4), numpy_helper.from_array(
        rng.standard_normal((4, 1, 1)).astype(np.float32))]
    for init, name in zip(inits, ["w1", "w2", "w3", "row"]):
        init.name = name
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    package = load(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    x = {"x": rng.standard_normal((3, 4, 8, 8)).astype(np.float32)}
    fused = Int8Interpreter(package)
    assert [n.op_type for n in fused.plan.nodes] == ["Conv", "Conv", "Conv"]
    got = fused.run(x)[0]
    from deepcompress_cli.interp import graph as plan_module
    monkeypatch.setattr(plan_module, "fuse_conv_residual", lambda nodes, outputs: nodes)
    separate = Int8Interpreter(package)
    assert [n.op_type for n in separate.plan.nodes] == ["Conv", "Add", "Relu", "Conv", "Add", "Relu", "Conv"]
    np.testing.assert_allclose(got, separate.run(x)[0], rtol=1e-5, atol=1e-5)
