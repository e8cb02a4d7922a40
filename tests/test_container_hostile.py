"""Hostile `.dcz` files: the reader fails with one `DczError`, never another exception, a hang or a big
allocation, and never accepts a damaged or malicious file.

Covers the "Hostile inputs" list of the container security rules (../shared/design/container-security.md,
items 1-12 and 14 as far as they apply to format 1.0: its codecs are raw, sparse, codebook, bitpack and
huffman, so there are no scales, zero-points or SVD factors yet).  Every hostile file is generated here
from the sample models, stored raw or through the `compress` recipe; no binary fixture is committed.

Layers of the reader and how the tests reach them:
  preamble (magic, CRC, version, flags, header length)  -> raw byte edits
  header JSON (depth, duplicates, NaN, UTF-8)             -> `rebuild(raw=...)`, CRCs fixed up
  tables (streams, tensors, chains)                       -> `rebuild(header, data)`, CRCs fixed up
  stream payloads and the embedded ONNX graph             -> `assemble(header, payloads)`, table fixed up
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import re
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import deepcompress_cli.onnx_io  # noqa: F401 - imported up front so no import is counted by tracemalloc
from conftest import SAMPLES, assert_one_line_error
from deepcompress_cli import container, files
from deepcompress_cli.codecs import MAX_STEPS
from deepcompress_cli.errors import DczError
from deepcompress_cli.graphs import placeholder_name as _placeholder_name
from deepcompress_cli.onnx_io import _tensor_sites
from deepcompress_cli.tensors import Slot, Stream, numpy_dtype

MAGIC = container.MAGIC
PREAMBLE_SIZE = container.PREAMBLE_SIZE
MODELS = {"lenet5": SAMPLES / "lenet5.onnx", "lenet300": SAMPLES / "lenet300.onnx"}
COMPRESSED = "-compressed"
ALL_BASES = sorted([*MODELS, *(m + COMPRESSED for m in MODELS)])
# The recipe at 30 % pruned: streams long enough that Huffman pays for its tables (at the default
# sparsities these small models' streams are too short, and huffman keeps them packed).
HUFFMAN_BASE = "lenet5-huffman"
MiB = 1 << 20


# ----------------------------------------------------------------------------------- helpers

def package(name: str = "lenet5"):
    """A fresh (mutable) Package of a sample model."""
    return files.read_model(str(MODELS[name]))


def dcz_bytes(pkg) -> bytes:
    """The 1.0 layout (the old writer's path), which these tests edit as plain JSON and bytes;
    the 1.1 compact layout has its own section below."""
    out = io.BytesIO()
    n = container.write(pkg, out, compact=False)
    assert n == len(out.getvalue())
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def valid(name: str = "lenet5") -> bytes:
    """A valid `.dcz` of a sample model, built in memory: stored raw (`lenet5`), or after the whole
    prune -> share -> Huffman recipe (`lenet5-compressed`), which exercises every codec."""
    if name == HUFFMAN_BASE:
        from deepcompress_cli.cli import main

        result = CliRunner().invoke(main, ["-q", "compress", str(MODELS["lenet5"]), "--sparsity", "0.3", "-o", "-"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return dcz_bytes(files.read_dcz(result.stdout_bytes))  # same tables, in the 1.0 layout
    if name.endswith(COMPRESSED):
        from deepcompress_cli.cli import main

        model = MODELS[name[:-len(COMPRESSED)]]
        result = CliRunner().invoke(main, ["-q", "compress", str(model), "-o", "-", "--sparsity", "conv=0.6,fc=0.9"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return dcz_bytes(files.read_dcz(result.stdout_bytes))  # same tables, in the 1.0 layout
    return dcz_bytes(package(name))


def header_len_of(data: bytes) -> int:
    return struct.unpack_from("<Q", data, 16)[0]


def split(data: bytes) -> tuple[dict, bytes]:
    """(parsed header, data section) of a valid file."""
    hl = header_len_of(data)
    return json.loads(data[PREAMBLE_SIZE:PREAMBLE_SIZE + hl]), data[container.align(PREAMBLE_SIZE + hl):]


def payloads(data: bytes) -> list[bytes]:
    """The stream payloads of a valid file, in table order (graph first)."""
    header, section = split(data)
    return [section[s["offset"]:s["offset"] + s["length"]] for s in header["streams"]]


def encode_header(header) -> bytes:
    # Like the writer, except that NaN/Infinity are let through (the reader must refuse them).
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")


def preamble(header_len: int, header_crc: int, *, magic=MAGIC, major=container.MAJOR,
             minor=0, flags=0, preamble_crc=None) -> bytes:
    head = container.PREAMBLE.pack(magic, major, minor, flags, header_len, header_crc, 0)[:-4]
    crc = zlib.crc32(head) if preamble_crc is None else preamble_crc
    return head + struct.pack("<I", crc)


def rebuild(header, data: bytes = b"", *, raw: bytes | None = None, header_len: int | None = None,
            header_crc: int | None = None, pad: bytes | None = None, **preamble_fields) -> bytes:
    """Serialize a (modified) header dict, or `raw` header bytes, with correct length, CRCs and
    padding in front of `data`, so that a mutation reaches the layer behind the checksums."""
    raw = encode_header(header) if raw is None else bytes(raw)
    end = PREAMBLE_SIZE + len(raw)
    pad = bytes(container.align(end) - end) if pad is None else pad
    head = preamble(len(raw) if header_len is None else header_len,
                    zlib.crc32(raw) if header_crc is None else header_crc, **preamble_fields)
    return head + raw + pad + data


def assemble(header: dict, streams: list[bytes], *, fix_crcs: bool = True) -> bytes:
    """Lay out stream payloads like the writer and rebuild the stream table (offsets, lengths and,
    unless `fix_crcs` is false, CRCs), so that a payload edit reaches the codecs and the graph."""
    header = copy.deepcopy(header)
    old = header["streams"]
    table, offset = [], 0
    for i, p in enumerate(streams):
        crc = zlib.crc32(p) if fix_crcs or i >= len(old) else old[i]["crc32"]
        table.append({"offset": offset, "length": len(p), "crc32": crc})
        offset = container.align(offset + len(p))
    header["streams"] = table
    return rebuild(header, b"".join(p + bytes(container.align(len(p)) - len(p)) for p in streams))


def fix_crcs(data: bytes) -> bytes:
    """Best effort: recompute the header CRC (over the declared header range, when it fits) and the
    preamble CRC of arbitrary bytes, so a mutation is judged by the layers behind them."""
    buf = bytearray(data)
    if len(buf) < PREAMBLE_SIZE:
        return bytes(buf)
    hl = header_len_of(buf)
    if PREAMBLE_SIZE + hl <= len(buf):
        buf[24:28] = struct.pack("<I", zlib.crc32(buf[PREAMBLE_SIZE:PREAMBLE_SIZE + hl]))
    buf[28:32] = struct.pack("<I", zlib.crc32(buf[:28]))
    return bytes(buf)


def edited(name: str = "lenet5", edit=None, data: bytes | None = None) -> bytes:
    """Apply `edit(header)` to a valid file's parsed header and rebuild it with correct CRCs."""
    header, section = split(valid(name))
    edit(header)
    return rebuild(header, section if data is None else data)


def read_all(data):
    """What every consumer does: read, then decode every tensor."""
    pkg = files.read_dcz(data)
    for t in pkg.tensors:
        t.decode()
    return pkg


def assert_rejected(data, match: str):
    with pytest.raises(DczError, match=match):
        read_all(data)


def graph_of(pkg, name: str):
    """The placeholder TensorProto of table tensor `name` inside a package's stored graph."""
    for t, _, _ in _tensor_sites(pkg.graph):
        if _placeholder_name(t) == name:
            return t
    raise KeyError(name)


def external_tensor(name: str, location: str = "/etc/passwd") -> TensorProto:
    t = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


@pytest.mark.parametrize("name", ALL_BASES)
def test_helpers_round_trip(name):
    """The helpers reproduce the writer byte for byte, so every rejection below is due to the edit."""
    data = valid(name)
    header, section = split(data)
    assert rebuild(header, section) == data
    assert assemble(header, payloads(data)) == data
    assert fix_crcs(data) == data
    pkg = read_all(data)
    assert [t.name for t in pkg.tensors] == [t.name for t in package(name.replace(COMPRESSED, "")).tensors]


# ------------------------------------------------------------- 1. empty, short and truncated files

@pytest.mark.parametrize("size", range(0, 8))
def test_short_files(size):
    assert_rejected(MAGIC[:size], "shorter than the 32-byte preamble")
    assert_rejected(valid()[:size], "shorter than the 32-byte preamble")


def test_file_shorter_than_preamble():
    assert_rejected(valid()[:PREAMBLE_SIZE - 1], "shorter than the 32-byte preamble")


@pytest.mark.parametrize("name", ["lenet5", "lenet5" + COMPRESSED])
def test_truncated_at_every_offset(name):
    data = valid(name)
    view = memoryview(data)
    for cut in range(len(data)):
        with pytest.raises(DczError):
            read_all(view[:cut])


def test_truncated_at_every_offset_messages():
    """Spot checks that truncation is reported as such where it is recognisable."""
    data = valid("lenet5")
    hl = header_len_of(data)
    assert_rejected(data[:PREAMBLE_SIZE + hl - 1], "truncated .dcz file")
    assert_rejected(data[:-1], "missing or non-zero padding")
    assert_rejected(data[:-100], "runs past the end of the file")


# --------------------------------------------------------------- 2. magic, version, flags, CRC

@pytest.mark.parametrize("magic", [
    b"PK\x03\x04\x14\x00\x00\x00",              # a zip
    b"\x08\x07\x12\x05onnx",                     # ONNX protobuf
    MAGIC.replace(b"\r\n", b"\n") + b"\x00",     # text-mode CR-LF damage
    bytes([MAGIC[0] ^ 0x80]) + MAGIC[1:],        # 8th bit stripped
    b"\x00" * 8,
], ids=["zip", "onnx", "crlf", "7bit", "zeros"])
def test_wrong_magic(magic):
    data = valid()
    assert_rejected(magic + data[8:], "bad magic")
    assert_rejected(fix_crcs(magic + data[8:]), "bad magic")


@pytest.mark.parametrize("major", [0, 2, 0x0100, 65535], ids=["v0", "v2", "byteswapped", "v65535"])
def test_unsupported_version(major):
    header, section = split(valid())
    assert_rejected(rebuild(header, section, major=major), f"unsupported .dcz version {major}")


def test_version_change_without_crc_is_corruption():
    data = bytearray(valid())
    data[8:10] = struct.pack("<H", 2)
    assert_rejected(bytes(data), r"corrupt .dcz preamble \(CRC mismatch\)")


@pytest.mark.parametrize("flags", [8, 0x80000000, 0xFFFFFFFF])
@pytest.mark.parametrize("minor", [0, 1, 2])
def test_reserved_flags(flags, minor):
    header, section = split(valid())
    assert_rejected(rebuild(header, section, flags=flags, minor=minor), "unsupported .dcz flags")


@pytest.mark.parametrize("flags", [1, 2, 4, 7])
def test_flags_in_a_1_0_file(flags):
    """The 1.1 flag bits do not exist in a file that says 1.0."""
    header, section = split(valid())
    assert_rejected(rebuild(header, section, flags=flags, minor=0), "in a version 1.0 file")


@pytest.mark.parametrize("offset", range(8, PREAMBLE_SIZE))
def test_bad_preamble_crc(offset):
    data = bytearray(valid())
    data[offset] ^= 0x01
    assert_rejected(bytes(data), r"corrupt .dcz (preamble|header) \(CRC mismatch\)")
    if offset < 24 or offset >= 28:  # the preamble CRC covers everything but itself
        assert_rejected(bytes(data), r"preamble \(CRC mismatch\)")


def test_bad_header_crc():
    data = bytearray(valid())
    data[PREAMBLE_SIZE + 5] ^= 0x20
    assert_rejected(bytes(data), r"corrupt .dcz header \(CRC mismatch\)")
    header, section = split(valid())
    assert_rejected(rebuild(header, section, header_crc=0), r"header \(CRC mismatch\)")


# ------------------------------------------------------------------------ 3. header length

@pytest.mark.parametrize("header_len", [2**64 - 1, 2**64 - PREAMBLE_SIZE, 2**63, container.MAX_HEADER + 1],
                         ids=["2^64-1", "wraps-with-offset", "2^63", "cap+1"])
def test_header_length_over_cap(header_len):
    header, section = split(valid())
    assert_rejected(rebuild(header, section, header_len=header_len), f"exceeds the {container.MAX_HEADER}-byte cap")


def test_header_length_over_file_size():
    header, section = split(valid())
    data = rebuild(header, section)
    assert_rejected(rebuild(header, section, header_len=len(data)), "header runs past the end")
    assert_rejected(rebuild(header, section, header_len=len(data) - PREAMBLE_SIZE + 1), "header runs past")


def test_header_length_reaching_into_data():
    header, section = split(valid())
    raw = encode_header(header)
    data = rebuild(header, section)
    hl = len(raw) + 100  # CRC fixed up over the declared range: the JSON parser sees the padding/graph
    fixed = rebuild(None, section, raw=raw, header_len=hl, header_crc=zlib.crc32(data[32:32 + hl]))
    assert_rejected(fixed, "not valid JSON|non-zero padding")


def test_no_data_section():
    header, _ = split(valid())
    raw = encode_header(header) + b" "  # a header length that is not a multiple of 64
    assert (PREAMBLE_SIZE + len(raw)) % 64
    assert_rejected(rebuild(None, raw=raw, pad=b""), r"truncated .dcz file \(no data section\)")


def test_non_zero_padding_after_header():
    header, section = split(valid())
    header["writer"] = "deepcompress hostile"
    raw = encode_header(header)
    n = container.align(PREAMBLE_SIZE + len(raw)) - PREAMBLE_SIZE - len(raw)
    assert n > 0
    assert read_all(rebuild(header, section))  # sanity: only the padding differs
    assert_rejected(rebuild(header, section, pad=b"\x01" + bytes(n - 1)), "non-zero padding after the header")
    assert_rejected(rebuild(header, section, pad=bytes(n - 1) + b" "), "non-zero padding after the header")


# ----------------------------------------------------------------------- header JSON itself

@pytest.mark.parametrize("raw, match", [
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),                   # UTF-8 BOM
    (b'{"writer":"\xed\xa0\x80"}', "not valid JSON"),        # UTF-8-encoded lone surrogate
    (b"[]", "not a JSON object"),
    (b'"header"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (b"{} {}", "not valid JSON"),
    (b'{"encoding_version":' + b"9" * 5000 + b"}", "not valid JSON"),  # int digit limit
    (b"{", "not valid JSON"),
], ids=["empty", "utf16", "bom", "surrogate-bytes", "array", "string", "null", "two-docs", "5000-digits",
        "unclosed"])
def test_header_not_a_json_object(raw, match):
    assert_rejected(rebuild(None, raw=raw), match)


DEPTH = container.MAX_DEPTH


@pytest.mark.parametrize("raw", [
    b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b"[" * 10_000,
    b'[{"x":[' * 3_334,
    b'{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}",   # one level over the cap
], ids=["lists", "objects", "unclosed", "mixed", "cap+1"])
def test_json_nested_10000_deep(raw):
    assert_rejected(rebuild(None, raw=raw), f"nested deeper than {DEPTH}")


def test_json_nested_to_the_cap_parses():
    raw = b'{"a":' + b"[" * (DEPTH - 1) + b"]" * (DEPTH - 1) + b"}"
    assert_rejected(rebuild(None, raw=raw), "header: expected keys")  # past the JSON layer


def test_json_brackets_inside_strings_do_not_count():
    header, section = split(valid())
    header["writer"] = "[[[[[[[[[[{{{{{{{{{{ \\\" ]]]]"
    assert read_all(rebuild(header, section))


@pytest.mark.parametrize("where", ["top", "tensor", "stream", "slot"])
def test_duplicate_json_keys(where):
    header, section = split(valid())
    raw = encode_header(header)
    if where == "top":
        raw = b'{"writer":"evil",' + raw[1:]
    elif where == "tensor":
        raw = raw.replace(b'"name":"conv1.weight"', b'"name":"conv1.bias","name":"conv1.weight"', 1)
    elif where == "stream":
        raw = raw.replace(b'"offset":0}', b'"offset":0,"offset":0}', 1)
    else:
        raw = raw.replace(b'"streams":{"data":1}', b'"streams":{"data":1,"data":2}', 1)
    assert raw != encode_header(header)
    assert_rejected(rebuild(None, section, raw=raw), "duplicate key")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_json(constant):
    header, section = split(valid())
    raw = encode_header(header).replace(b'"encoding_version":1', b'"encoding_version":' + constant.encode())
    assert_rejected(rebuild(None, section, raw=raw), f"header contains {constant}")
    raw = encode_header(header).replace(b'"params":{}', b'"params":{"scale":' + constant.encode() + b"}", 1)
    assert_rejected(rebuild(None, section, raw=raw), f"header contains {constant}")


def test_float_overflow_in_json_is_not_an_integer():
    header, section = split(valid())
    raw = encode_header(header).replace(b'"encoding_version":1', b'"encoding_version":1e999')
    assert_rejected(rebuild(None, section, raw=raw), "encoding_version: expected an integer")


# ---------------------------------------------------------------------------- header fields

@pytest.mark.parametrize("edit, match", [
    (lambda h: h.pop("writer"), "header: expected keys"),
    (lambda h: h.update(extra=1), "header: expected keys"),
    (lambda h: h.update(encoding_version=0), "unsupported encoding version 0"),
    (lambda h: h.update(encoding_version=3), "unsupported encoding version 3"),
    (lambda h: h.update(encoding_version=2**63), "encoding_version: expected an integer"),
    (lambda h: h.update(encoding_version="1"), "encoding_version: expected an integer"),
    (lambda h: h.update(encoding_version=True), "encoding_version: expected an integer"),
    (lambda h: h.update(encoding_version=1.0), "encoding_version: expected an integer"),
    (lambda h: h.update(writer=""), "writer: expected a non-empty string"),
    (lambda h: h.update(writer=["x"]), "writer: expected a non-empty string"),
    (lambda h: h.update(writer="w" * 5000), "writer: longer than 4096 bytes"),
    (lambda h: h.update(graph_stream=9), "graph_stream: expected an integer in \\[0, 8\\]"),
    (lambda h: h.update(graph_stream=-1), "graph_stream: expected an integer"),
    (lambda h: h.update(graph_stream=None), "graph_stream: expected an integer"),
    (lambda h: h.update(streams=[]), "no streams"),
    (lambda h: h.update(streams={}), "'streams' must be a list"),
    (lambda h: h.update(tensors={"a": 1}), "'tensors' must be a list"),
    (lambda h: h.update(tensors=[0] * (container.MAX_TENSORS + 1)), "'tensors' must be a list of at most"),
    (lambda h: h["tensors"].append(0), "tensor 8: expected keys"),
    (lambda h: h["tensors"].append(copy.deepcopy(h["tensors"][0])), "every stream must be used exactly once"),
], ids=["no-writer", "extra-key", "encoding-v0", "encoding-v3", "encoding-2^63", "encoding-str", "encoding-bool",
        "encoding-float", "writer-empty", "writer-list", "writer-long", "graph-stream-oob", "graph-stream-neg",
        "graph-stream-null", "streams-empty", "streams-dict", "tensors-dict", "tensors-over-cap",
        "tensor-not-object", "tensor-repeated"])
def test_bad_header_fields(edit, match):
    assert_rejected(edited(edit=edit), match)


# ------------------------------------------------------------------------- 6. tensor names

def set_tensor(index, key, value):
    def edit(h):
        h["tensors"][index][key] = value
    return edit


@pytest.mark.parametrize("name, match", [
    ("conv1.weight", "duplicate tensor names"),
    ("", "name: expected a non-empty string"),
    ("n" * 4097, "name: longer than 4096 bytes"),
    ("\u20ac" * 1366, "name: longer than 4096 bytes"),   # 1366 characters but 4098 UTF-8 bytes
    ("\ud800", "name: not valid UTF-8"),                  # a lone surrogate (JSON "\ud800")
    ("a\udfffb", "name: not valid UTF-8"),
    (12, "name: expected a non-empty string"),
    (None, "name: expected a non-empty string"),
    (["conv1.bias"], "name: expected a non-empty string"),
], ids=["duplicate", "empty", "over-long", "over-long-utf8", "lone-surrogate", "low-surrogate", "int", "null",
        "list"])
def test_bad_tensor_names(name, match):
    assert_rejected(edited(edit=set_tensor(1, "name", name)), match)


def test_longest_name_is_accepted_by_the_table():
    # 4096 bytes is allowed; the file is then rejected only because the graph does not know the name.
    assert_rejected(edited(edit=set_tensor(1, "name", "n" * 4096)), "missing from the tensor table")


# ------------------------------------------------------------------ 7. shapes and dimensions

@pytest.mark.parametrize("shape, match", [
    ([1] * 33, "at most 32 dims"),
    ([1] * 10_000, "at most 32 dims"),
    (6, "at most 32 dims"),
    ({"0": 6}, "at most 32 dims"),
    ([-1], f"dim: expected an integer in \\[0, {container.MAX_COUNT}\\], got -1"),
    ([2**63], "dim: expected an integer"),
    ([2**64 - 1], "dim: expected an integer"),
    ([6, -2**63], "dim: expected an integer"),
    ([2**32, 2**32], "has too many elements"),
    ([2**31, 2**31, 2**31], "has too many elements"),
    ([container.MAX_COUNT, 2], "has too many elements"),
    ([container.MAX_COUNT + 1], "dim: expected an integer"),
    ([1.0, 6], "dim: expected an integer"),
    ([True, 6], "dim: expected an integer"),
    (["6"], "dim: expected an integer"),
    ([None], "dim: expected an integer"),
    ([[6]], "dim: expected an integer"),
], ids=["ndim-33", "ndim-10000", "int", "dict", "dim-minus-1", "dim-2^63", "dim-2^64-1", "dim-min-int64",
        "2^32x2^32", "2^93", "max-count-x2", "max-count+1", "float", "bool", "str", "null", "nested"])
def test_bad_shapes(shape, match):
    assert_rejected(edited(edit=set_tensor(1, "shape", shape)), match)


# -------------------------------------------------------------------- 8. dtypes, kinds, codecs

@pytest.mark.parametrize("key, value, match", [
    ("dtype", "float128", "dtype: unknown value 'float128'"),
    ("dtype", "bfloat16", "dtype: unknown value"),
    ("dtype", "", "dtype: unknown value"),
    ("dtype", 1, "dtype: unknown value"),
    ("dtype", ["float32"], "dtype: unknown value"),
    ("kind", "weights", "kind: unknown value"),
    ("kind", None, "kind: unknown value"),
], ids=["float128", "bfloat16", "empty", "onnx-code", "list", "kind", "kind-null"])
def test_unknown_dtype_or_kind(key, value, match):
    assert_rejected(edited(edit=set_tensor(1, key, value)), match)


def set_step(index, key, value, tensor=1):
    def edit(h):
        h["tensors"][tensor]["chain"][index][key] = value
    return edit


def set_slot(key, value, slot="data", tensor=1):
    def edit(h):
        h["tensors"][tensor]["slots"][slot][key] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (set_step(0, "codec", "zstd"), "unknown codec 'zstd'"),
    (set_step(0, "codec", "lz4"), "unknown codec 'lz4'"),
    (set_step(0, "codec", "__init__"), "unknown codec"),
    (set_step(0, "codec", "RAW"), "unknown codec 'RAW'"),
    (set_step(0, "codec", ""), "codec: expected a non-empty string"),
    (set_step(0, "codec", None), "codec: expected a non-empty string"),
    (set_slot("dtype", "complex64"), "slot dtype: unknown value 'complex64'"),
    (set_slot("dtype", "int32"), "raw data is 6 x int32, expected 6 x float32"),   # same byte length
    (set_slot("dtype", "uint8"), "length 24 != count x width 6"),
], ids=["zstd", "lz4", "dunder", "case", "empty", "null", "slot-dtype", "slot-dtype-same-bytes",
        "slot-dtype-narrow"])
