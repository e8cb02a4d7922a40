"""The `.dcz` container, version 1.0: writer and validating reader.  Byte layout: docs/FORMAT.md.

The reader follows ../shared/design/container-security.md: every declared number is checked
against the bytes actually present before anything is allocated, and any violation is one
`DczError` line (exit 2).
"""

from __future__ import annotations

import json
import struct
import zlib

from . import __version__
from .codecs import validate_chain
from .errors import DczError
from .tensors import DTYPES, KINDS, Package, Slot, Step, Stream, Tensor

MAGIC = b"\x89DCZ\r\n\x1a\x00"  # non-ASCII first byte, CR-LF and ^Z catch text-mode damage, NUL
MAJOR, MINOR = 1, 0
ENCODING_VERSION = 1  # bumps when a codec's meaning changes, independently of the layout
PREAMBLE = struct.Struct("<8sHHIQII")  # magic, major, minor, flags, header length, header CRC, preamble CRC
PREAMBLE_SIZE = PREAMBLE.size  # 32
ALIGN = 64

MAX_HEADER = 64 << 20
MAX_DEPTH = 8
MAX_NAME_BYTES = 4096
MAX_DIMS = 32
MAX_COUNT = 1 << 48  # elements of any one array (256 T: far past any real tensor, safe for numpy)
MAX_TENSORS = 1 << 20
MAX_SLOTS = 32


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# --------------------------------------------------------------------------------------- writer

