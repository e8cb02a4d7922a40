"""Each codec on its own: exact round trips on adversarial inputs, and refusal of hostile parts."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcompress_cli.codecs import bitpack, codebook, huffman, sparse
from deepcompress_cli.errors import DczError
from deepcompress_cli.kmeans import INITS, initial_centroids, kmeans_1d
from deepcompress_cli.stages.entropy import entropy_bits
from deepcompress_cli.tensors import Slot

RNG = np.random.default_rng(0)


def slots(parts: dict) -> dict:
    return {role: Slot(str(a.dtype), len(a)) for role, a in parts.items()}


# ------------------------------------------------------------------------------ sparse (gaps)

def sparse_roundtrip(flat: np.ndarray, keep: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    gaps, values = sparse.encode(flat, keep, bits)
    target = Slot(str(flat.dtype), flat.size)
    parts = {"gaps": gaps, "values": values}
    sparse.check({"index_bits": bits}, target, slots(parts))
    out = sparse.decode({"index_bits": bits}, target, parts)
    assert out.tobytes() == np.where(keep, flat, 0).astype(flat.dtype).tobytes()
    assert int(gaps.max(initial=0)) < 1 << bits
    return gaps, values


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 9, 16])
def test_sparse_adversarial_gaps(bits):
    span = 1 << bits
    for n in (0, 1, 2, span - 1, span, span + 1, 3 * span + 2):
        flat = RNG.standard_normal(n).astype(np.float32) + 10  # no accidental zeros
        for positions in ([], [0], [n - 1], [0, n - 1], list(range(n))):
            keep = np.zeros(n, bool)
            keep[[p for p in positions if 0 <= p < n]] = True
            sparse_roundtrip(flat, keep, bits)
    # gaps of exactly 2^bits - 1, 2^bits and 2^bits + 1 pruned weights in a row
    for run in (span - 2, span - 1, span, span + 1, 5 * span):
        n = 2 * run + 3
        keep = np.zeros(n, bool)
        keep[[0, run + 1, n - 1]] = True
        gaps, _ = sparse_roundtrip(np.ones(n, np.float32), keep, bits)
        assert len(gaps) == 3 + 2 * (run // span)  # one filler per full span in each of the two runs


def test_sparse_fillers_follow_the_seed():
    """3-bit example from the seed: a gap over 8 gets a zero filler 8 positions on."""
    flat = np.zeros(21, np.float32)
    flat[[1, 12]] = [1.5, 2.5]
    gaps, values = sparse.encode(flat, flat != 0, 3)
    # entries at 1, 9 (filler), 12, and 20 (tail filler: fewer than 8 positions may follow the last)
    assert gaps.tolist() == [1, 7, 2, 7] and values.tolist() == [1.5, 0, 2.5, 0]
    decoded = sparse.decode({"index_bits": 3}, Slot("float32", 21), {"gaps": gaps, "values": values})
    assert decoded.tolist() == flat.tolist()
    gaps, _ = sparse.encode(flat[:20], flat[:20] != 0, 3)
    assert gaps.tolist() == [1, 7, 2]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 10), st.lists(st.booleans(), max_size=300), st.integers(0, 2**32 - 1))
def test_sparse_random_masks(bits, mask, seed):
    keep = np.array(mask, dtype=bool)
    flat = np.random.default_rng(seed).standard_normal(len(keep)).astype(np.float32)
    sparse_roundtrip(flat, keep, bits)


def test_sparse_rejects_gaps_past_the_tensor():
    gaps = np.array([3, 3, 3], np.uint8)
    values = np.ones(3, np.float32)
    with pytest.raises(DczError, match="end"):
        sparse.decode({"index_bits": 3}, Slot("float32", 10), {"gaps": gaps, "values": values})
    with pytest.raises(DczError, match="cover"):  # too few entries for the tensor: refused before decoding
        sparse.check({"index_bits": 3}, Slot("float32", 10**12), slots({"gaps": gaps, "values": values}))
    with pytest.raises(DczError, match="over 3 bits"):
        sparse.decode({"index_bits": 3}, Slot("float32", 40), {"gaps": np.array([9, 9], np.uint8),
                                                                  "values": np.ones(2, np.float32)})


# -------------------------------------------------------------------------------------- bitpack

@pytest.mark.parametrize("bits", range(1, 17))
def test_bitpack_round_trip(bits):
    dtype = np.uint8 if bits <= 8 else np.uint16
    for n in (0, 1, 7, 8, 9, 1001):
        values = RNG.integers(0, 1 << bits, n).astype(dtype)
        packed = bitpack.encode(values, bits)
        assert len(packed) == bitpack.packed_size(n, bits)
        out = bitpack.decode({"bits": bits}, Slot(dtype.__name__, n), {"packed": packed})
        assert out.dtype == dtype and np.array_equal(out, values)


# -------------------------------------------------------------------------------------- k-means

def brute_force_kmeans(values, centroids, iterations):
    """Textbook Lloyd: full distance matrix, empty clusters keep their centroid."""
    c = np.sort(centroids.astype(np.float64))
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
        c = np.sort(np.array([values[labels == j].mean() if np.any(labels == j) else c[j]
                              for j in range(len(c))]))
    return c, np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_kmeans_matches_brute_force(init, k):
    for trial in range(5):
        values = np.random.default_rng(trial).laplace(size=200)
        start = initial_centroids(np.sort(values), k, init, seed=trial)
        ours, labels, iterations = kmeans_1d(values, k, init, max_iter=25, tol=0, seed=trial)
        expected, expected_labels = brute_force_kmeans(values, start, iterations)
        assert np.allclose(ours, expected, rtol=0, atol=1e-12)
        assert np.array_equal(labels, expected_labels)


def test_kmeans_inits_differ_as_the_paper_says():
    values = np.random.default_rng(0).standard_normal(10000)
    linear = initial_centroids(np.sort(values), 8, "linear", 0)
    density = initial_centroids(np.sort(values), 8, "density", 0)
    assert linear[0] == values.min() and linear[-1] == values.max()
    assert np.ptp(density) < np.ptp(linear)  # density-based crowds the middle, misses large weights


# -------------------------------------------------------------------------------------- huffman

def huffman_roundtrip(symbols: np.ndarray) -> dict:
    parts, params = huffman.encode(symbols)
    target = Slot(str(symbols.dtype), len(symbols))
    huffman.check(params, target, slots(parts))
    out = huffman.decode(params, target, parts)
    assert out.dtype == symbols.dtype and np.array_equal(out, symbols)
    return parts


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 1023, 1025, 70000])
def test_huffman_round_trips_degenerate_and_random(n):
    rng = np.random.default_rng(n)
    huffman_roundtrip(np.full(n, 7, np.uint8))  # one symbol
    huffman_roundtrip(rng.integers(0, 2, n).astype(np.uint8))
    huffman_roundtrip(rng.integers(0, 256, n).astype(np.uint8))  # all symbols
    huffman_roundtrip(np.minimum(rng.geometric(0.6, n), 255).astype(np.uint8))  # skewed
    huffman_roundtrip(np.minimum(rng.geometric(0.0005, n), 65535).astype(np.uint16))  # wide alphabet


def test_huffman_lengths_are_limited_and_optimal():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])  # unlimited Huffman would need 39-bit codes
    lengths = huffman.code_lengths(np.array(fib)).astype(np.int64)
    assert lengths.max() == 16 and np.sum(2.0 ** -lengths) == 1.0
    for trial in range(100):  # where the limit does not bind: same cost as textbook Huffman
        counts = np.random.default_rng(trial).integers(1, 1000, np.random.default_rng(trial).integers(2, 60))
        heap = [(int(c), i, [i]) for i, c in enumerate(counts)]
        heapq.heapify(heap)
        depth = np.zeros(len(counts), np.int64)
        while len(heap) > 1:
            a, b = heapq.heappop(heap), heapq.heappop(heap)
            depth[a[2] + b[2]] += 1
            heapq.heappush(heap, (a[0] + b[0], min(a[1], b[1]), a[2] + b[2]))
        assert (huffman.code_lengths(counts).astype(np.int64) * counts).sum() == (depth * counts).sum()


@pytest.mark.parametrize("distribution", ["indices5", "indices8", "gaps5", "gaps8"])
def test_huffman_within_one_percent_of_entropy(distribution):
    """Streams like the ones the stages produce: coded size <= 1.01 x entropy, plus the tables."""
    rng = np.random.default_rng(1)
    n = 500_000
    if distribution.startswith("indices"):
        bits = int(distribution[-1])
        symbols = np.clip(np.round(rng.normal((1 << bits) / 2, (1 << bits) / 6, n)), 0, (1 << bits) - 1)
    else:
        bits = int(distribution[-1])
        symbols = np.minimum(rng.geometric(0.15, n) - 1, (1 << bits) - 1)
    symbols = symbols.astype(np.uint8)
    parts = huffman_roundtrip(symbols)
    assert len(parts["code"]) * 8 <= 1.01 * entropy_bits(symbols) + 8
    tables = parts["lengths"].nbytes + parts["blocks"].nbytes
    assert tables * 8 < 0.005 * entropy_bits(symbols)  # the block index stays a small overhead


def test_huffman_rejects_bad_tables():
    symbols = np.random.default_rng(0).integers(0, 8, 5000).astype(np.uint8)
    parts, params = huffman.encode(symbols)
    target = Slot("uint8", len(symbols))

    def decode_with(**changes):
        return huffman.decode(params, target, {**parts, **changes})

    with pytest.raises(DczError, match="limit"):
        decode_with(lengths=np.array([17, 1, 2], np.uint8))
    with pytest.raises(DczError, match="complete prefix code"):  # over-subscribed
        decode_with(lengths=np.array([1, 1, 1], np.uint8))
    with pytest.raises(DczError, match="complete prefix code"):  # incomplete
        decode_with(lengths=np.array([1, 2, 0], np.uint8))
    with pytest.raises(DczError, match="empty"):
        decode_with(lengths=np.zeros(4, np.uint8))
    bad_blocks = parts["blocks"].copy()
    bad_blocks[0] += 1
    bad_blocks[1] -= 1
    with pytest.raises(DczError, match="corrupt huffman"):
        decode_with(blocks=bad_blocks)
    claimed = 8 * len(parts["code"]) + 1  # more symbols than bits: refused before decoding
    with pytest.raises(DczError, match="too short"):
        huffman.check(params, Slot("uint8", claimed), {**slots(parts), "blocks": Slot("uint16", -(-claimed // params["block"]))})
    flipped = parts["code"].copy()
    flipped[len(flipped) // 2] ^= 0xFF
    try:  # a flipped byte either still parses (the CRC catches it in a file) or is refused
        decode_with(code=flipped)
    except DczError:
        pass


def test_codebook_rejects_index_past_the_codebook():
    with pytest.raises(DczError, match="codebook size"):
        codebook.decode({"bits": 2}, Slot("float32", 3),
                        {"codebook": np.ones(2, np.float32), "indices": np.array([0, 1, 2], np.uint8)})
    with pytest.raises(DczError, match="1..2\\^bits"):
        codebook.check({"bits": 2}, Slot("float32", 3), {"codebook": Slot("float32", 5),
                                                          "indices": Slot("uint8", 3)})


def test_huffman_decode_cost_does_not_follow_the_files_block_size(monkeypatch):
    """Few long blocks (block 2048, 16 lanes) decode by pointer doubling over bit positions
    instead of 2048 numpy steps: same symbols, and the same errors for damaged streams."""
    import time

    from deepcompress_cli.codecs import huffman as h
    from deepcompress_cli.codecs.slots import Slot
    from deepcompress_cli.errors import DczError

    rng = np.random.default_rng(0)
    symbols = (rng.geometric(0.9, 32768) % 4).astype(np.uint8)
    monkeypatch.setattr(h, "block_size", lambda n: 2048)
    arrays, params = h.encode(symbols)
    target = Slot("uint8", len(symbols))
    blocks = arrays["blocks"].astype(np.int64)
    args = (len(symbols), 2048, blocks, np.cumsum(blocks), arrays["code"], *h._decode_table(arrays["lengths"]),
            np.dtype("uint8"))
    start = time.perf_counter()
    assert np.array_equal(h.decode(params, target, arrays), symbols)
    doubling = time.perf_counter() - start
    start = time.perf_counter()
    assert np.array_equal(h._decode_lanes(*args).reshape(-1), symbols)
    assert doubling < time.perf_counter() - start  # the lane loop is the slow way here
    for k in range(0, len(arrays["code"]) - 1, 97):  # damaged: both decoders agree, or both refuse
        code = arrays["code"].copy()
        code[k] ^= 0x10
        results = []
        for decoder in (h._decode_lanes, h._decode_doubling):
            try:
                results.append(decoder(*args[:4], code, *args[5:]).tobytes())
            except DczError:
                results.append("error")
        assert results[0] == results[1]