def test_unknown_codec_and_slot_dtype(edit, match):
    assert_rejected(edited(edit=edit), match)


@pytest.mark.parametrize("edit, match", [
    (set_tensor(1, "chain", []), f"encoding chain must have 1..{MAX_STEPS} steps"),
    (lambda h: h["tensors"][1]["chain"].extend(copy.deepcopy(h["tensors"][1]["chain"]) * MAX_STEPS),
     f"encoding chain must have 1..{MAX_STEPS} steps"),
    (lambda h: h["tensors"][1]["chain"].append(copy.deepcopy(h["tensors"][1]["chain"][0])), "is not available"),
    (set_tensor(1, "chain", {"codec": "raw"}), "chain must be a list"),
    (set_tensor(1, "chain", [None]), "step: expected keys"),
    (lambda h: h["tensors"][1]["chain"][0].pop("params"), "step: expected keys"),
    (set_step(0, "params", {"scale": 2}), "codec raw takes no parameters"),
    (set_step(0, "params", []), "params must be an object"),
    (set_step(0, "input", "data"), "reads slot 'data' that is not available"),
    (set_step(0, "input", ""), "input: expected a non-empty string"),
    (set_step(0, "outputs", {"values": "data"}), "codec raw needs outputs \\['data'\\]"),
    (set_step(0, "outputs", {"data": "tensor"}), "slot 'tensor' is produced twice"),
    (set_step(0, "outputs", {"data": "other"}), "slot 'other' is not declared"),
    (set_step(0, "outputs", {"data": 3}), "outputs must map roles to slot names"),
    (set_step(0, "outputs", ["data"]), "outputs must map roles to slot names"),
    (set_tensor(1, "slots", []), "slots must be an object"),
    (set_tensor(1, "slots", {f"s{i}": {"dtype": "uint8", "count": 0} for i in range(33)}), "at most 32 entries"),
    (lambda h: h["tensors"][1]["slots"].update(extra={"dtype": "uint8", "count": 0}),
     "declared slots do not match the encoding chain"),
    (lambda h: h["tensors"][1]["slots"].update({"": {"dtype": "uint8", "count": 0}}),
     "slot name: expected a non-empty string"),
    (set_tensor(1, "slots", {"data": {"dtype": "float32"}}), "slot 'data': expected keys"),
    (set_slot("count", -1), "slot count: expected an integer"),
    (set_slot("count", 2**63), "slot count: expected an integer"),
    (set_slot("count", 6.0), "slot count: expected an integer"),
    (set_slot("count", 5), "length 24 != count x width 20"),       # a declared size smaller than the payload
    (set_slot("count", 7), "length 24 != count x width 28"),
    (set_tensor(1, "streams", {}), "every stream must be used exactly once"),
    (set_tensor(1, "streams", {"other": 2}), "streams must map declared slots"),
    (set_tensor(1, "streams", [2]), "streams must map declared slots"),
], ids=["no-steps", "17-steps", "step-twice", "chain-dict", "step-null", "step-no-params", "raw-params",
        "params-list", "input-data", "input-empty", "wrong-role", "output-tensor", "output-undeclared",
        "output-int", "outputs-list", "slots-list", "33-slots", "extra-slot", "empty-slot-name", "slot-keys",
        "count-negative", "count-2^63", "count-float", "count-smaller", "count-larger", "no-streams",
        "stream-undeclared-slot", "streams-list"])
