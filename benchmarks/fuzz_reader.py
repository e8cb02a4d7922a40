"""Fuzz the readers: mutated, truncated and spliced real `.dcz`, `.npz` and `.onnx` files; only
DczError may come out.

    python benchmarks/fuzz_reader.py [--cases 100000] [--seed 0] [--jobs 2] [--targets dcz,npz,onnx]
                                     [--save-corpus]
    make fuzz

`.dcz` bases: real files (1.1 layout, and each again in the 1.0 layout) of the sample models made
in memory by the real stages (pack, prune,
share, quantize per channel, compress, quantize + huffman, svd, and the `scale` chains of encoding
version 2: prune + quantize per channel + huffman, prune + share per channel), so every codec is reached.  Each
case is read and every tensor decoded, as `export` and `bench` do.  Mutations:

- byte edits (bit flips, overwrites, insertions, deletions), half of them in the preamble/header;
- truncation at a random offset; splicing the head of one file onto the tail of another;
- header edits: one JSON value replaced (boundary integers, other codec names, wrong types),
  re-serialized with correct CRCs, so the edit reaches the checks behind the checksums;
- payload edits inside one stream with its CRC fixed, so the codecs see corrupt data;
and, for half the cases, preamble and header CRCs recomputed after the edit.

`.npz` bases: data for each sample model's inputs (stored and deflated), read by
`data.load_npz` with that model's input specs, as `bench --data` does.  Mutations: byte edits,
truncation, splicing, and rebuilt archives (correct zip CRCs) with one member's `.npy` header
edited (dtype, shape, order), its body cut or grown, or a member added, dropped or renamed.

`.onnx` bases: the sample models, read by `files.read_model` and packed (`container.write`), and
the packed bytes read back (the writer must never write what its reader rejects).  Mutations:
byte edits, truncation, splicing, and parsed-ModelProto edits (initializer dims, types, data and
external references; node op types, inputs, outputs and attributes; graph inputs; opsets).

A case fails if it raises anything but DczError, issues a warning (a stray stderr line), takes over 2 s, or allocates (tracemalloc peak)
more than the format's expansion bound allows for its size (`codecs.expansion_budget`: 65536 x
its size + 64 KiB, the number docs/FORMAT.md section 4 states) plus 16 MiB of scratch; reading a
`.dcz` (before any decoding) must also stay under 64 x its size + 16 MiB (parsing, the inflate
bound).  Failing `.dcz` inputs are written to tests/fuzz_corpus/ (replayed by
tests/test_container_hostile.py), failing `.npz`/`.onnx` inputs to --failures; `--save-corpus`
also keeps the smallest `.dcz` input (up to 8 KiB) per distinct error message.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import sys
import time
import tempfile
import tracemalloc
import warnings
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
from deepcompress_cli import container, files  # noqa: E402
from deepcompress_cli.codecs import expansion_budget  # noqa: E402
from deepcompress_cli.data import input_specs, load_npz  # noqa: E402
from deepcompress_cli.files import read_dcz  # noqa: E402
from deepcompress_cli.errors import DczError  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "fuzz_corpus")
SECONDS = 2.0
CORPUS_MAX_BYTES = 8 << 10  # rejections kept as regression inputs: small ones only
READ_MEMORY_PER_BYTE = container.INFLATE_RATIO  # parsing a .dcz, before decoding: 64 x its size
MEMORY_BASE = 16 << 20  # interpreter noise, codec scratch (a Huffman table is <= 640 KiB)
TARGETS = ("dcz", "npz", "onnx")
PRE = container.PREAMBLE_SIZE
BOUNDARY_INTS = [0, 1, -1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 63, 64, 255, 256, 65535, 2**31 - 1, 2**31, 2**32,
                 2**48, 2**48 + 1, 2**53, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
STRINGS = ["raw", "sparse", "codebook", "linear", "bitpack", "huffman", "scale", "tensor", "data", "values", "gaps",
           "indices", "codes", "scaled", "channel_scales", "float32", "float16", "int64", "uint8", "bool", "conv", "fc", "other", "", "x" * 5000]


def bases() -> dict[str, bytes]:
    """Real files of every chain the stages write, built in memory."""
    from deepcompress_cli.files import read_model
    from deepcompress_cli.stages import PerKind
    from deepcompress_cli.stages.compress import compress
    from deepcompress_cli.stages.entropy import huffman
    from deepcompress_cli.stages.prune import PruneConfig, prune
    from deepcompress_cli.stages.quantize import QuantizeConfig, quantize
    from deepcompress_cli.stages.share import ShareConfig, share
    from deepcompress_cli.stages.svd import SvdConfig, svd

    def build(model, *stages):
        package = read_model(os.path.join(ROOT, "sample_models", model))
        for stage in stages:
            stage(package)
        out = io.BytesIO()
        container.write(package, out)
        return out.getvalue()

    def in_1_0(data):  # the same file in the 1.0 layout (plain header, every stream aligned)
        out = io.BytesIO()
        container.write(read_dcz(data), out, compact=False)
        return out.getvalue()

    half = PruneConfig(PerKind(0.5, 0.8))
    files = {
        "lenet5-pack": build("lenet5.onnx"),
        "lenet300-prune": build("lenet300.onnx", lambda p: prune(p, half)),
        "lenet5-share": build("lenet5.onnx", lambda p: share(p, ShareConfig(PerKind(3, 5)))),
        "lenet5-quantize": build("lenet5.onnx", lambda p: quantize(p, QuantizeConfig(8, True, False))),
        "lenet5-compress": build("lenet5.onnx", lambda p: compress(p, half, ShareConfig())),
        "lenet300-compress": build("lenet300.onnx", lambda p: compress(p, half, ShareConfig(PerKind(4, 4)))),
        "lenet300-quantize-huffman": build("lenet300.onnx", lambda p: quantize(p, QuantizeConfig(6, False, True)),
                                           lambda p: huffman(p)),
        "lenet300-svd": build("lenet300.onnx", lambda p: svd(p, SvdConfig(rank=8))),
        "lenet5-prune-quantize-per-channel-huffman": build(
            "lenet5.onnx", lambda p: prune(p, half), lambda p: quantize(p, QuantizeConfig(8, True, False)),
            lambda p: huffman(p)),
        "lenet5-prune-share-per-channel": build(
            "lenet5.onnx", lambda p: prune(p, half), lambda p: share(p, ShareConfig(PerKind(4, 5), per_channel=True))),
    }
    return {**files, **{f"{name}-1.0": in_1_0(data) for name, data in files.items()}}


# -------------------------------------------------------------------------------------- mutations

def fix_crcs(buf: bytearray) -> bytearray:
    if len(buf) >= PRE:
        hl = struct.unpack_from("<Q", buf, 16)[0]
        if PRE + hl <= len(buf):
            buf[24:28] = struct.pack("<I", zlib.crc32(buf[PRE:PRE + hl]))
        buf[28:32] = struct.pack("<I", zlib.crc32(buf[:28]))
    return buf


def split(data: bytes) -> tuple[dict, bytes, tuple[int, int]]:
    """(header, data section, (minor, flags)) of a valid file of either layout."""
    _, _, minor, flags, hl, _, _ = container.PREAMBLE.unpack_from(data)
    raw = data[PRE:PRE + hl]
    if flags & container.FLAG_HEADER_ZLIB:
        raw = zlib.decompress(raw)
    return json.loads(raw), data[container.align(PRE + hl):], (minor, flags)


def rebuild(header: dict, section: bytes, version: tuple[int, int]) -> bytearray:
    minor, flags = version
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if flags & container.FLAG_HEADER_ZLIB:
        raw = zlib.compress(raw, container.ZLIB_LEVEL)
    head = container.PREAMBLE.pack(container.MAGIC, container.MAJOR, minor, flags, len(raw), zlib.crc32(raw), 0)
    pad = bytes(container.align(PRE + len(raw)) - PRE - len(raw))
    return fix_crcs(bytearray(head + raw + pad + section))


def _paths(node, path=()):
    """Every (path, value) leaf and container in a JSON value."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def header_edit(data: bytes, rng) -> bytearray:
    header, section, version = split(data)
    leaves = list(_paths(header))[1:]
    path, value = leaves[rng.integers(len(leaves))]
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    choice = rng.integers(6)
    if choice == 0:
        new = BOUNDARY_INTS[rng.integers(len(BOUNDARY_INTS))] * (1 if rng.random() < 0.8 else -1)
    elif choice == 1:
        new = STRINGS[rng.integers(len(STRINGS))]
    elif choice == 2:
        new = [None, True, 1.5, [], {}, "", -0.0][rng.integers(7)]
    elif choice == 3 and isinstance(value, int) and not isinstance(value, bool):
        new = value + int(rng.integers(-3, 4))
    elif choice == 4 and isinstance(parent, list) and len(parent) > 0:  # drop or duplicate an element
        if rng.random() < 0.5:
            del parent[path[-1]]
        else:
            parent.insert(path[-1], json.loads(json.dumps(value)))
        return rebuild(header, section, version)
    elif choice == 5 and isinstance(parent, dict):  # remove or rename a key
        del parent[path[-1]]
        if rng.random() < 0.5:
            parent[str(path[-1]) + "_"] = value
        return rebuild(header, section, version)
    else:
        new = None
    parent[path[-1]] = new
    return rebuild(header, section, version)


