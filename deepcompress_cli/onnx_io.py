"""ONNX in and out: pull every weight out of a model into the tensor table, and put it back.

Real models keep weights in many places: `graph.initializer` (also listed as graph inputs in IR < 4),
`Constant` nodes, subgraphs of `If`/`Loop`/`Scan`, and external data files.  Each extracted tensor
is replaced *in place* by a placeholder TensorProto (same name, dims, type, doc string; data cleared;
`data_location = EXTERNAL` with `location = "dcz:tensor"` and `dcz_tensor = <table name>`), so the
stripped graph keeps its exact structure and `export` only has to fill the placeholders back in.
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, numpy_helper

from .errors import DczError
from .graphs import all_graphs as _graphs, consumers as _consumers, make_placeholder as _make_placeholder
from .graphs import PLACEHOLDER_LOCATION, placeholder_name as _placeholder_name, unique_name as _unique
from .tensors import DTYPES, ONNX_TYPE_TO_DTYPE, Package, Tensor, numpy_dtype, select_kind

# Which inputs of which ops are weights, and the kind of weight they are.
WEIGHT_INPUTS = {"Conv": ({1}, "conv"), "ConvTranspose": ({1}, "conv"),
                 "Gemm": ({0, 1}, "fc"), "MatMul": ({0, 1}, "fc")}
# Above this many weight bytes, `export` writes ONNX external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1 << 30


# ------------------------------------------------------------------------------ graph walking

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


_TENSOR_FIELDS: dict = {}  # message type -> its message fields that can (transitively) hold a TensorProto


def _tensor_fields(descriptor) -> list:
    if descriptor.full_name not in _TENSOR_FIELDS:
        reachable, todo = {}, [descriptor]
        while todo:
            d = todo.pop()
            if d.full_name not in reachable:
                reachable[d.full_name] = d
                todo.extend(f.message_type for f in d.fields if f.message_type is not None)
        holders, grew = {TensorProto.DESCRIPTOR.full_name}, True
        while grew:  # fixpoint: the schema is recursive (graphs in attributes in graphs)
            grew = False
            for name, d in reachable.items():
                if name not in holders and any(f.message_type is not None and f.message_type.full_name in holders
                                               for f in d.fields):
                    holders.add(name)
                    grew = True
        for name, d in reachable.items():
            _TENSOR_FIELDS.setdefault(name, [f for f in d.fields if f.message_type is not None
                                             and f.message_type.full_name in holders])
    return _TENSOR_FIELDS[descriptor.full_name]


def all_tensor_protos(message):
    """Every TensorProto anywhere in `message`, found through the protobuf schema so that no place
    is missed (training_info, function attribute defaults, sparse tensors, any future field)."""
    stack = [message]
    while stack:
        m = stack.pop()
        if isinstance(m, TensorProto):
            yield m
            continue
        for f in _tensor_fields(m.DESCRIPTOR):
            if f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED:
                stack.extend(getattr(m, f.name))
            elif m.HasField(f.name):
                stack.append(getattr(m, f.name))


def _external_location(t: TensorProto) -> str | None:
    """The `location` of a tensor stored as external data ("" if it names none), else None."""
    if t.data_location != TensorProto.EXTERNAL:
        return None
    return next((e.value for e in t.external_data if e.key == "location"), "")


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
    """Extract the model's tensors into a Package (all `raw`); `model` is modified in place.

    `package.source_files` holds the (device, inode) of every external data file read.
    """
    for t in all_tensor_protos(model):
        if _external_location(t) == PLACEHOLDER_LOCATION:  # never looked up as a file
            raise DczError(f"tensor {t.name!r}: external data location {PLACEHOLDER_LOCATION!r} is "
                           "reserved for .dcz placeholders")
    uses = _consumers(model)
    tensors, names = [], set()
    with _ExternalData(base_dir) as external:
        for t, value_name, is_initializer in _tensor_sites(model):
            dtype = ONNX_TYPE_TO_DTYPE.get(t.data_type)
            if dtype is None:
                continue  # strings, bfloat16, float8 ...: left inside the graph untouched
            op, consumer_kind = _consumer_info(uses.get(value_name, []))
            kind = select_kind(value_name, dtype, tuple(t.dims), consumer_kind, include, exclude)
            if not is_initializer and kind == "other":
                continue  # small Constant values (shapes, scalars) stay in the graph
            name = _unique(value_name or "constant", names)
            array = external.array(t, name) if t.data_location == TensorProto.EXTERNAL else _tensor_array(t, name)
            tensors.append(Tensor.raw(name, array, kind, op))
            _make_placeholder(t, name)
        # What stays in the graph (bfloat16/float8 initializers, small Constants, attributes,
        # training_info, functions) must not keep pointing to external files: the .dcz holds
        # the whole model, and the only external references in it are its own placeholders.
        for t in all_tensor_protos(model):
            if t.data_location == TensorProto.EXTERNAL and _external_location(t) != PLACEHOLDER_LOCATION:
                external.inline(t)
    # A fresh copy of the stripped graph lets the caller free the full protobuf (its arena keeps
    # every cleared tensor's bytes until the message itself goes).
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    return Package(graph=stripped, tensors=tensors, source_files=external.ids,
                   file_bytes=sum(size for _, size in external.files.values()))  # external data only


def _tensor_array(t: TensorProto, name: str) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # onnx raises assorted types for inconsistent protos
        raise DczError(f"tensor {name!r}: cannot read its data ({str(e)[:80]})") from None


class _ExternalData:
    """The external data files of one model, each checked and opened once.

    Follows onnx's docs/ExternalDataSecurity.md and checker: no absolute paths, no `..`, no
    symlink in any component, resolved path contained in the model folder, a regular file, and
    only one link to it (a hard link inside the folder can name any file on the same disk, and
    no name tells which folder the file "really" is in).  Reads are checked reads of the open
    file, so a file truncated meanwhile is an error, not garbage.
    """

    def __init__(self, base_dir: str | None):
        self.base_dir = base_dir
        self.files: dict[str, tuple[object, int]] = {}  # location -> (open file, size)
        self.ids: set[tuple[int, int]] = set()  # (device, inode) of every file read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f, _ in self.files.values():
            f.close()

    def _open(self, t: TensorProto, name: str) -> tuple[object, int, str, dict]:
        from .files import file_id, open_regular

        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            raise DczError(f"tensor {name!r}: external data cannot be read from standard input")
        if location not in self.files:
            if "\0" in location:  # no file has such a name; os calls would raise ValueError
                raise DczError(f"tensor {name!r}: external data location {location!r} is not a file name")
            parts = location.replace("\\", "/").split("/")
            if (not location or os.path.isabs(location) or location.startswith(("/", "\\"))
                    or (len(location) > 1 and location[1] == ":") or ".." in parts):
                raise DczError(f"tensor {name!r}: external data location {location!r} escapes the model folder")
            root = os.path.realpath(self.base_dir)
            path = root
            for part in parts:
                path = os.path.join(path, part)
                if os.path.islink(path):
                    raise DczError(f"tensor {name!r}: external data path {location!r} goes through a symlink")
            if not os.path.realpath(path).startswith(root + os.sep) or not os.path.isfile(path):
                raise DczError(f"tensor {name!r}: external data file {location!r} not found in the model folder")
            f = open_regular(path, follow_symlinks=False)
            st = os.fstat(f.fileno())
            if st.st_nlink > 1:
                f.close()
                raise DczError(f"tensor {name!r}: external data file {location!r} has {st.st_nlink} hard links "
                               "(it may be a file from outside the model folder; copy it to break the link)")
            self.files[location] = (f, st.st_size)
            self.ids.add(file_id(f))
        f, size = self.files[location]
        return f, size, location, info

    def _range(self, t: TensorProto, name: str, expected: int | None) -> tuple[object, int, int, str]:
        """(file, offset, length, location) of the tensor's bytes, checked against the file and the
        expected size."""
        f, size, location, info = self._open(t, name)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else expected
        except ValueError:
            raise DczError(f"tensor {name!r}: bad external data offset/length") from None
        if length is None:
            raise DczError(f"tensor {name!r}: external data of this type needs an explicit length")
        if (offset < 0 or length < 0 or offset + length > size
                or (expected is not None and length != expected)):
            raise DczError(f"tensor {name!r}: external data range [{offset}, +{length}) does not fit "
                           f"{location!r} ({size} bytes) or the tensor's shape")
        return f, offset, length, location

    @staticmethod
    def _count(t: TensorProto, name: str) -> int:
        if any(d < 0 for d in t.dims):
            raise DczError(f"tensor {name!r}: negative dimension in {list(t.dims)}")
        return math.prod(t.dims)  # exact: numpy's int64 product wraps for dims such as (2**62 + 1, 4)

    def array(self, t: TensorProto, name: str) -> np.ndarray:
        """A weight's external data as an array of its shape."""
        from .files import read_range

        dtype = numpy_dtype(ONNX_TYPE_TO_DTYPE[t.data_type])
        count = self._count(t, name)
        f, offset, length, location = self._range(t, name, count * dtype.itemsize)
        array = np.empty(count, dtype=dtype)  # no larger than the bytes present in the file
        if length:
            read_range(f, offset, length, location, into=array)
        return array.reshape(tuple(t.dims))

    def inline(self, t: TensorProto) -> None:
        """Move a tensor that is not extracted (any type) from its external file into `raw_data`."""
        from .files import read_range

        name = t.name or "constant"
        expected = None
        if t.data_type in ONNX_TYPE_TO_DTYPE:
            expected = numpy_dtype(ONNX_TYPE_TO_DTYPE[t.data_type]).itemsize * self._count(t, name)
        f, offset, length, location = self._range(t, name, expected)
        data = bytes(read_range(f, offset, length, location))
        del t.external_data[:]
        t.ClearField("data_location")
        t.raw_data = data


def attach_graph(package: Package, graph_bytes) -> None:
    """Parse a `.dcz` file's stored graph and check it against the tensor table.

    The only external references allowed are placeholders, and only where `from_onnx` puts them
    (initializers and Constant values, see `_tensor_sites`): anywhere else nothing fills them in,
    and a reader of the exported model would go looking for a file.
    """
    model = parse_model(bytes(graph_bytes))
    by_name = {t.name: t for t in package.tensors}
    uses = _consumers(model)
    external = [t for t in all_tensor_protos(model) if t.data_location == TensorProto.EXTERNAL]
    if any(_placeholder_name(t) is None for t in external):
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
    if len(external) != len(seen):  # the sites above are a subset of all tensors: equal counts, same set
        raise DczError("the stored graph has a placeholder where no weight can be (not an initializer "
                       "or Constant value)")
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
    written = 0
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
            written += 1
        else:
            t.ClearField("data_location")
            t.raw_data = array.tobytes()
    # The exported model refers to no file but the data file written with it (the reader keeps
    # this already; checked again because a reader of this ONNX would open whatever it names).
    if sum(t.data_location == TensorProto.EXTERNAL for t in all_tensor_protos(model)) != written:
        raise DczError("the graph holds external references that export did not write")
    return model
