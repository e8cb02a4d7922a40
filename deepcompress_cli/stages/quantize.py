"""Linear 8-bit quantization (TensorFlow style), per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..codecs import linear
from ..encoding import Quantized, build, channel_scaled, dense_form, parse, readable
from ..tensors import Package, Tensor
from . import (PerKind, check_patterns, check_values, is_int_in, map_weights, no_progress, output_channel_axes,
               per_kind, require_compressible, require_finite)


@dataclass
class QuantizeConfig:
    """`bits`: one integer, {"conv": .., "fc": ..} or a PerKind (with per-layer overrides)."""
    bits: int | PerKind | dict = 8
    per_channel: bool = False
    symmetric: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            self.bits = per_kind(self.bits, option="--bits").with_defaults((8, 8))
        values = self.bits if isinstance(self.bits, PerKind) else PerKind(self.bits, self.bits)
        check_values(values, "--bits", "--layer-bits", is_int_in(2, 16), "an integer 2..16")

    def for_tensor(self, tensor: Tensor) -> "QuantizeConfig":
        """The config with this tensor's one bit width."""
        return self if isinstance(self.bits, int) else replace(self, bits=int(self.bits.value(tensor)))

    def check_names(self, names: list[str]) -> None:
        if isinstance(self.bits, PerKind):
            check_patterns("--layer-bits", [p for p, _ in self.bits.layers], names, "weight")


def quantize_tensor(tensor: Tensor, config: QuantizeConfig, axis: int | None) -> tuple[Tensor, dict]:
    """Codes for one weight: per channel along `axis` (None: one range for the tensor).

    Dense: `linear` with one range per channel.  Sparse: its entries have no channel layout, so
    per channel means a `scale` step first (each channel divided by its max |w|), then one range
    over the normalized entries; per tensor, one range over the entries.  A sparse form the
    reader would refuse (too few entries for their positions: the expansion bound) falls back
    to codes for every weight.  A channel-scaled input (from `share --per-channel`, or this
    stage) is first taken back to its decoded values: the codes are derived from the real weights.
    """
    require_compressible(tensor, "quantized")
    form = parse(tensor).unscaled()
    require_finite(tensor, form.entry_values())
    channels, inner = linear.channel_layout(tensor.shape, axis)
    new = None
    if form.is_sparse:
        sparse_form = channel_scaled(form, channels, inner) if channels > 1 else form
        if sparse_form.is_scaled and np.all(sparse_form.scales == sparse_form.scales[0]):
            sparse_form = form  # one scale for every channel (an all-zero layer): the step adds nothing
        new = _quantized(tensor, sparse_form, config, 1, 1)
        if not readable(new):  # too few entries for their positions: codes for every weight
            form, new = dense_form(tensor.decode(), tensor.dtype), None
    if new is None:
        new = _quantized(tensor, form, config, channels, inner)
    # the decoded weights against the real ones, entry by entry (same positions in both forms)
    error = new.form.unscaled().entry_values().astype(np.float64) - form.entry_values()
    return new, {
        "name": tensor.name, "kind": tensor.kind, "bits": config.bits, "axis": axis if channels > 1 else None,
        "channels": channels, "scaled": new.form.is_scaled, "symmetric": config.symmetric,
        "rmse": float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0,
        "max_error": float(np.abs(error).max()) if len(error) else 0.0,
        "mean_error": float(error.mean()) if len(error) else 0.0,
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def _quantized(tensor: Tensor, form, config: QuantizeConfig, channels: int, inner: int):
    """The entry storing `form` with its entry values as linear codes (the scaled-down values
    when it has a scale step)."""
    codes, scales, zero_points = linear.quantize(form.entry_values(), config.bits, channels, inner, config.symmetric)
    q = Quantized(codes, scales, zero_points, config.bits, channels, inner, config.symmetric)
    return build(tensor, form.with_(values=q))


def quantize(package: Package, config: QuantizeConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    axes = output_channel_axes(package) if config.per_channel else {}
    return map_weights(package, lambda t: quantize_tensor(t, config.for_tensor(t), axes.get(t.name)),
                       progress, "quantize", jobs)
