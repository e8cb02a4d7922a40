"""Linear 8-bit quantization (TensorFlow style), per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..codecs import linear
from ..encoding import Quantized, build, dense_form, parse, readable
from ..graphs import output_channel_axis
from ..onnx_io import weight_consumers
from ..tensors import Package, Tensor
from . import (PerKind, check_patterns, check_values, is_int_in, map_weights, no_progress, per_kind,
               require_compressible, require_finite)


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
    require_compressible(tensor, "quantized")
    form = parse(tensor)
    if form.is_sparse:  # entries of a sparse tensor have no channel layout: one range for the layer
        new, q, values = _quantized(tensor, form, config, None)
        if readable(new):
            axis = None
        else:  # too few entries for their positions (format's expansion bound): codes for every weight
            form = dense_form(tensor.decode(), tensor.dtype)
            new, q, values = _quantized(tensor, form, config, axis)
    else:
        new, q, values = _quantized(tensor, form, config, axis)
    error = q.floats().astype(np.float64) - values
    return new, {
        "name": tensor.name, "kind": tensor.kind, "bits": config.bits, "axis": axis, "channels": q.channels,
        "symmetric": config.symmetric,
        "rmse": float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0,
        "max_error": float(np.abs(error).max()) if len(error) else 0.0,
        "mean_error": float(error.mean()) if len(error) else 0.0,
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


def _quantized(tensor: Tensor, form, config: QuantizeConfig, axis: int | None):
    """(new entry, its Quantized values, the float values they stand for)."""
    values = form.entry_values()
    require_finite(tensor, values)
    channels, inner = linear.channel_layout(tensor.shape, axis)
    codes, scales, zero_points = linear.quantize(values, config.bits, channels, inner, config.symmetric)
    q = Quantized(codes, scales, zero_points, config.bits, channels, inner, config.symmetric)
    return build(tensor, form.with_(values=q)), q, values


def quantize(package: Package, config: QuantizeConfig, progress=no_progress, jobs: int = 1) -> list[dict]:
    consumers = weight_consumers(package.graph) if config.per_channel else {}

    def encode(tensor):
        axis = None
        if tensor.name in consumers:
            node, index = consumers[tensor.name]
            attributes = {a.name: a.i for a in node.attribute if a.type == a.INT}
            axis = output_channel_axis(node.op_type, attributes, index, len(tensor.shape))
        return quantize_tensor(tensor, config.for_tensor(tensor), axis)

    return map_weights(package, encode, progress, "quantize", jobs)
