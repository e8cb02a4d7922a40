"""Format 1.1: the compact layout (zlib header and graph, packed small streams), optional fields of
newer minor versions, `metadata`, zero pad bits, little-endian streams, the writer's own checks,
and the module layering behind them.  Files are generated here; 1.0 files come from the 1.0 writer
path (`compact=False`), which the hostile-file tests (test_container_hostile.py) edit byte by byte.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SAMPLES
from deepcompress_cli import container, files
from deepcompress_cli.codecs import bitpack, huffman
from deepcompress_cli.errors import DczError
from deepcompress_cli.tensors import Slot, Step, Stream

LENET5 = SAMPLES / "lenet5.onnx"
PRE = container.PREAMBLE_SIZE
ALL_FLAGS = container.FLAG_HEADER_ZLIB | container.FLAG_GRAPH_ZLIB | container.FLAG_PACKED
MiB = 1 << 20


def package(metadata=None):
    pkg = files.read_model(str(LENET5))
    pkg.metadata = dict(metadata or {})
    return pkg


def write(pkg, **kwargs) -> bytes:
    out = io.BytesIO()
    assert container.write(pkg, out, **kwargs) == len(out.getvalue())
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def compressed() -> bytes:
    """lenet5 through the whole compress recipe (every codec), in the 1.1 layout."""
    from deepcompress_cli.cli import main

    result = CliRunner().invoke(main, ["-q", "compress", str(LENET5), "-o", "-", "--sparsity", "conv=0.6,fc=0.9"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


def parts(data: bytes) -> tuple[int, int, dict, bytes]:
    """(minor, flags, parsed header, data section) of a valid file of either layout."""
    _, _, minor, flags, header_len, _, _ = container.PREAMBLE.unpack_from(data)
    raw = data[PRE:PRE + header_len]
    text = zlib.decompress(raw) if flags & container.FLAG_HEADER_ZLIB else raw
    return minor, flags, json.loads(text), data[container.align(PRE + header_len):]


def build(header, section: bytes, *, minor: int = 1, flags: int = ALL_FLAGS, text: bytes | None = None,
          stored: bytes | None = None) -> bytes:
    """A file from a header (or its JSON `text`, or the `stored` header bytes), CRCs right."""
    if text is None:
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    if stored is None:
        stored = zlib.compress(text, 9) if flags & container.FLAG_HEADER_ZLIB else text
    head = container.PREAMBLE.pack(container.MAGIC, 1, minor, flags, len(stored), zlib.crc32(stored), 0)[:-4]
    end = PRE + len(stored)
    return head + struct.pack("<I", zlib.crc32(head)) + stored + bytes(container.align(end) - end) + section


def graph_payload(data: bytes) -> bytes:
    _, _, header, section = parts(data)
    s = header["streams"][header["graph_stream"]]
    return section[s["offset"]:s["offset"] + s["length"]]


def with_graph(data: bytes, stored_graph: bytes) -> bytes:
    """`data` with its (first, 1.1) graph stream replaced by `stored_graph`, the table laid out again."""
    minor, flags, header, section = parts(data)
    old = header["streams"]
    payloads = [stored_graph] + [section[s["offset"]:s["offset"] + s["length"]] for s in old[1:]]
    table, body, end = [], b"", 0
    for p in payloads:
        start = container.stream_start(end, len(p), flags)
        body += bytes(start - end) + p
        table.append({"offset": start, "length": len(p), "crc32": zlib.crc32(p)})
        end = start + len(p)
    header["streams"] = table
    return build(header, body + bytes(container.data_end(end, flags) - end), minor=minor, flags=flags)


def read_all(data):
    pkg = files.read_dcz(data)
    for t in pkg.tensors:
        t.decode()
    return pkg


def rejected(data, match: str):
    with pytest.raises(DczError, match=match):
        read_all(data)


def values(pkg) -> dict:
    return {t.name: t.decode().tobytes() for t in pkg.tensors}


# ------------------------------------------------------------------------------ the layout

def test_helpers_rebuild_the_writer_byte_for_byte():
    for data in (write(package()), compressed(), write(package(), compact=False)):
        minor, flags, header, section = parts(data)
        assert build(header, section, minor=minor, flags=flags) == data
        if flags:
            assert with_graph(data, graph_payload(data)) == data


def test_compact_layout_flags_and_version():
    data = write(package())
    _, major, minor, flags, _, _, _ = container.PREAMBLE.unpack_from(data)
    assert (major, minor, flags) == (1, 1, ALL_FLAGS)
    old = write(package(), compact=False)
    assert container.PREAMBLE.unpack_from(old)[1:4] == (1, 0, 0)  # the 1.0 writer path: 1.0 exactly
    assert len(data) < len(old)


def test_compact_file_reads_back_bit_exact_and_deterministic():
    pkg = files.read_dcz(compressed())
    assert write(pkg) == compressed()  # read + write of a 1.1 file: the same bytes
    assert write(files.read_dcz(compressed())) == write(pkg)
    old = files.read_dcz(write(pkg, compact=False))
    assert values(old) == values(pkg)
    assert str(old.graph) == str(pkg.graph)


def test_files_written_before_1_1_stay_readable():
    """A 1.0 file as the old writer laid it out: plain JSON header, every stream 64-aligned."""
    data = write(files.read_dcz(compressed()), compact=False)
    _, _, header, _ = parts(data)
    assert data[PRE:PRE + 1] == b"{"  # plain JSON
    assert all(s["offset"] % 64 == 0 for s in header["streams"]) and len(data) % 64 == 0
    assert values(read_all(data)) == values(read_all(compressed()))


def test_compact_layout_saves_bytes():
    """The point of 1.1: for lenet5 after compress, header + graph + padding shrink by over half."""
    small = compressed()
    old = write(files.read_dcz(small), compact=False)
    assert len(small) < 0.5 * len(old), (len(small), len(old))


def test_small_streams_are_packed_and_big_ones_aligned():
    pkg = package()
    data = write(pkg)
    _, _, header, _ = parts(data)
    data_start = container.align(PRE + container.PREAMBLE.unpack_from(data)[4])
    big = [s for s in header["streams"] if s["length"] >= container.PACKED_ALIGN_FROM]
    small = [s for s in header["streams"] if s["length"] < container.PACKED_ALIGN_FROM]
    assert big and any((data_start + s["offset"]) % 64 for s in small)
    assert all((data_start + s["offset"]) % 64 == 0 for s in big)
    last = header["streams"][-1]
    assert len(data) == data_start + last["offset"] + last["length"]  # no trailing padding


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["streams"][2].update(offset=h["streams"][2]["offset"] + 1), r"stream 2 at offset \d+, expected"),
    (lambda h: h["streams"][1].update(offset=64), r"stream 1 at offset 64, expected"),
], ids=["small-stream-gap", "small-stream-aligned"])
def test_packed_stream_table_is_exact(edit, match):
    _, _, header, section = parts(compressed())
    edit(header)
    rejected(build(header, section), match)


def test_packed_layout_has_no_trailing_padding():
    rejected(compressed() + bytes(1), "trailing bytes|padding")
    _, _, header, section = parts(compressed())
    rejected(build(header, section + bytes(7)), "7 trailing bytes after the last stream")


def test_big_stream_padding_must_be_zero():
    data = write(package())
    _, _, header, section = parts(data)
    i = next(i for i, s in enumerate(header["streams"])
             if s["length"] >= container.PACKED_ALIGN_FROM and i and
             s["offset"] > header["streams"][i - 1]["offset"] + header["streams"][i - 1]["length"])
    prev = header["streams"][i - 1]
    bad = bytearray(section)
    bad[prev["offset"] + prev["length"]] = 1
    rejected(build(header, bytes(bad)), f"stream {i - 1}: missing or non-zero padding")


# ------------------------------------------------------------------ compressed header and graph

def test_header_zlib_bomb_is_refused_before_inflating():
    """64 MiB of JSON whitespace deflates to ~64 KiB: far over 64 x its size, refused after
    inflating at most the bound (not the 64 MiB)."""
    text = b"{" + b" " * (container.MAX_HEADER - 2) + b"}"
    stored = zlib.compress(text, 9)
    data = build(None, b"", text=text, stored=stored)
    tracemalloc.start()
    try:
        rejected(data, "header inflates past")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * (container.INFLATE_RATIO * len(stored) + container.INFLATE_FLOOR) + 4 * MiB  # not 64 MiB


@pytest.mark.parametrize("stored, match", [
    (b"{}", "header is not a valid zlib stream"),
    (zlib.compress(b"{}")[:-1], "zlib stream truncated"),
    (zlib.compress(b"{}") + b"x", "followed by extra bytes"),
    (zlib.compress(b"[1]"), "header is not a JSON object"),
], ids=["plain-json-with-flag", "truncated", "extra-bytes", "not-an-object"])
def test_bad_compressed_header(stored, match):
    _, _, header, section = parts(compressed())
    rejected(build(header, section, stored=stored), match)


def test_plain_header_in_a_1_1_file():
    """Flag bit 0 clear: the 1.1 file's header is stored as plain JSON (the writer's fallback)."""
    _, flags, header, section = parts(compressed())
    data = build(header, section, flags=flags & ~container.FLAG_HEADER_ZLIB)
    assert values(read_all(data)) == values(read_all(compressed()))


def test_graph_zlib_bomb_is_refused():
    rejected(with_graph(compressed(), zlib.compress(bytes(200 * MiB), 9)), "graph stream inflates past")


@pytest.mark.parametrize("stored, match", [
    (b"\x08\x07", "graph stream is not a valid zlib stream"),
    (b"", "graph stream is not a valid zlib stream|zlib stream truncated"),
    (zlib.compress(b"\xff" * 64), "not an ONNX model"),
], ids=["plain-protobuf", "empty", "garbage-inside"])
def test_bad_compressed_graph(stored, match):
    rejected(with_graph(compressed(), stored), match)


def test_graph_crc_covers_the_stored_bytes():
    data = bytearray(compressed())
    _, _, header, _ = parts(bytes(data))
    data[container.align(PRE + container.PREAMBLE.unpack_from(data)[4]) + 3] ^= 1
    rejected(bytes(data), "CRC-32 mismatch")


def test_incompressible_graph_is_stored_plain():
    """The writer falls back per part: a graph that zlib would not shrink keeps flag bit 1 clear."""
    assert container._deflate(np.random.default_rng(0).bytes(5000)) is None
    assert container._deflate(bytes(10 * MiB)) is None  # over the inflate bound: stored plain too


# --------------------------------------------------------------------------- optional fields

def newer(minor: int, edit) -> bytes:
    _, flags, header, section = parts(compressed())
    edit(header)
    return build(header, section, minor=minor, flags=flags)


def add_unknown_keys(header):
    header["provenance"] = {"tool": "a 1.2 writer", "nested": [1, 2, {"x": None}]}
    header["tensors"][0]["importance"] = 0.5


def test_newer_minor_optional_fields_are_skipped():
    pkg = read_all(newer(2, add_unknown_keys))
    assert values(pkg) == values(read_all(compressed()))
    read_all(newer(65535, add_unknown_keys))


@pytest.mark.parametrize("layout", ["1.0", "1.1"])
def test_unknown_keys_in_a_file_this_reader_knows_are_errors(layout):
    data = write(package(), compact=False) if layout == "1.0" else compressed()
    minor, flags, header, section = parts(data)
    header["provenance"] = "x"
    rejected(build(header, section, minor=minor, flags=flags), "header: expected keys")
    header.pop("provenance")
    header["tensors"][0]["importance"] = 0.5
    rejected(build(header, section, minor=minor, flags=flags), "tensor 0: expected keys")


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["streams"][1].update(zlib=True), "stream 1: expected keys"),
    (lambda h: h["tensors"][0]["chain"][0].update(extra=1), "step: expected keys"),
    (lambda h: h["tensors"][0]["chain"][0]["params"].update(extra=1), "needs params"),
    (lambda h: next(iter(h["tensors"][0]["slots"].values())).update(extra=1), "slot .*: expected keys"),
    (lambda h: h.pop("writer"), "header: expected keys"),
], ids=["stream-entry", "step", "params", "slot", "required-missing"])
def test_newer_minor_cannot_change_meaning(edit, match):
    """Only the header object and tensor entries take optional fields: everything that says how
    to read bytes stays exact, and required keys stay required."""
    rejected(newer(2, edit), match)


def test_newer_minor_unknown_values_are_still_bounded_json():
    rejected(newer(2, lambda h: h.update(deep=[[[[[[[[[1]]]]]]]]])), "nested deeper than")


# ------------------------------------------------------------------------------------- metadata

NOTES = {"source.sha256": "ab" * 32, "recipe": "compress --train", "version": "ünïcode ✓", "empty": ""}


def test_metadata_round_trip_and_determinism():
    data = write(package(NOTES))
    pkg = read_all(data)
    assert pkg.metadata == NOTES
    assert parts(data)[2]["metadata"] == NOTES
    assert write(package(dict(reversed(NOTES.items())))) == data  # key order does not matter
    assert write(pkg) == data


def test_no_metadata_means_no_key():
    assert "metadata" not in parts(write(package()))[2]
    assert write(package({})) == write(package())
    assert files.read_dcz(write(package())).metadata == {}
    assert container.PREAMBLE.unpack_from(write(package(NOTES), compact=False))[2] == 1  # a 1.1 field


def test_metadata_in_a_1_0_file_is_an_error():
    _, _, header, section = parts(write(package(), compact=False))
    header["metadata"] = {"a": "b"}
    rejected(build(header, section, minor=0, flags=0), "header: expected keys")


@pytest.mark.parametrize("metadata, match", [
    ({"k": 1}, "metadata value of 'k': expected a string"),
    ({"": "v"}, "metadata key '': expected a non-empty string"),
    ({"k" * 257: "v"}, "longer than 256 bytes"),
    ({"k": "v" * 4097}, "longer than 4096 bytes"),
    ({"k": "\ud800"}, "not valid UTF-8"),
    ({f"k{i}": "v" for i in range(257)}, "at most 256 entries"),
], ids=["int-value", "empty-key", "long-key", "long-value", "surrogate", "too-many"])
def test_metadata_bounds(metadata, match, tmp_path):
    """The reader refuses out-of-bound metadata; the writer refuses to write it (and writes nothing)."""
    _, flags, header, section = parts(compressed())
    header["metadata"] = metadata
    rejected(build(header, section, flags=flags), match)
    out = tmp_path / "m.dcz"
    with pytest.raises(DczError, match="refusing to write an unreadable file: .*" + match):
        files.write_dcz(package(metadata), str(out))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_metadata_not_an_object():
    _, flags, header, section = parts(compressed())
    header["metadata"] = [["a", "b"]]
    rejected(build(header, section, flags=flags), "metadata must be an object")


def test_stages_keep_metadata(tmp_path):
    """pack (with notes) -> read -> prune -> write -> read -> share -> write -> read: kept."""
    from deepcompress_cli.stages.prune import PruneConfig, prune
    from deepcompress_cli.stages.share import ShareConfig, share

    first = tmp_path / "a.dcz"
    files.write_dcz(package(NOTES), str(first))
    pkg = files.read_model(str(first))
    prune(pkg, PruneConfig())
    files.write_dcz(pkg, str(tmp_path / "b.dcz"))
    pkg = files.read_model(str(tmp_path / "b.dcz"))
    assert pkg.metadata == NOTES
    share(pkg, ShareConfig())
    files.write_dcz(pkg, str(tmp_path / "c.dcz"))
    assert files.read_model(str(tmp_path / "c.dcz")).metadata == NOTES


def test_info_shows_metadata(cli, tmp_path):
    path = tmp_path / "m.dcz"
    files.write_dcz(package({**NOTES, "evil": "x\n\x1b[2Jdeepcompress: ALL GATES PASSED"}), str(path))
    result = cli("--json", "info", path)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["metadata"]["recipe"] == "compress --train"
    text = cli("info", path).stdout
    assert "recipe = compress --train" in text and "version = ünïcode ✓" in text
    assert "x\\n\\x1b[2Jdeepcompress" in text and "\nx\n" not in text  # control characters escaped
    assert json.loads(cli("--json", "info", LENET5).stdout)["metadata"] == {}


# ------------------------------------------------------------------------------ pad bits are zero

def test_bitpack_pad_bits_must_be_zero():
    target = Slot("uint8", 2)  # 2 x 3 bits: the top 2 bits of the byte are padding
    assert list(bitpack.decode({"bits": 3}, target, {"packed": np.array([0b00101011], np.uint8)})) == [3, 5]
    for pad in (0b01000000, 0b10000000):
        with pytest.raises(DczError, match="bitpack pad bits are not zero"):
            bitpack.decode({"bits": 3}, target, {"packed": np.array([0b00101011 | pad], np.uint8)})


def huffman_parts(symbols):
    arrays, params = huffman.encode(np.asarray(symbols, np.uint8))
    return arrays, params, Slot("uint8", len(symbols))


def test_huffman_pad_bits_must_be_zero():
    arrays, params, target = huffman_parts([0, 1, 2, 0, 0])  # 7 code bits: 1 pad bit
    assert 8 * len(arrays["code"]) - int(arrays["blocks"].astype(int).sum()) == 1
    assert list(huffman.decode(params, target, arrays)) == [0, 1, 2, 0, 0]
    arrays["code"] = arrays["code"] | np.uint8(1)
    with pytest.raises(DczError, match="huffman pad bits are not zero"):
        huffman.decode(params, target, arrays)


def test_huffman_one_symbol_code_is_all_zero():
    arrays, params, target = huffman_parts([5, 5, 5])
    assert list(huffman.decode(params, target, arrays)) == [5, 5, 5]
    arrays["code"] = np.array([0b01000000], np.uint8)  # a `1` where only `0` is a code
    with pytest.raises(DczError, match="one-symbol alphabet must be all zero bits"):
        huffman.decode(params, target, arrays)


# ------------------------------------------------------------------------ little-endian streams

@pytest.mark.parametrize("dtype", [">f4", ">u2", ">i8", "<f4", "u1"])
def test_streams_are_little_endian(dtype):
    array = np.array([1, 2, 300 if dtype != "u1" else 3], dtype=dtype)
    s = Stream.of(array)
    assert bytes(s.buffer()) == array.astype(array.dtype.newbyteorder("<")).tobytes()
    name = {"f4": "float32", "u2": "uint16", "i8": "int64", "u1": "uint8"}[dtype.lstrip("<>")]
    assert s.array(name).tolist() == array.tolist()


def test_big_endian_array_survives_a_file():
    pkg = package()
    t = pkg.tensors[1]  # conv1.bias, float32 [6]
    expected = np.arange(6, dtype=np.float32)
    t.streams = {"data": Stream.of(expected.astype(">f4"))}
    assert files.read_dcz(write(pkg)).tensors[1].decode().tolist() == expected.tolist()


# ------------------------------------------------------------------- the writer checks itself

def empty_codebook(pkg):
    t = pkg.tensors[0]  # conv1.weight, 150 floats
    t.chain = [Step("codebook", "tensor", {"codebook": "codebook", "indices": "indices"}, {"bits": 8})]
    t.slots = {"codebook": Slot("float32", 0), "indices": Slot("uint8", t.numel)}
    t.streams = {"codebook": Stream.of(np.zeros(0, np.float32)),
                 "indices": Stream.of(np.zeros(t.numel, np.uint8))}


def sparse_too_short(pkg):
    t = pkg.tensors[4]  # fc1.weight, 2048 floats; one entry at 4 index bits covers at most 32
    t.chain = [Step("sparse", "tensor", {"gaps": "gaps", "values": "values"}, {"index_bits": 4})]
    t.slots = {"gaps": Slot("uint8", 1), "values": Slot("float32", 1)}
    t.streams = {"gaps": Stream.of(np.zeros(1, np.uint8)), "values": Stream.of(np.ones(1, np.float32))}


def numpy_param(pkg):
    t = pkg.tensors[0]
    t.chain = [Step("raw", "tensor", {"data": "data"}, {"x": np.int64(1)})]


def empty_sparse_of_zero_bytes(pkg):
    """prune --index-bits 16 of an all-zero 100x200 layer as it once stored it: no entries, 0 bytes."""
    t = pkg.tensors[4]
    t.shape = (100, 200)
    t.chain = [Step("sparse", "tensor", {"gaps": "gaps", "values": "values"}, {"index_bits": 16})]
    t.slots = {"gaps": Slot("uint16", 0), "values": Slot("float32", 0)}
    t.streams = {"gaps": Stream.of(np.zeros(0, np.uint16)), "values": Stream.of(np.zeros(0, np.float32))}


@pytest.mark.parametrize("damage, match", [
    (empty_codebook, "codebook must hold 1..2\\^bits values"),
    (sparse_too_short, "sparse: 1 entries cannot cover 2048 positions"),
    (numpy_param, "header is not JSON"),
    (empty_sparse_of_zero_bytes, "slot 'tensor' claims more data than the file can hold"),
    (lambda p: setattr(p.tensors[3], "name", p.tensors[0].name), "duplicate tensor names"),
    (lambda p: p.tensors[0].slots.update(data=Slot("float32", 53)), "length 216 != count x width 212"),
    (lambda p: setattr(p.tensors[0], "kind", "weight"), "kind: unknown value"),
], ids=["empty-codebook", "sparse-n-too-big", "numpy-param", "empty-sparse", "duplicate-name", "slot-count",
        "kind"])
@pytest.mark.parametrize("compact", [True, False], ids=["1.1", "1.0"])
def test_writer_refuses_what_the_reader_would(damage, match, compact, tmp_path):
    pkg = package()
    damage(pkg)
    out = io.BytesIO()
    with pytest.raises(DczError, match="refusing to write an unreadable file: .*" + match):
        container.write(pkg, out, compact=compact)
    assert out.getvalue() == b""
    target = tmp_path / "bad.dcz"
    with pytest.raises(DczError, match="refusing to write"):
        files.write_dcz(pkg, str(target))
    assert list(tmp_path.iterdir()) == []


def test_writer_check_decodes_nothing(monkeypatch):
    """The check is structural (the reader's table and chain rules): no codec decodes a payload,
    so writing a big model costs no second decode."""
    from deepcompress_cli import codecs

    pkg = files.read_dcz(compressed())
    for module in codecs.CODECS.values():
        monkeypatch.setattr(module, "decode", lambda *a: pytest.fail("the writer decoded a payload"))
    assert write(pkg) == compressed()


# --------------------------------------------------------------------------------- layering

@pytest.mark.parametrize("module, forbidden", [
    ("deepcompress_cli.codecs", "deepcompress_cli.tensors"),
    ("deepcompress_cli.container", "onnx"),
])
def test_layering(module, forbidden):
    code = f"import sys, {module}; print({forbidden!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", f"importing {module} imports {forbidden}"


# ------------------------------------------------------------------------------ fuzzing 1.1

@st.composite
def damaged_compact_files(draw) -> bytes:
    data = bytearray(compressed())
    header_end = container.align(PRE + container.PREAMBLE.unpack_from(data)[4])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, header_end + 200 if draw(st.booleans()) else len(data) - 1))
        pos = min(pos, len(data) - 1)
        op = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
            if not data:
                break
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    if len(data) >= PRE and draw(st.booleans()):  # fix the CRCs so the damage reaches zlib and JSON
        hl = struct.unpack_from("<Q", data, 16)[0]
        if PRE + hl <= len(data):
            data[24:28] = struct.pack("<I", zlib.crc32(data[PRE:PRE + hl]))
        data[28:32] = struct.pack("<I", zlib.crc32(data[:28]))
    return bytes(data)


@settings(deadline=None, derandomize=True, database=None, max_examples=300,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(damaged_compact_files())
def test_fuzz_compact_files(data):
    """Damaged 1.1 files: only DczError, within the same time and memory bounds as the 1.0 fuzzing."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        try:
            read_all(data)
        except DczError as e:
            assert str(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + 16 * MiB
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------- info decodes little

def test_info_does_not_expand_sparse_fillers():
    """21 KB of 16-bit all-zero fillers may declare a 1 GB tensor within the expansion bound;
    `info` counts the stored entries instead of allocating it (regression: 3 GB RSS)."""
    from deepcompress_cli.report import summary

    entries = 1024
    pkg = package()
    t = pkg.tensors[4]  # fc1.weight
    t.shape = (entries << 16,)  # 2^26 floats: 256 MiB decoded from 6 KiB
    t.chain = [Step("sparse", "tensor", {"gaps": "gaps", "values": "values"}, {"index_bits": 16})]
    t.slots = {"gaps": Slot("uint16", entries), "values": Slot("float32", entries)}
    values = np.zeros(entries, np.float32)
    values[0] = 1.5
    t.streams = {"gaps": Stream.of(np.full(entries, 0xFFFF, np.uint16)), "values": Stream.of(values)}
    t.streams["gaps"].array("uint16")[0] = 0  # the 1.5 at position 0
    placeholder = next(i for i in pkg.graph.graph.initializer if i.name == "fc1.weight")
    del placeholder.dims[:]
    placeholder.dims.extend(t.shape)
    data = write(pkg)
    assert len(data) < 20_000
    read = files.read_dcz(data)
    tracemalloc.start()
    try:
        row = next(r for r in summary(read, len(data))["tensors"] if r["name"] == "fc1.weight")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert row["sparsity"] == round(1 - 1 / (entries << 16), 4)
    assert peak < 16 * MiB, peak


def test_write_dcz_checks_the_graph_too(tmp_path):
    """files.write_dcz adds the reader's graph rules (ONNX, outside the container layer)."""
    pkg = package()
    pkg.graph.graph.initializer.pop()  # fc2.bias's placeholder gone: the table has a tensor too many
    out = tmp_path / "g.dcz"
    with pytest.raises(DczError, match="refusing to write an unreadable file: 1 table tensors are not used"):
        files.write_dcz(pkg, str(out))
    assert list(tmp_path.iterdir()) == []


def test_a_header_of_millions_of_tiny_values_is_refused_before_json_builds_it():
    """Issue 12: a 66 MB header of small values cost 2.7 GB and 18 s before its rejection; the
    separators are counted on the bytes first, so it fails at once and small."""
    import time
    import tracemalloc

    raw = b'{"streams":[' + b"0," * 6_000_000 + b'0]}'
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DczError, match="JSON separators"):
        container._parse_json(raw)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20 and elapsed < 2, (peak, elapsed)
