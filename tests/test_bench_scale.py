"""bench on big models (issue 12: VGG-19 did not finish in 10 minutes, and took 5.4x the model in
RAM): fewer random samples for big models, int8 weights prepared without float64 copies.
benchmarks/scale.py measures the real thing."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from deepcompress_cli.benchmarking import MIN_RANDOM_SAMPLES, RANDOM_SAMPLES, random_sample_count
from deepcompress_cli.codecs import linear
from deepcompress_cli.interp import quant


def _package(*numels):
    return SimpleNamespace(tensors=[SimpleNamespace(numel=n) for n in numels])


def test_random_samples_shrink_with_the_model_but_not_to_nothing():
    assert random_sample_count(_package(266_610)) == RANDOM_SAMPLES  # lenet300
    vgg19 = random_sample_count(_package(102_760_448, 16_777_216, 4_096_000, 20_024_384))
    assert MIN_RANDOM_SAMPLES <= vgg19 < 10
    assert random_sample_count(_package(10**12)) == MIN_RANDOM_SAMPLES
    assert random_sample_count(_package()) == RANDOM_SAMPLES


def _whole(values, out_axis):
    """The unblocked reference: linear.quantize over the whole weight at once."""
    channels, inner = linear.channel_layout(values.shape, out_axis)
    codes, scales, zero_points = linear.quantize(values.reshape(-1), 8, channels, inner, symmetric=True)
    centered = codes.astype(np.int32).reshape(-1, channels, inner) - zero_points.astype(np.int32)[None, :, None]
    return centered.reshape(values.shape), scales.astype(np.float64)


@pytest.mark.parametrize("shape, out_axis", [((24, 5, 3, 3), 0), ((40, 30), 0), ((30, 40), 1)])
def test_weights_quantized_in_blocks_equal_the_whole(monkeypatch, shape, out_axis):
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    values[3 if out_axis == 0 else slice(None)] *= 0  # an all-zero channel (or all-zero rows)
    expected_codes, expected_scales = _whole(values, out_axis)
    monkeypatch.setattr(quant, "QUANTIZE_BLOCK", 50, raising=False)  # a few channels per block
    codes, scales = quant.prepare_weight(values, None, out_axis)
    assert np.array_equal(codes, expected_codes) and np.array_equal(scales, expected_scales)


def test_preparing_a_weight_takes_less_memory_than_the_weight_twice(monkeypatch):
    values = np.random.default_rng(0).standard_normal((512, 4096)).astype(np.float32)  # 8 MB
    monkeypatch.setattr(quant, "QUANTIZE_BLOCK", 1 << 16, raising=False)
    tracemalloc.start()
    try:
        codes, _ = quant.prepare_weight(values, None, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes.shape == values.shape
    assert peak < 2 * values.nbytes  # was over 4x: float64 copies of the whole weight
