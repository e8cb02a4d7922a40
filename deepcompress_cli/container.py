"""The `.dcz` container, version 1.1 (reads 1.0 too): writer and validating reader.  Byte layout:
docs/FORMAT.md.

The reader follows ../shared/design/container-security.md: every declared number is checked
against the bytes actually present before anything is allocated, and any violation is one
`DczError` line (exit 2).  The writer runs the same checks on what it is about to write, so it
never writes a file the reader refuses.

This module knows bytes, JSON and codec chains, not ONNX: `read` hands back the stored graph as
serialized bytes, and `files.read_dcz` parses it and checks it against the tensor table.
"""

from __future__ import annotations

import json
import struct
import zlib

from . import __version__
from .codecs import encoding_version, since, validate_chain
from .errors import DczError
from .tensors import DTYPES, KINDS, Package, Slot, Step, Stream, Tensor

MAGIC = b"\x89DCZ\r\n\x1a\x00"  # non-ASCII first byte, CR-LF and ^Z catch text-mode damage, NUL
MAJOR, MINOR = 1, 1  # the newest layout this module writes and reads; files of any 1.y are read
# The newest codec definitions this module reads (docs/FORMAT.md section 4), independent of the
# layout version: 2 added `scale`.  The writer writes the oldest version whose codecs the file
# uses, so a file without version-2 codecs stays readable by a version-1 reader.
ENCODING_VERSION = 2
PREAMBLE = struct.Struct("<8sHHIQII")  # magic, major, minor, flags, header length, header CRC, preamble CRC
PREAMBLE_SIZE = PREAMBLE.size  # 32
ALIGN = 64

# Flag bits (1.1): layout features a reader must understand, so an unknown bit is an error.
FLAG_HEADER_ZLIB = 1 << 0  # the header is a zlib stream of the JSON
FLAG_GRAPH_ZLIB = 1 << 1  # the graph stream is a zlib stream of the ModelProto
FLAG_PACKED = 1 << 2  # only streams of >= PACKED_ALIGN_FROM bytes are 64-byte aligned; no trailing pad
KNOWN_FLAGS = FLAG_HEADER_ZLIB | FLAG_GRAPH_ZLIB | FLAG_PACKED
FLAGS_SINCE_MINOR = 1
PACKED_ALIGN_FROM = 4096  # padding costs < 64 bytes: under 1.6 % of a stream this size
ZLIB_LEVEL = 9  # fixed, so equal input gives equal bytes

MAX_HEADER = 64 << 20  # stored and inflated
MAX_GRAPH = (1 << 31) - 1  # protobuf's 2 GiB message limit
# A zlib-compressed header or graph may inflate to at most INFLATE_RATIO x its stored bytes +
# INFLATE_FLOOR, checked while inflating: a small file cannot make the reader allocate much.
# Real headers and graphs compress 5-14x; the writer stores a part uncompressed that would not
# meet the bound.
INFLATE_RATIO = 64
INFLATE_FLOOR = 64 << 10
MAX_DEPTH = 8
# Separators and containers (`,` `:` `[` `{`) a header may hold, counted on its bytes before JSON
# builds the tree: each becomes a Python object of ~50+ bytes, so a 64 MiB header of `0,0,0…`
# would cost gigabytes.  Real headers hold ~40 per tensor (EfficientNet-Lite0: ~12,000).
MAX_HEADER_TOKENS = 1 << 22
MAX_NAME_BYTES = 4096
MAX_DIMS = 32
MAX_COUNT = 1 << 48  # elements of any one array (256 T: far past any real tensor, safe for numpy)
MAX_TENSORS = 1 << 20
MAX_SLOTS = 32
MAX_METADATA = 256  # entries of the 1.1 `metadata` object
MAX_METADATA_KEY = 256  # UTF-8 bytes
MAX_METADATA_VALUE = MAX_NAME_BYTES

# Keys by the minor version that defined them.  A file of minor y may hold the keys of 1.0..1.y;
# keys of a minor newer than this reader's are skipped (they are optional by definition).
HEADER_KEYS = {"encoding_version": 0, "graph_stream": 0, "streams": 0, "tensors": 0, "writer": 0,
               "metadata": 1}
REQUIRED_HEADER_KEYS = {k for k, since in HEADER_KEYS.items() if since == 0}
TENSOR_KEYS = {"name": 0, "dtype": 0, "shape": 0, "kind": 0, "chain": 0, "slots": 0, "streams": 0}
REQUIRED_TENSOR_KEYS = set(TENSOR_KEYS)


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def stream_start(end: int, length: int, flags: int) -> int:
    """Offset (in the data section) of a stream of `length` bytes that follows one ending at `end`."""
    if flags & FLAG_PACKED and length < PACKED_ALIGN_FROM:
        return end
    return align(end)


