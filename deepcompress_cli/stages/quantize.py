"""Linear 8-bit quantization (TensorFlow style), per tensor or per output channel."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..codecs import linear
from ..encoding import Quantized, build, parse
from ..onnx_io import weight_consumers
from ..tensors import Package, Tensor
from . import PerKind, check_patterns, check_values, is_int_in, map_weights, no_progress, per_kind, require_finite


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


def output_channel_axis(op: str, attributes: dict, input_index: int, ndim: int) -> int | None:
    """The weight axis that indexes output channels, or None when there is none to use."""
    if op == "Conv" and input_index == 1:
        return 0
    if op == "ConvTranspose" and input_index == 1:
        return 1  # [C_in, C_out / group, ...]
    if op == "Gemm" and input_index == 1 and ndim == 2:
        return 0 if attributes.get("transB", 0) else 1
    if op == "MatMul" and input_index == 1 and ndim >= 2:
        return ndim - 1
    return None


def quantize_tensor(tensor: Tensor, config: QuantizeConfig, axis: int | None) -> tuple[Tensor, dict]:
    form = parse(tensor)
    values = form.entry_values()
    require_finite(tensor, values)
    if form.is_sparse:
        axis = None  # entries of a sparse tensor have no channel layout: one range for the layer
    channels, inner = linear.channel_layout(tensor.shape, axis)
    codes, scales, zero_points = linear.quantize(values, config.bits, channels, inner, config.symmetric)
    q = Quantized(codes, scales, zero_points, config.bits, channels, inner, config.symmetric)
    new = build(tensor, form.with_(values=q))
    error = q.floats().astype(np.float64) - values
    return new, {
        "name": tensor.name, "kind": tensor.kind, "bits": config.bits, "axis": axis, "channels": channels,
        "symmetric": config.symmetric,
        "rmse": float(np.sqrt(np.mean(error ** 2))) if len(error) else 0.0,
        "max_error": float(np.abs(error).max()) if len(error) else 0.0,
        "mean_error": float(error.mean()) if len(error) else 0.0,
        "bytes_before": tensor.stored_bytes, "bytes_after": new.stored_bytes,
    }


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
