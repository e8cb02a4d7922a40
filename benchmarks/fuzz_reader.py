"""Fuzz the `.dcz` reader: mutated, truncated and spliced real files; only DczError may come out.

    python benchmarks/fuzz_reader.py [--cases 100000] [--seed 0] [--jobs 2] [--save-corpus]
    make fuzz

Bases: real `.dcz` files (1.1 layout, and each again in the 1.0 layout) of the sample models made
in memory by the real stages (pack, prune,
share, quantize per channel, compress, quantize + huffman, svd), so every codec is reached.  Each
case is read and every tensor decoded, as `export` and `bench` do.  Mutations:

- byte edits (bit flips, overwrites, insertions, deletions), half of them in the preamble/header;
- truncation at a random offset; splicing the head of one file onto the tail of another;
- header edits: one JSON value replaced (boundary integers, other codec names, wrong types),
  re-serialized with correct CRCs, so the edit reaches the checks behind the checksums;
- payload edits inside one stream with its CRC fixed, so the codecs see corrupt data;
and, for half the cases, preamble and header CRCs recomputed after the edit.

A case fails if it raises anything but DczError, takes over 2 s, or allocates (tracemalloc peak)
more than 64 x its size + 16 MiB.  Failing inputs are written to tests/fuzz_corpus/ (replayed by
tests/test_container_hostile.py); `--save-corpus` also keeps the smallest input (up to 8 KiB)
per distinct error message.
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
import tracemalloc
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from deepcompress_cli import container  # noqa: E402
from deepcompress_cli.files import read_dcz  # noqa: E402
from deepcompress_cli.errors import DczError  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "fuzz_corpus")
SECONDS = 2.0
CORPUS_MAX_BYTES = 8 << 10  # rejections kept as regression inputs: small ones only
MEMORY_PER_BYTE, MEMORY_BASE = 64, 16 << 20
PRE = container.PREAMBLE_SIZE
BOUNDARY_INTS = [0, 1, -1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 63, 64, 255, 256, 65535, 2**31 - 1, 2**31, 2**32,
                 2**48, 2**48 + 1, 2**53, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]
STRINGS = ["raw", "sparse", "codebook", "linear", "bitpack", "huffman", "tensor", "data", "values", "gaps",
           "indices", "codes", "float32", "float16", "int64", "uint8", "bool", "conv", "fc", "other", "", "x" * 5000]


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


def byte_edits(data: bytes, rng) -> bytearray:
    buf = bytearray(data)
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


# --------------------------------------------------------------------------------------- running

def read_all(data: bytes) -> None:
    package = read_dcz(data)
    for t in package.tensors:
        t.decode()


def run_case(data: bytes) -> tuple[str, str]:
    """(outcome, detail): accepted, rejected (DczError kind), crash, hang, memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        read_all(data)
        outcome, detail = "accepted", ""
    except DczError as e:
        outcome, detail = "rejected", re.sub(r"(?<!\w)'[^']*'|\d+|got .*", "_", str(e))[:60]
    except Exception as e:  # noqa: BLE001 - that is what we are looking for
        outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:100]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    if outcome != "crash" and elapsed > SECONDS:
        outcome, detail = "hang", f"{elapsed:.1f} s"
    elif outcome != "crash" and peak > MEMORY_PER_BYTE * len(data) + MEMORY_BASE:
        outcome, detail = "memory", f"peak {peak} bytes for {len(data)}"
    return outcome, detail


def worker(args) -> tuple[Counter, dict[tuple[str, str], bytes], float]:
    seed, cases = args
    files = list(bases().values())
    rng = np.random.default_rng(seed)
    counts, keep, slowest = Counter(), {}, 0.0
    for _ in range(cases):
        data = mutate(files, rng)
        start = time.perf_counter()
        outcome, detail = run_case(data)
        slowest = max(slowest, time.perf_counter() - start)
        counts[outcome] += 1
        counts[f"{outcome}: {detail}"] += 1
        if outcome not in ("accepted", "rejected") or len(data) < len(keep.get((outcome, detail), data + b"x")):
            keep[(outcome, detail)] = data  # the smallest input per distinct outcome
    return counts, keep, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--save-corpus", action="store_true", help="also keep one input per distinct error")
    args = parser.parse_args()
    start = time.perf_counter()
    shares = [(args.seed * 1000 + i, args.cases // args.jobs + (i < args.cases % args.jobs)) for i in range(args.jobs)]
    total, kept, slowest = Counter(), {}, 0.0
    with ProcessPoolExecutor(args.jobs) as pool:
        for counts, keep, slow in pool.map(worker, shares):
            total.update(counts)
            slowest = max(slowest, slow)
            for key, data in keep.items():
                if len(data) < len(kept.get(key, data + b"x")):
                    kept[key] = data
    elapsed = time.perf_counter() - start
    bad = {k: v for k, v in kept.items() if k[0] not in ("accepted", "rejected")}
    print(f"{args.cases:,} cases in {elapsed:.0f} s ({args.cases / elapsed:.0f}/s, {args.jobs} processes); "
          f"slowest case {1000 * slowest:.0f} ms")
    for outcome in ("accepted", "rejected", "crash", "hang", "memory"):
        print(f"  {outcome:9}{total[outcome]:>9,}")
    print(f"  distinct rejection messages: {sum(1 for k in kept if k[0] == 'rejected')}")
    if args.save_corpus or bad:
        os.makedirs(CORPUS, exist_ok=True)
        for (outcome, detail), data in sorted(kept.items()):
            if outcome == "accepted" or (outcome == "rejected" and len(data) > CORPUS_MAX_BYTES):
                continue
            name = f"{outcome}-{zlib.crc32(data):08x}.dcz"
            with open(os.path.join(CORPUS, name), "wb") as f:
                f.write(data)
    for (outcome, detail), _ in sorted(bad.items()):
        print(f"  FAILED {outcome}: {detail}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