def data_end(end: int, flags: int) -> int:
    """Where the data section ends after the last stream ends at `end` (1.0 pads it to 64)."""
    return end if flags & FLAG_PACKED else align(end)


# --------------------------------------------------------------------------------------- writer

def write(package: Package, out, *, compact: bool = True) -> int:
    """Write `package` to the binary file object `out`; returns the number of bytes written.

    `compact` (the default) writes the 1.1 layout: zlib-compressed header and graph and no
    padding for small streams; `compact=False` writes the 1.0 layout (minor 1 only if the package
    has metadata).  Streams are written in table order (graph first, then each tensor's slots
    sorted by name), so the same package always gives the same bytes.  Nothing is written when
    the reader would refuse the result.
    """
    flags = FLAG_PACKED if compact else 0
    graph = serialize(package.graph, "graph")
    if compact:
        deflated = _deflate(graph)
        if deflated is not None:
            graph, flags = deflated, flags | FLAG_GRAPH_ZLIB
    streams = [Stream(memoryview(graph))]
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
    stream_entries, end = [], 0
    for s in streams:
        offset = stream_start(end, s.length, flags)
        stream_entries.append({"offset": offset, "length": s.length, "crc32": s.crc32()})
        end = offset + s.length
    header = {
        "encoding_version": encoding_version(package.tensors),
        "graph_stream": 0,
        "streams": stream_entries,
        "tensors": tensor_entries,
        "writer": f"deepcompress {__version__}",
    }
    if package.metadata:  # omitted when empty: a file without notes is the same as before 1.1
        header["metadata"] = dict(package.metadata)
    minor = 1 if flags or package.metadata else 0  # the oldest version that describes the file
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as e:  # a stage left a non-JSON value (numpy scalar, NaN) in params
        raise DczError(f"refusing to write an unreadable file: header is not JSON ({e})") from None
    try:
        _check_tables(_parse_json(text), streams, minor)
    except DczError as e:
        raise DczError(f"refusing to write an unreadable file: {e}") from None
    stored = text
    if compact:
        deflated = _deflate(text)
        if deflated is not None:
            stored, flags = deflated, flags | FLAG_HEADER_ZLIB
    if len(text) > MAX_HEADER or len(stored) > MAX_HEADER:
        raise DczError(f"header of {len(text)} bytes exceeds the format's {MAX_HEADER} byte cap")
    head = PREAMBLE.pack(MAGIC, MAJOR, minor, flags, len(stored), zlib.crc32(stored), 0)[:-4]
    out.write(head + struct.pack("<I", zlib.crc32(head)))
    out.write(stored)
    written = PREAMBLE_SIZE + len(stored)
    out.write(bytes(align(written) - written))
    written = data_start = align(written)
    for s, entry in zip(streams, stream_entries):
        start = data_start + entry["offset"]
        out.write(bytes(start - written))
        out.write(s.buffer())
        written = start + s.length
    final = data_start + data_end(written - data_start, flags)
    out.write(bytes(final - written))
    return final


def serialize(message, what: str) -> bytes:
    """A protobuf message's bytes (deterministic), or a one-line DczError when it is over
    protobuf's 2 GiB limit (SerializeToString would raise EncodeError, or worse)."""
    size = message.ByteSize()
    if size > MAX_GRAPH:
        raise DczError(f"{what} serializes to {size} bytes, over protobuf's {MAX_GRAPH}-byte limit")
    return message.SerializeToString(deterministic=True)


def _deflate(data: bytes) -> bytes | None:
    """zlib of `data` if that is smaller and within the reader's inflate bound, else None."""
    packed = zlib.compress(data, ZLIB_LEVEL)
    if len(packed) >= len(data) or len(data) > inflate_cap(len(packed), MAX_GRAPH):
        return None
    return packed


def inflate_cap(stored: int, hard_cap: int) -> int:
    return min(hard_cap, INFLATE_RATIO * stored + INFLATE_FLOOR)


# --------------------------------------------------------------------------------------- reader