def test_bad_chains(edit, match):
    assert_rejected(edited(edit=edit), match)


# ------------------------------------------------------------- 10. a tiny file claiming 100 GB

HUNDRED_GB = 25 * 2**30  # float32 elements


def test_tiny_file_claims_100_gb_tensor():
    """shape and slot count agree on 100 GiB, but the stream holds 24 bytes: count x width != length."""
    def edit(h):
        h["tensors"][1]["shape"] = [HUNDRED_GB]
        h["tensors"][1]["slots"]["data"]["count"] = HUNDRED_GB
    data = edited(edit=edit)
    assert len(data) < 20_000
    tracemalloc.start()
    try:
        assert_rejected(data, f"stream 'data' length 24 != count x width {4 * HUNDRED_GB}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_tiny_file_claims_100_gb_shape_only():
    """The shape claims 100 GiB, the chain's slot matches the stored 24 bytes: over the expansion budget."""
    assert_rejected(edited(edit=set_tensor(1, "shape", [HUNDRED_GB])),
                    "slot 'tensor' claims more data than the file can hold")


@pytest.mark.parametrize("count", [HUNDRED_GB, container.MAX_COUNT])
def test_chain_slot_count_huge(count):
    assert_rejected(edited(edit=set_slot("count", count)), f"length 24 != count x width {4 * count}")


def test_stream_ending_mid_element():
    data = valid()
    header, _ = split(data)
    streams = payloads(data)
    streams[1] = streams[1][:-1]  # conv1.weight: 215 bytes of float32
    assert_rejected(assemble(header, streams), "stream 'data' length 215 != count x width 216")


# ---------------------------------------------------------------- 9. stream offsets and lengths

def set_stream(index, key, value):
    def edit(h):
        h["streams"][index][key] = value(h["streams"][index][key]) if callable(value) else value
    return edit


def swap_streams(h):
    s = h["streams"]
    s[1], s[2] = s[2], s[1]


@pytest.mark.parametrize("edit, match", [
    (set_stream(8, "length", lambda n: n + 10**6), "stream 8 runs past the end of the file"),
    (set_stream(8, "length", container.MAX_COUNT), "stream 8 runs past the end of the file"),
    (set_stream(8, "length", 2**64), "stream 8 length: expected an integer"),
    (set_stream(8, "length", -1), "stream 8 length: expected an integer"),
    (set_stream(1, "offset", 10**12), r"stream 1 at offset 1000000000000, expected \d+ \(streams must be contiguous"),
    (set_stream(1, "offset", 2**63), "stream 1 offset: expected an integer"),
    (set_stream(1, "offset", lambda o: o + 1), r"stream 1 at offset \d+, expected"),      # misaligned
    (set_stream(1, "offset", lambda o: o + 64), r"stream 1 at offset \d+, expected"),     # hole
    (lambda h: h["streams"][2].update(offset=h["streams"][1]["offset"]),
     r"stream 2 at offset \d+, expected"),                                                # overlap
    (set_stream(0, "offset", 64), "stream 0 at offset 64, expected 0"),
    (swap_streams, r"stream 1 at offset \d+, expected"),                                  # out of order
    (lambda h: h["streams"].reverse(), r"stream 0 at offset \d+, expected 0"),            # reversed
    (set_stream(1, "length", lambda n: n - 8), "stream 1: missing or non-zero padding"),
    (set_stream(1, "crc32", 2**32), "stream 1 crc32: expected an integer"),
    (set_stream(1, "crc32", -1), "stream 1 crc32: expected an integer"),
    (lambda h: h["streams"][1].pop("crc32"), "stream 1: expected keys"),
    (lambda h: h["streams"][1].update(alignment=2**30), "stream 1: expected keys"),
    (lambda h: h["streams"].__setitem__(1, [1408, 216, 0]), "stream 1: expected keys"),
    (lambda h: h["streams"].pop(), "64 trailing bytes after the last stream"),
    (lambda h: h["streams"].append(dict(h["streams"][-1])), r"stream 9 at offset \d+, expected"),
], ids=["oob", "oob-max-count", "length-2^64", "length-negative", "offset-far", "offset-2^63", "misaligned", "hole",
        "overlap", "first-not-at-0", "swapped", "reversed", "short-length", "crc-2^32", "crc-negative",
        "no-crc", "alignment-field", "entry-list", "table-short", "table-long"])
def test_bad_stream_table(edit, match):
    assert_rejected(edited(edit=edit), match)


def test_hole_in_data_section():
    """A consistent table but 64 unused bytes between two streams (a polyglot hiding place)."""
    data = valid()
    header, section = split(data)
    first = header["streams"][1]["offset"]
    for s in header["streams"][1:]:
        s["offset"] += 64
    section = section[:first] + bytes(64) + section[first:]
    assert_rejected(rebuild(header, section), f"stream 1 at offset {first + 64}, expected {first}")


@pytest.mark.parametrize("tail", [b"\x00", bytes(64), b"PK\x05\x06" + bytes(18)], ids=["1", "64", "zip-eocd"])
def test_trailing_bytes(tail):
    assert_rejected(valid() + tail, r"corrupt|trailing bytes after the last stream")
    header, section = split(valid())
    assert_rejected(rebuild(header, section + tail),
                    f"{len(tail)} trailing bytes after the last stream|stream 8: missing or non-zero padding")


def test_non_zero_padding_between_streams():
    data = bytearray(valid())
    header, _ = split(bytes(data))
    start = container.align(PREAMBLE_SIZE + header_len_of(data))
    s = header["streams"][1]
    data[start + s["offset"] + s["length"]] = 0xAA
    assert_rejected(bytes(data), "stream 1: missing or non-zero padding")


def test_stream_used_twice_or_unused():
    assert_rejected(edited(edit=lambda h: h["tensors"][1]["streams"].update(data=1)),
                    "every stream must be used exactly once")
    assert_rejected(edited(edit=lambda h: h.update(graph_stream=1)), "every stream must be used exactly once")
    data = valid()
    header, _ = split(data)
    assert_rejected(assemble(header, payloads(data) + [b"unused"]), "every stream must be used exactly once")
    assert_rejected(assemble(header, payloads(data) + [b""]), "every stream must be used exactly once")


@pytest.mark.parametrize("index", [9, 2**31, -1, "1", 1.0, None])
def test_stream_index_out_of_range(index):
    assert_rejected(edited(edit=lambda h: h["tensors"][1]["streams"].update(data=index)), "stream index")


# --------------------------------------------------------------------------- 11/12. checksums

def test_crc_mismatch_in_one_tensor_stream_is_reported_on_decode():
    data = bytearray(valid())
    header, _ = split(bytes(data))
    start = container.align(PREAMBLE_SIZE + header_len_of(data))
    data[start + header["streams"][3]["offset"] + 100] ^= 0x04  # conv2.weight
    pkg = files.read_dcz(bytes(data))  # lazy: the streams are checked when first used
    by_stream = {header["tensors"][i]["streams"]["data"]: t for i, t in enumerate(pkg.tensors)}
    for index, tensor in by_stream.items():
        if index == 3:
            with pytest.raises(DczError, match="CRC-32 mismatch in a data stream"):
                tensor.decode()
            with pytest.raises(DczError, match="CRC-32 mismatch"):  # still refused the second time
                tensor.decode()
        else:
            tensor.decode()


def test_crc_field_mismatch_is_reported_on_decode():
    pkg = files.read_dcz(edited(edit=set_stream(3, "crc32", lambda c: c ^ 1)))
    with pytest.raises(DczError, match="CRC-32 mismatch"):
        pkg.tensor("conv2.weight").decode()


def test_crc_mismatch_in_graph_stream_is_reported_on_read():
    data = bytearray(valid())
    start = container.align(PREAMBLE_SIZE + header_len_of(data))
    data[start + 10] ^= 0x01
    with pytest.raises(DczError, match="CRC-32 mismatch in a data stream"):
        files.read_dcz(bytes(data))


def test_crc_mismatch_in_last_byte():
    data = bytearray(valid())
    data[-1] ^= 0x01  # the last stream is 40 bytes, so this is its padding
    assert_rejected(bytes(data), "stream 8: missing or non-zero padding")

    # The last payload byte of the file
    data = bytearray(valid())
    header, _ = split(bytes(data))
    last = header["streams"][-1]
    data[container.align(PREAMBLE_SIZE + header_len_of(data)) + last["offset"] + last["length"] - 1] ^= 0x01
    pkg = files.read_dcz(bytes(data))
    with pytest.raises(DczError, match="CRC-32 mismatch"):
        pkg.tensors[-1].decode()

    # A file whose very last byte is stream data: swap the last two tensors' streams so the
    # 1280-byte stream (a multiple of 64, no padding) ends the file.
    data = valid()
    header, _ = split(data)
    streams = payloads(data)
    assert len(streams[7]) % 64 == 0 and header["tensors"][6]["streams"]["data"] == 7
    streams[7], streams[8] = streams[8], streams[7]
    header["tensors"][6]["streams"]["data"], header["tensors"][7]["streams"]["data"] = 8, 7
    good = assemble(header, streams)
    read_all(good)
    bad = bytearray(good)
    bad[-1] ^= 0x80
    pkg = files.read_dcz(bytes(bad))
    with pytest.raises(DczError, match="CRC-32 mismatch"):
        pkg.tensors[6].decode()


# ---------------------------------------------- 11. codec payloads (of the prune/share/Huffman recipe)

class Site:
    """A compressed file opened for editing at the first step of one codec: edit the header and
    the payloads of that step's tensor, then `build()` lays the file out with the table fixed up."""

    def __init__(self, codec_name: str, stored: str | None = None, base: str | None = None,
                 tensor: str | None = None):
        """The first `codec_name` step (whose output role `stored` is a stream, when given; of
        the tensor named `tensor`, when given)."""
        self.base = base or (HUFFMAN_BASE if codec_name == "huffman" else "lenet5" + COMPRESSED)
        data = valid(self.base)
        self.header, _ = split(data)
        self.streams = payloads(data)
        for t in self.header["tensors"]:
            if tensor is not None and t["name"] != tensor:
                continue
            for step in t["chain"]:
                if step["codec"] == codec_name and (stored is None or step["outputs"][stored] in t["streams"]):
                    self.tensor, self.step = t, step
                    return
        raise AssertionError(f"the compressed sample has no {codec_name} step storing {stored}")

    @property
    def name(self) -> str:
        return self.tensor["name"]

    def slot(self, role: str) -> str:
        return self.step["outputs"][role]

    def array(self, role: str) -> np.ndarray:
        slot = self.slot(role)
        dtype = numpy_dtype(self.tensor["slots"][slot]["dtype"])
        return np.frombuffer(self.streams[self.tensor["streams"][slot]], dtype=dtype).copy()

    def set(self, role: str, values) -> "Site":
        """Store `values` (array or bytes) as the role's stream; its declared count follows."""
        slot = self.slot(role)
        spec = self.tensor["slots"][slot]
        raw = values if isinstance(values, bytes) else np.asarray(values, numpy_dtype(spec["dtype"])).tobytes()
        self.streams[self.tensor["streams"][slot]] = raw
        spec["count"] = len(raw) // numpy_dtype(spec["dtype"]).itemsize
        return self

    def build(self) -> bytes:
        return assemble(self.header, self.streams)


def test_codec_sites_are_valid():
    """Every codec is present in the compressed sample, and `Site` rebuilds it byte for byte."""
    for codec_name in ("sparse", "codebook", "bitpack", "huffman"):
        site = Site(codec_name)
        assert site.build() == valid(site.base)
    assert np.count_nonzero(Site("huffman").array("lengths")) >= 3
    assert len(Site("huffman").array("blocks")) >= 2


def huffman_edit(role: str, edit):
    """A file whose first Huffman step has `edit(array)` as its `role` stream (count fixed up)."""
    def make():
        site = Site("huffman")
        return site.set(role, edit(site.array(role))).build()
    return make


def with_value(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def first_used(a):
    return np.flatnonzero(a)[0]


def shift_bits(a):
    """Move one bit from block 0 to block 1: the total still matches the code stream."""
    a = a.astype(np.int64)
    a[0] += 1
    a[1] -= 1
    return a.astype(np.uint16)


@pytest.mark.parametrize("make, match", [
    (huffman_edit("lengths", lambda a: with_value(a, first_used(a), 17)), "code length 17 over the 16-bit limit"),
    (huffman_edit("lengths", lambda a: with_value(a, first_used(a), 255)), "code length 255 over the 16-bit"),
    (huffman_edit("lengths", lambda a: np.where(a > 0, 1, 0)), "do not form a complete prefix code"),
    (huffman_edit("lengths", lambda a: with_value(a, first_used(a), a[first_used(a)] + 1)),
     "do not form a complete prefix code"),
    (huffman_edit("lengths", np.zeros_like), "code-length table is empty"),
    (huffman_edit("lengths", lambda a: a[:0]), "code-length table has the wrong type or size"),
    (huffman_edit("lengths", lambda a: np.concatenate((a, np.zeros(300, a.dtype)))), "wrong type or size"),
    (huffman_edit("blocks", lambda a: with_value(a, 0, a[0] + 1)), "block lengths do not add up|corrupt huffman"),
    (huffman_edit("blocks", shift_bits), "corrupt huffman stream"),
    (huffman_edit("blocks", lambda a: a[:-1]), "block table does not match count / block"),
    (huffman_edit("code", lambda a: a[:-1]), "do not add up|too short"),                    # ends mid-symbol
    (huffman_edit("code", lambda a: a[:0]), "too short for its symbol count"),
    (huffman_edit("code", np.zeros_like), "corrupt huffman stream|do not add up"),
    (huffman_edit("code", lambda a: a ^ 0xFF), "corrupt huffman stream|do not add up|pad bits are not zero"),
], ids=["length-17", "length-255", "over-subscribed", "incomplete", "all-zero", "no-lengths", "alphabet-over-256",
        "blocks-sum", "blocks-shifted", "blocks-short", "code-short", "code-empty", "code-zeros", "code-inverted"])
def test_hostile_huffman(make, match):
    assert_rejected(make(), match)


@pytest.mark.parametrize("params, match", [
    ({"block": 0}, "huffman needs params"),
    ({"block": 4096}, "huffman needs params"),
    ({"block": "16"}, "huffman needs params"),
    ({"block": 16, "max_length": 20}, "huffman needs params"),
    ({}, "huffman needs params"),
], ids=["block-0", "block-4096", "block-str", "extra", "none"])
def test_hostile_huffman_params(params, match):
    site = Site("huffman")
    site.step["params"] = params
    assert_rejected(site.build(), match)


def test_codebook_index_past_codebook():
    site = Site("codebook")
    size = len(site.array("codebook"))
    site.set("indices", with_value(site.array("indices"), -1, 255))
    assert size < 255
    assert_rejected(site.build(), f"codebook index 255 >= codebook size {size}")


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.set("codebook", b""), "codebook must hold 1..2\\^bits values"),                 # empty codebook
    (lambda s: s.step["params"].update(bits=4), "codebook must hold"),                          # > 2^bits entries
    (lambda s: s.step["params"].update(bits=0), "codebook needs params"),
    (lambda s: s.step["params"].update(bits=17), "codebook needs params"),
    (lambda s: s.step["params"].update(bits=12), "codebook indices have the wrong type"),       # uint16 expected
    (lambda s: s.set("indices", s.array("indices")[:-1]), "codebook indices have the wrong type or count"),
], ids=["empty", "over-2^bits", "bits-0", "bits-17", "index-dtype", "index-count"])
def test_hostile_codebook(edit, match):
    site = Site("codebook")
    edit(site)
    assert_rejected(site.build(), match)


