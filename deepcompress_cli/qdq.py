"""`export --qdq`: quantized weights as integer tensors behind `DequantizeLinear` nodes.

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
from .graphs import all_graphs, opset_version, table_names
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
    """Like `to_onnx`, with every quantized weight in QDQ form: initializers and Constant-node
    values, in the main graph and in subgraphs (where the integer tensors become Constant nodes:
    a subgraph's inputs are its signature, and If branches have none).

    DequantizeLinear needs opset 10 (13 with a per-channel axis); an older model is converted
    up with onnx's version converter first.
    """
    by_name = {t.name: t for t in package.tensors}
    quantized, need = {}, 0  # (graph position in all_graphs, value name) -> (tensors, node)
    for position, graph in enumerate(all_graphs(package.graph.graph)):
        for value_name, table_name in table_names(graph).items():
            entry = by_name[table_name]
            form = quantized_form(entry)
            if form is not None:
                need = max(need, 13 if form.values.channels > 1 else 10)
                quantized[position, value_name] = qdq_initializers(value_name, entry.shape, form, form.values)
    model = to_onnx(package)
    opset = opset_version(model)
    if opset < need:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, need)
        except Exception as e:  # the converter raises assorted errors for ops it cannot move
            raise DczError(f"--qdq needs opset {need}; converting from opset {opset} failed ({str(e)[:80]})") from None
    graphs = list(all_graphs(model.graph))
    if len(graphs) != sum(1 for _ in all_graphs(package.graph.graph)):
        raise DczError(f"--qdq: converting to opset {need} changed the model's subgraphs")
    for position, graph in enumerate(graphs):
        mine = {name: q for (p, name), q in quantized.items() if p == position}
        if mine:
            _dequantize_in(graph, mine, main=position == 0, ir_version=model.ir_version)
    return model


def _dequantize_in(graph: onnx.GraphProto, quantized: dict, main: bool, ir_version: int) -> None:
    """Replace `graph`'s initializers and Constant nodes named in `quantized` by their
    DequantizeLinear nodes, placed first so that the weights exist before any use."""
    kept = [t for t in graph.initializer if t.name not in quantized]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    front = []  # the integer tensors (as Constant nodes in a subgraph), then the DequantizeLinear nodes
    if main:
        for tensors, _ in quantized.values():
            graph.initializer.extend(tensors)
    else:
        front = [helper.make_node("Constant", [], [t.name], value=t) for tensors, _ in quantized.values()
                 for t in tensors]
    front += [node for _, node in quantized.values()]
    # A weight now comes out of a DequantizeLinear node, so it can no longer be a graph input
    # too (any IR lets initializers be listed as overridable inputs; IR < 4 requires it).
    inputs = [i for i in graph.input if i.name not in quantized]
    if main and ir_version < 4:  # keep IR < 4's rule true for the new integer initializers
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                   for tensors, _ in quantized.values() for t in tensors]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = front + [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in quantized)]
    del graph.node[:]
    graph.node.extend(nodes)
