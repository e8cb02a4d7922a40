"""What several modules need to know about an ONNX graph, in one place.

- placeholders: the stand-ins that `onnx_io` leaves in the graph for tensors moved to the table;
- subgraphs (If/Loop/Scan bodies), consumers of each value, and the values a subgraph reads from
  the scopes around it;
- the default-domain opset, which decides many ops' defaults;
- constants: the data a graph holds (initializers, stored Constant nodes) as arrays;
- node order: a stable topological sort;
- the output-channel axis of a layer's weight;
- what random inputs must respect: how far the convolutions reach, which inputs index a table.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import DczError

PLACEHOLDER_LOCATION = "dcz:tensor"
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")  # a tensor's data
DEFAULT_DOMAINS = ("", "ai.onnx")


# ------------------------------------------------------------------------------ placeholders

def placeholder_name(t: TensorProto) -> str | None:
    """The tensor-table name a placeholder stands for, or None for a tensor with its own data."""
    if t.data_location != TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in t.external_data}
    return info.get("dcz_tensor") if info.get("location") == PLACEHOLDER_LOCATION else None


def make_placeholder(t: TensorProto, name: str) -> None:
    """Turn `t` into a placeholder for table tensor `name` (its data is dropped, dims and type kept)."""
    for f in DATA_FIELDS:
        t.ClearField(f)
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", PLACEHOLDER_LOCATION), ("dcz_tensor", name)):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def to_array(t: TensorProto) -> np.ndarray:
    """numpy_helper.to_array, except that it never opens a file: an external tensor (a `.dcz`
    placeholder the caller did not resolve, or foreign external data) is an error."""
    if t.data_location == TensorProto.EXTERNAL:
        raise DczError(f"tensor {t.name!r}: its data is not in the graph (external or placeholder)")
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # onnx raises assorted types for inconsistent protos
        raise DczError(f"tensor {t.name!r}: cannot read its data ({str(e)[:80]})") from None


def stored_constant(node: onnx.NodeProto) -> str | None:
    """The table name of a Constant node's value when that value is a placeholder."""
    if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS or not node.output:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return placeholder_name(attr.t)
    return None


def table_names(graph: onnx.GraphProto) -> dict[str, str]:
    """value name -> table name, for the values of `graph` (not its subgraphs) that are stored in the table."""
    names = {t.name: placeholder_name(t) for t in graph.initializer if placeholder_name(t) is not None}
    names.update({n.output[0]: stored_constant(n) for n in graph.node if stored_constant(n) is not None})
    return names


