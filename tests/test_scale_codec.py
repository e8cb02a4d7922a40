"""The `scale` codec (encoding version 2): its checks and decoding, hostile parameters, the
WeightForm forms that use it (round trips through the container), the encoding version the writer
picks, files written before version 2, and the stages that write it (`quantize --per-channel` on
pruned layers, `share --per-channel`, `huffman` after them), exported and run int8."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, assert_one_line_error, ort_outputs
from deepcompress_cli import container, encoding
from deepcompress_cli.codecs import CODECS, encoding_version, linear, scale, validate_chain
from deepcompress_cli.encoding import (Plain, Quantized, Shared, WeightForm, build, channel_scaled, parse,
                                       quantized_form, sparse_form)
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_dcz, read_model
from deepcompress_cli.onnx_io import from_onnx
from deepcompress_cli.stages import PerKind
from deepcompress_cli.stages.entropy import huffman
from deepcompress_cli.stages.prune import PruneConfig, prune
from deepcompress_cli.stages.quantize import QuantizeConfig, quantize
from deepcompress_cli.stages.share import ShareConfig, share
from deepcompress_cli.tensors import Slot, Tensor

RNG = np.random.default_rng(3)
FIXTURES = Path(__file__).parent / "fixtures"
LENET5 = SAMPLES / "lenet5.onnx"
PRE = container.PREAMBLE_SIZE
PARAMS = {"channels": 2, "inner": 2}


def slots(values_dtype="float32", n=8, scales_dtype="float32", c=2):
    return {"values": Slot(values_dtype, n), "scales": Slot(scales_dtype, c)}


# --------------------------------------------------------------------------------- the codec

def test_registered_as_a_version_2_codec():
    assert CODECS["scale"] is scale and scale.SINCE == 2 and container.ENCODING_VERSION == 2
    assert all(getattr(m, "SINCE", 1) == 1 for name, m in CODECS.items() if name != "scale")


def test_decode_follows_the_format_example():
    values = np.array([1, -0.5, 0.25, 0, 1, 1, -1, 0.5], np.float32)
    scales = np.array([2, 0.1], np.float32)
    scale.check(PARAMS, Slot("float32", 8), slots())
    out = scale.decode(PARAMS, Slot("float32", 8), {"values": values, "scales": scales})
    assert out.dtype == np.float32
    assert out.tolist() == np.array([2, -1, 0.025, 0, 2, 2, -0.1, 0.05], np.float32).tolist()
    assert scale.label(PARAMS) == "scale/ch" and scale.label({"channels": 1, "inner": 1}) == "scale"


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_decode_computes_in_float32_then_rounds_to_the_dtype(dtype):
    values = RNG.standard_normal(12).astype(dtype)
    scales = np.array([0.3, 7.0, 1e-3], np.float32)
    params = {"channels": 3, "inner": 2}
    scale.check(params, Slot(dtype, 12), slots(dtype, 12, c=3))
    out = scale.decode(params, Slot(dtype, 12), {"values": values, "scales": scales})
    expected = (values.astype(np.float32).reshape(-1, 3, 2) * scales[:, None]).astype(dtype).reshape(-1)
    assert out.dtype == np.dtype(dtype) and out.tobytes() == expected.tobytes()


def test_float16_overflow_is_inf_without_a_warning():
    values = np.array([60000, -60000], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = scale.decode({"channels": 1, "inner": 1}, Slot("float16", 2),
                           {"values": values, "scales": np.array([4.0], np.float32)})
    assert out.tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("params, n, match", [
    ({"channels": 3, "inner": 1}, 8, "do not fit"),  # 3 does not divide 8
    ({"channels": 2, "inner": 3}, 8, "do not fit"),
    ({"channels": 4, "inner": 4}, 8, "do not fit"),  # C x I > n
    ({"channels": 0, "inner": 1}, 8, "do not fit"),
    ({"channels": 2, "inner": 0}, 8, "do not fit"),
    ({"channels": -2, "inner": -4}, 8, "do not fit"),
    ({"channels": 2, "inner": 1 << 62}, 0, "do not fit"),  # "divides 0" but not laid out
    ({"channels": 2, "inner": 1}, 0, "do not fit"),
    ({"channels": 2}, 8, "needs params"),
    ({"channels": 2, "inner": 1, "bits": 8}, 8, "needs params"),
    ({"channels": 2.0, "inner": 1}, 8, "needs params"),
    ({"channels": True, "inner": 1}, 8, "needs params"),
    ({"channels": "2", "inner": 1}, 8, "needs params"),
])
def test_check_refuses_params_that_do_not_fit(params, n, match):
    c = params.get("channels", 1) if isinstance(params.get("channels"), int) and params["channels"] > 0 else 1
    with pytest.raises(DczError, match=match):
        scale.check(params, Slot("float32", n), slots(n=n, c=c))


def test_empty_tensor_has_one_channel():
    scale.check({"channels": 1, "inner": 1}, Slot("float32", 0), slots(n=0, c=1))
    out = scale.decode({"channels": 1, "inner": 1}, Slot("float32", 0),
                       {"values": np.zeros(0, np.float32), "scales": np.ones(1, np.float32)})
    assert out.shape == (0,)


@pytest.mark.parametrize("target, parts, match", [
    (Slot("int32", 8), slots("int32"), "cannot produce int32"),
    (Slot("uint8", 8), slots("uint8"), "cannot produce"),
    (Slot("float32", 8), slots("float16"), "values have the wrong type or count"),
    (Slot("float32", 8), slots(n=7), "values have the wrong type or count"),
    (Slot("float32", 8), slots(n=9), "values have the wrong type or count"),
    (Slot("float32", 8), slots(scales_dtype="float64"), "one float32 scale per channel"),
    (Slot("float32", 8), slots(scales_dtype="float16"), "one float32 scale per channel"),
    (Slot("float32", 8), slots(c=1), "one float32 scale per channel"),
    (Slot("float32", 8), slots(c=3), "one float32 scale per channel"),
])
def test_check_refuses_wrong_dtypes_and_counts(target, parts, match):
    with pytest.raises(DczError, match=match):
        scale.check(PARAMS, target, parts)


@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf])
def test_decode_refuses_scales_that_are_not_finite_and_positive(bad):
    scales = np.array([1.0, bad], np.float32)
    with pytest.raises(DczError, match="finite and positive"):
        scale.decode(PARAMS, Slot("float32", 8), {"values": np.ones(8, np.float32), "scales": scales})


def test_channel_scales_max_and_rms():
    w = np.array([[3, -4, 0, 0], [0, 0, 0, 0], [1e-42, 0, 0, 0]], np.float32)  # channel 2 is subnormal
    s = scale.channel_scales(w.reshape(-1), 3, 4)
    assert s.dtype == np.float32 and s.tolist() == [4.0, 1.0, 1.0]  # zero / too small: 1.0
    r = scale.channel_scales(w.reshape(-1), 3, 4, "rms")
    assert r[0] == pytest.approx(np.sqrt(12.5)) and r[1] == 1.0  # over the non-zero weights
    with pytest.raises(ValueError):
        scale.channel_scales(w.reshape(-1), 3, 4, "mean")


# --------------------------------------------------------------------- forms and the container

def conv_weight(shape=(6, 3, 3, 3)) -> np.ndarray:
    """A conv weight whose output channels differ in range by orders of magnitude."""
    w = RNG.standard_normal(shape) * np.logspace(-3, 1, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    return w.astype(np.float32)


def lenet5_with(form_of) -> tuple:
    """lenet5 with its first conv weight stored as `form_of(weights, channels, inner)`."""
    package = read_model(str(LENET5))
    i = next(i for i, t in enumerate(package.tensors) if t.kind == "conv" and len(t.shape) == 4)
    t = package.tensors[i]
    w = t.decode()
    form = form_of(w, *linear.channel_layout(t.shape, 0))
    package.tensors[i] = build(t, form)
    return package, t.name, form


def write(package, **kwargs) -> bytes:
    out = io.BytesIO()
    container.write(package, out, **kwargs)
    return out.getvalue()


def header_of(data: bytes) -> dict:
    _, _, _, flags, header_len, _, _ = container.PREAMBLE.unpack_from(data)
    raw = data[PRE:PRE + header_len]
    return json.loads(zlib.decompress(raw) if flags & container.FLAG_HEADER_ZLIB else raw)


def with_header(data: bytes, edit) -> bytes:
    """`data` with its header JSON edited (stored plain, minor and flags kept, CRCs right)."""
    _, _, minor, flags, header_len, _, _ = container.PREAMBLE.unpack_from(data)
    section = data[container.align(PRE + header_len):]
    header = header_of(data)
    edit(header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    flags &= ~container.FLAG_HEADER_ZLIB
    head = container.PREAMBLE.pack(container.MAGIC, 1, minor, flags, len(text), zlib.crc32(text), 0)[:-4]
    end = PRE + len(text)
    return head + struct.pack("<I", zlib.crc32(head)) + text + bytes(container.align(end) - end) + section


def _dense_linear(w, c, i):
    s = scale.channel_scales(w.reshape(-1), c, i)
    q = Quantized(*linear.quantize(scale.normalize(w.reshape(-1), s, c, i), 8), bits=8)
    return WeightForm(w.shape, "float32", q, scales=s, channels=c, inner=i)


def _sparse(values_of):
    def form_of(w, c, i):
        keep = np.abs(w) > np.median(np.abs(w))
        base = channel_scaled(sparse_form(np.where(keep, w, 0), keep, 4, "float32"), c, i)
        return base.with_(values=values_of(base.entry_values()))
    return form_of


def _codebook(values):
    centroids = np.unique(np.round(values, 1)) if len(values) else np.zeros(1)  # (<= 21 values in [-1, 1])
    return Shared(centroids, np.searchsorted(centroids, np.round(values, 1)).astype(np.uint8), 5)


FORMS = {
    "dense-plain": (lambda w, c, i: channel_scaled(encoding.dense_form(w, "float32"), c, i), ["scale"]),
    "dense-linear": (_dense_linear, ["scale", "linear"]),
    "dense-codebook": (lambda w, c, i: (lambda b: b.with_(values=_codebook(b.entry_values())))(
        channel_scaled(encoding.dense_form(w, "float32"), c, i)), ["scale", "codebook", "bitpack"]),
    "sparse-plain": (_sparse(lambda v: Plain(v)), ["scale", "sparse", "bitpack"]),
    "sparse-linear": (_sparse(lambda v: Quantized(*linear.quantize(v, 6), bits=6)),
                      ["scale", "sparse", "linear", "bitpack", "bitpack"]),
    "sparse-codebook": (_sparse(_codebook), ["scale", "sparse", "codebook", "bitpack", "bitpack"]),
}


@pytest.mark.parametrize("name", list(FORMS))
@pytest.mark.parametrize("compact", [True, False])
def test_scaled_forms_round_trip_through_the_container(name, compact):
    form_of, codecs = FORMS[name]
    package, weight, form = lenet5_with(form_of)
    built = package.tensor(weight)
    assert [s.codec for s in built.chain] == codecs
    assert built.chain[0].input == "tensor" and built.chain[0].outputs == {"values": "scaled", "scales": "channel_scales"}
    data = write(package, compact=compact)
    assert header_of(data)["encoding_version"] == 2
    back = read_dcz(data).tensor(weight)
    decoded = back.decode().reshape(-1)
    assert decoded.tobytes() == form.dense_values().tobytes()  # what the form says is what is read
    again = parse(back)  # the form read back from the chain
    assert again.is_scaled and (again.channels, again.inner) == (form.channels, form.inner)
    assert again.scales.tobytes() == form.scales.astype(np.float32).tobytes()
    assert type(again.values) is type(form.values) and again.is_sparse == form.is_sparse
    assert again.dense_values().tobytes() == decoded.tobytes()
    assert np.array_equal(again.entry_values(), encoding._as_stored(form).entry_values())
    rebuilt = build(back, again)  # and parse -> build gives the same streams
    assert {k: bytes(s.buffer()) for k, s in rebuilt.streams.items()} == \
        {k: bytes(s.buffer()) for k, s in back.streams.items()}
    # the file cost counts every stream (channel_scales included) and the scale step's header text
    streams = sum(s.length for s in back.streams.values())
    assert encoding.file_cost(back) > streams + len('"codec":"scale"') // 3


def test_dense_values_is_the_decoded_tensor_for_every_form():
    w = conv_weight()
    c, i = linear.channel_layout(w.shape, 0)
    t = Tensor(name="w", dtype="float32", shape=w.shape, kind="conv", chain=[], slots={}, streams={})
    for form_of, _ in FORMS.values():
        form = form_of(w, c, i)
        assert build(t, form).decode().reshape(-1).tobytes() == form.dense_values().tobytes()
        plain = form.unscaled()
        assert not plain.is_scaled and plain.is_sparse == form.is_sparse
        assert np.array_equal(plain.dense_values(), form.dense_values())
    unscaled = encoding.dense_form(w, "float32")
    assert unscaled.unscaled() is unscaled and unscaled.dense_values().tobytes() == w.tobytes()


def test_entry_values_are_the_scaled_down_values():
    w = conv_weight()
    form = channel_scaled(encoding.dense_form(w, "float32"), *linear.channel_layout(w.shape, 0))
    assert np.abs(form.entry_values()).max() <= 1.0 + 1e-6
    assert np.allclose(form.dense_values(), w.reshape(-1), rtol=1e-6, atol=0)
    with pytest.raises(ValueError):
        channel_scaled(form, form.channels, form.inner)


def test_writer_writes_version_1_without_scale_and_2_with_it():
    plain = read_model(str(LENET5))
    assert encoding_version(plain.tensors) == 1
    for compact in (True, False):
        assert header_of(write(plain, compact=compact))["encoding_version"] == 1
    package, _, _ = lenet5_with(FORMS["dense-linear"][0])
    assert encoding_version(package.tensors) == 2
    assert header_of(write(package))["encoding_version"] == 2


def test_reader_refuses_scale_in_a_version_1_file_and_unknown_versions():
    package, _, _ = lenet5_with(FORMS["sparse-linear"][0])
    data = write(package)
    read_dcz(with_header(data, lambda h: None))  # the edit helper itself keeps the file valid
    with pytest.raises(DczError, match="codec scale needs encoding version 2, the file declares 1"):
        read_dcz(with_header(data, lambda h: h.update(encoding_version=1)))
    for version in (0, 3, 1 << 31):
        with pytest.raises(DczError, match="encoding"):
            read_dcz(with_header(data, lambda h: h.update(encoding_version=version)))
    plain = write(read_model(str(LENET5)))
    read_dcz(with_header(plain, lambda h: h.update(encoding_version=2)))  # version 2 may hold only version-1 codecs


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["chain"][0]["params"].update(channels=5), "scale"),
    (lambda t: t["chain"][0]["params"].update(inner=7), "scale"),
    (lambda t: t["chain"][0]["params"].pop("inner"), "scale needs params"),
    (lambda t: t["slots"]["channel_scales"].update(dtype="float64", count=t["slots"]["channel_scales"]["count"] // 2),
     "scale"),
    (lambda t: t["slots"]["scaled"].update(dtype="float16"), "scale values"),
])
def test_hostile_scale_steps_are_refused_before_decoding(edit, match):
    package, weight, _ = lenet5_with(FORMS["sparse-linear"][0])
    data = write(package)

    def change(header):
        edit(next(t for t in header["tensors"] if t["name"] == weight))
    with pytest.raises(DczError, match=match):
        read_dcz(with_header(data, change))


@pytest.mark.parametrize("bad", [0.0, -2.0, np.nan, np.inf])
def test_a_bad_stored_scale_is_refused_when_decoding(bad):
    def form_of(w, c, i):
        form = FORMS["dense-plain"][0](w, c, i)
        scales = form.scales.copy()
        scales[1] = bad
        return form.with_(scales=scales)
    package, weight, _ = lenet5_with(form_of)
    t = read_dcz(write(package)).tensor(weight)  # the reader's checks before decoding pass: sizes are right
    with pytest.raises(DczError, match="finite and positive"):
        t.decode()


def test_writer_refuses_a_scale_step_the_reader_would_refuse():
    package, weight, form = lenet5_with(FORMS["dense-plain"][0])
    i = next(i for i, t in enumerate(package.tensors) if t.name == weight)
    package.tensors[i].chain[0].params["channels"] = form.channels + 1
    with pytest.raises(DczError, match="refusing to write an unreadable file"):
        write(package)
    with pytest.raises(DczError):
        validate_chain(package.tensors[i])


def test_files_written_before_encoding_version_2_read_and_rewrite_the_same():
    """Written by the writer as it was before `scale` (tests/fixtures): still read, and the same
    stages now write the same bytes (the 1.0 layout has no zlib, so its bytes do not depend on
    the zlib library)."""
    old = (FIXTURES / "lenet5-quantize-per-channel-1.0.dcz").read_bytes()
    assert header_of(old)["encoding_version"] == 1 and container.PREAMBLE.unpack_from(old)[2] == 0
    package = read_model(str(LENET5))
    quantize(package, QuantizeConfig(8, True, False))
    assert write(package, compact=False) == old
    for t, u in zip(read_dcz(old).tensors, package.tensors):
        assert t.decode().tobytes() == u.decode().tobytes()
    compressed = read_dcz((FIXTURES / "lenet5-compress-1.1.dcz").read_bytes())
    assert header_of((FIXTURES / "lenet5-compress-1.1.dcz").read_bytes())["encoding_version"] == 1
    assert any(s.codec == "huffman" for t in compressed.tensors for s in t.chain)
    for t in compressed.tensors:
        t.decode()
    huffman(compressed)  # and the stages still take them
    read_dcz(write(compressed))


# ------------------------------------------------------------------------------ quantized_form

def test_quantized_form_folds_a_dense_scale_into_per_channel_codes():
    package, weight, form = lenet5_with(FORMS["dense-linear"][0])
    t = read_dcz(write(package)).tensor(weight)
    q = quantized_form(t)
    assert q is not None and not q.is_scaled and not q.is_sparse
    v = q.values
    assert (v.channels, v.inner) == (form.channels, form.inner) and v.codes.tobytes() == form.values.codes.tobytes()
    assert np.all(v.zero_points == form.values.zero_points[0])
    assert np.allclose(v.scales, form.values.scales[0] * form.scales, rtol=1e-6)
    assert np.allclose(v.floats(), t.decode().reshape(-1), rtol=1e-5, atol=1e-7 * np.abs(t.decode()).max())


def test_quantized_form_of_a_sparse_scaled_tensor_gives_codes_for_every_weight():
    package, weight, form = lenet5_with(FORMS["sparse-linear"][0])
    t = read_dcz(write(package)).tensor(weight)
    q = quantized_form(t)
    assert q is not None and len(q.values.codes) == t.numel and q.values.bits == 6
    decoded = t.decode().reshape(-1)
    assert np.all(q.values.floats()[decoded == 0] == 0)
    assert np.allclose(q.values.floats(), decoded, rtol=1e-5, atol=1e-7 * np.abs(decoded).max())


def test_quantized_form_is_none_when_no_per_channel_form_exists():
    assert quantized_form(read_dcz(write(lenet5_with(FORMS["sparse-codebook"][0])[0])).tensors[0]) is None

    def odd_layout(w, c, i):  # 2 channels of 27 elements: no axis of (6, 1, 3, 3) is laid out so
        return _dense_linear(w, 2, w.size // 2)
    package, weight, _ = lenet5_with(odd_layout)
    assert quantized_form(read_dcz(write(package)).tensor(weight)) is None

    def huge(w, c, i):  # linear step x channel scale underflows float32 (to 0: no valid step)
        form = _dense_linear(w, c, i)
        return form.with_(scales=np.full(c, 1e-44, np.float32))
    package, weight, _ = lenet5_with(huge)
    assert quantized_form(read_dcz(write(package)).tensor(weight)) is None


# ---------------------------------------------------------------------------------- the stages

def layer_package(arrays: dict[str, np.ndarray]):
    """Each 4-D array the weight of a Conv, each 2-D one of a MatMul (output channels: last axis)."""
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes, inputs = [], []
    for i, (name, a) in enumerate(arrays.items()):
        if a.ndim == 4:
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, a.shape[1], 6, 6]))
            nodes.append(helper.make_node("Conv", [f"x{i}", name], [f"y{i}"]))
        else:
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, a.shape[0]]))
            nodes.append(helper.make_node("MatMul", [f"x{i}", name], [f"y{i}"]))
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT,
                                             [1, a.shape[0], 4, 4] if a.ndim == 4 else [1, a.shape[1]])
               for i, a in enumerate(arrays.values())]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # from_onnx turns the initializers into placeholders
    return from_onnx(copy, None), model


def ranged_arrays(conv=(16, 4, 3, 3), fc=(40, 16)):
    fc = (RNG.standard_normal(fc) * np.logspace(-2, 1, fc[1])).astype(np.float32)  # channels: last axis
    return {"conv": conv_weight(conv), "fc": fc}


def per_channel_error(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Each output channel's max error relative to its own max |w|."""
    move = lambda x: np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)  # noqa: E731
    return np.abs(move(a) - move(b)).max(axis=1) / np.maximum(np.abs(move(a)).max(axis=1), 1e-30)


