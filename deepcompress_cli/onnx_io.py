"""ONNX in and out: pull every weight out of a model into the tensor table, and put it back.

Real models keep weights in many places: `graph.initializer` (also listed as graph inputs in IR < 4),
`Constant` nodes, subgraphs of `If`/`Loop`/`Scan`, and external data files.  Each extracted tensor
is replaced *in place* by a placeholder TensorProto (same name, dims, type, doc string; data cleared;
`data_location = EXTERNAL` with `location = "dcz:tensor"` and `dcz_tensor = <table name>`), so the
stripped graph keeps its exact structure and `export` only has to fill the placeholders back in.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from .errors import DczError
from .tensors import DTYPES, ONNX_TYPE_TO_DTYPE, Package, Tensor, numpy_dtype, select_kind

PLACEHOLDER_LOCATION = "dcz:tensor"
# Which inputs of which ops are weights, and the kind of weight they are.
WEIGHT_INPUTS = {"Conv": ({1}, "conv"), "ConvTranspose": ({1}, "conv"),
                 "Gemm": ({0, 1}, "fc"), "MatMul": ({0, 1}, "fc")}
# Above this many weight bytes, `export` writes ONNX external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


# ------------------------------------------------------------------------------ graph walking

def _graphs(graph):
    """The graph and every subgraph below it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensor_sites(model):
    """Every TensorProto that can hold a weight: (proto, value name in the graph, is initializer)."""
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            yield t, t.name, True
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        yield attr.t, node.output[0], False


def _every_tensor_proto(model):
    """(TensorProto, may be a placeholder) for every tensor anywhere in the model: initializers,
    sparse initializers, attributes of every node, subgraphs, and model-local functions.  Only
    the places `from_onnx` extracts from (initializers and Constant `value`s) may be placeholders."""
    def sparse_parts(sparse_tensors):
        for sparse in sparse_tensors:
            yield sparse.values, False
            yield sparse.indices, False

    def in_nodes(nodes, in_function):
        for node in nodes:
            is_constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx") and not in_function
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t, is_constant and attr.name == "value"
                yield from ((t, False) for t in attr.tensors)
                yield from sparse_parts(([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])
                                        + list(attr.sparse_tensors))
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from in_graph(g, in_function)

    def in_graph(graph, in_function):
        yield from ((t, not in_function) for t in graph.initializer)
        yield from sparse_parts(graph.sparse_initializer)
        yield from in_nodes(graph.node, in_function)

    yield from in_graph(model.graph, False)
    for function in model.functions:
        yield from in_nodes(function.node, True)


def _consumers(model) -> dict[str, list[tuple[str, int]]]:
    """value name -> [(op_type, input index)] over the whole model, subgraphs included."""
    uses = defaultdict(list)
    for graph in _graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                uses[name].append((node.op_type, i))
    return uses


def weight_consumers(model) -> dict:
    """table name -> (first consuming node, input index), for tensors stored as placeholders."""
    by_value = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if i in WEIGHT_INPUTS.get(node.op_type, ((), None))[0]:
                    by_value.setdefault(name, (node, i))  # the use that makes it a weight wins
    for graph in _graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                by_value.setdefault(name, (node, i))
    found = {}
    for t, value_name, _ in _tensor_sites(model):
        name = _placeholder_name(t)
        if name is not None and value_name in by_value:
            found[name] = by_value[value_name]
    return found


def _consumer_info(uses: list[tuple[str, int]]) -> tuple[str, str | None]:
    """(op shown in `info`, weight kind or None) for a value's consumers."""
    for op, i in uses:
        inputs, kind = WEIGHT_INPUTS.get(op, ((), None))
        if i in inputs:
            return op, kind
    return (uses[0][0] if uses else ""), None


def _placeholder_name(t: TensorProto) -> str | None:
    info = {e.key: e.value for e in t.external_data}
    if t.data_location == TensorProto.EXTERNAL and info.get("location") == PLACEHOLDER_LOCATION:
        return info.get("dcz_tensor")
    return None


# ------------------------------------------------------------------------------------ loading

