"""Shared fixtures: sample models, the read-only ../shared data (skipped when absent), the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
SHARED = Path(os.environ.get("DEEPCOMPRESS_SHARED", ROOT.parent / "shared"))
SAMPLE_MODELS = [SAMPLES / "lenet300.onnx", SAMPLES / "lenet5.onnx"]
SHARED_MODELS = ["mnist_cnn.onnx", "mnist8_zoo.onnx", "kws_dnn_s.onnx"]


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is absent)")
    return path


@pytest.fixture
def cli():
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from deepcompress_cli.cli import main

    def run(*args, input=None):
        return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


def assert_one_line_error(result, code=2):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepcompress: error: "), result.stderr
    assert "Traceback" not in result.stderr


def onnx_weights(model) -> dict[str, np.ndarray]:
    """Every initializer and Constant value of a model (subgraphs included), by value name."""
    from onnx import numpy_helper

    from deepcompress_cli.onnx_io import _tensor_sites

    return {name: numpy_helper.to_array(t) for t, name, _ in _tensor_sites(model)}


def ort_outputs(model_bytes: bytes, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime's outputs; `optimize=False` turns off graph rewrites (ORT rewrites
    DequantizeLinear -> MatMul into a kernel that also quantizes the activations)."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model_bytes: bytes, seed: int = 0, batch: int = 2) -> dict:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feeds[i.name] = rng.random(shape, dtype=np.float32)
    return feeds


def mnist_accuracy(model_bytes: bytes, limit: int | None = None) -> float:
    """Top-1 on the MNIST test set (../shared/data), input 'input' [N,1,28,28] = (x/255-0.5)/0.5."""
    ort = pytest.importorskip("onnxruntime")
    data = np.load(shared_path("data", "mnist_test.npz"), allow_pickle=False)
    images, labels = data["images"][:limit], data["labels"][:limit]
    x = ((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predictions = np.concatenate([session.run(None, {name: x[i:i + 1000]})[0].argmax(1)
                                  for i in range(0, len(x), 1000)])
    return float((predictions == labels).mean())