def test_quantize_per_channel_of_a_pruned_layer_scales_each_channel():
    arrays = ranged_arrays()
    package, _ = layer_package(arrays)
    prune(package, PruneConfig(PerKind(0.5, 0.5)))
    per_tensor = read_dcz(write(package))
    pruned = {t.name: t.decode() for t in per_tensor.tensors}
    rows = {r["name"]: r for r in quantize(package, QuantizeConfig(8, per_channel=True))}
    quantize(per_tensor, QuantizeConfig(8))
    back, flat = read_dcz(write(package)), read_dcz(write(per_tensor))
    for name, axis in (("conv", 0), ("fc", 1)):
        t = back.tensor(name)
        assert t.chain_label.startswith("scale/ch+sparse") and "linear8" in t.chain_label
        assert [s.codec for s in t.chain][:3] == ["scale", "sparse", "linear"]
        assert t.chain[2].params["channels"] == 1  # one range over the normalized entries
        assert rows[name]["scaled"] and rows[name]["channels"] == arrays[name].shape[axis] and rows[name]["axis"] == axis
        error = per_channel_error(pruned[name], t.decode(), axis)
        assert error.max() <= 1 / 255 * 1.001  # half a step of [-1, 1] at 8 bits, per channel
        # per tensor, the small channels lose most of their weights to the zero code
        assert error.max() < per_channel_error(pruned[name], flat.tensor(name).decode(), axis).max() / 10
        assert not np.any((t.decode() != 0) & (pruned[name] == 0))  # pruned weights stay zero