def payload_edit(data: bytes, rng) -> bytearray:
    """Corrupt bytes inside one stream and fix that stream's CRC: the codecs must cope."""
    header, section, version = split(data)
    streams = header["streams"]
    i = int(rng.integers(len(streams)))
    s = streams[i]
    body = bytearray(section)
    if s["length"]:
        for _ in range(int(rng.integers(1, 5))):
            pos = s["offset"] + int(rng.integers(s["length"]))
            body[pos] = int(rng.integers(256)) if rng.random() < 0.5 else body[pos] ^ (1 << int(rng.integers(8)))
        s["crc32"] = zlib.crc32(body[s["offset"]:s["offset"] + s["length"]])
    return rebuild(header, bytes(body), version)


def byte_edits(data: bytes, rng, focus: int | None = None) -> bytearray:
    buf = bytearray(data)
    if focus is None:  # a .dcz: its preamble and header
        focus = container.align(PRE + struct.unpack_from("<Q", data, 16)[0]) + 64
    for _ in range(int(rng.integers(1, 7))):
        if not buf:
            break
        hi = min(focus, len(buf)) if rng.random() < 0.5 else len(buf)
        pos = int(rng.integers(max(hi, 1)))
        op = rng.integers(4)
        if op == 0:
            buf[pos] ^= 1 << int(rng.integers(8))
        elif op == 1:
            buf[pos:pos + 8] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 2:
            buf[pos:pos] = rng.bytes(int(rng.integers(1, 65)))
        else:
            del buf[pos:pos + int(rng.integers(1, 129))]
    return buf