def test_sparse_gaps_summing_past_the_tensor():
    site = Site("sparse", stored="gaps")
    numel = int(np.prod(site.tensor["shape"], dtype=object))
    site.set("gaps", with_value(site.array("gaps"), -1, 255))
    assert_rejected(site.build(), f"sparse entries end at .*, tensor has {numel} positions")


def shorten_slot(site, role):
    site.tensor["slots"][site.slot(role)]["count"] -= 1


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.step["params"].update(index_bits=0), "sparse needs params"),
    (lambda s: s.step["params"].update(index_bits=17), "sparse needs params"),
    (lambda s: s.step["params"].update(index_bits=True), "sparse needs params"),
    (lambda s: s.step["params"].update(index_bits=1), "entries cannot cover .* positions"),    # gaps sum short
    (lambda s: s.step["params"].update(index_bits=2), "sparse gap over 2 bits|cannot cover"),  # gap > index bits
    (lambda s: shorten_slot(s, "values"), "gaps/values have the wrong type or differ in length"),
], ids=["bits-0", "bits-17", "bits-bool", "cannot-cover", "gap-over-bits", "values-short"])
def test_hostile_sparse(edit, match):
    # conv2: its values go on into a codebook, so a short `values` count reaches the sparse check
    # (conv1's few values are stored flat, where the stream length check comes first)
    site = Site("sparse", stored="gaps", tensor="conv2.weight")
    edit(site)
    assert_rejected(site.build(), match)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.step["params"].update(bits=9), "bitpack cannot produce uint8 at 9 bits"),
    (lambda s: s.step["params"].update(bits=s.step["params"]["bits"] + 1), "stream length does not match count x bits"),
    (lambda s: s.step["params"].update(bits=0), "bitpack needs params"),
    (lambda s: s.set("packed", s.array("packed")[:-1]), "stream length does not match count x bits"),
], ids=["9-bits-into-uint8", "bits+1", "bits-0", "packed-short"])
def test_hostile_bitpack(edit, match):
    site = Site("bitpack")
    edit(site)
    assert_rejected(site.build(), match)