def test_quantize_per_channel_of_a_dense_layer_keeps_the_linear_chain():
    package, _ = layer_package(ranged_arrays())
    quantize(package, QuantizeConfig(8, per_channel=True))
    back = read_dcz(write(package))
    assert [t.chain_label for t in back.tensors] == ["linear8/ch", "linear8/ch"]
    assert header_of(write(package))["encoding_version"] == 1


def test_share_per_channel_fits_each_channel():
    arrays = ranged_arrays()
    package, _ = layer_package(arrays)
    per_tensor = read_dcz(write(package))
    rows = {r["name"]: r for r in share(package, ShareConfig(PerKind(4, 4), per_channel=True))}
    share(per_tensor, ShareConfig(PerKind(4, 4)))
    back, flat = read_dcz(write(package)), read_dcz(write(per_tensor))
    for name, axis in (("conv", 0), ("fc", 1)):
        t = back.tensor(name)
        assert [s.codec for s in t.chain][:2] == ["scale", "codebook"]
        assert rows[name]["channels"] == arrays[name].shape[axis] and rows[name]["centroids"] <= 16
        assert len(np.unique(parse(t).values.indices)) <= 16
        ours = per_channel_error(arrays[name], t.decode(), axis)
        theirs = per_channel_error(arrays[name], flat.tensor(name).decode(), axis)
        assert ours.max() < 0.5 and ours.max() < theirs.max() / 2  # per tensor, small channels collapse to 0
        assert rows[name]["rmse"] == pytest.approx(np.sqrt(np.mean((t.decode().astype(np.float64) - arrays[name]) ** 2)),
                                                   rel=1e-5)