def mutate(files: list[bytes], rng) -> bytes:
    data = files[rng.integers(len(files))]
    kind = rng.integers(5)
    if kind == 0:
        buf = byte_edits(data, rng)
    elif kind == 1:
        buf = bytearray(data[:int(rng.integers(len(data)))])
    elif kind == 2:
        other = files[rng.integers(len(files))]
        buf = bytearray(data[:int(rng.integers(len(data) + 1))] + other[int(rng.integers(len(other) + 1)):])
    elif kind == 3:
        return bytes(header_edit(data, rng))
    else:
        return bytes(payload_edit(data, rng))
    return bytes(fix_crcs(buf) if rng.random() < 0.5 else buf)


def generic_mutate(files: list[bytes], rng) -> bytes:
    """Format-blind edits: byte edits, truncation, splicing."""
    data = files[rng.integers(len(files))]
    kind = rng.integers(3)
    if kind == 0:
        return bytes(byte_edits(data, rng, focus=len(data)))
    if kind == 1:
        return data[:int(rng.integers(len(data)))]
    other = files[rng.integers(len(files))]
    return data[:int(rng.integers(len(data) + 1))] + other[int(rng.integers(len(other) + 1)):]


# ------------------------------------------------------------------------------------------ .npz

SAMPLE_MODELS = ("lenet5.onnx", "lenet300.onnx")
DESCRS = ["<f4", "<f8", "<f2", ">f4", "|b1", "|u1", "<i8", "<i4", "<c8", "<c16", "|O", "<U5", "|S3", "|V8",
          "<M8[s]", "<m8", "[('a', '<f4')]", "('<f4', (2,))", "<f16", "", "x", "<f0"]


def npz_bases() -> dict[str, tuple[bytes, list]]:
    """(npz bytes, the model's input specs): data each sample model takes, stored and deflated."""
    out = {}
    rng = np.random.default_rng(0)
    for name in SAMPLE_MODELS:
        graph = onnx.load(os.path.join(ROOT, "sample_models", name)).graph
        specs = input_specs(graph)
        arrays = {s.name: rng.standard_normal((3, *[d or 1 for d in s.dims[1:]])).astype(s.dtype) for s in specs}
        arrays["labels"] = np.arange(3, dtype=np.int64)
        arrays["unused"] = np.zeros((64, 64), np.float32)
        for save in (np.savez, np.savez_compressed):
            buf = io.BytesIO()
            save(buf, **arrays)
            out[f"{name}-{save.__name__}"] = (buf.getvalue(), specs)
    return out


