"""The Huffman stage: every integer stream (gaps, indices) re-coded with canonical Huffman codes."""

from __future__ import annotations

import numpy as np

from .. import container
from ..encoding import build, file_cost, parse, readable
from ..tensors import Package, Tensor
from . import map_weights, no_progress, require_compressible

HEADER_ALIGN = container.ALIGN  # the container pads the header to this


def entropy_bits(symbols: np.ndarray) -> float:
    """Zeroth-order entropy of the stream, in bits (the bound a symbol-by-symbol code approaches)."""
    if len(symbols) == 0:
        return 0.0
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * len(symbols))


def huffman_tensor(tensor: Tensor) -> tuple[Tensor, dict]:
    require_compressible(tensor, "Huffman-coded")
    form = parse(tensor)
    streams = {"gaps": form.gaps, "indices": getattr(form.values, "indices", None),
               "codes": getattr(form.values, "codes", None)}
    streams = {k: v for k, v in streams.items() if v is not None}
    new = build(tensor, form.with_(entropy="huffman")) if streams else tensor
    # Lossless, so never worth a bigger file: keep the input's encoding unless the new one costs
    # fewer file bytes (header text and padding included; by a margin of the header's own 64-byte
    # padding, which more header text can push one step), or if the reader would refuse it.
    if new is not tensor and (file_cost(new) + HEADER_ALIGN > file_cost(tensor) or not readable(new)):
        new = tensor
    row = {"name": tensor.name, "kind": tensor.kind, "bytes_before": tensor.stored_bytes,
           "bytes_after": new.stored_bytes, "streams": {}}
    for slot, symbols in streams.items():
        stored = {k: s.length for k, s in new.streams.items() if k == slot or k.startswith(slot + ".")}
        coded = f"{slot}.code" in stored
        row["streams"][slot] = {
            "symbols": len(symbols), "coding": "huffman" if coded else "packed",
            "entropy_bytes": round(entropy_bits(symbols) / 8, 1),
            "code_bytes": stored[f"{slot}.code"] if coded else sum(stored.values()),
            "coded_bytes": sum(stored.values()),
        }
    return new, row


def huffman(package: Package, progress=no_progress, jobs: int = 1) -> list[dict]:
    return map_weights(package, huffman_tensor, progress, "huffman", jobs)