def test_per_channel_without_an_output_channel_axis_is_per_tensor():
    """A weight no Conv/Gemm/MatMul consumes (here: an Identity's input), or with one output
    channel, gets no scale step: the same bytes as without --per-channel."""
    w = conv_weight((1, 3, 3, 3))
    package, _ = layer_package({"one": w})
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(conv_weight(), "free")])
    free = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), None)
    free.tensors[0].kind = "conv"
    for p in (package, free):
        for stage, config in ((share, ShareConfig(PerKind(4, 4), per_channel=True)), (share, ShareConfig(PerKind(4, 4))),
                              (quantize, QuantizeConfig(8, per_channel=True)), (quantize, QuantizeConfig(8))):
            copy = read_dcz(write(p))
            prune(copy, PruneConfig(PerKind(0.5, 0.5)))
            stage(copy, config)
            assert all(t.chain[0].codec != "scale" for t in copy.tensors)
            assert header_of(write(copy))["encoding_version"] == 1


def test_share_per_channel_refuses_train():
    with pytest.raises(DczError, match="--per-channel sharing cannot be combined with --train"):
        from deepcompress_cli import api
        api.share(str(LENET5), "/nonexistent/out.dcz", per_channel=True, train=str(SAMPLES / "digits_train.npz"))
    with pytest.raises(DczError, match="--per-channel must be true or false"):
        ShareConfig(per_channel="yes")


