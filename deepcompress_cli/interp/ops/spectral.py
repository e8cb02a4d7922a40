"""Fourier transforms (opset 17/20): DFT, STFT, and MelWeightMatrix, the mel filterbank applied
to their spectra.  (The window functions STFT frames are multiplied by are in windows.py.)

Complex tensors are real ones with a last axis of 2 (real, imaginary); a real signal has a last
axis of 1.  Transforms run in numpy's FFT (complex128) and are cast back to the input's dtype.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from ...errors import DczError
from . import op
from .shape import input_at
from .windows import output_datatype


def _scalar_int(value, name, what, ctx) -> int:
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind not in "iu":
        raise DczError(f"{name} node {ctx.node_name!r}: {what} must be one integer.")
    return int(np.asarray(value).reshape(-1)[0])


def _as_complex(x: np.ndarray, name, ctx) -> np.ndarray:
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise DczError(f"{name} node {ctx.node_name!r}: the last axis must be 1 (real) or 2 "
                       f"(complex), got shape {list(x.shape)}.")
    x = x.astype(np.float64)
    return x[..., 0] if x.shape[-1] == 1 else x[..., 0] + 1j * x[..., 1]


def _as_pairs(y: np.ndarray, dtype) -> np.ndarray:
    return np.stack([y.real, y.imag], axis=-1).astype(dtype)


@op("DFT")
def dft(inputs, attrs, ctx):
    """The DFT of one signal axis: full (onesided=0), real-to-half-spectrum (onesided=1), their
    inverses; dft_length zero-pads or truncates the signal.  axis is an attribute (default 1)
    in opset 17 and an input (default -2) from opset 20; it counts the trailing pair axis."""
    x = inputs[0]
    rank = x.ndim
    if ctx.opset >= 20:
        axis_input = input_at(inputs, 2)
        axis = -2 if axis_input is None else _scalar_int(axis_input, "DFT", "axis", ctx)
    else:
        axis = int(attrs.get("axis", 1))
    if not (-rank <= axis <= -2 or 0 <= axis <= rank - 2):
        raise DczError(f"DFT node {ctx.node_name!r}: axis {axis} is outside [-{rank}, -2] and "
                       f"[0, {rank - 2}] for a rank-{rank} input.")
    axis = axis % rank
    signal = _as_complex(x, "DFT", ctx)
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    length = input_at(inputs, 1)
    if length is None:
        n = 2 * (signal.shape[axis] - 1) if inverse and onesided else signal.shape[axis]
    else:
        n = _scalar_int(length, "DFT", "dft_length", ctx)
    if n < 1:
        raise DczError(f"DFT node {ctx.node_name!r}: dft_length must be positive, got {n}.")
    out_shape = list(signal.shape) + [1 if inverse and onesided else 2]
    out_shape[axis] = n // 2 + 1 if onesided and not inverse else n
    ctx.check_size("DFT", out_shape, 16)  # complex128 while computing
    if inverse and onesided:  # IRFFT: half spectrum in, real signal out
        return [np.fft.irfft(signal, n, axis=axis)[..., None].astype(x.dtype)]
    if inverse:
        return [_as_pairs(np.fft.ifft(signal, n, axis=axis), x.dtype)]
    y = np.fft.fft(signal, n, axis=axis)
    if onesided:  # the other half of a real signal's spectrum is its mirror image
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return [_as_pairs(y, x.dtype)]


@op("STFT")
def stft(inputs, attrs, ctx):
    """DFTs of frames [f * frame_step, f * frame_step + frame_length) of each [batch, length]
    signal, times the window: [batch, frames, bins, 2], bins = frame_length // 2 + 1 when
    onesided (default 1), frame_length otherwise."""
    signal = _as_complex(inputs[0], "STFT", ctx)
    if signal.ndim != 2:
        raise DczError(f"STFT node {ctx.node_name!r}: signal must be [batch, length, 1 or 2], got "
                       f"{list(inputs[0].shape)}.")
    step = _scalar_int(inputs[1], "STFT", "frame_step", ctx)
    window, length = input_at(inputs, 2), input_at(inputs, 3)
    length = _scalar_int(length, "STFT", "frame_length", ctx) if length is not None else \
        window.shape[0] if window is not None else signal.shape[1]
    if window is not None and (window.ndim != 1 or window.shape[0] != length):
        raise DczError(f"STFT node {ctx.node_name!r}: window {list(window.shape)} must be "
                       f"[frame_length] = [{length}].")
    if step < 1 or not 1 <= length <= signal.shape[1]:
        raise DczError(f"STFT node {ctx.node_name!r}: frame_step {step} and frame_length "
                       f"{length} must be positive, and frames fit in {signal.shape[1]} samples.")
    frames = sliding_window_view(signal, length, axis=1)[:, ::step]  # [batch, frames, length]
    if window is not None:
        frames = frames * window.astype(np.float64)
    bins = length // 2 + 1 if attrs.get("onesided", 1) else length
    ctx.check_size("STFT", [*frames.shape[:2], bins, 2], 16)
    return [_as_pairs(np.fft.fft(frames, axis=-1)[..., :bins], inputs[0].dtype)]


@op("MelWeightMatrix")
def mel_weight_matrix(inputs, attrs, ctx):
    """[dft_length // 2 + 1, num_mel_bins] triangular filters, peaks 1.

    Band i rises from spectrogram bin edge[i] to edge[i + 1] and falls to edge[i + 2], where
    the num_mel_bins + 2 edges are equally spaced in mel (mel(f) = 2595 log10(1 + f / 700))
    from lower to upper_edge_hertz, in steps of the range / (num_mel_bins + 2), and map to bin
    floor((dft_length + 1) f / sample_rate), as onnxruntime and onnx's test data do.
    """
    name = "MelWeightMatrix"
    mel_bins = _scalar_int(inputs[0], name, "num_mel_bins", ctx)
    dft_length = _scalar_int(inputs[1], name, "dft_length", ctx)
    sample_rate = _scalar_int(inputs[2], name, "sample_rate", ctx)
    lower, upper = (float(np.asarray(v).reshape(-1)[0]) for v in inputs[3:5])
    if mel_bins < 1 or dft_length < 1 or sample_rate < 1 or not 0 <= lower < upper:
        raise DczError(f"{name} node {ctx.node_name!r}: needs positive num_mel_bins, dft_length "
                       f"and sample_rate and 0 <= lower_edge_hertz < upper_edge_hertz.")
    dtype = output_datatype(attrs, name, ctx)
    spectrum_bins = dft_length // 2 + 1
    ctx.check_size(name, [spectrum_bins, mel_bins], 8)
    low_mel, high_mel = (2595 * np.log10(1 + f / 700) for f in (lower, upper))
    mel = low_mel + np.arange(mel_bins + 2) * (high_mel - low_mel) / (mel_bins + 2)
    edges = np.floor((dft_length + 1) * (700 * (10 ** (mel / 2595) - 1)) / sample_rate)
    lo, center, hi = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(spectrum_bins, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where(center > lo, (j - lo) / (center - lo), 1.0)
        falling = (hi - j) / (hi - center)
    weights = np.where((j >= center) & (j < hi), falling,
                       np.where((j >= lo) & (j <= center), rising, 0.0))
    return [weights.astype(dtype)]
