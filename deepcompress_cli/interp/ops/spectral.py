"""Signal processing: DFT, STFT and MelWeightMatrix.

ONNX carries complex numbers as a trailing axis of 2 (real, imaginary) and real signals as a
trailing axis of 1.  Transforms run in complex128 through numpy.fft and come back in the input's
dtype.
"""

from __future__ import annotations

import numpy as np

from ...errors import DczError
from . import op
from .indexing import onnx_dtype
from .shape import input_at, norm_axis


def _scalar(value, op_name: str, what: str):
    value = np.asarray(value).reshape(-1)
    if value.size != 1:
        raise DczError(f"{op_name}: {what} must be a scalar, got {value.size} values.")
    return value[0]


def _as_complex(x: np.ndarray, op_name: str) -> np.ndarray:
    """[..., 1] (real) or [..., 2] (real, imaginary) as a complex128 array without the last axis."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise DczError(f"{op_name}: the last axis must be 1 (real) or 2 (complex), got shape {list(x.shape)}.")
    values = x.astype(np.float64)
    return values[..., 0] + 1j * values[..., 1] if x.shape[-1] == 2 else values[..., 0].astype(np.complex128)


def _as_pairs(z: np.ndarray, dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


@op("DFT")
def dft(inputs, attrs, ctx):
    x = inputs[0]
    length = input_at(inputs, 1)
    if ctx.opset >= 20:  # the axis became an input (default -2, the last signal axis)
        axis_value = input_at(inputs, 2)
        axis = -2 if axis_value is None else int(_scalar(axis_value, "DFT", "axis"))
    else:
        axis = int(attrs.get("axis", 1))
    axis = norm_axis(axis, x.ndim, "DFT")
    if axis == x.ndim - 1:
        raise DczError("DFT: the axis must be a signal axis, not the last (complex) one.")
    signal = _as_complex(x, "DFT")
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    if length is not None:
        n = int(_scalar(length, "DFT", "dft_length"))
    else:  # IRFFT's spectrum holds n // 2 + 1 bins of an even-length signal by default
        n = 2 * (signal.shape[axis] - 1) if inverse and onesided else signal.shape[axis]
    if n < 1:
        raise DczError(f"DFT: the transform length {n} must be positive.")
    ctx.check_size("DFT", list(signal.shape[:axis]) + [n] + list(signal.shape[axis + 1:]) + [2], 16)
    if inverse and onesided:  # IRFFT: one-sided spectrum in, real signal out
        return [np.fft.irfft(signal, n=n, axis=axis)[..., None].astype(x.dtype)]
    spectrum = (np.fft.ifft if inverse else np.fft.fft)(signal, n=n, axis=axis)
    if onesided:
        spectrum = np.take(spectrum, np.arange(n // 2 + 1), axis=axis)
    return [_as_pairs(spectrum, x.dtype)]


@op("STFT")
def stft(inputs, attrs, ctx):
    """[batch, frames, bins, 2]: the DFT of each windowed frame of the signal."""
    signal = _as_complex(inputs[0], "STFT")
    step = int(_scalar(inputs[1], "STFT", "frame_step"))
    window, frame_length = input_at(inputs, 2), input_at(inputs, 3)
    if frame_length is not None:
        length = int(_scalar(frame_length, "STFT", "frame_length"))
    else:
        length = signal.shape[1] if window is None else window.shape[0]
    if window is not None and window.shape != (length,):
        raise DczError(f"STFT: window {list(window.shape)} does not match frame_length {length}.")
    if signal.ndim != 2 or step < 1 or not 1 <= length <= signal.shape[1]:
        raise DczError(f"STFT: signal {list(inputs[0].shape)}, frame_step {step} and frame_length {length} do not fit.")
    frames = np.lib.stride_tricks.sliding_window_view(signal, length, axis=1)[:, ::step]
    if window is not None:
        frames = frames * window.astype(np.float64)
    spectrum = np.fft.fft(frames, axis=-1)
    if attrs.get("onesided", 1):
        spectrum = spectrum[..., :length // 2 + 1]
    return [_as_pairs(spectrum, inputs[0].dtype)]


@op("MelWeightMatrix")
def mel_weight_matrix(inputs, attrs, ctx):
    """[dft_length // 2 + 1, num_mel_bins] triangular filters, evenly spaced in mel, peaks 1.

    The band edges follow the ONNX definition: num_mel_bins + 2 edge points spaced by
    (mel range) / (num_mel_bins + 2), each floored to a DFT bin.
    """
    mel_bins, dft_length, sample_rate = (int(_scalar(v, "MelWeightMatrix", "an input")) for v in inputs[:3])
    low_hz, high_hz = (float(_scalar(v, "MelWeightMatrix", "an edge")) for v in inputs[3:5])
    if mel_bins < 1 or dft_length < 1 or sample_rate <= 0:
        raise DczError(f"MelWeightMatrix: num_mel_bins {mel_bins}, dft_length {dft_length} and sample_rate "
                       f"{sample_rate} must be positive.")
    dtype = onnx_dtype(attrs.get("output_datatype", 1), "MelWeightMatrix")
    spectrum_bins = dft_length // 2 + 1
    ctx.check_size("MelWeightMatrix", [spectrum_bins, mel_bins], dtype.itemsize)
    low_mel, high_mel = (2595 * np.log10(1 + hz / 700) for hz in (low_hz, high_hz))
    mels = np.arange(mel_bins + 2) * ((high_mel - low_mel) / (mel_bins + 2)) + low_mel
    edges = ((dft_length + 1) * (700 * (10 ** (mels / 2595) - 1)) // sample_rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(spectrum_bins)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((left <= j) & (j < center), (j - left) / (center - left), 0.0)
        falling = np.where((center < j) & (j < right), (right - j) / (right - center), 0.0)
    return [(rising + falling + (j == center)).astype(dtype)]