def test_stages_on_a_scaled_input_start_from_its_decoded_weights():
    arrays = ranged_arrays()
    package, _ = layer_package(arrays)
    prune(package, PruneConfig(PerKind(0.5, 0.5)))
    share(package, ShareConfig(PerKind(6, 6), per_channel=True))
    shared = read_dcz(write(package))
    before = {t.name: t.decode() for t in shared.tensors}
    quantize(shared, QuantizeConfig(8))  # per tensor now: the scale step goes, codes of the real weights
    for t in read_dcz(write(shared)).tensors:
        assert [s.codec for s in t.chain][:2] == ["sparse", "linear"]
        assert np.abs(t.decode() - before[t.name]).max() <= quant_bound(before[t.name], 8)
    again = read_dcz(write(package))
    share(again, ShareConfig(PerKind(6, 6), per_channel=True))  # sharing again: the same scales, not squared
    for t in again.tensors:  # (each channel's max is now a centroid: close to the first scales)
        assert np.allclose(parse(t).scales, parse(package.tensor(t.name)).scales, rtol=0.02)


def quant_bound(w, bits):
    return float(np.abs(w).max()) / ((1 << (bits - 1)) - 1) / 2 * 1.001


@pytest.mark.parametrize("middle", ["quantize", "share"])
def test_prune_then_per_channel_then_huffman_written_read_and_exported(tmp_path, cli, middle):
    arrays = ranged_arrays((32, 16, 3, 3), (256, 64))  # big enough for Huffman to pay
    package, model = layer_package(arrays)
    onnx.save(model, str(tmp_path / "m.onnx"))
    stage = ["quantize", "--per-channel"] if middle == "quantize" else ["share", "--per-channel", "--bits", "5"]
    p, q, h, out = (tmp_path / n for n in ("p.dcz", "q.dcz", "h.dcz", "h.onnx"))
    assert cli("-q", "prune", tmp_path / "m.onnx", "--sparsity", "0.6", "-o", p).exit_code == 0
    assert cli("-q", *stage[:1], p, *stage[1:], "-o", q).exit_code == 0
    result = cli("-q", "huffman", q, "-o", h, "--json")
    assert result.exit_code == 0, result.stderr
    before, after = read_dcz(q.read_bytes()), read_dcz(h.read_bytes())
    assert header_of(h.read_bytes())["encoding_version"] == 2
    for t in after.tensors:
        codecs = [s.codec for s in t.chain]
        assert codecs[:2] == ["scale", "sparse"] and "huffman" in codecs  # the scale step stays
        assert t.decode().tobytes() == before.tensor(t.name).decode().tobytes()  # lossless
        assert h.stat().st_size < q.stat().st_size
    info = json.loads(cli("info", h, "--json").stdout)
    assert all(row["chain"].startswith("scale/ch+sparse") for row in info["tensors"])
    assert cli("-q", "export", h, "-o", out).exit_code == 0
    exported = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    for name in arrays:
        assert exported[name].tobytes() == after.tensor(name).decode().tobytes()
    if middle == "quantize":
        qdq = tmp_path / "qdq.onnx"
        assert cli("-q", "export", h, "--qdq", "-o", qdq).exit_code == 0
        m = onnx.load(str(qdq))
        onnx.checker.check_model(m, full_check=True)
        assert sorted(n.op_type for n in m.graph.node if n.op_type == "DequantizeLinear") == ["DequantizeLinear"] * 2
        feeds = {"x0": RNG.standard_normal((1, 16, 6, 6)).astype(np.float32),
                 "x1": RNG.standard_normal((1, 256)).astype(np.float32)}
        a = ort_outputs(m.SerializeToString(), feeds, optimize=False)
        b = ort_outputs(out.read_bytes(), feeds, optimize=False)
        for x, y in zip(a, b):
            assert np.allclose(x, y, rtol=1e-4, atol=1e-5 * np.abs(y).max())


