"""`export --qdq`: quantized weights as integer initializers behind `DequantizeLinear` nodes.

This is the standard QDQ form that onnxruntime and other runtimes read: the stored codes,
scales and zero points go into the model exactly as `quantize` computed them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .codecs.linear import channel_axis
from .encoding import Quantized, dense_codes, quantized_form
from .errors import DczError
from .graphs import opset_version, placeholder_name
from .onnx_io import to_onnx
from .tensors import Package


def qdq_initializers(name: str, shape, form, q: Quantized) -> tuple[list[onnx.TensorProto], onnx.NodeProto]:
    if q.bits > 8:
        raise DczError(f"tensor {name!r}: --qdq needs codes of at most 8 bits (has {q.bits})")
    codes = dense_codes(form).reshape(shape)
    zero_points = q.zero_points
    if q.symmetric:  # stored offset by 2^(bits-1); DequantizeLinear wants int8 with zero point 0
        offset = 1 << (q.bits - 1)
        codes = (codes.astype(np.int16) - offset).astype(np.int8)
        zero_points = (zero_points.astype(np.int16) - offset).astype(np.int8)
    per_channel = q.channels > 1
    scale = q.scales if per_channel else q.scales.reshape(())
    zero_point = zero_points if per_channel else zero_points.reshape(())
    axis = {"axis": channel_axis(shape, q.channels, q.inner)} if per_channel else {}
    tensors = [numpy_helper.from_array(codes, f"{name}_quantized"),
               numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
               numpy_helper.from_array(zero_point, f"{name}_zero_point")]
    node = helper.make_node("DequantizeLinear", [t.name for t in tensors], [name], name=f"{name}_dequantize", **axis)
    return tensors, node


def to_qdq_onnx(package: Package) -> onnx.ModelProto:
    """Like `to_onnx`, with every quantized main-graph initializer in QDQ form.

    DequantizeLinear needs opset 10 (13 with a per-channel axis); an older model is converted
    up with onnx's version converter first.
    """
    by_name = {t.name: t for t in package.tensors}
    quantized, need = {}, 0
    for t in package.graph.graph.initializer:
        name = placeholder_name(t)
        form = quantized_form(by_name[name]) if name is not None else None
        if form is not None:
            need = max(need, 13 if form.values.channels > 1 else 10)
            quantized[t.name] = qdq_initializers(t.name, tuple(t.dims), form, form.values)
    model = to_onnx(package)
    opset = opset_version(model)
    if opset < need:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, need)
        except Exception as e:  # the converter raises assorted errors for ops it cannot move
            raise DczError(f"--qdq needs opset {need}; converting from opset {opset} failed ({str(e)[:80]})") from None
    graph = model.graph
    kept = [t for t in graph.initializer if t.name not in quantized]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for tensors, _ in quantized.values():
        graph.initializer.extend(tensors)
    # A weight now comes out of a DequantizeLinear node, so it can no longer be a graph input
    # too (any IR lets initializers be listed as overridable inputs; IR < 4 requires it).
    inputs = [i for i in graph.input if i.name not in quantized]
    if model.ir_version < 4:  # keep IR < 4's rule true for the new integer initializers
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                   for tensors, _ in quantized.values() for t in tensors]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = [node for _, node in quantized.values()] + list(graph.node)  # weights exist before any use
    del graph.node[:]
    graph.node.extend(nodes)
    return model
