"""The committed sample models are accurate, well-formed and reproducible from make_samples.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODELS = ["lenet300.onnx", "lenet5.onnx"]
GENERATED = [*MODELS, "digits_test.npz", "digits_train.npz"]


@pytest.mark.parametrize("model_file", MODELS)
def test_sample_model_accuracy_and_io(model_file):
    ort = pytest.importorskip("onnxruntime")
    data = np.load(SAMPLES / "digits_test.npz", allow_pickle=False)
    x, labels = data["input"], data["labels"]
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (len(x),)

    sess = ort.InferenceSession(str(SAMPLES / model_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "input" and inp.shape == ["N", 1, 8, 8]
    assert out.name == "logits" and out.shape == ["N", 10]

    (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (len(x), 10)
    assert (logits.argmax(1) == labels).mean() >= 0.95


def test_regeneration_is_byte_identical(tmp_path):
    # Runs the real CLI (~3 s). Note: the float rounding of training depends on the
    # BLAS SIMD kernel, so on a different CPU family / NumPy build this may differ.
    subprocess.run([sys.executable, str(SAMPLES / "make_samples.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), (
            f"{name} differs from the committed file; rerun sample_models/make_samples.py "
            "(or the BLAS kernel/CPU differs from the one that produced it)")