def test_int8_bench_uses_the_folded_codes(tmp_path, cli, monkeypatch):
    p, q = tmp_path / "p.dcz", tmp_path / "q.dcz"
    assert cli("-q", "prune", LENET5, "--sparsity", "0.5", "-o", p).exit_code == 0
    assert cli("-q", "quantize", p, "--per-channel", "-o", q).exit_code == 0
    package = read_dcz(q.read_bytes())
    scaled = [t for t in package.tensors if t.chain[0].codec == "scale"]
    assert len(scaled) >= 3 and all(quantized_form(t) is not None for t in scaled)
    from deepcompress_cli.interp import quant

    seen, prepare = [], quant.prepare_weight
    monkeypatch.setattr(quant, "prepare_weight", lambda values, stored, axis: seen.append(stored) or
                        prepare(values, stored, axis))
    quant.Int8Interpreter(package)
    assert sum(s is not None and s.channels > 1 for s in seen) == len(scaled)  # the stored codes, per channel
    monkeypatch.undo()
    result = cli("bench", p, q, "--runs", "1", "--warmup", "0", "--data", SAMPLES / "digits_test.npz", "--json")
    assert result.exit_code == 0, result.stderr
    fidelity = json.loads(result.stdout)["models"][1]["modes"]["int8"]["fidelity"]  # against the pruned model
    assert fidelity["top1_agreement"] >= 0.97 and fidelity["cosine"] >= 0.99


