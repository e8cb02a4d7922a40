"""Erf and Gelu accuracy: the float32 path (tanh of a fitted odd polynomial) against math.erf
densely over the whole float range, the float64 path, IEEE special values, and onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from one_node import check, run  # noqa: E402

F32 = np.float32
TINY = np.finfo(F32).smallest_subnormal


def erf_reference(x: np.ndarray) -> np.ndarray:
    return np.array([math.erf(v) for v in x.astype(np.float64).ravel()]).reshape(x.shape)


def test_erf_float32_within_2e7_everywhere():
    ramp = np.linspace(-6, 6, 1_000_001)
    magnitudes = np.logspace(-45, 38.5, 20_000)  # subnormals up to the largest floats
    x = np.concatenate([ramp, magnitudes, -magnitudes, [TINY, -TINY, np.finfo(F32).max, np.finfo(F32).min]])
    x = x.astype(F32)
    got = run("Erf", [x], opset=13)
    assert got.dtype == F32
    assert np.abs(got.astype(np.float64) - erf_reference(x)).max() <= 2e-7
    assert np.abs(got).max() <= 1 and got[-2] == 1 and got[-1] == -1


def test_erf_float32_special_values():
    got = run("Erf", [np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, TINY], dtype=F32)], opset=13)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == -1
    assert got[3] == 0 and not np.signbit(got[3]) and got[4] == 0 and np.signbit(got[4])
    assert got[5] > 0  # erf(x) ~ 1.128 x: the smallest subnormal does not flush to 0


def test_erf_float64_keeps_float64_accuracy():
    x = np.concatenate([np.linspace(-6, 6, 200_001), np.logspace(-300, 2, 2000)])
    got = run("Erf", [x], opset=13)
    assert got.dtype == np.float64
    assert np.abs(got - erf_reference(x)).max() < 1e-7
    assert run("Erf", [np.array([1e-300])], opset=13)[0] == pytest.approx(2 / math.sqrt(math.pi) * 1e-300, rel=1e-12)


def test_erf_float16_keeps_its_type():
    x = np.linspace(-4, 4, 101).astype(np.float16)
    got = run("Erf", [x], opset=13)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), erf_reference(x), atol=1e-3)


def test_gelu_float32_stays_float32_and_accurate():
    x = np.concatenate([np.linspace(-12, 12, 100_001), [np.inf, -np.inf, np.nan]]).astype(F32)
    with np.errstate(invalid="ignore"):
        got = run("Gelu", [x], opset=20)
    assert got.dtype == F32
    x64 = x[:-3].astype(np.float64)
    want = 0.5 * x64 * (1 + erf_reference(x64 / math.sqrt(2)))
    assert np.all(np.abs(got[:-3] - want) <= 2e-7 * np.maximum(1, np.abs(x64)))
    assert got[-3] == np.inf and np.isnan(got[-2]) and np.isnan(got[-1])  # -inf * 0, as onnxruntime


@pytest.mark.parametrize("op_type, opset", [("Erf", 13), ("Gelu", 20)])
def test_against_onnxruntime(op_type, opset):
    x = (np.random.default_rng(3).standard_normal((4, 257)) * 3).astype(F32)
    check(op_type, [x], opset=opset, tol=1e-6)


@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_scalars(dtype):
    """0-d inputs (numpy turns 0-d results into scalars, which the float32 path's `out=` refuses)."""
    x = np.array(0.7, dtype)
    for op_type, expected in (("Erf", math.erf(0.7)), ("Gelu", 0.35 * (1 + math.erf(0.7 / math.sqrt(2))))):
        got = run(op_type, [x], opset=20)
        assert got.shape == () and got.dtype == dtype
        assert float(got) == pytest.approx(expected, abs=2e-7)