def parse_model(data) -> onnx.ModelProto:
    """A ModelProto from bytes or any buffer (a memoryview of a mapped file)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise DczError(f"not an ONNX model (protobuf parse failed: {str(e)[:80]})") from None
    # Protobuf happily parses many random byte strings; a real model has a version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise DczError("not an ONNX model (no IR version or empty graph)")
    return model


def from_onnx(model: onnx.ModelProto, base_dir: str | None, include=(), exclude=()) -> Package:
    """Extract the model's tensors into a Package (all `raw`); `model` is modified in place."""
    uses = _consumers(model)
    tensors, names = [], set()
    for t, value_name, is_initializer in _tensor_sites(model):
        dtype = ONNX_TYPE_TO_DTYPE.get(t.data_type)
        if dtype is None:
            continue  # strings, bfloat16, float8 ...: left inside the graph untouched
        op, consumer_kind = _consumer_info(uses.get(value_name, []))
        kind = select_kind(value_name, dtype, tuple(t.dims), consumer_kind, include, exclude)
        if not is_initializer and kind == "other":
            continue  # small Constant values (shapes, scalars) stay in the graph
        name = _unique(value_name or "constant", names)
        array = _tensor_array(t, base_dir, name)
        tensors.append(Tensor.raw(name, array, kind, op))
        _make_placeholder(t, name)
    # What stays in the graph (bfloat16/float8 initializers, small Constants, attributes) must
    # not keep pointing to external files: the .dcz holds the whole model.
    for t, _ in _every_tensor_proto(model):
        if t.data_location == TensorProto.EXTERNAL and _placeholder_name(t) not in names:
            _inline_external(t, base_dir)
    # A fresh copy of the stripped graph lets the caller free the full protobuf (its arena keeps
    # every cleared tensor's bytes until the message itself goes).
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    return Package(graph=stripped, tensors=tensors)


def external_data_bytes(model: onnx.ModelProto, base_dir: str | None) -> int:
    """Size of the distinct external data files `model` refers to: with its protobuf, the
    model's true size on disk (call before `from_onnx`, which inlines them)."""
    paths = {os.path.realpath(_external_file(t, base_dir, t.name)[0]) for t, _ in _every_tensor_proto(model)
             if t.data_location == TensorProto.EXTERNAL}
    return sum(os.path.getsize(p) for p in paths)


def _unique(name: str, taken: set) -> str:
    unique, k = name, 1
    while unique in taken:
        k += 1
        unique = f"{name}#{k}"
    taken.add(unique)
    return unique


def _tensor_array(t: TensorProto, base_dir: str | None, name: str) -> np.ndarray:
    if t.data_location == TensorProto.EXTERNAL:
        return _read_external(t, base_dir, name)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # onnx raises assorted types for inconsistent protos
        raise DczError(f"tensor {name!r}: cannot read its data ({str(e)[:80]})") from None


def _external_file(t: TensorProto, base_dir: str | None, name: str) -> tuple[str, dict]:
    """The checked path of a tensor's external data file, and its external_data entries.

    Follows onnx's docs/ExternalDataSecurity.md: no absolute paths, no `..`, no symlink in any
    component, resolved path contained in the model folder.
    """
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise DczError(f"tensor {name!r}: external data cannot be read from standard input")
    parts = location.replace("\\", "/").split("/")
    if (not location or os.path.isabs(location) or location.startswith(("/", "\\"))
            or (len(location) > 1 and location[1] == ":") or ".." in parts):
        raise DczError(f"tensor {name!r}: external data location {location!r} escapes the model folder")
    root = os.path.realpath(base_dir)
    path = root
    for part in parts:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise DczError(f"tensor {name!r}: external data path {location!r} goes through a symlink")
    if not os.path.realpath(path).startswith(root + os.sep) or not os.path.isfile(path):
        raise DczError(f"tensor {name!r}: external data file {location!r} not found in the model folder")
    return path, info


