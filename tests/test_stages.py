"""prune, share, huffman and compress: what each keeps exact, and how they chain."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import SAMPLES, onnx_weights, ort_outputs
from deepcompress_cli.files import read_model
from deepcompress_cli.stages import PerKind
from deepcompress_cli.stages.entropy import huffman
from deepcompress_cli.stages.prune import PruneConfig, prune
from deepcompress_cli.stages.share import ShareConfig, share

MLP, CNN = SAMPLES / "lenet300.onnx", SAMPLES / "lenet5.onnx"
RECIPE = ("--sparsity", "conv=0.6,fc=0.9")  # the paper's recipe (prune's defaults) given explicitly


def dense(package) -> dict[str, np.ndarray]:
    return {t.name: t.decode() for t in package.tensors}


def test_prune_hits_the_per_layer_sparsity_and_keeps_values_exact():
    original = dense(read_model(str(CNN)))
    package = read_model(str(CNN))
    config = PruneConfig(sparsity=PerKind(0.5, 0.8, [("fc2.weight", 0.25)]))
    rows = {r["name"]: r for r in prune(package, config)}
    after = dense(package)
    for t in package.tensors:
        before = original[t.name]
        if not t.is_weight:
            assert after[t.name].tobytes() == before.tobytes()
            continue
        target = 0.25 if t.name == "fc2.weight" else {"conv": 0.5, "fc": 0.8}[t.kind]
        assert rows[t.name]["sparsity"] == pytest.approx(target, abs=1 / t.numel + 1e-9)
        kept = after[t.name] != 0
        assert np.array_equal(after[t.name][kept], before[kept])  # survivors bit-exact
        assert np.abs(before[~kept]).max(initial=0) <= np.abs(before[kept]).min()  # smallest went


def test_prune_threshold_std_rule():
    package = read_model(str(MLP))
    original = dense(package)
    prune(package, PruneConfig(threshold_std=1.0))
    for t in package.tensors:
        if t.is_weight:
            w = original[t.name]
            assert np.array_equal(t.decode() != 0, np.abs(w) > w.std(dtype=np.float64))


def test_share_zeros_stay_zero_and_at_most_2_bits_values():
    package = read_model(str(CNN))
    prune(package, PruneConfig())
    pruned = dense(package)
    rows = {r["name"]: r for r in share(package, ShareConfig(bits=PerKind(4, 3)))}
    for t in package.tensors:
        if not t.is_weight:
            continue
        w = t.decode()
        assert np.array_equal(w == 0, pruned[t.name] == 0)  # zeros exactly zero, nothing else became 0
        bits = 4 if t.kind == "conv" else 3
        assert len(np.unique(w[w != 0])) <= (1 << bits) - 1  # one centroid is the reserved zero
        error = w[w != 0].astype(np.float64) - pruned[t.name][w != 0]
        assert rows[t.name]["max_error"] == pytest.approx(np.abs(error).max())


@pytest.mark.parametrize("init", ["linear", "density", "forgy"])
def test_share_is_deterministic_for_a_seed(init, tmp_path, cli):
    outputs = []
    for name in ("a.dcz", "b.dcz"):
        assert cli("share", MLP, "-o", tmp_path / name, "--init", init, "--seed", 3).exit_code == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_huffman_is_lossless_and_smaller():
    package = read_model(str(MLP))
    # half the weights kept: streams long enough for Huffman to pay for its tables (at 90 % pruned
    # this small model's streams are too short, and huffman rightly keeps them packed)
    prune(package, PruneConfig(sparsity=PerKind(0.5, 0.5)))
    share(package, ShareConfig())
    before, size_before = dense(package), sum(t.stored_bytes for t in package.tensors)
    rows = huffman(package)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before.values(), dense(package).values()))
    assert sum(t.stored_bytes for t in package.tensors) < size_before
    assert any(s["coding"] == "huffman" for r in rows for s in r["streams"].values())


def test_stages_chain_and_compress_is_the_same_recipe(cli, tmp_path):
    p, s, h, c = (tmp_path / f"{x}.dcz" for x in "pshc")
    for args in (("prune", CNN, "-o", p), ("share", p, "-o", s), ("huffman", s, "-o", h),
                 ("compress", CNN, "-o", c, *RECIPE)):
        assert cli(*args).exit_code == 0
    assert h.read_bytes() == c.read_bytes()
    stored = [sum(t.stored_bytes for t in read_model(str(x)).tensors) for x in (CNN, p, s, h)]
    assert stored == sorted(stored, reverse=True) and len(set(stored[:3])) == 3
    # huffman keeps a stream packed where its code tables and header text would cost more than
    # it saves: on this small model the file must not grow (it may stay the same)
    assert h.stat().st_size <= s.stat().st_size


def test_pipe_chain_through_stdin_and_stdout(cli, tmp_path):
    pruned = cli("prune", "-", "-o", "-", input=MLP.read_bytes())
    shared = cli("share", "-", "-o", "-", input=pruned.stdout_bytes)
    coded = cli("huffman", "-", "-o", tmp_path / "m.dcz", input=shared.stdout_bytes)
    assert coded.exit_code == 0
    assert cli("compress", MLP, "-o", tmp_path / "c.dcz", *RECIPE).exit_code == 0
    assert (tmp_path / "m.dcz").read_bytes() == (tmp_path / "c.dcz").read_bytes()


def test_other_orders_work(cli, tmp_path):
    """share before prune, prune after huffman, huffman twice: each gives a valid model."""
    steps = [("share", MLP, "a"), ("prune", "a", "b"), ("huffman", "b", "c"), ("prune", "c", "d"),
             ("huffman", "d", "e"), ("huffman", "e", "f")]
    for command, src, out in steps:
        src = src if src == MLP else tmp_path / f"{src}.dcz"
        assert cli(command, src, "-o", tmp_path / f"{out}.dcz").exit_code == 0, command
    assert (tmp_path / "e.dcz").read_bytes() == (tmp_path / "f.dcz").read_bytes()  # idempotent
    chains = {t.name: t.chain_label for t in read_model(str(tmp_path / "d.dcz")).tensors if t.is_weight}
    assert all(label.startswith("sparse5") for label in chains.values())


def test_export_of_compressed_model_runs_with_the_decoded_weights(cli, tmp_path):
    dcz, out = tmp_path / "m.dcz", tmp_path / "m.onnx"
    # without retraining, half the weights can go at no cost on this small MLP
    assert cli("compress", MLP, "-o", dcz, "--sparsity", "0.5").exit_code == 0
    assert cli("export", dcz, "-o", out).exit_code == 0
    decoded = dense(read_model(str(dcz)))
    exported = onnx_weights(onnx.load(str(out)))
    assert all(exported[name].tobytes() == decoded[name].tobytes() for name in decoded)
    data = np.load(SAMPLES / "digits_test.npz", allow_pickle=False)
    feeds = {"input": data["input"]}
    logits = ort_outputs(out.read_bytes(), feeds)[0]
    original = ort_outputs(MLP.read_bytes(), feeds)[0]
    accuracy = (logits.argmax(1) == data["labels"]).mean()
    assert accuracy >= (original.argmax(1) == data["labels"]).mean() - 0.02


def test_compress_report_and_json(cli, tmp_path):
    result = cli("compress", MLP, "-o", tmp_path / "m.dcz", "--report", *RECIPE)
    assert result.exit_code == 0
    assert "P+Q+H" in result.stdout and "gzip -9" in result.stdout
    data = json.loads(cli("--json", "compress", MLP, "-o", tmp_path / "n.dcz", "--report", *RECIPE).stdout)
    assert data["totals"]["ratio_weights"] > 20 and data["gzip9_bytes"] > 0
    layer = data["layers"][0]
    assert layer["bytes_original"] > layer["bytes_p"] > layer["bytes_pq"] >= layer["bytes_pqh"]


def test_info_shows_what_each_tensor_became(cli, tmp_path):
    assert cli("compress", CNN, "-o", tmp_path / "m.dcz", *RECIPE).exit_code == 0
    info = json.loads(cli("info", tmp_path / "m.dcz", "--json").stdout)
    rows = {r["name"]: r for r in info["tensors"]}
    assert rows["conv2.weight"]["chain"].startswith("sparse8+codebook8")
    assert rows["fc1.weight"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert rows["conv1.bias"]["chain"] == "raw"


@pytest.mark.parametrize("args", [("--sparsity", "1.5"), ("--sparsity", "x"), ("--sparsity", "conv=0.5,dense=1"),
                                  ("--index-bits", "0"), ("--layer-sparsity", "fc1"), ("--index-bits", "17")])
def test_bad_prune_options_exit_2(cli, tmp_path, args):
    result = cli("prune", MLP, "-o", tmp_path / "m.dcz", *args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "m.dcz").exists()


@pytest.mark.parametrize("args", [("--bits", "0"), ("--bits", "17"), ("--init", "kmeans++"), ("--max-iter", "0")])
def test_bad_share_options_exit_2(cli, tmp_path, args):
    assert cli("share", MLP, "-o", tmp_path / "m.dcz", *args).exit_code == 2


def test_share_stores_a_tiny_layer_flat_when_the_codebook_would_enlarge_it():
    from deepcompress_cli.stages.share import share_tensor
    from deepcompress_cli.tensors import Tensor

    rng = np.random.default_rng(0)
    tiny = Tensor.raw("w", rng.standard_normal((3, 3)).astype(np.float32), "fc", "Gemm")
    new, row = share_tensor(tiny, 8, ShareConfig())  # 9 centroids + 9 indices > 9 floats
    assert not row["stored_shared"] and new.stored_bytes <= tiny.nbytes
    assert np.array_equal(new.decode(), tiny.decode())  # 9 values, 9 centroids: exact
    big = Tensor.raw("w", rng.standard_normal((64, 64)).astype(np.float32), "fc", "Gemm")
    new, row = share_tensor(big, 2, ShareConfig())
    assert row["stored_shared"] and new.stored_bytes < big.nbytes / 8
