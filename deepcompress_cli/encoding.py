"""The logical form of a compressed weight, and its mapping to and from codec chains.

Stages think in terms of `WeightForm` (where the kept weights are, what their values are, how
integer streams are stored); only this module knows which chain of codecs represents a form:

    dense, raw floats           raw
    pruned                      sparse(index_bits) -> gaps (packed at index_bits), values (floats)
    shared                      [sparse ->] codebook(bits) -> codebook (floats), indices (packed at bits)
    ... + huffman               every integer stream (gaps, indices) Huffman-coded instead of packed
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .codecs import bitpack, codebook, decode_slot, huffman, sparse
from .tensors import Slot, Step, Stream, Tensor

ENTROPY = ("packed", "huffman")


@dataclass
class WeightForm:
    shape: tuple[int, ...]
    dtype: str
    values: np.ndarray | None = None  # floats: the dense tensor, or one per sparse entry
    gaps: np.ndarray | None = None  # sparse relative index (None: dense)
    index_bits: int = 0
    centroids: np.ndarray | None = None  # shared weights: values = centroids[indices]
    indices: np.ndarray | None = None
    bits: int = 0
    entropy: str = "packed"

    @property
    def is_sparse(self) -> bool:
        return self.gaps is not None

    @property
    def is_shared(self) -> bool:
        return self.centroids is not None

    def entry_values(self) -> np.ndarray:
        """The float value of every entry (every weight when dense)."""
        return self.centroids[self.indices] if self.is_shared else self.values

    def with_(self, **changes) -> "WeightForm":
        return replace(self, **changes)


def entropy_of(tensor: Tensor) -> str:
    return "huffman" if any(s.codec == "huffman" for s in tensor.chain) else "packed"


def parse(tensor: Tensor) -> WeightForm:
    """Read a tensor's chain back into its logical form (decoding integer streams)."""
    form = WeightForm(shape=tensor.shape, dtype=tensor.dtype)
    first = tensor.chain[0]
    values_slot = "tensor"
    if first.codec == "sparse":
        form.gaps = decode_slot(tensor, first.outputs["gaps"])
        form.index_bits = first.params["index_bits"]
        values_slot = first.outputs["values"]
    producer = next((s for s in tensor.chain if s.input == values_slot), None)
    if producer is not None and producer.codec == "codebook":
        form.centroids = decode_slot(tensor, producer.outputs["codebook"])
        form.indices = decode_slot(tensor, producer.outputs["indices"])
        form.bits = producer.params["bits"]
    else:
        form.values = decode_slot(tensor, values_slot)
    form.entropy = entropy_of(tensor)
    return form


def build(tensor: Tensor, form: WeightForm) -> Tensor:
    """A new table entry (same name, kind and op as `tensor`) storing `form`."""
    steps: list[Step] = []
    slots: dict[str, Slot] = {}
    streams: dict[str, Stream] = {}

    def store(slot: str, array: np.ndarray) -> None:
        slots[slot] = Slot(str(array.dtype), len(array))
        streams[slot] = Stream.of(array)

    def store_integers(slot: str, array: np.ndarray, bits: int) -> None:
        # Huffman only where it is smaller than the fixed-width form (tiny streams lose to tables).
        slots[slot] = Slot(str(array.dtype), len(array))
        packed = bitpack.encode(array, bits) if bits % 8 else array  # whole bytes need no packing
        if form.entropy == "huffman":
            parts, params = huffman.encode(array)
            if sum(p.nbytes for p in parts.values()) + 2 * 63 < packed.nbytes:  # + alignment padding
                steps.append(Step("huffman", slot, {role: f"{slot}.{role}" for role in parts}, params))
                for role, part in parts.items():
                    store(f"{slot}.{role}", part)
                return
        if bits % 8:
            steps.append(Step("bitpack", slot, {"packed": f"{slot}.packed"}, {"bits": bits}))
            store(f"{slot}.packed", packed)
        else:
            streams[slot] = Stream.of(array)

    values_slot = "tensor"
    integer_streams = []
    if form.is_sparse:
        steps.append(Step("sparse", "tensor", {"gaps": "gaps", "values": "values"},
                          {"index_bits": form.index_bits}))
        slots["values"] = Slot(form.dtype, len(form.gaps))
        integer_streams.append(("gaps", form.gaps, form.index_bits))
        values_slot = "values"
    if form.is_shared:
        steps.append(Step("codebook", values_slot, {"codebook": "codebook", "indices": "indices"},
                          {"bits": form.bits}))
        store("codebook", form.centroids.astype(form.dtype))
        integer_streams.append(("indices", form.indices, form.bits))
    elif form.is_sparse:
        store("values", form.values.astype(form.dtype))
    else:
        steps.append(Step("raw", "tensor", {"data": "data"}))
        store("data", np.ascontiguousarray(form.values, dtype=form.dtype).reshape(-1))
    for slot, array, bits in integer_streams:
        store_integers(slot, array, bits)
    return Tensor(name=tensor.name, dtype=tensor.dtype, shape=tensor.shape, kind=tensor.kind,
                  chain=steps, slots=slots, streams=streams, op=tensor.op)


def sparse_form(tensor_values: np.ndarray, keep: np.ndarray, index_bits: int, dtype: str) -> WeightForm:
    gaps, values = sparse.encode(tensor_values.reshape(-1), keep.reshape(-1), index_bits)
    return WeightForm(shape=tensor_values.shape, dtype=dtype, values=values, gaps=gaps, index_bits=index_bits)


def index_dtype(bits: int):
    return np.dtype(codebook.index_dtype(bits))