def huffman_file(tensors: int, block: int) -> bytes:
    """`tensors` uint8 tensors of one element, each Huffman-coded (1 bit) with the given block."""
    from deepcompress_cli.onnx_io import from_onnx
    from deepcompress_cli.tensors import Step

    inits = [helper.make_tensor(f"u{i}", TensorProto.UINT8, [1], [7]) for i in range(tensors)]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [], [], initializer=inits)
    pkg = from_onnx(helper.make_model(graph), None)
    for t in pkg.tensors:
        t.chain = [Step("huffman", "tensor", {r: r for r in ("lengths", "blocks", "code")}, {"block": block})]
        t.slots = {"lengths": Slot("uint8", 8), "blocks": Slot("uint16", 1), "code": Slot("uint8", 1)}
        t.streams = {"lengths": Stream.of(np.array([0] * 7 + [1], np.uint8)),
                     "blocks": Stream.of(np.array([1], np.uint16)), "code": Stream.of(np.array([0], np.uint8))}
    return dcz_bytes(pkg)


def test_huffman_file_is_valid():
    pkg = read_all(huffman_file(3, 16))
    assert [int(t.decode()[0]) for t in pkg.tensors] == [7, 7, 7]


def test_huffman_block_cannot_multiply_decode_time():
    """Decoding takes `block` numpy steps whatever the symbol count: a block far larger than the
    stream (2048 for 1 symbol; the writer uses 16) would make a small file slow to read."""
    header, section = split(huffman_file(50, 16))
    for t in header["tensors"]:  # (the writer refuses to write such a file: edit a valid one)
        t["chain"][0]["params"]["block"] = 2048
    assert_rejected(rebuild(header, section), "too large")


