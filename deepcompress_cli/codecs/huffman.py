"""`huffman`: canonical Huffman coding of an unsigned integer stream (uint8 or uint16 symbols).

Roles:
- `lengths` (uint8 × alphabet size): code length of each symbol, 0 = unused, at most 16.
  Codes are canonical: symbols sorted by (length, symbol value) get consecutive codes.
- `blocks` (uint16 × ceil(count / block)): bit length of each block of `block` symbols, so
  that all blocks can be decoded at once in parallel lanes.
- `code` (uint8): the codes, MSB first, blocks back to back, zero bits to the last byte.

Lengths are limited to 16 bits by package-merge (optimal among length-limited codes), so the
decode table has at most 2^16 entries.  A one-symbol alphabet uses the 1-bit code `0`.
"""

from __future__ import annotations

import numpy as np

from ..errors import DczError

NAME = "huffman"
ROLES = ("lengths", "blocks", "code")
MAX_LENGTH = 16
MAX_BLOCK = 2048  # block × 16 bits must fit the uint16 block lengths


def label(params: dict) -> str:
    return NAME


def block_size(count: int) -> int:
    """Symbols per block: enough lanes (~64+) for small streams, at most 1024 for big ones.

    Decoding runs `block` numpy steps over all lanes at once, so a smaller block decodes faster;
    each block costs 16 bits of table, which at 1024 symbols is < 0.02 bit per symbol.
    """
    return int(min(1024, max(16, 1 << max(0, (count - 1) // 64).bit_length())))


# ---------------------------------------------------------------------------------- code lengths

def code_lengths(counts: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Optimal code lengths with none over `max_length` bits (package-merge)."""
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts)
    if len(used) <= 1:
        lengths[used] = 1
        return lengths
    if len(used) > 1 << max_length:
        raise ValueError("alphabet too large for the length limit")
    order = used[np.argsort(counts[used], kind="stable")]
    leaf_weights = counts[order].astype(np.int64)
    n = len(order)
    # levels[d] lists the items available at depth max_length - d, lightest first: every leaf, plus
    # "packages" pairing consecutive items of the level below.  -1 marks a package.
    weights, tags = leaf_weights, np.arange(n)
    levels = [tags]
    for _ in range(max_length - 1):
        pairs = weights[: len(weights) // 2 * 2].reshape(-1, 2).sum(axis=1)
        merged = np.concatenate((leaf_weights, pairs))
        merged_tags = np.concatenate((np.arange(n), np.full(len(pairs), -1)))
        by_weight = np.argsort(merged, kind="stable")  # leaves first among equal weights
        weights, tags = merged[by_weight], merged_tags[by_weight]
        levels.append(tags)
    # The 2n-2 lightest items of the top level form the code; a leaf's length is how many selected
    # items (at any level) contain it; selecting p packages selects the first 2p items below.
    depth = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for tags in reversed(levels):
        chosen = tags[:take]
        depth += np.bincount(chosen[chosen >= 0], minlength=n)
        take = 2 * int(np.count_nonzero(chosen < 0))
    lengths[order] = depth
    return lengths


def canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(symbols in canonical order, the start of each one's interval in [0, 2^L), L = max length)."""
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    top = int(lengths.max()) if len(used) else 0
    sizes = np.int64(1) << (top - lengths[order].astype(np.int64))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    return order, starts, top


# ------------------------------------------------------------------------------------- encoding

def encode(symbols: np.ndarray) -> tuple[dict, dict]:
    """Code a uint8/uint16 array; returns ({role: array}, params)."""
    n = len(symbols)
    block = block_size(n)
    if n == 0:
        return {"lengths": np.zeros(0, np.uint8), "blocks": np.zeros(0, np.uint16),
                "code": np.zeros(0, np.uint8)}, {"block": block}
    counts = np.bincount(symbols)
    lengths = code_lengths(counts)
    order, starts, top = canonical(lengths)
    codes = np.zeros(len(lengths), dtype=np.uint64)
    codes[order] = (starts >> (top - lengths[order].astype(np.int64))).astype(np.uint64)
    size = lengths.astype(np.int64)[symbols]
    ends = np.cumsum(size)
    offsets = ends - size
    total = int(ends[-1])
    # Place each code MSB-first into a 64-bit window aligned on its 32-bit word, then add the
    # high and low halves into the words: codes never overlap, so the sums are exact ORs (and
    # exact in float64, which bincount uses for weights).
    shift = (64 - (offsets & 31) - size).astype(np.uint64)
    window = codes[symbols] << shift
    word = offsets >> 5
    n_words = total // 32 + 2
    words = np.bincount(word, weights=(window >> np.uint64(32)).astype(np.float64), minlength=n_words)
    words += np.bincount(word + 1, weights=(window & np.uint64(0xFFFFFFFF)).astype(np.float64),
                         minlength=n_words)[:n_words]
    code = np.frombuffer(words.astype(">u4").tobytes(), dtype=np.uint8)[: (total + 7) // 8].copy()
    block_ends = ends[np.minimum(np.arange(block, n + block, block), n) - 1]
    blocks = np.diff(np.concatenate(([0], block_ends))).astype(np.uint16)
    return {"lengths": lengths, "blocks": blocks, "code": code}, {"block": block}


# ------------------------------------------------------------------------------------- decoding

def check(params: dict, target, parts: dict) -> None:
    if set(params) != {"block"} or type(params["block"]) is not int or not 1 <= params["block"] <= MAX_BLOCK:
        raise DczError(f"huffman needs params {{block: 1..{MAX_BLOCK}}}")
    if params["block"] > max(16, target.count // 16):  # decoding takes `block` numpy steps: bound the work
        raise DczError(f"huffman block {params['block']} too large for {target.count} symbols")
    if target.dtype not in ("uint8", "uint16"):
        raise DczError(f"huffman cannot produce {target.dtype}")
    lengths, blocks, code = parts["lengths"], parts["blocks"], parts["code"]
    alphabet = 256 if target.dtype == "uint8" else 65536
    if lengths.dtype != "uint8" or not (target.count == 0 or 1 <= lengths.count) or lengths.count > alphabet:
        raise DczError("huffman code-length table has the wrong type or size")
    if blocks.dtype != "uint16" or blocks.count != -(-target.count // params["block"]):
        raise DczError("huffman block table does not match count / block")
    if code.dtype != "uint8" or target.count > 8 * code.count:
        raise DczError("huffman stream too short for its symbol count (every code is >= 1 bit)")


def decode(params: dict, target, arrays: dict) -> np.ndarray:
    n, block = target.count, params["block"]
    lengths, blocks, code = arrays["lengths"], arrays["blocks"].astype(np.int64), arrays["code"]
    if n == 0:
        return np.zeros(0, dtype=target.dtype)
    table_sym, table_len, top = _decode_table(lengths)
    if np.count_nonzero(lengths) == 1 and code.any():  # the only code is `0`: a 1 bit is no code
        raise DczError("huffman code of a one-symbol alphabet must be all zero bits")
    ends = np.cumsum(blocks)
    if (int(ends[-1]) + 7) // 8 != len(code):
        raise DczError("huffman block lengths do not add up to the stream length")
    pad = 8 * len(code) - int(ends[-1])  # 0..7 unused low bits of the last byte (MSB first)
    if pad and int(code[-1]) & ((1 << pad) - 1):
        raise DczError("huffman pad bits are not zero")
    # Two ways to find the codes, same result: lanes (`block` numpy steps, one symbol of every
    # block each) are fast when there are many blocks; pointer doubling over bit positions costs
    # O(bits x log block) whatever `block` is, so a file choosing few, long blocks stays cheap.
    lanes = len(blocks)
    if block * (LANE_STEP_COST + lanes) <= int(ends[-1]) * max(1, (block - 1).bit_length()):
        out = _decode_lanes(n, block, blocks, ends, code, table_sym, table_len, top, target.dtype)
    else:
        out = _decode_doubling(n, block, blocks, ends, code, table_sym, table_len, top, target.dtype)
    return out.reshape(-1)[:n]


# The fixed cost of one numpy step of the lane decoder, in units of one lane's work in that step
# (measured: ~70 us against ~0.2 us per lane); one doubling round per bit costs about the same unit.
LANE_STEP_COST = 400
DOUBLING_CHUNK_BITS = 1 << 22  # bit positions per doubling pass: bounds its tables to ~100 MB


def _corrupt():
    return DczError("corrupt huffman stream (a block does not end where its length says)")


def _decode_lanes(n, block, blocks, ends, code, table_sym, table_len, top, dtype):
    starts = ends - blocks
    # Zero padding lets every lane read 24 bits anywhere it can reach, even in a corrupt stream
    # (at most `block` codes of <= 16 bits past its start), so reads never leave the buffer.
    data = np.concatenate((code, np.zeros(2 * block + 4, np.uint8))).astype(np.uint32)
    lanes = len(blocks)
    last = n - (lanes - 1) * block  # symbols in the last block
    out = np.empty((lanes, block), dtype=dtype)
    pos = starts.copy()
    mask = (1 << top) - 1
    for j in range(block):  # one symbol of every block per step: the lanes run in parallel
        live = lanes if j < last else lanes - 1
        p = pos[:live]
        byte = p >> 3
        window = (data[byte] << 16) | (data[byte + 1] << 8) | data[byte + 2]
        peek = (window >> (24 - top - (p & 7)).astype(np.uint32)) & mask
        out[:live, j] = table_sym[peek]
        p += table_len[peek]
    if not np.array_equal(pos, ends):
        raise _corrupt()
    return out


def _decode_doubling(n, block, blocks, ends, code, table_sym, table_len, top, dtype):
    """Decode at every bit position (symbol, next code's position), then follow each block's
    chain by doubling: after round r, column j of `pos` is the j-th code of the block for all
    j < 2^r.  Blocks are taken a chunk of bits at a time; a chain leaving its chunk is corrupt."""
    starts = ends - blocks
    lanes = len(blocks)
    wanted = (block, n - (lanes - 1) * block)  # symbols per block, and in the last one
    rounds = max(1, (block - 1).bit_length())
    data = np.concatenate((code, np.zeros(3, np.uint8))).astype(np.uint32)
    mask = (1 << top) - 1
    out = np.empty((lanes, block), dtype=dtype)
    first = 0
    while first < lanes:
        lo = int(starts[first])
        stop = max(first + 1, int(np.searchsorted(ends, lo + DOUBLING_CHUNK_BITS, side="right")))
        width = int(ends[stop - 1]) - lo  # the chunk's bits; position `width` is its end
        p = np.arange(lo, lo + width, dtype=np.int64)
        window = (data[p >> 3] << 16) | (data[(p >> 3) + 1] << 8) | data[(p >> 3) + 2]
        peek = (window >> (24 - top - (p & 7)).astype(np.uint32)) & mask
        del p, window
        dead = width + 1  # absorbing: past the chunk's end, or stepping on from its end
        index = np.int32 if dead < (1 << 31) else np.int64
        jump = np.full(dead + 1, dead, dtype=index)
        jump[:width] = np.minimum(np.arange(width, dtype=index) + table_len[peek].astype(index), dead)
        jump[width] = dead
        symbols = np.zeros(dead + 1, dtype=table_sym.dtype)
        symbols[:width] = table_sym[peek]
        del peek
        pos = (starts[first:stop] - lo).astype(index)[:, None]
        reach = [pos[:, 0].copy(), pos[:, 0].copy()]  # after `wanted[k]` steps
        for r in range(rounds + 1):
            for k in range(2):
                if (wanted[k] >> r) & 1:
                    reach[k] = jump[reach[k]]
            if r == rounds:
                break
            pos = np.concatenate((pos, jump[pos]), axis=1)
            jump = jump[jump]
        arrived = reach[0]
        if stop == lanes:
            arrived[-1] = reach[1][-1]
        if not np.array_equal(arrived, ends[first:stop] - lo):
            raise _corrupt()
        out[first:stop] = symbols[pos[:, :block]]
        first = stop
    return out


def _decode_table(lengths: np.ndarray):
    if len(lengths) == 0 or int(lengths.max()) == 0:
        raise DczError("huffman code-length table is empty")
    if int(lengths.max()) > MAX_LENGTH:
        raise DczError(f"huffman code length {int(lengths.max())} over the {MAX_LENGTH}-bit limit")
    used = lengths[lengths > 0].astype(np.int64)
    kraft = int(np.sum(np.int64(1) << (MAX_LENGTH - used)))
    single = len(used) == 1 and used[0] == 1
    if kraft != 1 << MAX_LENGTH and not single:
        raise DczError("huffman code lengths do not form a complete prefix code")
    order, starts, top = canonical(lengths)
    sizes = np.int64(1) << (top - lengths[order].astype(np.int64))
    table_sym = np.repeat(order, sizes).astype(np.uint16)
    table_len = np.repeat(lengths[order], sizes).astype(np.int64)
    if single:  # code `0` only: let the unused `1` decode the same way, so lanes always advance
        table_sym, table_len = np.repeat(table_sym, 2), np.repeat(table_len, 2)
    return table_sym, table_len, top