def read(buf) -> tuple[Package, bytes]:
    """Parse and validate a whole `.dcz` held in `buf` (bytes, or a memoryview of an mmap).

    Returns the package without its graph (`graph` is None) and the stored graph as serialized
    ONNX bytes (inflated, CRC-checked); `files.read_dcz` parses it and checks it against the table.
    """
    view = memoryview(buf)
    minor, flags, header, data_start = _read_preamble_and_header(view)
    _fields(header, "header", HEADER_KEYS, REQUIRED_HEADER_KEYS, minor)  # before its tables are used
    streams = _stream_table(header, view, data_start, flags)
    package, graph_stream = _check_tables(header, streams, minor)
    graph = streams[graph_stream].buffer()  # streams' memoryviews keep `buf` alive
    if flags & FLAG_GRAPH_ZLIB:
        graph = _inflate(graph, MAX_GRAPH, "graph stream")
    return package, graph


def _check_tables(header: dict, streams: list[Stream], minor: int) -> tuple[Package, int]:
    """Every check of the header's tables (all but the byte layout), shared by reader and writer."""
    _fields(header, "header", HEADER_KEYS, REQUIRED_HEADER_KEYS, minor)
    version = _int(header["encoding_version"], "encoding_version", 0, 1 << 31)
    if not 1 <= version <= ENCODING_VERSION:
        raise DczError(f"unsupported encoding version {version} (this reader knows 1..{ENCODING_VERSION})")
    _name(header["writer"], "writer")
    metadata = _metadata(header["metadata"]) if "metadata" in header else {}
    graph_stream = _int(header["graph_stream"], "graph_stream", 0, len(streams) - 1)
    used = [graph_stream]
    tensors = []
    for i, entry in enumerate(_list(header, "tensors", MAX_TENSORS)):
        tensor, stream_ids = _tensor(entry, i, len(streams), minor)
        tensor.streams = {slot: streams[k] for slot, k in stream_ids.items()}
        used.extend(stream_ids.values())
        tensors.append(tensor)
    if sorted(used) != list(range(len(streams))):
        raise DczError("every stream must be used exactly once (by the graph or one tensor slot)")
    if len({t.name for t in tensors}) != len(tensors):
        raise DczError("duplicate tensor names in the tensor table")
    for tensor in tensors:
        validate_chain(tensor)
        for step in tensor.chain:  # a codec defined after the file's version is not part of it
            if since(step.codec) > version:
                raise DczError(f"tensor {tensor.name!r}: codec {step.codec} needs encoding version "
                               f"{since(step.codec)}, the file declares {version}")
    return Package(graph=None, tensors=tensors, metadata=metadata), graph_stream


def _read_preamble_and_header(view: memoryview) -> tuple[int, int, dict, int]:
    if len(view) < PREAMBLE_SIZE:
        raise DczError(f"not a .dcz file: {len(view)} bytes is shorter than the {PREAMBLE_SIZE}-byte preamble")
    magic, major, minor, flags, header_len, header_crc, preamble_crc = PREAMBLE.unpack(view[:PREAMBLE_SIZE])
    if magic != MAGIC:
        raise DczError("not a .dcz file (bad magic)")
    if zlib.crc32(view[:PREAMBLE_SIZE - 4]) != preamble_crc:
        raise DczError("corrupt .dcz preamble (CRC mismatch)")
    if major != MAJOR:
        raise DczError(f"unsupported .dcz version {major}.{minor} (this reader reads {MAJOR}.x)")
    if flags & ~KNOWN_FLAGS:
        raise DczError(f"unsupported .dcz flags 0x{flags:08x} (this reader knows 0x{KNOWN_FLAGS:x})")
    if flags and minor < FLAGS_SINCE_MINOR:
        raise DczError(f"flags 0x{flags:x} in a version {major}.{minor} file (flags exist from 1.{FLAGS_SINCE_MINOR})")
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
    text = _inflate(raw_header, MAX_HEADER, "header") if flags & FLAG_HEADER_ZLIB else bytes(raw_header)
    return minor, flags, _parse_json(text), data_start


def _inflate(data, hard_cap: int, what: str) -> bytes:
    """Inflate a zlib stream, refusing before allocating more than the format's bound."""
    cap = inflate_cap(len(data), hard_cap)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, cap + 1)  # never produces more than cap + 1 bytes
    except zlib.error as e:
        raise DczError(f"{what} is not a valid zlib stream ({e})") from None
    if len(out) > cap:
        raise DczError(f"{what} inflates past {cap} bytes ({INFLATE_RATIO} x its {len(data)} stored "
                       f"bytes + {INFLATE_FLOOR}, at most {hard_cap})")
    if not inflater.eof or inflater.unused_data:
        raise DczError(f"{what}: zlib stream truncated or followed by extra bytes")
    return out


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

    tokens = sum(raw.count(c) for c in (b",", b":", b"[", b"{"))  # an upper bound: strings count too
    if tokens > MAX_HEADER_TOKENS:
        raise DczError(f"header has {tokens:,} JSON separators, over the {MAX_HEADER_TOKENS:,} limit")
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