def npy_edit(body: bytes, rng) -> bytes:
    """One member's .npy: its header dict edited (dtype, shape, order) or its body cut or grown."""
    choice = rng.integers(4)
    if choice == 0:
        return body[:int(rng.integers(len(body) + 1))]
    if choice == 1:
        return body + rng.bytes(int(rng.integers(1, 4096)))
    try:
        fp = io.BytesIO(body)
        version = np.lib.format.read_magic(fp)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fp) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(fp))
        data = body[fp.tell():]
    except Exception:  # noqa: BLE001 - already mutated
        return body + b"\0"
    descr = np.lib.format.dtype_to_descr(dtype)
    field = rng.integers(3)
    if field == 0:
        descr = DESCRS[rng.integers(len(DESCRS))]
    elif field == 1:
        rank = int(rng.integers(0, 6))
        shape = tuple(int(BOUNDARY_INTS[rng.integers(len(BOUNDARY_INTS))]) * (1 if rng.random() < 0.9 else -1)
                      if rng.random() < 0.5 else int(d) for d in (list(shape) + [1] * rank)[:rank])
    else:
        fortran = not fortran
    text = "{'descr': %s, 'fortran_order': %r, 'shape': %r, }" % (
        descr if descr.startswith(("[", "(")) else repr(descr), fortran, shape)
    if rng.random() < 0.1:  # a raw text edit of the dict
        pos = int(rng.integers(len(text)))
        text = text[:pos] + STRINGS[rng.integers(len(STRINGS))][:8] + text[pos + 1:]
    header = text.encode("latin1", "replace")
    header += b" " * ((-(len(header) + 11)) % 64) + b"\n"
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header + data


