"""The Python API (`import deepcompress_cli as dc`) and the config classes' own validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SAMPLES
from deepcompress_cli.errors import DczError

LENET, LENET5 = SAMPLES / "lenet300.onnx", SAMPLES / "lenet5.onnx"
TRAIN, TEST = SAMPLES / "digits_train.npz", SAMPLES / "digits_test.npz"


def normalized(report: dict) -> dict:
    """What --json prints of a report: strict JSON (NaN -> null), tuples as lists."""
    from deepcompress_cli.cli import finite_or_null

    return json.loads(json.dumps(finite_or_null(report), sort_keys=True))


def test_import_is_light_and_lists_the_api():
    code = ("import sys, deepcompress_cli as dc; names = dir(dc)\n"
            "print(sorted(m for m in ('numpy', 'onnx', 'tqdm') if m in sys.modules), 'compress' in names)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["[]", "True"], done.stderr


def test_compress_returns_the_cli_json_report(cli, tmp_path):
    import deepcompress_cli as dc

    options = ["--sparsity", "conv=0.5,fc=0.9", "--layer-sparsity", "fc3*=0.5", "--bits", "4",
               "--metadata", "recipe=test"]
    result = cli("--json", "compress", LENET, "-o", tmp_path / "cli.dcz", *options)
    assert result.exit_code == 0, result.stderr
    report = dc.compress(LENET, tmp_path / "api.dcz", sparsity={"conv": 0.5, "fc": 0.9},
                         layer_sparsity={"fc3*": 0.5}, bits=4, metadata={"recipe": "test"}, progress=False)
    expected = json.loads(result.stdout)
    assert expected.pop("output").endswith("cli.dcz") and report.pop("output").endswith("api.dcz")
    assert normalized(report) == expected
    assert (tmp_path / "cli.dcz").read_bytes() == (tmp_path / "api.dcz").read_bytes()


@pytest.mark.parametrize("call", [
    lambda dc, out: dc.compress(LENET, out, sparsity=1.5),
    lambda dc, out: dc.prune(LENET, out, sparsity={"conv": 0.5, "attention": 0.9}),
    lambda dc, out: dc.prune(LENET, out, layer_sparsity={"fc8*": 0.75}),
    lambda dc, out: dc.share(LENET, out, bits=17),
    lambda dc, out: dc.quantize(LENET, out, bits=1),
    lambda dc, out: dc.prune(LENET, out, epochs=2),  # needs train=
    lambda dc, out: dc.prune(LENET, out, train=TRAIN, lr=-1),
    lambda dc, out: dc.pack(LENET, out, metadata={"": "x"}),
    lambda dc, out: dc.svd(LENET, out),  # no rank method
    lambda dc, out: dc.info(out),  # no such file
    lambda dc, out: dc.bench(),
])
def test_api_errors_raise_dczerror(tmp_path, call):
    import deepcompress_cli as dc

    with pytest.raises(DczError):
        call(dc, tmp_path / "out.dcz")
    assert not (tmp_path / "out.dcz").exists()


def test_load_info_export_bench(tmp_path):
    import deepcompress_cli as dc
    from deepcompress_cli.tensors import Package

    dc.pack(LENET, tmp_path / "m.dcz")
    package = dc.load(tmp_path / "m.dcz")
    assert isinstance(package, Package) and len(package.tensors) == 6
    assert dc.info(tmp_path / "m.dcz")["totals"]["ratio_tensors"] == 1.0
    assert dc.export(tmp_path / "m.dcz", tmp_path / "m.onnx")["format"] == "onnx"
    assert (tmp_path / "m.onnx").read_bytes() == LENET.read_bytes()
    import deepcompress_cli.benchmarking  # noqa: F401 - a submodule must not hide an API function

    report = dc.bench(LENET, tmp_path / "m.dcz", data=TEST, runs=1, warmup=0, int8=False, max_accuracy_drop=0)
    assert report["passed"] and report["models"][1]["modes"]["fp32"]["accuracy"] > 0.95


# ------------------------------------------------------------------ validation in the config classes

@pytest.mark.parametrize("make, option", [
    (lambda: __import__("deepcompress_cli.stages.prune", fromlist=["x"]).PruneConfig(sparsity=1.5), "--sparsity"),
    (lambda: __import__("deepcompress_cli.stages.prune", fromlist=["x"]).PruneConfig(sparsity=float("nan")),
     "--sparsity"),
    (lambda: __import__("deepcompress_cli.stages.prune", fromlist=["x"]).PruneConfig(index_bits=17), "--index-bits"),
    (lambda: __import__("deepcompress_cli.stages.prune", fromlist=["x"]).PruneConfig(sparsity=0.5, threshold_std=1),
     "--threshold-std"),
    (lambda: __import__("deepcompress_cli.stages.share", fromlist=["x"]).ShareConfig(bits=17), "--bits"),
    (lambda: __import__("deepcompress_cli.stages.share", fromlist=["x"]).ShareConfig(init="kmeans++"), "--init"),
    (lambda: __import__("deepcompress_cli.stages.share", fromlist=["x"]).ShareConfig(max_iter=0), "--max-iter"),
    (lambda: __import__("deepcompress_cli.stages.quantize", fromlist=["x"]).QuantizeConfig(bits=17), "--bits"),
    (lambda: __import__("deepcompress_cli.train.retrain", fromlist=["x"]).TrainConfig("d.npz", epochs=0), "--epochs"),
    (lambda: __import__("deepcompress_cli.train.retrain", fromlist=["x"]).TrainConfig("d.npz", batch_size=0),
     "--batch-size"),
])
def test_configs_validate_themselves(make, option):
    with pytest.raises(DczError, match=option):
        make()


def test_share_tensor_refuses_too_many_bits():
    from deepcompress_cli.stages.share import ShareConfig, share_tensor
    from deepcompress_cli.tensors import Tensor

    tensor = Tensor.raw("w", np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "fc", "Gemm")
    with pytest.raises(DczError, match="--bits"):
        share_tensor(tensor, 17, ShareConfig())


def test_default_configs_take_the_mode_defaults():
    from deepcompress_cli.stages import SparsityBySize
    from deepcompress_cli.stages.prune import PruneConfig
    from deepcompress_cli.stages.share import ShareConfig

    plain, trained = PruneConfig().resolved(train=False), PruneConfig().resolved(train=True)
    assert (plain.sparsity.conv, plain.sparsity.fc, plain.index_bits.conv, plain.index_bits.fc) == (0.6, 0.9, 8, 5)
    assert isinstance(trained.sparsity, SparsityBySize) and (trained.index_bits.conv, trained.index_bits.fc) == (5, 8)
    given = PruneConfig(sparsity={"fc": 0.5}).resolved(train=True)
    assert given.sparsity.fc == 0.5 and given.sparsity.conv is None  # conv keeps the size rule
    assert (ShareConfig().resolved(train=True).bits.fc, ShareConfig().resolved().bits.fc) == (4, 5)


def test_compress_retrain_with_default_configs_uses_the_train_defaults():
    """From Python, `compress_retrain(PruneConfig(), ShareConfig(), ...)` is `compress --train`."""
    from deepcompress_cli.files import read_model
    from deepcompress_cli.stages.compress import compress_retrain
    from deepcompress_cli.stages.prune import PruneConfig
    from deepcompress_cli.stages.share import ShareConfig
    from deepcompress_cli.train.retrain import TrainConfig

    package = read_model(str(LENET5))
    rows, _ = compress_retrain(package, PruneConfig(), ShareConfig(), TrainConfig(str(TRAIN), epochs=0.05), steps=1)
    fc = [r for r in rows if r["kind"] == "fc"]
    assert fc and all(r["index_bits"] == 8 and r["bits"] == 4 for r in fc)
    big = max(fc, key=lambda r: r["weights"])  # sparsity by size: keeps 12/sqrt(n)
    assert big["kept_fraction"] == pytest.approx(min(1, 12 / big["weights"] ** 0.5), abs=0.01)


def test_progress_bars_for_training_steps_and_bench_batches(tmp_path, capsys):
    import deepcompress_cli as dc

    dc.prune(LENET5, tmp_path / "p.dcz", train=TRAIN, epochs=0.05, steps=1, progress=True)
    err = capsys.readouterr().err
    assert "retrain 1/1" in err and "step" in err
    dc.bench(LENET5, data=TEST, runs=1, warmup=0, int8=False, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "fp32" in err and "9/9" in err and "batch" in err
    dc.prune(LENET5, tmp_path / "q.dcz", train=TRAIN, epochs=0.05, steps=1, progress=False)
    assert capsys.readouterr().err == ""


def test_help_states_the_train_defaults_of_the_class(cli):
    """--help cannot import TrainConfig (start-up time); the figures it prints must be the class's."""
    from deepcompress_cli.train.retrain import TrainConfig

    config = TrainConfig("d.npz")
    text = " ".join(cli("prune", "--help").stdout.split())
    for option, value in (("--epochs", f"{config.epochs:g}"), ("--lr", f"{config.lr}"),
                          ("--batch-size", f"{config.batch_size}")):
        assert f"[default: {value}]" in text.split(option + " ", 1)[1][:200], option
