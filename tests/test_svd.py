"""svd: low-rank factorization of Gemm/MatMul layers, exact at the weight's rank, valid ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, ort_outputs, shared_path
from deepcompress_cli.errors import DczError
from deepcompress_cli.files import read_model, write_dcz, write_onnx
from deepcompress_cli.onnx_io import from_onnx, to_onnx
from deepcompress_cli.stages.prune import PruneConfig, prune
from deepcompress_cli.stages.share import ShareConfig, share
from deepcompress_cli.stages.svd import SvdConfig, svd

K, N = 8, 6  # the effective weight M is K×N: full rank 6 never shrinks, rank t shrinks while t·14 < 48
FLOAT = TensorProto.FLOAT

# name: (op, x shape, stored weight shape, weight input, attributes, has bias C, opset, IR version)
CASES = {
    "matmul": ("MatMul", [4, K], [K, N], 1, {}, False, 13, 8),
    "matmul_left": ("MatMul", [K, 4], [N, K], 0, {}, False, 13, 8),
    "matmul_batched": ("MatMul", [2, 3, K], [K, N], 1, {}, False, 13, 8),
    "matmul_left_batched": ("MatMul", [2, K, 3], [N, K], 0, {}, False, 13, 8),
    "matmul_ir3": ("MatMul", [4, K], [K, N], 1, {}, False, 8, 3),  # initializers are graph inputs too
    "gemm": ("Gemm", [4, K], [K, N], 1, {}, True, 13, 8),
    "gemm_transB": ("Gemm", [4, K], [N, K], 1, {"transB": 1}, True, 13, 8),
    "gemm_transA": ("Gemm", [K, 4], [K, N], 1, {"transA": 1}, True, 13, 8),
    "gemm_transA_transB_alpha_beta": ("Gemm", [K, 4], [N, K], 1,
                                      {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, True, 13, 8),
    "gemm_alpha_beta": ("Gemm", [4, K], [N, K], 1, {"transB": 1, "alpha": 0.5, "beta": -2.0}, True, 13, 8),
    "gemm_no_bias": ("Gemm", [4, K], [K, N], 1, {"alpha": 3.0}, False, 13, 8),
    "gemm_opset9": ("Gemm", [4, K], [K, N], 1, {"alpha": 0.5, "beta": 2.0}, True, 9, 4),  # MatMul fallback
    "gemm_opset9_transB": ("Gemm", [4, K], [N, K], 1, {"transB": 1}, True, 9, 4),
}


def random_weight(shape, rank=None, seed=0) -> np.ndarray:
    """A float32 weight; of exactly `rank` when given (a product through a `rank`-wide middle)."""
    rng = np.random.default_rng(seed)
    if rank is None:
        return rng.standard_normal(shape).astype(np.float32)
    return (rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))).astype(np.float32)


def truncated(w: np.ndarray, t: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u[:, :t] * s[:t]) @ vt[:t]


def build(case: str, w: np.ndarray, name: str = "fc1"):
    """A one-layer model for `case` with weight `w` (stored orientation): (model, feeds, bias)."""
    op, x_shape, _, side, attrs, has_bias, opset, ir = CASES[case]
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"] if side == 1 else ["w", "x"]
    bias = rng.standard_normal(N).astype(np.float32) if has_bias else None
    if has_bias:
        inputs.append("c")
        inits.append(numpy_helper.from_array(bias, "c"))
    graph_inputs = [helper.make_tensor_value_info("x", FLOAT, x_shape)]
    if ir < 4:
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    y_shape = numpy_forward(case, np.zeros(x_shape), w, bias).shape
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], name=name, doc_string="layer", **attrs)],
                              "g", graph_inputs, [helper.make_tensor_value_info("y", FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    return model, {"x": rng.standard_normal(x_shape).astype(np.float32)}, bias


def numpy_forward(case: str, x: np.ndarray, w: np.ndarray, bias) -> np.ndarray:
    op, _, _, side, attrs, *_ = CASES[case]
    x, w = x.astype(np.float64), w.astype(np.float64)
    if op == "MatMul":
        return x @ w if side == 1 else w @ x
    y = attrs.get("alpha", 1.0) * ((x.T if attrs.get("transA") else x) @ (w.T if attrs.get("transB") else w))
    return y if bias is None else y + attrs.get("beta", 1.0) * bias


def package_of(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return from_onnx(copy, None)


def valid_onnx(package) -> onnx.ModelProto:
    model = to_onnx(package)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model


def run(package, feeds) -> np.ndarray:
    return ort_outputs(valid_onnx(package).SerializeToString(), feeds)[0]


def mlp(shapes=((K, N), (N, K)), seed=0, names=("fc1", "fc2")):
    """x -> MatMul fc1 -> MatMul fc2 ...: a chain of named layers with weights `<name>.weight`."""
    nodes, inits, value = [], [], "x"
    for i, (shape, name) in enumerate(zip(shapes, names)):
        inits.append(numpy_helper.from_array(random_weight(shape, seed=seed + i), f"{name}.weight"))
        nodes.append(helper.make_node("MatMul", [value, f"{name}.weight"], [f"{name}_out"], name=name))
        value = f"{name}_out"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", FLOAT, [4, shapes[0][0]])],
                              [helper.make_tensor_value_info(value, FLOAT, [4, shapes[-1][1]])], inits)
    return package_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))


def by_name(rows) -> dict:
    return {r["name"]: r for r in rows}


# ------------------------------------------------------------------------------ the math per case

@pytest.mark.parametrize("case", CASES)
def test_exact_when_the_rank_is_the_weights_rank(case):
    w = random_weight(CASES[case][2], rank=2)
    model, feeds, bias = build(case, w)
    expected = ort_outputs(model.SerializeToString(), feeds)[0]
    np.testing.assert_allclose(expected, numpy_forward(case, feeds["x"], w, bias), rtol=1e-4, atol=1e-5)
    package = package_of(model)
    (row,) = svd(package, SvdConfig(rank=2))
    assert row["skipped"] is None and row["t"] == 2 and (row["u"], row["v"]) == (K, N)
    assert (row["params_before"], row["params_after"]) == (K * N, 2 * (K + N))
    assert row["energy_kept"] == pytest.approx(1.0) and row["rel_error"] < 1e-6
    np.testing.assert_allclose(run(package, feeds), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_truncated_rank_matches_numpy_svd(case):
    w = random_weight(CASES[case][2])
    model, feeds, bias = build(case, w)
    package = package_of(model)
    (row,) = svd(package, SvdConfig(rank=2, seed=5))
    expected = numpy_forward(case, feeds["x"], truncated(w, 2), bias)
    np.testing.assert_allclose(run(package, feeds), expected, rtol=1e-4, atol=1e-5)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert row["energy_kept"] == pytest.approx(np.sum(s[:2] ** 2) / np.sum(s ** 2))
    m = w.astype(np.float64).T if row["u"] != w.shape[0] else w.astype(np.float64)
    x = np.random.default_rng(5).standard_normal((64, K))
    reference = np.linalg.norm(x @ m - x @ truncated(m, 2)) / np.linalg.norm(x @ m)
    assert row["rel_error"] == pytest.approx(reference, rel=1e-5)


def test_names_nodes_and_table_order():
    model, feeds, _ = build("gemm_transB", random_weight([N, K], rank=2))
    package = package_of(model)
    svd(package, SvdConfig(rank=2))
    graph = valid_onnx(package).graph
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in graph.node] == [
        ("fc1.svd_u", "Gemm", ["x", "fc1.svd_u"], ["fc1.svd_mid"]),
        ("fc1.svd_v", "Gemm", ["fc1.svd_mid", "fc1.svd_v", "c"], ["y"])]
    assert all(n.doc_string == "layer" for n in graph.node)
    # transB=1 keeps its orientation: the u factor is t×K, v is N×t
    assert [(t.name, t.shape, t.kind) for t in package.tensors] == [
        ("fc1.svd_u", (2, K), "fc"), ("fc1.svd_v", (N, 2), "fc"), ("c", (N,), "other")]
    assert [t.name for t in graph.initializer] == ["fc1.svd_u", "fc1.svd_v", "c"]


def test_opset9_gemm_first_half_is_a_matmul_and_ir3_inputs_follow_the_initializers():
    model, _, _ = build("gemm_opset9_transB", random_weight([N, K], rank=2))
    package = package_of(model)
    svd(package, SvdConfig(rank=2))
    assert [n.op_type for n in package.graph.graph.node] == ["MatMul", "Gemm"]
    assert package.tensor("fc1.svd_u").shape == (K, 2)  # MatMul takes X·P as is
    model, feeds, _ = build("matmul_ir3", random_weight([K, N], rank=2))
    package = package_of(model)
    svd(package, SvdConfig(rank=2))
    assert [i.name for i in valid_onnx(package).graph.input] == ["x", "fc1.svd_u", "fc1.svd_v"]


def test_unnamed_node_and_name_collisions():
    model, feeds, _ = build("matmul", random_weight([K, N], rank=2), name="")
    model.graph.value_info.append(helper.make_tensor_value_info("w.svd_u", FLOAT, None))  # taken name
    package = package_of(model)
    (row,) = svd(package, SvdConfig(rank=2))
    assert row["name"] == "w"
    assert [t.name for t in package.tensors] == ["w.svd_u#2", "w.svd_v"]
    assert [n.output[0] for n in package.graph.graph.node] == ["w.svd_mid", "y"]
    run(package, feeds)


# ---------------------------------------------------------------------------------- choosing t

def designed_weight(sigma=(3.0, 2.0, 1.0, 0.01, 0.01, 0.01)) -> np.ndarray:
    """A K×N weight with the given singular values (energies 9, 4, 1 of about 14)."""
    rng = np.random.default_rng(0)
    left = np.linalg.qr(rng.standard_normal((K, N)))[0]
    right = np.linalg.qr(rng.standard_normal((N, N)))[0]
    return ((left * np.array(sigma)) @ right.T).astype(np.float32)


@pytest.mark.parametrize("config, t", [
    (SvdConfig(energy=0.6), 1), (SvdConfig(energy=0.9), 2), (SvdConfig(energy=0.99), 3),
    (SvdConfig(ratio=0.5), 1), (SvdConfig(ratio=0.6), 2), (SvdConfig(ratio=0.875), 3),  # 3·14 = 0.875·48
    (SvdConfig(rank=3), 3), (SvdConfig(rank=1, layer_ranks=[("fc1", 2)]), 2),
])
def test_rank_selection(config, t):
    model, _, _ = build("matmul", designed_weight())
    (row,) = svd(package_of(model), config)
    assert row["skipped"] is None and row["t"] == t


def test_energy_one_keeps_the_exact_rank():
    model, _, _ = build("matmul", designed_weight((3.0, 2.0, 1.0, 0, 0, 0)))
    (row,) = svd(package_of(model), SvdConfig(energy=1.0))
    assert row["t"] == 3 and row["energy_kept"] == pytest.approx(1.0)


def test_layer_ranks_last_match_wins_by_node_or_weight_name():
    config = SvdConfig(rank=3, layer_ranks=[("fc*", 2), ("fc2.weight", 1)])
    rows = by_name(svd(mlp(), config))
    assert (rows["fc1"]["t"], rows["fc2"]["t"]) == (2, 1)
    rows = by_name(svd(mlp(), SvdConfig(layer_ranks=[("fc*", 2), ("fc1", 1)])))  # no global method needed
    assert (rows["fc1"]["t"], rows["fc2"]["t"]) == (1, 2)
    rows = by_name(svd(mlp(), SvdConfig(layer_ranks=[("fc1", 1)], layers=["fc1"])))
    assert rows["fc1"]["t"] == 1 and rows["fc2"]["skipped"] == "not selected by --include"


# --------------------------------------------------------------------------------------- skips

def graph_bytes(package) -> bytes:
    return package.graph.SerializeToString()


@pytest.mark.parametrize("config, reason", [
    (SvdConfig(energy=1.0), "rank 6 would not shrink it (6*(8+6) >= 8*6)"),
    (SvdConfig(rank=100), "rank 6 would not shrink it"),
    (SvdConfig(rank=4), "rank 4 would not shrink it"),
    (SvdConfig(ratio=0.2), "ratio 0.2 leaves no rank"),
    (SvdConfig(rank=2, exclude=["fc1"]), "excluded by --exclude"),
])
def test_skipped_layers_stay_unchanged(config, reason):
    model, _, _ = build("matmul", random_weight([K, N]))
    package = package_of(model)
    before = graph_bytes(package), [t.name for t in package.tensors]
    (row,) = svd(package, config)
    assert row["skipped"].startswith(reason) and row["t"] is None
    assert row["params_after"] == row["params_before"] == K * N and row["rel_error"] == 0.0
    assert (graph_bytes(package), [t.name for t in package.tensors]) == before


def custom_model(node, inputs, inits, opset=13):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(node.output[0], FLOAT, ["?"])],
                              [numpy_helper.from_array(a, n) for n, a in inits])
    return package_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


@pytest.mark.parametrize("package, reason", [
    (lambda: custom_model(helper.make_node("MatMul", ["x", "y"], ["z"], name="mm"),
                          [("x", [4, K]), ("y", [K, N])], []), "its weight is not a constant"),
    (lambda: custom_model(helper.make_node("MatMul", ["x", "w"], ["z"], name="mm"),
                          [("x", [K, 4, 2])], [("w", random_weight([K, 2, N]))]),
     "its weight is not a 2-D float tensor"),
    (lambda: custom_model(helper.make_node("Gemm", ["w", "x"], ["z"], name="mm"),
                          [("x", [K, N])], [("w", random_weight([4, K]))]), "the constant is Gemm's input A"),
    (lambda: custom_model(helper.make_node("Gemm", ["x", "w", "c"], ["z"], name="mm", transA=1),
                          [("x", [K, 4])], [("w", random_weight([K, N])), ("c", np.zeros(N, np.float32))], 9),
     "Gemm with transA=1 cannot be split at opset 9"),
])
def test_layers_that_cannot_be_split(package, reason):
    package = package()
    before = graph_bytes(package)
    (row,) = svd(package, SvdConfig(rank=1))
    assert row["skipped"].startswith(reason) and row["name"] == "mm"
    assert graph_bytes(package) == before


def test_excluded_weights_are_skipped():
    model, _, _ = build("matmul", random_weight([K, N]))
    package = from_onnx(model, None, exclude=["w"])
    (row,) = svd(package, SvdConfig(rank=1))
    assert row["skipped"] == "its weight is excluded from compression"


def test_a_weight_shared_with_an_unsplit_layer_stays():
    w = numpy_helper.from_array(random_weight([K, K]), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [4, K])],
                              [helper.make_tensor_value_info("y", FLOAT, [4, K])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, K)).astype(np.float32)}
    package = package_of(model)
    svd(package, SvdConfig(rank=2, layers=["a"]))
    assert [t.name for t in package.tensors] == ["w", "a.svd_u", "a.svd_v"]
    run(package, feeds)
    svd(package, SvdConfig(rank=2, layers=["b"]))  # its last user gone, the weight goes too
    assert [t.name for t in package.tensors] == ["b.svd_u", "b.svd_v", "a.svd_u", "a.svd_v"]  # b's in w's place
    h = feeds["x"] @ truncated(numpy_helper.to_array(w), 2)
    np.testing.assert_allclose(run(package, feeds), h @ truncated(numpy_helper.to_array(w), 2),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options, message", [
    ({}, "give one of --rank, --energy or --ratio"),
    ({"layer_ranks": [("fc1", 2)]}, "give one of --rank, --energy or --ratio"),  # fc2 has none
    ({"rank": 2, "energy": 0.9}, "give only one of --rank, --energy, --ratio"),
    ({"rank": 0}, "--rank must be at least 1"),
    ({"energy": 0.0}, "--energy must be in (0, 1]"),
    ({"energy": 1.5}, "--energy must be in (0, 1]"),
    ({"energy": float("nan")}, "--energy must be in (0, 1]"),
    ({"ratio": 1.0}, "--ratio must be in (0, 1)"),
    ({"ratio": 0.0}, "--ratio must be in (0, 1)"),
    ({"rank": 2, "layer_ranks": [("fc1", 0)]}, "--layer-rank fc1=0"),
    ({"rank": 2, "layer_ranks": [("fc9*", 1)]}, "--layer-rank 'fc9*' matches no layer"),
    ({"rank": 2, "exclude": ["nope"]}, "--exclude 'nope' matches no layer"),
])
def test_invalid_configs_fail_before_any_change(options, message):
    """Bad values fail when the config is made (or, for names, before the graph changes)."""
    package = mlp()
    before = graph_bytes(package)
    with pytest.raises(DczError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("*", r"\*")):
        svd(package, SvdConfig(**options))
    assert graph_bytes(package) == before


def test_exclude_skips_layers():
    rows = by_name(svd(mlp(), SvdConfig(rank=1, exclude=["fc1"])))
    assert rows["fc1"]["skipped"] == "excluded by --exclude" and rows["fc2"]["t"] == 1


# ------------------------------------------------------------------------- files and other stages

def digits():
    data = np.load(SAMPLES / "digits_test.npz", allow_pickle=False)
    return data["input"], data["labels"]


def test_dcz_round_trip_and_chaining_with_prune_and_share(tmp_path):
    x, labels = digits()
    package = read_model(str(SAMPLES / "lenet300.onnx"))
    rows = svd(package, SvdConfig(energy=0.9))
    assert [r["skipped"] for r in rows] == [None] * 3
    write_dcz(package, str(tmp_path / "svd.dcz"))
    again = read_model(str(tmp_path / "svd.dcz"))
    assert [(t.name, t.kind) for t in again.tensors] == [(t.name, t.kind) for t in package.tensors]
    for p in (package, again):  # the factors' op is their consumer's, as attach_graph derives it
        assert [t.op for t in p.tensors if t.kind == "fc"] == ["Gemm", "Gemm"] * 3
    write_onnx(again, str(tmp_path / "svd.onnx"))
    factored = ort_outputs((tmp_path / "svd.onnx").read_bytes(), {"input": x})[0]
    np.testing.assert_allclose(factored, run(package, {"input": x}), rtol=1e-5, atol=1e-5)
    # the factors are ordinary fc weights: prune and share re-encode them
    pruned = by_name(prune(again, PruneConfig()))
    assert pruned["fc1.svd_u"]["kind"] == "fc" and pruned["fc1.svd_u"]["sparsity"] >= 0.89
    assert "fc2.svd_v" in by_name(share(again, ShareConfig()))
    write_dcz(again, str(tmp_path / "all.dcz"))
    write_onnx(read_model(str(tmp_path / "all.dcz")), str(tmp_path / "all.onnx"))
    assert ort_outputs((tmp_path / "all.onnx").read_bytes(), {"input": x})[0].shape == (len(x), 10)
    assert (factored.argmax(1) == labels).mean() >= 0.9


def test_svd_of_pruned_and_shared_weights_factors_their_dense_values():
    x, _ = digits()
    package = read_model(str(SAMPLES / "lenet300.onnx"))
    prune(package, PruneConfig())
    share(package, ShareConfig())
    dense = package.tensor("fc2.weight").decode()
    rows = by_name(svd(package, SvdConfig(rank=40, layers=["fc2"])))  # 40·(300+100) < 300·100
    assert rows["fc2"]["skipped"] is None and rows["fc1"]["skipped"] == "not selected by --include"
    w = package.tensor("fc2.svd_v").decode() @ package.tensor("fc2.svd_u").decode()  # transB: Qᵀ·Pᵀ = Mᵀ
    np.testing.assert_allclose(w, truncated(dense, 40), rtol=1e-4, atol=1e-5)
    assert run(package, {"input": x}).shape == (len(x), 10)


# ----------------------------------------------------------------------------------- real models

def print_rows(title, rows):
    print(f"\n{title}")
    for r in rows:
        print(f"  {r['name']:<24} {r['u']:>5}x{r['v']:<4} t={r['t']!s:<4} params {r['params_before']:>7} -> "
              f"{r['params_after']:>7}  energy {r['energy_kept']:.4f}  rel_error {r['rel_error']:.4f}"
              + (f"  skipped: {r['skipped']}" if r["skipped"] else ""))
    before, after = sum(r["params_before"] for r in rows), sum(r["params_after"] for r in rows)
    print(f"  fc parameters {before} -> {after} ({after / before:.3f})")


def check_rows(rows):
    for r in rows:
        assert r["skipped"] is None and 1 <= r["t"] < min(r["u"], r["v"])
        assert r["params_after"] == r["t"] * (r["u"] + r["v"]) < r["params_before"] == r["u"] * r["v"]
        assert 0.9 <= r["energy_kept"] < 1 and 0 < r["rel_error"] < 0.5


def test_mnist_cnn_energy_09():
    path, data = shared_path("models", "mnist_cnn.onnx"), np.load(shared_path("data", "mnist_test.npz"))
    x = ((data["images"].astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    package = read_model(str(path))
    rows = svd(package, SvdConfig(energy=0.9))
    print_rows("mnist_cnn, svd --energy 0.9", rows)
    assert len(rows) == 2
    check_rows(rows)
    original = ort_outputs(path.read_bytes(), {"input": x})[0]
    factored = run(package, {"input": x})
    accuracy = [(y.argmax(1) == data["labels"]).mean() for y in (original, factored)]
    agreement = (original.argmax(1) == factored.argmax(1)).mean()
    print(f"  MNIST top-1: original {accuracy[0]:.4f}, factored {accuracy[1]:.4f}; top-1 agreement {agreement:.4f}")
    assert accuracy[0] > 0.98 and accuracy[1] > 0.9


def test_kws_dnn_s_energy_09():
    ort = pytest.importorskip("onnxruntime")
    path = shared_path("models", "kws_dnn_s.onnx")
    package = read_model(str(path))
    rows = svd(package, SvdConfig(energy=0.9))
    print_rows("kws_dnn_s, svd --energy 0.9", rows)
    assert len(rows) == 4
    check_rows(rows)
    sessions = [ort.InferenceSession(m, providers=["CPUExecutionProvider"])
                for m in (path.read_bytes(), valid_onnx(package).SerializeToString())]
    (inp,) = sessions[0].get_inputs()
    assert inp.name == "Mfcc:0" and inp.shape == [1, 25, 10]  # fixed batch of one: one run per input
    xs = np.random.default_rng(0).standard_normal((200, 1, 25, 10)).astype(np.float32)
    original, factored = (np.concatenate([s.run(None, {inp.name: x})[0] for x in xs]) for s in sessions)
    cosine = np.sum(original * factored, 1) / (np.linalg.norm(original, axis=1) * np.linalg.norm(factored, axis=1))
    agreement = (original.argmax(1) == factored.argmax(1)).mean()
    print(f"  fidelity on 200 random inputs: cosine mean {cosine.mean():.4f} (min {cosine.min():.4f}), "
          f"top-1 agreement {agreement:.3f}")
    assert cosine.mean() > 0.8 and agreement > 0.4  # 12 classes: chance is about 0.08


def test_float16_weights_keep_their_dtype():
    w = random_weight([K, N], rank=2).astype(np.float16)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc1")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, N])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.random.default_rng(0).standard_normal((4, K)).astype(np.float16)
    package = package_of(model)
    svd(package, SvdConfig(rank=2))
    assert [t.dtype for t in package.tensors] == ["float16", "float16"]
    np.testing.assert_allclose(run(package, {"x": x}).astype(np.float32), x.astype(np.float32) @ w.astype(np.float32),
                               rtol=2e-2, atol=2e-2)


def test_a_weight_also_read_inside_a_subgraph_stays():
    w = random_weight([K, N], rank=2)
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", FLOAT, [K, N])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc1"),
             helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [4, K]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", FLOAT, [4, N]),
                               helper.make_tensor_value_info("z", FLOAT, [K, N])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = {"x": np.ones((4, K), np.float32), "cond": np.array(True)}
    package = package_of(model)
    (row,) = svd(package, SvdConfig(rank=2))  # the If is no candidate: only main-graph Gemm/MatMul
    assert row["skipped"] is None and [t.name for t in package.tensors] == ["w", "fc1.svd_u", "fc1.svd_v"]
    np.testing.assert_allclose(run(package, feeds), feeds["x"] @ w, rtol=1e-4, atol=1e-4)