def write(package: Package, out) -> int:
    """Write `package` to the binary file object `out`; returns the number of bytes written.

    Streams are written in table order (graph first, then each tensor's slots sorted by name), so
    the same package always gives the same bytes.
    """
    graph_bytes = package.graph.SerializeToString(deterministic=True)
    streams = [Stream(memoryview(graph_bytes))]
    tensor_entries = []
    for t in package.tensors:
        refs = {}
        for slot in sorted(t.streams):
            refs[slot] = len(streams)
            streams.append(t.streams[slot])
        tensor_entries.append({
            "name": t.name, "dtype": t.dtype, "shape": list(t.shape), "kind": t.kind,
            "chain": [{"codec": s.codec, "input": s.input, "outputs": s.outputs, "params": s.params}
                      for s in t.chain],
            "slots": {name: {"dtype": s.dtype, "count": s.count} for name, s in t.slots.items()},
            "streams": refs,
        })
    stream_entries, offset = [], 0
    for s in streams:
        stream_entries.append({"offset": offset, "length": s.length, "crc32": s.crc32()})
        offset = align(offset + s.length)
    header = json.dumps({
        "encoding_version": ENCODING_VERSION,
        "graph_stream": 0,
        "streams": stream_entries,
        "tensors": tensor_entries,
        "writer": f"deepcompress {__version__}",
    }, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    if len(header) > MAX_HEADER:
        raise DczError(f"header of {len(header)} bytes exceeds the format's {MAX_HEADER} byte cap")
    head = PREAMBLE.pack(MAGIC, MAJOR, MINOR, 0, len(header), zlib.crc32(header), 0)[:-4]
    out.write(head + struct.pack("<I", zlib.crc32(head)))
    out.write(header)
    written = PREAMBLE_SIZE + len(header)
    out.write(bytes(align(written) - written))
    written = align(written)
    for s in streams:
        out.write(s.buffer())
        out.write(bytes(align(s.length) - s.length))
        written += align(s.length)
    return written


# --------------------------------------------------------------------------------------- reader

def read(buf) -> Package:
    """Parse and validate a whole `.dcz` held in `buf` (bytes, or a memoryview of an mmap)."""
    from .onnx_io import attach_graph  # onnx is needed only once the header is known to be sane

    view = memoryview(buf)
    header, data_start = _read_preamble_and_header(view)
    _keys(header, "header", {"encoding_version", "graph_stream", "streams", "tensors", "writer"})
    version = _int(header["encoding_version"], "encoding_version", 0, 1 << 31)
    if not 1 <= version <= ENCODING_VERSION:
        raise DczError(f"unsupported encoding version {version} (this reader knows 1..{ENCODING_VERSION})")
    _name(header["writer"], "writer")
    streams = _stream_table(header, view, data_start)
    graph_stream = _int(header["graph_stream"], "graph_stream", 0, len(streams) - 1)
    used = [graph_stream]
    tensors = []
    for i, entry in enumerate(_list(header, "tensors", MAX_TENSORS)):
        tensor, stream_ids = _tensor(entry, i, len(streams))
        tensor.streams = {slot: streams[k] for slot, k in stream_ids.items()}
        used.extend(stream_ids.values())
        tensors.append(tensor)
    if sorted(used) != list(range(len(streams))):
        raise DczError("every stream must be used exactly once (by the graph or one tensor slot)")
    if len({t.name for t in tensors}) != len(tensors):
        raise DczError("duplicate tensor names in the tensor table")
    for tensor in tensors:
        validate_chain(tensor)
    package = Package(graph=None, tensors=tensors)  # streams' memoryviews keep `buf` alive
    attach_graph(package, streams[graph_stream].buffer())
    return package


def _read_preamble_and_header(view: memoryview) -> tuple[dict, int]:
    if len(view) < PREAMBLE_SIZE:
        raise DczError(f"not a .dcz file: {len(view)} bytes is shorter than the {PREAMBLE_SIZE}-byte preamble")
    magic, major, minor, flags, header_len, header_crc, preamble_crc = PREAMBLE.unpack(view[:PREAMBLE_SIZE])
    if magic != MAGIC:
        raise DczError("not a .dcz file (bad magic)")
    if zlib.crc32(view[:PREAMBLE_SIZE - 4]) != preamble_crc:
        raise DczError("corrupt .dcz preamble (CRC mismatch)")
    if major != MAJOR:
        raise DczError(f"unsupported .dcz version {major}.{minor} (this reader reads {MAJOR}.x)")
    if flags:
        raise DczError(f"unsupported .dcz flags 0x{flags:08x} (all flag bits are reserved)")
    if header_len > MAX_HEADER:
        raise DczError(f"header length {header_len} exceeds the {MAX_HEADER}-byte cap")
    if PREAMBLE_SIZE + header_len > len(view):
        raise DczError("truncated .dcz file (header runs past the end of the file)")
    raw_header = view[PREAMBLE_SIZE:PREAMBLE_SIZE + header_len]
    if zlib.crc32(raw_header) != header_crc:
        raise DczError("corrupt .dcz header (CRC mismatch)")
    data_start = align(PREAMBLE_SIZE + header_len)
    if data_start > len(view):
        raise DczError("truncated .dcz file (no data section)")
    if any(view[PREAMBLE_SIZE + header_len:data_start]):
        raise DczError("non-zero padding after the header")
    return _parse_json(bytes(raw_header)), data_start


def _parse_json(raw: bytes) -> dict:
    def no_duplicates(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise DczError(f"duplicate key {key!r} in header")
            obj[key] = value
        return obj

    def no_constants(name):
        raise DczError(f"header contains {name}, which JSON does not allow")

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except RecursionError:  # the C parser gives up at Python's recursion limit: linear time, small memory
        raise DczError(f"header JSON nested deeper than {MAX_DEPTH}") from None
    except (UnicodeDecodeError, ValueError) as e:
        if isinstance(e, DczError):
            raise
        raise DczError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise DczError("header is not a JSON object")
    if _depth(header) > MAX_DEPTH:
        raise DczError(f"header JSON nested deeper than {MAX_DEPTH}")
    return header


def _depth(value) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _stream_table(header: dict, view: memoryview, data_start: int) -> list[Stream]:
    entries = _list(header, "streams", MAX_TENSORS * MAX_SLOTS)
    if not entries:
        raise DczError("no streams (the graph stream is required)")
    streams, expected = [], 0
    for i, entry in enumerate(entries):
        where = f"stream {i}"
        _keys(entry, where, {"offset", "length", "crc32"})
        offset = _int(entry["offset"], f"{where} offset", 0, MAX_COUNT)
        length = _int(entry["length"], f"{where} length", 0, MAX_COUNT)
        crc = _int(entry["crc32"], f"{where} crc32", 0, 0xFFFFFFFF)
        # Streams tile the data section: each starts at the aligned end of the previous one.
        if offset != expected:
            raise DczError(f"{where} at offset {offset}, expected {expected} (streams must be "
                           "contiguous, in order, 64-byte aligned)")
        end = data_start + offset + length
        if end > len(view):
            raise DczError(f"{where} runs past the end of the file (truncated?)")
        expected = align(offset + length)
        pad_end = data_start + expected
        if pad_end > len(view) or any(view[end:pad_end]):
            raise DczError(f"{where}: missing or non-zero padding")
        streams.append(Stream(view[data_start + offset:end], crc32=crc))
    if data_start + expected != len(view):
        raise DczError(f"{len(view) - data_start - expected} trailing bytes after the last stream")
    return streams


def _tensor(entry, index: int, n_streams: int) -> tuple[Tensor, dict[str, int]]:
    where = f"tensor {index}"
    _keys(entry, where, {"name", "dtype", "shape", "kind", "chain", "slots", "streams"})
    name = _name(entry["name"], f"{where} name")
    where = f"tensor {name!r}"
    dtype = _enum(entry["dtype"], f"{where} dtype", DTYPES)
    kind = _enum(entry["kind"], f"{where} kind", KINDS)
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise DczError(f"{where}: shape must be a list of at most {MAX_DIMS} dims")
    extent = 1  # product of the dims counted as at least 1: numpy refuses [0, 2^62] too
    for d in shape:
        extent *= max(_int(d, f"{where} dim", 0, MAX_COUNT), 1)
        if extent > MAX_COUNT:  # plain Python ints: the product cannot wrap
            raise DczError(f"{where}: shape has too many elements")
    slots_in = entry["slots"]
    if not isinstance(slots_in, dict) or len(slots_in) > MAX_SLOTS:
        raise DczError(f"{where}: slots must be an object of at most {MAX_SLOTS} entries")
    slots = {}
    for slot, spec in slots_in.items():
        _name(slot, f"{where} slot name")
        _keys(spec, f"{where} slot {slot!r}", {"dtype", "count"})
        slots[slot] = Slot(_enum(spec["dtype"], f"{where} slot dtype", DTYPES),
                           _int(spec["count"], f"{where} slot count", 0, MAX_COUNT))
    chain_in = entry["chain"]
    if not isinstance(chain_in, list):
        raise DczError(f"{where}: chain must be a list")
    chain = []
    for step in chain_in:
        _keys(step, f"{where} step", {"codec", "input", "outputs", "params"})
        outputs = step["outputs"]
        if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
            raise DczError(f"{where}: step outputs must map roles to slot names")
        if not isinstance(step["params"], dict):
            raise DczError(f"{where}: step params must be an object")
        chain.append(Step(_name(step["codec"], f"{where} codec"), _name(step["input"], f"{where} input"),
                          outputs, step["params"]))
    refs = entry["streams"]
    if not isinstance(refs, dict) or not all(s in slots for s in refs):
        raise DczError(f"{where}: streams must map declared slots to stream indices")
    stream_ids = {s: _int(i, f"{where} stream index", 0, n_streams - 1) for s, i in refs.items()}
    return Tensor(name=name, dtype=dtype, shape=tuple(shape), kind=kind, chain=chain, slots=slots,
                  streams={}), stream_ids


# ------------------------------------------------------------------ strict JSON field checkers

def _keys(obj, where: str, required: set) -> None:
    if not isinstance(obj, dict) or set(obj) != required:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DczError(f"{where}: expected keys {sorted(required)}, got {got}")


def _int(value, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise DczError(f"{where}: expected an integer in [{lo}, {hi}], got {repr(value)[:40]}")
    return value


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DczError(f"{where}: expected a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise DczError(f"{where}: not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise DczError(f"{where}: longer than {MAX_NAME_BYTES} bytes")
    return value


def _enum(value, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise DczError(f"{where}: unknown value {repr(value)[:40]}")
    return value


def _list(header: dict, key: str, cap: int) -> list:
    value = header.get(key)
    if not isinstance(value, list) or len(value) > cap:
        raise DczError(f"header field {key!r} must be a list of at most {cap} entries")
    return value