def npz_mutate(files: list[bytes], rng) -> bytes:
    data = files[rng.integers(len(files))]
    if rng.random() < 0.4:
        return generic_mutate(files, rng)
    zin = zipfile.ZipFile(io.BytesIO(data))
    infos = zin.infolist()
    victim = infos[rng.integers(len(infos))].filename
    action = rng.integers(6)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in infos:
            body = zin.read(info)
            if info.filename == victim:
                if action == 0:
                    continue  # dropped
                if action == 1:
                    info = zipfile.ZipInfo(STRINGS[rng.integers(len(STRINGS))][:20] + ".npy")
                    info.compress_type = zipfile.ZIP_DEFLATED
                elif action == 2:  # a zip-bomb-like extra member: deflated zeros, never used
                    extra = zipfile.ZipInfo("bomb.npy")
                    extra.compress_type = zipfile.ZIP_DEFLATED
                    n = int(rng.integers(1, 8)) << 20
                    zout.writestr(extra, _npy_bytes(np.zeros(n // 4, np.float32)))
                else:
                    body = npy_edit(body, rng)
            zout.writestr(info, body)
    return out.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- .onnx

LOCATIONS = ["/etc/passwd", "../x", "dcz:tensor", "w.bin", "", "a/../../b", "\0", "x" * 300]


def onnx_bases() -> dict[str, bytes]:
    return {name: open(os.path.join(ROOT, "sample_models", name), "rb").read() for name in SAMPLE_MODELS}


def onnx_edit(data: bytes, rng) -> bytes:
    """One edit of a parsed ModelProto, re-serialized: reaches the checks behind protobuf's parser."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    graph = model.graph
    edit = rng.integers(9)
    inits = graph.initializer
    big = lambda: int(BOUNDARY_INTS[rng.integers(len(BOUNDARY_INTS))]) % (1 << 63) * (  # noqa: E731
        1 if rng.random() < 0.9 else -1)
    if edit == 0 and inits:
        t = inits[rng.integers(len(inits))]
        dims = list(t.dims)
        if dims and rng.random() < 0.7:
            dims[rng.integers(len(dims))] = big()
        else:
            dims = [big() for _ in range(int(rng.integers(0, 4)))]
        del t.dims[:]
        t.dims.extend(dims)
    elif edit == 1 and inits:
        inits[rng.integers(len(inits))].data_type = int(rng.integers(0, 25))
    elif edit == 2 and inits:
        t = inits[rng.integers(len(inits))]
        raw = t.raw_data
        t.raw_data = raw[:int(rng.integers(len(raw) + 1))] if rng.random() < 0.7 else raw + rng.bytes(8)
        if rng.random() < 0.3:
            t.float_data.extend([1.0, 2.0])
    elif edit == 3 and inits:
        t = inits[rng.integers(len(inits))]
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in (("location", LOCATIONS[rng.integers(len(LOCATIONS))]),
                           ("offset", str(big())), ("length", str(big()))):
            if rng.random() < 0.8:
                t.external_data.add(key=key, value=value)
    elif edit == 4 and graph.node:
        node = graph.node[rng.integers(len(graph.node))]
        node.op_type = ["Constant", "ConstantOfShape", "Gemm", "MatMul", "Conv", "If", "Loop", "Foo", ""][
            rng.integers(9)]
    elif edit == 5 and graph.node:
        node = graph.node[rng.integers(len(graph.node))]
        names = [t.name for t in inits] + [o for n in graph.node for o in n.output] + ["", "missing"]
        target = node.input if rng.random() < 0.6 else node.output
        if target and rng.random() < 0.5:
            del target[int(rng.integers(len(target)))]
        else:
            target.append(names[rng.integers(len(names))])
    elif edit == 6 and graph.node:
        node = graph.node[rng.integers(len(graph.node))]
        k = big() % 5
        value = [1, 1.5, b"s", [1, 2], [big()], onnx.helper.make_tensor("v", 1, [k], [0.0] * k)][rng.integers(6)]
        node.attribute.append(onnx.helper.make_attribute(["value", "axis", "transB", "perm", "to", "x"][
            rng.integers(6)], value))
        if rng.random() < 0.3:
            node.op_type = "Constant"
    elif edit == 7:
        order = list(graph.node)
        rng.shuffle(order)
        del graph.node[:]
        graph.node.extend(order)
        if graph.input and rng.random() < 0.5:
            graph.input[0].type.tensor_type.elem_type = int(rng.integers(0, 25))
    else:
        if model.opset_import:
            model.opset_import[0].version = int(rng.integers(-1, 30))
        if rng.random() < 0.5 and inits:
            extra = model.training_info.add().initialization.initializer.add()
            extra.CopyFrom(inits[0])
            extra.data_location = onnx.TensorProto.EXTERNAL
            extra.external_data.add(key="location", value=LOCATIONS[rng.integers(len(LOCATIONS))])
    return model.SerializeToString()


def onnx_mutate(files: list[bytes], rng) -> bytes:
    if rng.random() < 0.3:
        return generic_mutate(files, rng)
    return onnx_edit(files[rng.integers(len(files))], rng)


# --------------------------------------------------------------------------------------- running

class UnreadableOutput(Exception):
    """The writer wrote a file its own reader rejects."""


def read_all(data: bytes) -> None:
    package = read_dcz(data)
    read_peak = tracemalloc.get_traced_memory()[1]
    if read_peak > READ_MEMORY_PER_BYTE * len(data) + MEMORY_BASE:
        raise MemoryBound(f"read peak {read_peak} bytes for {len(data)}")
    for t in package.tensors:
        t.decode()


class MemoryBound(Exception):
    pass


def read_npz(data: bytes, specs, scratch: str) -> None:
    path = os.path.join(scratch, "case.npz")
    with open(path, "wb") as f:
        f.write(data)
    load_npz(path, specs, "--data")


def pack_onnx(data: bytes, scratch: str) -> None:
    path = os.path.join(scratch, "case.onnx")
    with open(path, "wb") as f:
        f.write(data)
    package = files.read_model(path)
    files.check_graph(package)
    out = io.BytesIO()
    container.write(package, out)
    del package
    try:
        read_dcz(out.getvalue())
    except DczError as e:
        raise UnreadableOutput(str(e)) from None


def run_case(data: bytes, read=read_all) -> tuple[str, str]:
    """(outcome, detail): accepted, rejected (DczError kind), crash, hang, memory."""
    tracemalloc.start()
    start = time.perf_counter()
    over = None
    try:
        with warnings.catch_warnings(record=True) as caught:  # a warning is a stray stderr line
            warnings.simplefilter("always")
            read(data)
        outcome, detail = "accepted", ""
    except DczError as e:
        outcome, detail = "rejected", re.sub(r"(?<!\w)'[^']*'|\d+|got .*", "_", str(e))[:60]
    except MemoryBound as e:
        outcome, detail, over = "memory", str(e), True
    except Exception as e:  # noqa: BLE001 - that is what we are looking for
        outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:100]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    if outcome in ("accepted", "rejected") and caught:
        outcome, detail = "warning", f"{caught[0].category.__name__}: {str(caught[0].message)[:100]}"
    elif outcome != "crash" and not over and elapsed > SECONDS:
        outcome, detail = "hang", f"{elapsed:.1f} s"
    elif outcome != "crash" and not over and peak > expansion_budget(len(data)) + MEMORY_BASE:
        outcome, detail = "memory", f"peak {peak} bytes for {len(data)}"
    return outcome, detail


def worker(args) -> tuple[Counter, dict[tuple[str, str, str], bytes], float]:
    seed, cases, targets = args
    dcz = list(bases().values()) if "dcz" in targets else []
    npz = list(npz_bases().values()) if "npz" in targets else []
    onnx_files = list(onnx_bases().values()) if "onnx" in targets else []
    rng = np.random.default_rng(seed)
    counts, keep, slowest = Counter(), {}, 0.0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch:
        for _ in range(cases):
            target = targets[rng.integers(len(targets))]
            if target == "dcz":
                data, read = mutate(dcz, rng), read_all
            elif target == "npz":
                i = int(rng.integers(len(npz)))
                specs = npz[i][1]
                data = npz_mutate([npz[i][0]], rng)
                read = lambda d, specs=specs: read_npz(d, specs, scratch)  # noqa: E731
            else:
                data, read = onnx_mutate(onnx_files, rng), lambda d: pack_onnx(d, scratch)  # noqa: E731
            start = time.perf_counter()
            outcome, detail = run_case(data, read)
            slowest = max(slowest, time.perf_counter() - start)
            counts[outcome] += 1
            counts[f"{target} {outcome}"] += 1
            counts[f"{outcome}: {detail}"] += 1
            key = (target, outcome, detail)
            if outcome not in ("accepted", "rejected") or len(data) < len(keep.get(key, data + b"x")):
                keep[key] = data  # the smallest input per distinct outcome
    return counts, keep, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--targets", default=",".join(TARGETS), help="which readers: dcz,npz,onnx")
    parser.add_argument("--failures", default=os.path.join(tempfile.gettempdir(), "fuzz_failures"),
                        help="where failing .npz/.onnx inputs go (.dcz ones go to tests/fuzz_corpus)")
    parser.add_argument("--save-corpus", action="store_true", help="also keep one .dcz input per distinct error")
    args = parser.parse_args()
    targets = tuple(t for t in args.targets.split(",") if t)
    if not targets or set(targets) - set(TARGETS):
        parser.error(f"--targets: a comma-separated subset of {','.join(TARGETS)}")
    start = time.perf_counter()
    shares = [(args.seed * 1000 + i, args.cases // args.jobs + (i < args.cases % args.jobs), targets)
              for i in range(args.jobs)]
    total, kept, slowest = Counter(), {}, 0.0
    with ProcessPoolExecutor(args.jobs) as pool:
        for counts, keep, slow in pool.map(worker, shares):
            total.update(counts)
            slowest = max(slowest, slow)
            for key, data in keep.items():
                if len(data) < len(kept.get(key, data + b"x")):
                    kept[key] = data
    elapsed = time.perf_counter() - start
    bad = {k: v for k, v in kept.items() if k[1] not in ("accepted", "rejected")}
    bad_dcz = any(target == "dcz" for target, _, _ in bad)
    print(f"{args.cases:,} cases in {elapsed:.0f} s ({args.cases / elapsed:.0f}/s, {args.jobs} processes); "
          f"slowest case {1000 * slowest:.0f} ms")
    for target in targets:
        print(f"  {target}: " + ", ".join(f"{o} {total[f'{target} {o}']:,}"
                                          for o in ("accepted", "rejected", "crash", "hang", "memory", "warning")))
    print(f"  distinct rejection messages: {sum(1 for k in kept if k[1] == 'rejected')}")
    for (target, outcome, detail), data in sorted(kept.items()):
        if target == "dcz" and (args.save_corpus or bad_dcz):
            if outcome == "accepted" or (outcome == "rejected" and len(data) > CORPUS_MAX_BYTES):
                continue
            folder = CORPUS
        elif target != "dcz" and outcome not in ("accepted", "rejected"):
            folder = args.failures
        else:
            continue
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{outcome}-{zlib.crc32(data):08x}.{target}"), "wb") as f:
            f.write(data)
    for (target, outcome, detail), _ in sorted(bad.items()):
        print(f"  FAILED {target} {outcome}: {detail}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