def test_chain_expansion_budget():
    """A sparse chain may expand (that is what compression does) but not past the reader's budget:
    shape [2^32] float32 from a few dozen 16-bit sparse entries claims 16 GiB from ~200 bytes."""
    site = Site("sparse", stored="gaps")
    site.tensor["shape"] = [2**32]
    site.step["params"]["index_bits"] = 16
    assert_rejected(site.build(), "claims more data than the file can hold|sparse gaps/values have the wrong type")


# ------------------------------------------------------------------------- 14. embedded graph

def with_graph(graph_bytes: bytes) -> bytes:
    data = valid()
    header, _ = split(data)
    return assemble(header, [graph_bytes] + payloads(data)[1:])


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999])
def test_truncated_graph(fraction):
    graph = payloads(valid())[0]
    assert_rejected(with_graph(graph[:int(len(graph) * fraction)]),
                    "not an ONNX model|missing from the tensor table|not used by the stored graph")


@pytest.mark.parametrize("graph", [
    b"\xff" * 64,
    np.random.default_rng(0).bytes(1000),
    np.random.default_rng(1).bytes(1353),
    b"\x08\x07",                     # ir_version 7 and nothing else
    b"\x0a" + b"\xff" * 10,          # a length-delimited field with an absurd length
    b"\x3a\x80\x80\x80\x80\x10",     # graph field claiming 4 GiB
    b"\x3a" + b"\x02\x0a\x00" * 50,
], ids=["ff", "random", "random-same-size", "no-graph", "huge-varint", "4gib-field", "nested"])
def test_garbage_graph(graph):
    assert_rejected(with_graph(graph), "not an ONNX model")


def protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    def varint(n):
        out = bytearray()
        while True:
            out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_graph_nested_too_deep():
    """ModelProto(ir_version=7, graph=G), G = Graph(node=If(then_branch=G')) nested 300 deep: the
    protobuf parser's depth limit must turn into a DczError, not a RecursionError or a crash."""
    graph = protobuf_field(1, protobuf_field(4, b"Identity"))  # GraphProto.node{op_type}
    for _ in range(300):
        attribute = protobuf_field(1, b"then_branch") + b"\xa0\x01\x05" + protobuf_field(6, graph)  # type=GRAPH
        graph = protobuf_field(1, protobuf_field(4, b"If") + protobuf_field(5, attribute))
    model = b"\x08\x07" + protobuf_field(7, graph)
    assert_rejected(with_graph(model), "not an ONNX model")


def graph_edit(edit):
    pkg = package()
    edit(pkg)
    return dcz_bytes(pkg)


def rename_placeholder(pkg, name, new):
    t = graph_of(pkg, name)
    for e in t.external_data:
        if e.key == "dcz_tensor":
            e.value = new


def remove_initializer(pkg, name):
    graph = pkg.graph.graph
    keep = [t for t in graph.initializer if _placeholder_name(t) != name]
    del graph.initializer[:]
    graph.initializer.extend(keep)


@pytest.mark.parametrize("edit, match", [
    (lambda p: rename_placeholder(p, "conv1.weight", "conv9.weight"),
     "the stored graph's tensor 'conv9.weight' is missing from the tensor table"),
    (lambda p: rename_placeholder(p, "conv1.bias", "conv1.weight"), "'conv1.weight' is missing .* or repeated"),
    (lambda p: remove_initializer(p, "fc2.bias"), "1 table tensors are not used by the stored graph"),
    (lambda p: graph_of(p, "conv1.weight").dims.__setitem__(0, 7), "disagree on shape or type"),
    (lambda p: graph_of(p, "conv1.weight").dims.append(1), "disagree on shape or type"),
    (lambda p: setattr(graph_of(p, "conv1.bias"), "data_type", TensorProto.DOUBLE), "disagree on shape or type"),
    (lambda p: p.graph.graph.initializer.append(external_tensor("evil")),
     "the stored graph refers to external"),
    (lambda p: p.graph.graph.initializer.append(external_tensor("evil", "a/../../x")),
     "the stored graph refers to external"),
    (lambda p: p.graph.graph.node.append(helper.make_node("Constant", [], ["c"], value=external_tensor("c"))),
     "the stored graph refers to external"),
    (lambda p: setattr(p.graph, "ir_version", 0), "not an ONNX model \\(no IR version"),
    (lambda p: p.graph.graph.ClearField("node"), "not an ONNX model \\(no IR version or empty graph\\)"),
], ids=["unknown-name", "repeated-name", "unused-table-tensor", "dims", "ndim", "data-type", "external-abs",
        "external-dotdot", "external-constant", "ir-version-0", "no-nodes"])