def _stream_table(header: dict, view: memoryview, data_start: int, flags: int) -> list[Stream]:
    entries = _list(header, "streams", MAX_TENSORS * MAX_SLOTS)
    if not entries:
        raise DczError("no streams (the graph stream is required)")
    streams, end = [], 0  # end: where the previous stream ends, relative to data_start

    def padding_to(stop: int, i: int) -> None:  # the bytes after stream i, up to `stop`
        if data_start + stop > len(view) or any(view[data_start + end:data_start + stop]):
            raise DczError(f"stream {i}: missing or non-zero padding")

    for i, entry in enumerate(entries):
        where = f"stream {i}"
        _keys(entry, where, {"offset", "length", "crc32"})  # exact in every 1.y: it says where bytes are
        offset = _int(entry["offset"], f"{where} offset", 0, MAX_COUNT)
        length = _int(entry["length"], f"{where} length", 0, MAX_COUNT)
        crc = _int(entry["crc32"], f"{where} crc32", 0, 0xFFFFFFFF)
        # Streams tile the data section: each starts where the rule says after the previous one.
        expected = stream_start(end, length, flags)
        if offset != expected:
            aligned = "small ones packed, others 64-byte aligned" if flags & FLAG_PACKED else "64-byte aligned"
            raise DczError(f"{where} at offset {offset}, expected {expected} (streams must be "
                           f"contiguous, in order, {aligned})")
        if i:
            padding_to(offset, i - 1)
        if data_start + offset + length > len(view):
            raise DczError(f"{where} runs past the end of the file (truncated?)")
        streams.append(Stream(view[data_start + offset:data_start + offset + length], crc32=crc))
        end = offset + length
    final = data_end(end, flags)
    padding_to(final, len(entries) - 1)
    if data_start + final != len(view):
        raise DczError(f"{len(view) - data_start - final} trailing bytes after the last stream")
    return streams


def _tensor(entry, index: int, n_streams: int, minor: int) -> tuple[Tensor, dict[str, int]]:
    where = f"tensor {index}"
    _fields(entry, where, TENSOR_KEYS, REQUIRED_TENSOR_KEYS, minor)
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


def _metadata(value) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise DczError(f"metadata must be an object of at most {MAX_METADATA} entries")
    for key, text in value.items():
        _string(key, f"metadata key {key[:40]!r}", 1, MAX_METADATA_KEY)
        _string(text, f"metadata value of {key[:40]!r}", 0, MAX_METADATA_VALUE)
    return dict(value)


# ------------------------------------------------------------------ strict JSON field checkers

def _fields(obj, where: str, known: dict[str, int], required: set, minor: int) -> None:
    """`obj` holds every required key and only keys defined up to the file's minor version; in a
    file newer than this reader, keys it does not know are skipped (the optional fields of 1.y)."""
    if not isinstance(obj, dict):
        raise DczError(f"{where}: expected keys {sorted(required)}, got {type(obj).__name__}")
    allowed = {k for k, since in known.items() if since <= minor}
    extra = set(obj) - allowed
    if minor > MINOR:
        extra &= set(known)  # (empty: every key this reader knows is older than the file)
    if not required <= set(obj) or extra:
        optional = sorted(allowed - required)
        raise DczError(f"{where}: expected keys {sorted(required)}"
                       + (f" (optionally {optional})" if optional else "") + f", got {sorted(obj)}")


def _keys(obj, where: str, required: set) -> None:
    if not isinstance(obj, dict) or set(obj) != required:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DczError(f"{where}: expected keys {sorted(required)}, got {got}")


def _int(value, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise DczError(f"{where}: expected an integer in [{lo}, {hi}], got {repr(value)[:40]}")
    return value


def _string(value, where: str, min_bytes: int, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise DczError(f"{where}: expected a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise DczError(f"{where}: not valid UTF-8") from None
    if size < min_bytes:
        raise DczError(f"{where}: expected a non-empty string")
    if size > max_bytes:
        raise DczError(f"{where}: longer than {max_bytes} bytes")
    return value


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DczError(f"{where}: expected a non-empty string")
    return _string(value, where, 1, MAX_NAME_BYTES)


def _enum(value, where: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise DczError(f"{where}: unknown value {repr(value)[:40]}")
    return value


def _list(header: dict, key: str, cap: int) -> list:
    value = header.get(key)
    if not isinstance(value, list) or len(value) > cap:
        raise DczError(f"header field {key!r} must be a list of at most {cap} entries")
    return value