def graph_constants(graph: onnx.GraphProto, weight: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """Every value `graph` holds as data, as arrays: initializers, and Constant nodes whose tensor is
    in the table (`weight(table name)` gives those arrays).  Other Constant nodes stay nodes."""
    constants = {}
    for t in graph.initializer:
        name = placeholder_name(t)
        constants[t.name] = weight(name) if name is not None else to_array(t)
    for node in graph.node:
        name = stored_constant(node)
        if name is not None:
            constants[node.output[0]] = weight(name)
    return constants


def unique_name(name: str, taken: set) -> str:
    """`name`, or `name#2`, `name#3`, ... : the first not in `taken` (which gains it)."""
    unique, k = name, 1
    while unique in taken:
        k += 1
        unique = f"{name}#{k}"
    taken.add(unique)
    return unique


# ------------------------------------------------------------------------------ structure

def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs in a node's attributes (If branches, Loop/Scan bodies)."""
    graphs = []
    for attr in node.attribute:
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph below it, depth first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from all_graphs(sub)


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[str, int]]]:
    """value name -> [(op_type, input index)] over the whole model, subgraphs included."""
    uses = defaultdict(list)
    for graph in all_graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                uses[name].append((node.op_type, i))
    return uses


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Values a (sub)graph reads from enclosing scopes: used but not defined inside it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for sub in node_subgraphs(node):
            used |= outer_names(sub)
        defined.update(node.output)
    return used - defined


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Values a node's subgraphs read from the node's own scope."""
    names = set()
    for sub in node_subgraphs(node):
        names |= outer_names(sub)
    return names


def opset_version(model: onnx.ModelProto, default: int = 1) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), default)


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order that runs every producer before its consumers, in O(E + N log N).

    Kahn's algorithm, stable: among the nodes that are ready, the one stored first runs first, so
    a graph stored in order keeps its order.  Only values produced inside this graph constrain the
    order (anything else is a graph input, a constant or, in a subgraph, a value of the enclosing
    scope); a node's subgraphs count as reading what they read from outside.
    """
    nodes = list(graph.node)
    producer = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            producer.setdefault(name, i)
    producer.pop("", None)  # an omitted optional output is no value
    waiting_on = [0] * len(nodes)  # producers each node still waits for
    readers = [[] for _ in nodes]  # node index -> nodes that read one of its outputs
    for i, node in enumerate(nodes):
        sources = {producer[n] for n in node.input if n in producer}
        if len(node.attribute):
            sources.update(producer[n] for n in implicit_inputs(node) if n in producer)
        waiting_on[i] = len(sources)
        for j in sources:
            readers[j].append(i)
    ready = [i for i, count in enumerate(waiting_on) if count == 0]  # already a heap: ascending
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in readers[i]:
            waiting_on[j] -= 1
            if waiting_on[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        stuck = nodes[next(i for i, count in enumerate(waiting_on) if count > 0)]
        raise DczError(f"the graph has a cycle (at node {stuck.name or stuck.op_type!r})")
    return order


# ------------------------------------------------------------------------------ layers

def output_channel_axis(op: str, attributes: dict, input_index: int, ndim: int) -> int | None:
    """The axis of a layer's weight (input `input_index` of an `op` node) that indexes output
    channels, or None when there is none to use."""
    if op == "Conv" and input_index == 1:
        return 0
    if op == "ConvTranspose" and input_index == 1:
        return 1  # [C_in, C_out / group, ...]
    if op == "Gemm" and input_index == 1 and ndim == 2:
        return 0 if attributes.get("transB", 0) else 1
    if op == "MatMul" and input_index == 1 and ndim >= 2:
        return ndim - 1
    return None


# ------------------------------------------------------------------------------ input needs

WINDOW_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")  # ops that slide a window and may stride


def _declared_dims(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """value name -> dims of every tensor the graph holds as data (placeholders keep their dims)."""
    dims = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and node.output and attr.name == "value" and attr.type == attr.TENSOR:
                dims[node.output[0]] = tuple(attr.t.dims)
    return dims


def window_reach(model: onnx.ModelProto) -> tuple[int, int]:
    """(stride, reach) of the model's sliding windows (Conv and pooling), subgraphs included:
    `stride` the largest product of strides between the inputs and a value, `reach` the largest
    input extent, in input samples, that one window needs (its kernel span times the stride before
    it).  An input size that is at least `reach` and a multiple of `stride` lets every window fit
    and keeps a detector's upsampled branches aligned with its downsampled ones (sizes 1 do not).

    Only values computed from the inputs carry a stride; an op joining several takes the smallest,
    since they must agree in size (a Concat of an upsampled branch and a finer one: Resize scales
    need not be known)."""
    initializers = {t.name for t in model.graph.initializer}
    step = {i.name: 1 for i in model.graph.input if i.name not in initializers}  # value -> stride
    best = [1, 1]

    def visit(graph: onnx.GraphProto, outer: dict) -> None:
        dims = {**outer, **_declared_dims(graph)}
        for node in topological_order(graph):
            known = [step[n] for n in node.input if n in step]
            for sub in node_subgraphs(node):
                visit(sub, dims)
                known += [step[o.name] for o in sub.output if o.name in step]
            if not known:
                continue  # computed from constants only
            before = min(known)
            if node.op_type in WINDOW_OPS and node.domain in DEFAULT_DOMAINS:
                attrs = {a.name: list(a.ints) for a in node.attribute if a.type == a.INTS}
                kernel = attrs.get("kernel_shape")
                if not kernel and node.op_type == "Conv" and len(node.input) > 1:
                    kernel = list(dims.get(node.input[1], ())[2:])
                dilations = attrs.get("dilations") or [1] * len(kernel or ())
                span = max([(k - 1) * d + 1 for k, d in zip(kernel or (), dilations)] or [1])
                best[1] = max(best[1], before * span)
                before *= max(attrs.get("strides") or [1])
                best[0] = max(best[0], before)
            for name in node.output:
                step[name] = before
    visit(model.graph, {})
    return best[0], best[1]


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph input -> the number of rows of the table it indexes, for inputs that a Gather reads as
    indices into a tensor the model holds (token ids into an embedding; any graph level)."""
    inputs = {i.name for i in model.graph.input}
    bounds: dict[str, int] = {}
    for graph in all_graphs(model.graph):
        dims = _declared_dims(graph)
        for node in graph.node:
            if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in inputs:
                table = dims.get(node.input[0])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if table and -len(table) <= axis < len(table) and table[axis] > 0:
                    name = node.input[1]
                    bounds[name] = min(bounds.get(name, table[axis]), table[axis])
    return bounds