def test_cli_share_per_channel_and_compress_per_channel(tmp_path, cli):
    s, c = tmp_path / "s.dcz", tmp_path / "c.dcz"
    result = cli("share", LENET5, "--bits", "4", "--per-channel", "-o", s, "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["layers"]
    assert any(r["channels"] > 1 for r in rows)
    result = cli("compress", LENET5, "--per-channel", "-o", c, "--json")
    assert result.exit_code == 0, result.stderr
    chains = [t["chain"] for t in json.loads(cli("info", c, "--json").stdout)["tensors"]]
    assert any(ch.startswith("scale/ch") for ch in chains)
    bad = cli("share", LENET5, "--per-channel", "--train", SAMPLES / "digits_train.npz", "-o", tmp_path / "x.dcz")
    assert_one_line_error(bad)
    assert not (tmp_path / "x.dcz").exists()


def test_info_counts_a_scaled_sparse_tensor_without_expanding_it(monkeypatch):
    """`info` bounds its work by the stored entries: it looks through the scale step."""
    from deepcompress_cli import report

    package, weight, form = lenet5_with(FORMS["sparse-linear"][0])
    t = read_dcz(write(package)).tensor(weight)
    expected = round(1 - np.count_nonzero(t.decode()) / t.numel, 4)
    monkeypatch.setattr(Tensor, "decode", lambda self: pytest.fail("info expanded a sparse tensor"))
    assert report.sparsity(t) == expected
    t.streams["channel_scales"] = type(t.streams["channel_scales"]).of(np.zeros(form.channels, np.float32))
    with pytest.raises(DczError, match="finite and positive"):
        report.sparsity(t)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(0, 3), st.sampled_from(["float32", "float16", "float64"]),
       st.floats(0, 0.95), st.sampled_from(["plain", "linear", "codebook"]), st.booleans(), st.integers(0, 2**32 - 1))
