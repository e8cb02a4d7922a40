"""Every stage on degenerate weights: what it writes, the reader accepts, and it decodes right.

All zero, constant, one element, one non-zero, tiny (1..4 elements), huge and sparse, scalar,
empty, integer and bool "weights" (a hand-made file can mark any entry conv/fc): each stage's
output goes through `container.write` and `container.read` and must decode within the stage's
promise.  Also: exact prune counts with ties, files that never grow under `huffman`, and the
internal errors of issue 12 that used to escape.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES
from deepcompress_cli import container
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_dcz
from deepcompress_cli.onnx_io import from_onnx
from deepcompress_cli.stages import PerKind
from deepcompress_cli.stages.compress import compress
from deepcompress_cli.stages.entropy import huffman
from deepcompress_cli.stages.prune import PruneConfig, magnitude_mask, prune
from deepcompress_cli.stages.quantize import QuantizeConfig, quantize
from deepcompress_cli.stages.share import ShareConfig, share

rng = np.random.default_rng(7)
_huge = np.zeros((1000, 1000), dtype=np.float32)
_huge[0, 3], _huge[500, 500], _huge[999, 998] = 0.5, -1.25, 2.0

CASES = {  # name -> array; all are marked as weights
    "all_zero": np.zeros((100, 200), dtype=np.float32),  # > 64 KiB: the expansion bound matters
    "constant": np.full((1, 1, 3, 3), 1 / 9, dtype=np.float32),  # the box filter: all ties
    "one_element": np.array([0.75], dtype=np.float32),
    "one_nonzero": np.where(np.arange(2000).reshape(40, 50) == 1234, 3.0, 0.0).astype(np.float32),
    "tiny1": rng.standard_normal((1, 1)).astype(np.float32),
    "tiny2": rng.standard_normal((2,)).astype(np.float32),
    "tiny3": rng.standard_normal((3, 1)).astype(np.float32),
    "tiny4": rng.standard_normal((2, 2)).astype(np.float32),
    "huge_sparse": _huge,
    "float16": rng.standard_normal((8, 8)).astype(np.float16),
    "float64_zero": np.zeros((150, 100), dtype=np.float64),
    # 16-bit gaps give it 4 filler entries, just enough for the expansion bound as floats, not as codes
    "float64_zero_long": np.zeros(5 * 65536 - 1, dtype=np.float64),
    "scalar": np.array(0.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "int32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    "bool": np.array([[True, False], [False, True]]),
    "int8_empty": np.zeros((0,), dtype=np.int8),
}
PASSED_THROUGH = {"scalar", "empty", "int32", "bool", "int8_empty"}  # not compressible: left as they are


def package_of(arrays: dict[str, np.ndarray], kind: str = "fc"):
    """A package whose entries are `arrays`, every one marked `kind` (as a hand-made file may)."""
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], inits)
    package = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), None)
    for t in package.tensors:
        t.kind = kind
    return package


def roundtrip(package):
    """Write with the container writer, read back with its reader: what a later command sees."""
    out = io.BytesIO()
    container.write(package, out)
    data = out.getvalue()
    return read_dcz(data), len(data)


def decoded(package) -> dict[str, np.ndarray]:
    return {t.name: t.decode() for t in package.tensors}


def quant_bound(w: np.ndarray, bits: int) -> float:
    """Worst error of any of the linear schemes: half the coarsest step (symmetric, per tensor)."""
    top = float(np.abs(w.astype(np.float64)).max(initial=0.0))
    return top / ((1 << (bits - 1)) - 1) / 2 * (1 + 1e-5) + 1e-7 * top


STAGES = {
    "prune": lambda p: prune(p, PruneConfig()),
    "prune_0.6_idx16": lambda p: prune(p, PruneConfig(sparsity=PerKind(0.6, 0.6), index_bits=PerKind(16, 16))),
    "prune_idx1": lambda p: prune(p, PruneConfig(sparsity=PerKind(0.5, 0.5), index_bits=PerKind(1, 1))),
    "prune_std": lambda p: prune(p, PruneConfig(threshold_std=0.5)),
    "share": lambda p: share(p, ShareConfig()),
    "share_1bit": lambda p: share(p, ShareConfig(bits=PerKind(1, 1))),
    # no layer consumes these weights: --per-channel finds no axis (test_per_channel_* below do)
    "share_per_channel": lambda p: share(p, ShareConfig(per_channel=True)),
    "quantize": lambda p: quantize(p, QuantizeConfig()),
    "quantize_per_channel": lambda p: quantize(p, QuantizeConfig(per_channel=True)),
    "quantize_sym_16": lambda p: quantize(p, QuantizeConfig(bits=16, symmetric=True)),
    "huffman": lambda p: huffman(p),
    "compress": lambda p: compress(p, PruneConfig(), ShareConfig()),
    "compress_idx16": lambda p: compress(p, PruneConfig(index_bits=PerKind(16, 16)), ShareConfig()),
}


def check(stage: str, before: np.ndarray, after: np.ndarray, name: str) -> None:
    """`after` is what the stage promises for `before`."""
    assert after.shape == before.shape and after.dtype == before.dtype
    if name in PASSED_THROUGH or stage == "huffman":
        assert after.tobytes() == before.tobytes()
        return
    w = before.astype(np.float64)
    a = after.astype(np.float64)
    if stage.startswith("prune"):
        kept = a != 0
        assert np.array_equal(a[kept], w[kept])  # survivors exact
        if stage != "prune_std":
            sparsity = {"prune": 0.9, "prune_0.6_idx16": 0.6, "prune_idx1": 0.5}[stage]
            assert np.count_nonzero(~kept) == max(round(sparsity * w.size), np.count_nonzero(w == 0))
    elif stage.startswith("share"):
        bits = 1 if stage == "share_1bit" else 5
        assert len(np.unique(a)) <= 1 << bits
        assert np.all(a[w == 0] == 0)
        assert np.abs(a - w).max(initial=0) <= np.ptp(w) + 1e-12
    elif stage.startswith("quantize"):
        bits = 16 if stage.endswith("16") else 8
        assert np.abs(a - w).max(initial=0) <= quant_bound(w, bits) + (1e-3 * np.abs(w).max() if w.dtype == np.float16 else 0)
    elif stage.startswith("compress"):
        assert np.count_nonzero(a == 0) >= max(round(0.9 * w.size), np.count_nonzero(w == 0))
        kept = a != 0  # a shared survivor is within the range of the layer's non-zero weights
        if kept.any():
            assert np.abs(a - w)[kept].max() <= np.ptp(w[w != 0]) + 1e-12


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_on_degenerate_weights_writes_what_the_reader_accepts(stage):
    package = package_of(CASES)
    before = decoded(package)
    rows = STAGES[stage](package)
    assert {r["name"] for r in rows} == set(CASES) - PASSED_THROUGH
    back, _ = roundtrip(package)  # the reader's own checks: never a file that info refuses
    after = decoded(back)
    for name in CASES:
        check(stage, before[name], after[name], name)
    for t in back.tensors:  # passed-through entries stay exactly as they were, kind included
        if t.name in PASSED_THROUGH:
            assert [s.codec for s in t.chain] == ["raw"] and t.kind == "fc"


@pytest.mark.parametrize("first", ["prune", "prune_0.6_idx16", "compress_idx16", "share", "quantize"])
@pytest.mark.parametrize("then", ["share", "quantize_sym_16", "huffman", "prune", "compress"])
def test_degenerate_weights_survive_every_chain_of_two_stages(first, then):
    package = package_of({k: v for k, v in CASES.items() if k not in ("float16", "tiny2")})
    STAGES[first](package)
    package, _ = roundtrip(package)
    STAGES[then](package)
    roundtrip(package)  # readable; the values were checked stage by stage above


def test_forms_the_reader_would_refuse_fall_back_to_readable_ones():
    package = package_of({"w": CASES["float64_zero_long"]})
    prune(package, PruneConfig(sparsity=PerKind(0.5, 0.5), index_bits=PerKind(16, 16)))
    pruned = read_dcz(_bytes(package))
    assert pruned.tensors[0].chain_label == "sparse16" and pruned.tensors[0].stored_bytes == 40
    shared = read_dcz(_bytes(pruned))
    share(shared, ShareConfig())  # a codebook of 4 indices could not claim 2.6 MB: values stay flat
    assert roundtrip(shared)[0].tensors[0].chain_label == "sparse16"
    quantized = read_dcz(_bytes(pruned))
    quantize(quantized, QuantizeConfig())  # 4 codes could not either: codes for every weight
    assert roundtrip(quantized)[0].tensors[0].chain_label == "linear8"
    coded = read_dcz(_bytes(pruned))
    huffman(coded)
    assert roundtrip(coded)[0].tensors[0].chain_label == "sparse16"
    zero = package_of({"w": CASES["all_zero"]})
    prune(zero, PruneConfig(index_bits=PerKind(16, 16)))  # no entries at all over 80 KB: stored flat
    assert roundtrip(zero)[0].tensors[0].chain_label == "raw"


LAYER_CASES = {k: v for k, v in CASES.items() if v.ndim == 4 or k in ("all_zero", "one_nonzero", "tiny4", "huge_sparse")}


def layers_package(arrays: dict[str, np.ndarray]):
    """Each array the weight of a layer (4-D: Conv, else MatMul), so per-channel stages find its axis."""
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes, inputs = [], []
    for i, (name, a) in enumerate(arrays.items()):
        x = f"x{i}"
        if a.ndim == 4:
            inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, a.shape[1], 4, 4]))
            nodes.append(helper.make_node("Conv", [x, name], [f"y{i}"]))
        else:
            inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, a.shape[0]]))
            nodes.append(helper.make_node("MatMul", [x, name], [f"y{i}"]))
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(len(arrays))]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), None)


def test_per_channel_quantize_of_degenerate_weights():
    arrays = {k: v for k, v in LAYER_CASES.items() if k != "huge_sparse"}
    stored = _bytes(layers_package(arrays))
    for symmetric in (False, True):
        p = read_dcz(stored)
        rows = {r["name"]: r for r in quantize(p, QuantizeConfig(bits=4, per_channel=True, symmetric=symmetric))}
        assert all(r["channels"] > 1 for r in rows.values() if r["name"] != "constant")  # 1 output channel
        back, _ = roundtrip(p)
        for name, a in arrays.items():
            assert np.abs(back.tensor(name).decode() - a).max() <= quant_bound(a, 4)


@pytest.mark.parametrize("first", ["none", "prune", "prune_0.6_idx16", "prune_idx1"])
@pytest.mark.parametrize("then", ["quantize4", "quantize4_sym", "share1", "share5"])
def test_per_channel_stages_of_pruned_degenerate_weights(first, then):
    """quantize --per-channel of a pruned layer (scale -> sparse -> linear) and share --per-channel
    (scale -> [sparse ->] codebook) on degenerate layers, then huffman: readable, within bounds."""
    package = layers_package(LAYER_CASES)
    if first != "none":
        STAGES[first](package)
        package, _ = roundtrip(package)
    before = decoded(package)
    bits = int(then[-1]) if then.startswith("share") else 4
    if then.startswith("quantize"):
        rows = quantize(package, QuantizeConfig(bits=4, per_channel=True, symmetric=then.endswith("sym")))
    else:
        rows = share(package, ShareConfig(bits=PerKind(bits, bits), per_channel=True))
    assert {r["name"] for r in rows} == set(LAYER_CASES)
    back, _ = roundtrip(package)
    for name, w in before.items():
        a = back.tensor(name).decode()
        assert a.shape == w.shape and a.dtype == w.dtype
        assert np.all(a[w == 0] == 0)  # pruned weights (and zeros) stay exactly zero
        if then.startswith("quantize"):
            assert np.abs(a - w).max(initial=0) <= quant_bound(w, 4)
        else:
            assert np.abs(a - w).max(initial=0) <= np.ptp(w) + 1e-12
            channels = a.reshape(a.shape[0], -1) if a.ndim == 4 else a.reshape(-1, a.shape[-1]).T
            assert all(len(np.unique(c)) <= 1 << bits for c in channels)  # one codebook, scaled per channel
    huffman(back)
    coded, _ = roundtrip(back)
    for t in coded.tensors:
        assert t.decode().tobytes() == back.tensor(t.name).decode().tobytes()
        assert [s.codec for s in t.chain][:1] == [s.codec for s in back.tensor(t.name).chain][:1]  # scale kept


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([s for s in STAGES if s != "prune_std"]),
       st.sampled_from([(1,), (2,), (3,), (4,), (2, 2), (1, 1, 3, 3), (300, 300)]),
       st.sampled_from(["float32", "float16", "float64"]),
       st.integers(0, 4), st.sampled_from([0.0, 1 / 9, -0.5, 3.0]), st.integers(0, 2**32 - 1))
def test_any_stage_on_random_degenerate_weights(stage, shape, dtype, nonzeros, fill, seed):
    """A tensor of one value (zero or not) with up to 4 other values at random places."""
    r = np.random.default_rng(seed)
    w = np.full(shape, fill, dtype=dtype)
    w.reshape(-1)[r.integers(0, w.size, nonzeros)] = r.standard_normal(nonzeros)
    package = package_of({"w": w})
    STAGES[stage](package)
    back, _ = roundtrip(package)
    check(stage, w, back.tensor("w").decode(), "w")


@pytest.mark.parametrize("name", ["all_zero", "one_element", "one_nonzero", "tiny4", "tiny3"])
def test_svd_of_degenerate_fc_weights_then_compress_is_readable(cli, tmp_path, name):
    model = tmp_path / "m.onnx"
    w = CASES[name].reshape(CASES[name].shape[0], -1)
    _fc_model(model, w)
    for option in (("--rank", "1"), ("--energy", "0.9")):
        out, packed = tmp_path / "s.dcz", tmp_path / "c.dcz"
        assert cli("-q", "svd", model, *option, "-o", out).exit_code == 0
        assert cli("-q", "compress", out, "--index-bits", "16", "-o", packed).exit_code == 0
        assert cli("info", packed).exit_code == 0


def _bytes(package) -> bytes:
    out = io.BytesIO()
    container.write(package, out)
    return out.getvalue()


# ------------------------------------------------------------------ ties and exact counts


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.0, 2.0, -2.0]), min_size=1, max_size=40),
       st.floats(0, 0.99))
def test_prune_drops_exactly_the_requested_count_lowest_indices_first_among_ties(values, sparsity):
    w = np.array(values, dtype=np.float32)
    keep, threshold = magnitude_mask(w, sparsity)
    drop = round(sparsity * w.size)
    zeros = np.count_nonzero(w == 0)
    assert np.count_nonzero(~keep) == max(drop, zeros)  # exact zeros always go, even beyond the count
    assert not keep[w == 0].any()
    if keep.any() and (~keep).any():
        assert np.abs(w[~keep]).max() <= np.abs(w[keep]).min()  # the smallest went
        t = np.abs(w[~keep]).max()
        tied = np.flatnonzero(np.abs(w) == t)
        if t > 0:  # of the ties, a prefix in flat order went
            gone = ~keep[tied]
            assert np.array_equal(gone, np.sort(gone)[::-1])
    assert np.array_equal(magnitude_mask(w.reshape(-1, 1), sparsity)[0].reshape(-1), keep)  # shape-independent


def test_box_filter_pruned_at_60_percent_keeps_four_of_nine(cli, tmp_path):
    box = tmp_path / "box.onnx"
    _conv_model(box, np.full((1, 1, 3, 3), 1 / 9, dtype=np.float32))
    result = cli("--json", "prune", box, "--sparsity", "0.6", "-o", tmp_path / "p.dcz")
    assert result.exit_code == 0, result.stderr
    import json

    row = json.loads(result.stdout)["layers"][0]
    assert row["kept"] == 4 and row["sparsity"] == pytest.approx(5 / 9, abs=1e-6)
    w = _read(tmp_path / "p.dcz")["w"].reshape(-1)
    assert np.array_equal(w != 0, np.arange(9) >= 5)  # the lowest flat indices went first


def test_compressed_box_filter_and_tiny_fc_are_readable(cli, tmp_path):
    box, fc = tmp_path / "box.onnx", tmp_path / "fc.onnx"
    _conv_model(box, np.full((1, 1, 3, 3), 1 / 9, dtype=np.float32))
    _fc_model(fc, np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32))  # default 90 % fc: all 4 go
    for model in (box, fc):
        out = tmp_path / (model.stem + ".dcz")
        assert cli("compress", model, "-o", out, "--sparsity", "conv=0.6,fc=0.9").exit_code == 0  # the recipe
        assert cli("info", out).exit_code == 0
        assert cli("export", out, "-o", tmp_path / (model.stem + "_back.onnx")).exit_code == 0
    assert np.count_nonzero(_read(tmp_path / "box.dcz")["w"]) == 4  # 60 % conv of 9 = 5 pruned
    assert not _read(tmp_path / "fc.dcz")["w"].any()


def test_all_zero_layer_with_16_bit_index_is_readable(cli, tmp_path):
    model = tmp_path / "z.onnx"
    _fc_model(model, np.zeros((100, 200), dtype=np.float32))
    for stage in (("prune", "--index-bits", "16"), ("compress", "--index-bits", "16")):
        out = tmp_path / f"{stage[0]}.dcz"
        assert cli(stage[0], model, "-o", out, *stage[1:]).exit_code == 0
        assert cli("info", out).exit_code == 0
        assert not _read(out)["w"].any()


# ------------------------------------------------------------------ files never grow under huffman


def test_huffman_never_makes_the_file_larger(cli, tmp_path):
    pruned, shared, coded = (tmp_path / n for n in ("p.dcz", "s.dcz", "h.dcz"))
    assert cli("-q", "prune", SAMPLES / "lenet300.onnx", "-o", pruned).exit_code == 0
    assert cli("-q", "share", pruned, "-o", shared).exit_code == 0
    assert cli("-q", "huffman", shared, "-o", coded).exit_code == 0
    assert coded.stat().st_size <= shared.stat().st_size
    assert cli("-q", "huffman", coded, "-o", tmp_path / "hh.dcz").exit_code == 0  # and again
    assert (tmp_path / "hh.dcz").stat().st_size <= coded.stat().st_size
    a, b = _read(shared), _read(coded)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_huffman_keeps_each_tensors_smaller_form_by_file_cost():
    from deepcompress_cli.encoding import file_cost
    from deepcompress_cli.files import read_model

    package = read_model(str(SAMPLES / "lenet5.onnx"))
    prune(package, PruneConfig())
    share(package, ShareConfig())
    package, size_before = roundtrip(package)
    costs = {t.name: file_cost(t) for t in package.tensors}
    huffman(package)
    _, size_after = roundtrip(package)
    assert size_after <= size_before
    assert all(file_cost(t) <= costs[t.name] for t in package.tensors)


# ------------------------------------------------------------------ issue 12: errors that escaped


def test_per_tensor_functions_refuse_what_they_cannot_encode():
    from deepcompress_cli.stages.prune import prune_tensor
    from deepcompress_cli.stages.quantize import quantize_tensor
    from deepcompress_cli.stages.share import share_tensor

    package = package_of({"b": CASES["bool"], "e": CASES["empty"]}, kind="conv")
    for t in package.tensors:
        with pytest.raises(DczError, match="only non-empty float weights"):
            prune_tensor(t, 0.5, 8)
        with pytest.raises(DczError, match="only non-empty float weights"):
            share_tensor(t, 4, ShareConfig())
        with pytest.raises(DczError, match="only non-empty float weights"):
            quantize_tensor(t, QuantizeConfig(), None)


def _handmade(tmp_path, arrays: dict, kind: str):
    """A reader-valid .dcz whose entries are all marked `kind`."""
    path = tmp_path / f"hand_{kind}.dcz"
    path.write_bytes(_bytes(package_of(arrays, kind)))
    return path


@pytest.mark.parametrize("command", [("prune",), ("share",), ("quantize",), ("quantize", "--per-channel"),
                                     ("huffman",), ("compress",)])
def test_stages_pass_non_float_scalar_and_empty_weights_through(cli, tmp_path, command):
    arrays = {k: CASES[k] for k in PASSED_THROUGH}
    model = _handmade(tmp_path, arrays, "conv")
    out = tmp_path / "out.dcz"
    result = cli(command[0], model, "-o", out, *command[1:])
    assert result.exit_code == 0, result.stderr
    assert cli("info", out).exit_code == 0
    back = _read(out)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].tobytes() == a.tobytes()


def test_linear_check_refuses_a_layout_decoding_cannot_do(tmp_path):
    """inner 2^62 on an empty tensor passed "C x I divides n" and then failed in numpy."""
    from deepcompress_cli.tensors import Slot, Step, Stream, Tensor

    package = package_of({"w": np.zeros((0, 4), dtype=np.float32)})
    t = package.tensors[0]
    package.tensors[0] = Tensor(t.name, t.dtype, t.shape, t.kind,
                                [Step("linear", "tensor", {r: r for r in ("codes", "scales", "zero_points")},
                                      {"bits": 8, "channels": 1, "inner": 1 << 62, "symmetric": False})],
                                {"codes": Slot("uint8", 0), "scales": Slot("float32", 1), "zero_points": Slot("uint8", 1)},
                                {"codes": Stream.of(np.zeros(0, np.uint8)), "scales": Stream.of(np.ones(1, np.float32)),
                                 "zero_points": Stream.of(np.zeros(1, np.uint8))})
    with pytest.raises(DczError, match="linear params do not fit"):
        read_dcz(_bytes(package))


def test_qdq_export_and_int8_bench_of_a_codebook_whose_values_are_linear_codes(cli, tmp_path):
    """A chain codebook -> linear (the codebook's values quantized) is valid; --qdq and the int8
    interpreter used to take it for a quantized weight (AttributeError)."""
    from deepcompress_cli.encoding import Quantized, build
    from deepcompress_cli.files import read_model
    from deepcompress_cli.tensors import Step

    package = read_model(str(SAMPLES / "lenet300.onnx"))
    share(package, ShareConfig(bits=PerKind(4, 4)))
    for i, t in enumerate(package.tensors):
        if not t.is_weight:
            continue
        from deepcompress_cli.codecs import linear
        from deepcompress_cli.encoding import parse

        form = parse(t)
        codes, scales, zps = linear.quantize(form.values.centroids.astype(np.float32), 8)
        # codebook first, then its `codebook` slot quantized: rebuild the chain by hand
        new = build(t, form)
        q = Quantized(codes, scales, zps, 8)
        new.chain.append(Step("linear", "codebook", {r: f"codebook.{r}" for r in ("codes", "scales", "zero_points")},
                              q.params))
        from deepcompress_cli.tensors import Slot, Stream

        del new.streams["codebook"]
        for r, a in (("codes", codes), ("scales", scales), ("zero_points", zps)):
            new.slots[f"codebook.{r}"] = Slot(str(a.dtype), len(a))
            new.streams[f"codebook.{r}"] = Stream.of(a)
        new.form = None
        package.tensors[i] = new
    path = tmp_path / "cl.dcz"
    path.write_bytes(_bytes(package))
    assert cli("info", path).exit_code == 0
    result = cli("export", path, "--qdq", "-o", tmp_path / "q.onnx")
    assert result.exit_code == 0, result.stderr
    exported = onnx.load(str(tmp_path / "q.onnx"))
    assert not any(n.op_type == "DequantizeLinear" for n in exported.graph.node)  # floats, not codes
    result = cli("bench", path, "--int8", "--runs", "1", "--warmup", "0")
    assert result.exit_code in (0, 1), result.stderr


def test_quantize_on_an_empty_conv_weight_is_no_internal_error(cli, tmp_path):
    model = _handmade(tmp_path, {"w": np.zeros((0, 1, 3, 3), dtype=np.float32)}, "conv")
    result = cli("quantize", model, "--per-channel", "-o", tmp_path / "q.dcz")
    assert result.exit_code == 0, result.stderr
    assert _read(tmp_path / "q.dcz")["w"].shape == (0, 1, 3, 3)


def test_prune_on_a_bool_weight_is_no_internal_error(cli, tmp_path):
    model = _handmade(tmp_path, {"b": CASES["bool"]}, "fc")
    assert cli("prune", model, "-o", tmp_path / "p.dcz").exit_code == 0
    assert _read(tmp_path / "p.dcz")["b"].tobytes() == CASES["bool"].tobytes()


# ------------------------------------------------------------------ helpers


def _read(path) -> dict[str, np.ndarray]:
    return decoded(read_dcz(path.read_bytes()))


def _conv_model(path, w: np.ndarray) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1], 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _fc_model(path, w: np.ndarray) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