def test_graph_disagrees_with_table(edit, match):
    assert_rejected(graph_edit(edit), match)


def test_table_name_unknown_to_graph():
    assert_rejected(edited(edit=set_tensor(0, "name", "conv0.weight")),
                    "'conv1.weight' is missing from the tensor table")


def test_table_shape_disagrees_with_graph():
    def edit(h):
        h["tensors"][1]["shape"] = [3, 2]
    assert_rejected(edited(edit=edit), "tensor 'conv1.bias': graph and tensor table disagree on shape")


@pytest.mark.parametrize("where", ["attribute", "sparse_initializer", "function"])
def test_external_reference_anywhere_in_graph(where):
    """Not only initializers and Constant values: a TensorProto with external data anywhere in the
    stored graph (ConstantOfShape's `value`, a sparse initializer, a model-local function) is a
    reference to a file outside the .dcz (regression: these were accepted)."""
    def edit(pkg):
        g = pkg.graph
        if where == "attribute":
            g.graph.node.append(helper.make_node("ConstantOfShape", ["shape"], ["filled"],
                                                 value=external_tensor("v")))
        elif where == "sparse_initializer":
            sparse = g.graph.sparse_initializer.add()
            sparse.values.CopyFrom(external_tensor("sparse"))
            sparse.indices.CopyFrom(helper.make_tensor("idx", TensorProto.INT64, [4], [0, 1, 2, 3]))
            sparse.dims.extend([8])
        else:
            f = g.functions.add()
            f.name, f.domain = "f", "evil"
            f.node.append(helper.make_node("Constant", [], ["c"], value=external_tensor("c")))
    data = graph_edit(edit)
    try:
        read_all(data)
    except DczError as e:
        assert "external" in str(e)
    else:
        raise AssertionError("a .dcz whose graph references /etc/passwd was accepted")


@pytest.mark.parametrize("shape", [
    (0, container.MAX_COUNT), (container.MAX_COUNT, 0), (0, container.MAX_COUNT, container.MAX_COUNT),
    (0, 2**62), (0,) + (2**20,) * 31,
], ids=["0xmax", "maxx0", "0xmaxxmax", "0x2^62", "0x31dims"])
def test_zero_sized_tensor_with_huge_dims(shape):
    """A zero dim makes the element count 0, but numpy still refuses shapes whose other dims
    overflow (`ValueError: array is too big`): the reader must refuse them, or decode them
    (regression: [0, 2^62] was accepted and decode() raised ValueError)."""
    pkg = package()
    t = pkg.tensors[1]  # conv1.bias
    t.shape = shape
    t.slots = {"data": Slot("float32", 0)}
    t.streams = {"data": Stream.of(np.zeros(0, np.float32))}
    placeholder = graph_of(pkg, t.name)
    del placeholder.dims[:]
    placeholder.dims.extend(shape)
    try:
        decoded = read_all(dcz_bytes(pkg)).tensor(t.name).decode()
    except DczError as e:
        assert re.search("too many elements|dim: expected an integer", str(e)), str(e)
    else:
        assert decoded.shape == shape and decoded.size == 0


def test_zero_sized_tensor_is_fine():
    pkg = package()
    t = pkg.tensors[1]
    t.shape = (0, 6)
    t.slots = {"data": Slot("float32", 0)}
    t.streams = {"data": Stream.of(np.zeros(0, np.float32))}
    placeholder = graph_of(pkg, t.name)
    del placeholder.dims[:]
    placeholder.dims.extend(t.shape)
    assert read_all(dcz_bytes(pkg)).tensor("conv1.bias").decode().shape == (0, 6)


# ---------------------------------------------------------------------- 14. fail fast and cheap

@pytest.mark.parametrize("raw, match", [
    (b'"' + b'\\"' * (32 * 1024), "not valid JSON"),          # unterminated string of escaped quotes
    (b'{"a":' + b'"\\"[{' * (16 * 1024), "not valid JSON"),    # brackets inside a broken string
    (b"[" * (1 << 20), "nested deeper than|not valid JSON"),
    (b'{"a":' + b'[1,' * (340 * 1024), "nested deeper than|not valid JSON"),
], ids=["escaped-quotes", "brackets-in-string", "1M-brackets", "1M-lists"])
def test_header_rejected_in_linear_time(raw, match):
    """64 KiB - 1 MiB hostile headers are refused in well under a second (regression: the old depth
    pre-scan, re.sub(rb'"(?:[^"\\\\]|\\\\.)*"'), rescanned to the end of the header from every
    escaped quote: O(n^2), 32 KiB took ~2 s and a 1 MiB header ~30 min)."""
    data = rebuild(None, raw=raw)
    start = time.perf_counter()
    with pytest.raises(DczError, match=match):
        files.read_dcz(data)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{len(data)}-byte file took {elapsed:.2f} s to reject"


def test_error_messages_are_one_line_control_free():
    """Values from the file are quoted in messages, so the one-line error cannot be split or styled."""
    for edit in (set_tensor(1, "name", "a\nb"), set_tensor(1, "dtype", "x\n\x1b[2J"),
                 set_step(0, "codec", "z\nstd"), lambda h: h.update(extra="\n")):
        with pytest.raises(DczError) as e:
            read_all(edited(edit=edit))
        assert str(e.value).isprintable(), str(e.value)


@pytest.mark.parametrize("value", ["1\ndeepcompress: ok", "\x1b[2J\x1b[H", ["\n"]], ids=["newline", "ansi", "list"])
def test_int_field_string_is_quoted_in_the_error(value):
    """Regression: `_int` used to put str(value) in the message unquoted, so a newline or an ANSI
    escape from the file reached stderr raw."""
    with pytest.raises(DczError) as e:
        read_all(edited(edit=lambda h: h.update(encoding_version=value)))
    assert str(e.value).isprintable(), repr(str(e.value))


def test_int_field_string_is_one_line_on_the_cli(cli, tmp_path):
    # (click strips ANSI escapes when stderr is not a terminal, so only the newline shows here)
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(edited(edit=lambda h: h.update(encoding_version="1\ndeepcompress: ok")))
    assert_one_line_error(cli("info", bad))


# ------------------------------------------------------------------------------ property tests
#
# Every case: `container.read` then `decode()` of every tensor either succeeds or raises DczError;
# any other exception fails the test.  Peak traced Python memory (tracemalloc sees numpy's buffers)
# must stay below MEMORY_PER_BYTE * len(data) + MEMORY_BASE:
#   - the reader keeps memoryviews of the file; it copies the header (bytes + decoded str, ~2x) and
#     the graph stream (1x); parsed JSON costs at most ~30 bytes per header byte (an empty list or
#     dict per 2-3 characters): 64x per file byte covers that with margin;
#   - decoded tensors are pinned by the graph's dims to the sample models' sizes (< 1 MiB each,
#     freed one by one), codec scratch (a Huffman table is <= 640 KiB) is per tensor: 16 MiB covers
#     that and the interpreter's own noise.
# A reader that trusted a declared size (a 100 GB tensor in a 17 KB file) would blow this by orders
# of magnitude.  Each case must also finish within SECONDS_PER_CASE (a hang guard; a case takes ms).

MEMORY_PER_BYTE = 64
MEMORY_BASE = 16 * MiB
SECONDS_PER_CASE = 10.0
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def survives(data: bytes, record=event) -> None:
    limit = MEMORY_PER_BYTE * len(data) + MEMORY_BASE
    tracemalloc.start()
    start = time.perf_counter()
    try:
        try:
            read_all(data)
            record("accepted")
        except DczError as e:
            assert str(e), "empty error message"
            # which check caught it, for --hypothesis-show-statistics
            record("DczError: " + ascii(re.sub(r"(?<!\w)'[^']*'|\d+|got .*", "_", str(e)))[1:50])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert peak < limit, f"peak {peak} bytes for a {len(data)}-byte file (limit {limit})"
    assert elapsed < SECONDS_PER_CASE, f"{elapsed:.1f} s for a {len(data)}-byte file"


BASES = st.sampled_from(ALL_BASES)