def _external_range(t: TensorProto, path: str, info: dict, name: str, expected: int | None) -> tuple[int, int]:
    """(offset, length) of the tensor's bytes, checked against the file and the expected size."""
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else expected
    except ValueError:
        raise DczError(f"tensor {name!r}: bad external data offset/length") from None
    if length is None:
        raise DczError(f"tensor {name!r}: external data of this type needs an explicit length")
    size = os.path.getsize(path)
    if (min(d for d in [*t.dims, 0]) < 0 or offset < 0 or length < 0 or offset + length > size
            or (expected is not None and length != expected)):
        raise DczError(f"tensor {name!r}: external data range [{offset}, +{length}) does not fit "
                       f"{os.path.basename(path)!r} ({size} bytes) or the tensor's shape")
    return offset, length


def _read_external(t: TensorProto, base_dir: str | None, name: str) -> np.ndarray:
    """Read a weight's ONNX external data, refusing anything outside the model's own folder."""
    path, info = _external_file(t, base_dir, name)
    dtype = numpy_dtype(ONNX_TYPE_TO_DTYPE[t.data_type])
    count = 1
    for d in t.dims:
        count *= d
    offset, _ = _external_range(t, path, info, name, count * dtype.itemsize)
    return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(tuple(t.dims))


def _inline_external(t: TensorProto, base_dir: str | None) -> None:
    """Move a tensor that is not extracted (any type) from its external file into `raw_data`."""
    name = t.name or "constant"
    path, info = _external_file(t, base_dir, name)
    expected = None
    if t.data_type in ONNX_TYPE_TO_DTYPE:
        expected = numpy_dtype(ONNX_TYPE_TO_DTYPE[t.data_type]).itemsize * int(np.prod(t.dims, dtype=np.int64))
    offset, length = _external_range(t, path, info, name, expected)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    del t.external_data[:]
    t.ClearField("data_location")
    t.raw_data = data


def _make_placeholder(t: TensorProto, name: str) -> None:
    for f in _DATA_FIELDS:
        t.ClearField(f)
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", PLACEHOLDER_LOCATION), ("dcz_tensor", name)):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def attach_graph(package: Package, graph_bytes) -> None:
    """Parse a `.dcz` file's stored graph and check it against the tensor table."""
    model = parse_model(bytes(graph_bytes))
    by_name = {t.name: t for t in package.tensors}
    uses = _consumers(model)
    for t, may_be_placeholder in _every_tensor_proto(model):
        if t.data_location == TensorProto.EXTERNAL and not (may_be_placeholder and _placeholder_name(t)):
            raise DczError("the stored graph refers to external data (not allowed inside .dcz)")
    seen = set()
    for t, value_name, _ in _tensor_sites(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        name = _placeholder_name(t)
        entry = by_name.get(name)
        if entry is None or name in seen:
            raise DczError(f"the stored graph's tensor {name!r} is missing from the tensor table or repeated")
        if tuple(t.dims) != entry.shape or t.data_type != DTYPES[entry.dtype][1]:
            raise DczError(f"tensor {name!r}: graph and tensor table disagree on shape or type")
        seen.add(name)
        entry.op = _consumer_info(uses.get(value_name, []))[0]
    if seen != set(by_name):
        raise DczError(f"{len(set(by_name) - seen)} table tensors are not used by the stored graph")
    package.graph = model


# ------------------------------------------------------------------------------------- export

def to_onnx(package: Package, external: callable | None = None) -> onnx.ModelProto:
    """A standalone ModelProto with every placeholder filled by its decoded tensor.

    `external(name, array) -> (location, offset)` when given stores a tensor outside the protobuf.
    """
    model = onnx.ModelProto()
    model.CopyFrom(package.graph)
    by_name = {t.name: t for t in package.tensors}
    for t, _, _ in _tensor_sites(model):
        name = _placeholder_name(t)
        if name is None:
            continue
        tensor = by_name[name]
        array = np.ascontiguousarray(tensor.decode(), dtype=numpy_dtype(tensor.dtype))
        del t.external_data[:]
        if external is not None and array.nbytes >= 1024:
            location, offset = external(name, array)
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
        else:
            t.ClearField("data_location")
            t.raw_data = array.tobytes()
    return model