def test_random_scaled_forms_decode_as_the_form_says(shape, axis, dtype, sparsity, kind, entropy, seed):
    r = np.random.default_rng(seed)
    axis = axis % len(shape)
    w = (r.standard_normal(shape) * 10.0 ** r.integers(-3, 3, shape[axis]).reshape(
        [-1 if i == axis else 1 for i in range(len(shape))])).astype(dtype)
    keep = r.random(shape) >= sparsity
    c, i = linear.channel_layout(tuple(shape), axis)
    form = sparse_form(np.where(keep, w, 0), keep, 3, dtype) if sparsity > 0 else encoding.dense_form(w, dtype)
    form = channel_scaled(form, c, i).with_(entropy="huffman" if entropy else "packed")
    values = form.entry_values()
    if kind == "linear":
        form = form.with_(values=Quantized(*linear.quantize(values, 5), bits=5))
    elif kind == "codebook":
        form = form.with_(values=_codebook(values))
    t = Tensor(name="w", dtype=dtype, shape=tuple(shape), kind="conv", chain=[], slots={}, streams={})
    new = build(t, form)
    validate_chain(new)
    package = read_model(str(LENET5))
    package.tensors.append(new)
    package.tensors[-1].kind = "other"  # not in the graph: the table alone is checked here
    back = container.read(write(package))[0].tensors[-1]
    decoded = back.decode().reshape(-1)
    assert decoded.tobytes() == form.dense_values().tobytes()
    assert np.array_equal(decoded == 0, form.dense_values() == 0)
    if dtype != "float16":
        assert np.abs(decoded.astype(np.float64) - np.where(keep, w, 0).reshape(-1)).max() <= \
            (0.11 if kind != "plain" else 1e-6) * np.abs(w).max() + 1e-30


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_grid_form_stores_levels_times_steps(sparse, bits):
    """What a reconstruction (GPTQ-style: integer levels, a step per output channel) stores."""
    w = conv_weight()
    c, i = linear.channel_layout(w.shape, 0)
    steps = (np.abs(w).reshape(c, -1).max(axis=1) / ((1 << (bits - 1)) - 1)).astype(np.float32)
    levels = np.clip(np.round(w.reshape(c, -1) / steps[:, None]), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    levels = levels.astype(np.int64).reshape(-1)
    expected = (levels.reshape(c, -1).astype(np.float32) * steps[:, None]).reshape(-1)
    gaps = None
    if sparse:
        keep = levels != 0
        gaps, entries = encoding.sparse.encode(levels, keep, 4)
        levels = entries
    form = encoding.grid_form(w.shape, "float32", levels, steps, bits, c, i, gaps, 4)
    assert form.is_scaled == sparse
    t = Tensor(name="w", dtype="float32", shape=w.shape, kind="conv", chain=[], slots={}, streams={})
    package = read_model(str(LENET5))
    package.tensors.append(build(t, form))
    package.tensors[-1].kind = "other"
    data = write(package)
    assert header_of(data)["encoding_version"] == (2 if sparse else 1)
    back = container.read(data)[0].tensors[-1]
    assert back.decode().reshape(-1).tobytes() == expected.tobytes()
    q = quantized_form(back)
    assert q.values.scales.tobytes() == steps.tobytes() and (q.values.channels, q.values.inner) == (c, i)
    assert q.values.floats().tobytes() == expected.tobytes()
    with pytest.raises(ValueError):
        encoding.grid_form(w.shape, "float32", np.full(w.size, 1 << (bits - 1)), steps, bits, c, i)