BINARY_CHUNKS = st.binary(min_size=1, max_size=64)
JSON_CHUNKS = st.one_of(BINARY_CHUNKS, st.sampled_from([
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"0", b"-1", b"1e999", b"18446744073709551616", b"null",
    b"true", b"NaN", b"-Infinity", b'\\u0000', b'\\ud800', b'"\\ud800"', b"[[[[[[[[[", b'"":', b'"x":1,',
    b'"tensor"', b'"raw"', b'"data"', b'"codebook"', b'"huffman"', b'"sparse"', b'"bitpack"', b"\xed\xa0\x80",
]))


@st.composite
def byte_edits(draw, buf: bytearray, focus: int, chunks=BINARY_CHUNKS, max_ops: int = 6) -> bytearray:
    """1..max_ops flips, overwrites, insertions or deletions; about half of them in [0, focus)."""
    for _ in range(draw(st.integers(1, max_ops))):
        if not buf:
            break
        hi = min(focus, len(buf)) if draw(st.booleans()) else len(buf)
        pos = draw(st.integers(0, max(hi - 1, 0)))
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete"]))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(chunks)[:16]
            buf[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            buf[pos:pos] = draw(chunks)
        else:
            del buf[pos:pos + draw(st.integers(1, 128))]
    return buf


@st.composite
def damaged_files(draw) -> bytes:
    data = valid(draw(BASES))
    mode = draw(st.sampled_from(["mutate", "truncate", "splice"]))
    if mode == "mutate":
        focus = container.align(PREAMBLE_SIZE + header_len_of(data)) + 64  # preamble + header
        data = bytes(draw(byte_edits(bytearray(data), focus)))
    elif mode == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    else:
        other = valid(draw(BASES))
        data = data[:draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))):]
    return fix_crcs(data) if draw(st.booleans()) else data


@settings(FUZZ, max_examples=4000)
@given(damaged_files())
def test_fuzz_damaged_files(data):
    """Byte flips/overwrites/insertions/deletions, truncations and splices, raw or with CRCs fixed up."""
    survives(data)


HOSTILE_VALUES = st.one_of(
    st.sampled_from([
        -1, 0, 1, 7, 63, 64, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63,
        2**64 - 1, 2**64, -2**63, 10**30, 25 * 2**30, True, False, None, 0.5, -0.0, 1e300,
        float("inf"), float("nan"), "", "x" * 5000, "\ud800", "\x00", "\n\x1b[0m", "raw", "tensor", "data",
        "float32", "float64", "uint8", "conv", [], {}, [0], [2**32, 2**32], [0, 2**62], [-1], [1] * 33,
        [[[[[[[1]]]]]]], {"data": 0}, {"codec": "raw"},
    ]),
    st.integers(),
    st.text(max_size=12),
    st.lists(st.integers(-1, 2**64), max_size=40),
    st.dictionaries(st.text(max_size=6), st.integers(-1, 2**40), max_size=3),
    st.recursive(st.integers(-2, 2**63) | st.text(max_size=3), lambda c: st.lists(c, max_size=3), max_leaves=8),
)


def json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from json_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from json_paths(value, (*prefix, i))


@functools.lru_cache(maxsize=None)
def header_paths(name: str) -> tuple:
    return tuple(p for p in json_paths(split(valid(name))[0]) if p)


def walk(obj, path):
    for key in path:
        obj = obj[key]
    return obj


@st.composite
def json_edits(draw, header: dict, name: str) -> dict:
    """1-3 edits at paths of the parsed header: replace a value with a hostile one, delete, add a
    key, duplicate or swap list entries."""
    paths = header_paths(name)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        try:
            parent = walk(header, path[:-1])
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
        if not isinstance(parent, (dict, list)):
            continue  # an earlier edit replaced a container by a string (indexable, not writable)
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "duplicate", "swap"]))
        if op == "replace":
            parent[key] = draw(HOSTILE_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "alignment", "offset", "name", "data", ""]))] = draw(HOSTILE_VALUES)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(parent[key]))
        elif op == "swap" and isinstance(parent, list):
            other = draw(st.integers(0, len(parent) - 1))
            parent[key], parent[other] = parent[other], parent[key]
    return header


@st.composite
def edited_headers(draw) -> bytes:
    name = draw(BASES)
    header, section = split(valid(name))
    if draw(st.booleans()):
        raw = bytearray(encode_header(draw(json_edits(header, name))))
    else:  # text-level damage of the JSON itself, then length, padding and CRCs fixed up
        raw = draw(byte_edits(bytearray(encode_header(header)), 1 << 30, JSON_CHUNKS, max_ops=3))
    return rebuild(None, section, raw=raw)


@settings(FUZZ, max_examples=4000)
@given(edited_headers())
def test_fuzz_header(data):
    """JSON-value edits at random header paths and byte edits of the JSON text, with CRCs fixed up,
    so every case reaches the JSON parser and the table validation."""
    survives(data)


@st.composite
def edited_streams(draw) -> bytes:
    name = draw(BASES)
    data = valid(name)
    header, _ = split(data)
    streams = payloads(data)
    index = draw(st.sampled_from([0, 0, 0, *range(len(streams))]))  # a third of them: the ONNX graph
    stream = bytearray(streams[index])
    op = draw(st.sampled_from(["flip", "flip", "edit", "edit", "truncate", "random", "extend"]))
    if op == "flip":  # same length: passes the count x width check, reaches the codec or protobuf
        for _ in range(draw(st.integers(1, 4))):
            if stream:
                stream[draw(st.integers(0, len(stream) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif op == "edit":
        stream = draw(byte_edits(stream, 256))
    elif op == "truncate":
        stream = stream[:draw(st.integers(0, max(len(stream) - 1, 0)))]
    elif op == "random":
        stream = bytearray(draw(st.binary(max_size=2048)))
    else:
        stream += draw(BINARY_CHUNKS)
    streams[index] = bytes(stream)
    if draw(st.integers(0, 3)):  # mostly: the slot's declared count follows the new length
        for t in header["tensors"]:
            for slot, k in t["streams"].items():
                width = numpy_dtype(t["slots"][slot]["dtype"]).itemsize
                if k == index and len(stream) % width == 0:
                    t["slots"][slot]["count"] = len(stream) // width
    return assemble(header, streams, fix_crcs=draw(st.integers(0, 4)) > 0)


@settings(FUZZ, max_examples=3000)
@given(edited_streams())
def test_fuzz_streams(data):
    """Payload edits (often of the embedded ONNX graph) with the stream table rebuilt and, mostly, the
    slot counts following, so they reach protobuf parsing, the graph/table cross-check, the codec
    checks and decoders; 1 in 5 keeps the old CRCs so the lazy per-stream check is exercised."""
    survives(data)


# ----------------------------------------------------------------------------------- the CLI

def corrupt(kind: str) -> bytes:
    data = bytearray(valid())
    start = container.align(PREAMBLE_SIZE + header_len_of(data))
    header, _ = split(bytes(data))
    if kind == "header-crc":
        data[PREAMBLE_SIZE + 3] ^= 0x01
    elif kind == "truncated":
        del data[len(data) // 2:]
    elif kind == "tensor-crc":  # found only when the tensor is decoded (info and export both decode)
        data[start + header["streams"][5]["offset"] + 17] ^= 0x10
    elif kind == "graph":
        return with_graph(b"\xff" * 100)
    elif kind == "huge-tensor":
        return edited(edit=lambda h: h["tensors"][1]["slots"]["data"].update(count=HUNDRED_GB))
    elif kind == "huffman":  # CRCs right, the Huffman code stream zeroed: found while decoding
        return huffman_edit("code", np.zeros_like)()
    return bytes(data)


@pytest.mark.parametrize("kind", ["header-crc", "truncated", "tensor-crc", "graph", "huge-tensor", "huffman"])
def test_cli_rejects_corrupt_file(cli, tmp_path, kind):
    """`info` and `export` on a corrupt file: exit 2, one `deepcompress: error:` line, no output file
    and no temp file left in the folder."""
    bad = tmp_path / "BAD.dcz"
    bad.write_bytes(corrupt(kind))
    result = cli("info", bad)
    assert_one_line_error(result)
    assert result.stdout == ""

    out = tmp_path / "out.onnx"
    result = cli("export", bad, "-o", out)
    assert_one_line_error(result)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["BAD.dcz"], "export left files behind"


# ----------------------------------------------------------------- the fuzzer's corpus, replayed

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*.dcz"))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_fuzz_corpus(path):
    """Inputs kept by benchmarks/fuzz_reader.py (crashers once found, and one per distinct error):
    each is rejected with a DczError (or read cleanly) within the time and memory bounds."""
    survives(path.read_bytes(), record=lambda _: None)
