"""The logical form of a compressed weight, and its mapping to and from codec chains.

Stages think in terms of `WeightForm`: where the kept weights are (dense, or a sparse relative
index), how their values are stored (plain floats, shared centroids, or linear integer codes) and
how integer streams are stored (fixed width or Huffman).  Only this module knows the chains:

    dense, plain floats         raw
    pruned                      sparse(index_bits) -> gaps (packed at index_bits), values (floats)
    shared                      [sparse ->] codebook(bits) -> codebook (floats), indices (packed at bits)
    quantized                   [sparse ->] linear(bits) -> codes (packed at bits), scales, zero_points
    ... + huffman               integer streams (gaps, indices, codes) Huffman-coded where smaller
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .codecs import bitpack, decode_slot, huffman, linear, sparse
from .tensors import Slot, Step, Stream, Tensor

@dataclass
class Plain:
    values: np.ndarray  # floats: the dense tensor, or one per sparse entry

    def floats(self) -> np.ndarray:
        return self.values


@dataclass
class Shared:
    centroids: np.ndarray
    indices: np.ndarray
    bits: int

    def floats(self) -> np.ndarray:
        return self.centroids[self.indices]


@dataclass
class Quantized:
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    channels: int = 1
    inner: int = 1
    symmetric: bool = False

    @property
    def params(self) -> dict:
        return {"bits": self.bits, "channels": self.channels, "inner": self.inner, "symmetric": self.symmetric}

    def floats(self) -> np.ndarray:
        return linear.decode(self.params, Slot("float32", len(self.codes)),
                             {"codes": self.codes, "scales": self.scales, "zero_points": self.zero_points})


@dataclass
class WeightForm:
    shape: tuple[int, ...]
    dtype: str
    values: Plain | Shared | Quantized
    gaps: np.ndarray | None = None  # sparse relative index (None: dense)
    index_bits: int = 0
    entropy: str = "packed"

    @property
    def is_sparse(self) -> bool:
        return self.gaps is not None

    def entry_values(self) -> np.ndarray:
        """The float value of every entry (every weight when dense)."""
        return self.values.floats()

    def with_(self, **changes) -> "WeightForm":
        return replace(self, **changes)


def entropy_of(tensor: Tensor) -> str:
    return "huffman" if any(s.codec == "huffman" for s in tensor.chain) else "packed"


def parse(tensor: Tensor) -> WeightForm:
    """Read a tensor's chain back into its logical form (decoding integer streams)."""
    if tensor.form is not None:  # built by a stage in this run: the form it stored, as stored
        return tensor.form
    first = tensor.chain[0]
    gaps, index_bits, values_slot = None, 0, "tensor"
    if first.codec == "sparse":
        gaps, index_bits = decode_slot(tensor, first.outputs["gaps"]), first.params["index_bits"]
        values_slot = first.outputs["values"]
    producer = next((s for s in tensor.chain if s.input == values_slot), None)
    codec = producer.codec if producer is not None else None
    if codec == "codebook":
        values = Shared(decode_slot(tensor, producer.outputs["codebook"]),
                        decode_slot(tensor, producer.outputs["indices"]), producer.params["bits"])
    elif codec == "linear":
        p = producer.params
        values = Quantized(*(decode_slot(tensor, producer.outputs[r]) for r in ("codes", "scales", "zero_points")),
                           bits=p["bits"], channels=p["channels"], inner=p["inner"], symmetric=p["symmetric"])
    else:
        values = Plain(decode_slot(tensor, values_slot))
    return WeightForm(tensor.shape, tensor.dtype, values, gaps, index_bits, entropy_of(tensor))


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
    v = form.values
    if isinstance(v, Shared):
        steps.append(Step("codebook", values_slot, {"codebook": "codebook", "indices": "indices"}, {"bits": v.bits}))
        store("codebook", v.centroids.astype(form.dtype))
        integer_streams.append(("indices", v.indices, v.bits))
    elif isinstance(v, Quantized):
        steps.append(Step("linear", values_slot, {r: r for r in ("codes", "scales", "zero_points")}, v.params))
        store("scales", v.scales.astype(np.float32))
        store("zero_points", v.zero_points)
        integer_streams.append(("codes", v.codes, v.bits))
    elif form.is_sparse:
        store("values", v.values.astype(form.dtype))
    else:
        steps.append(Step("raw", "tensor", {"data": "data"}))
        store("data", np.ascontiguousarray(v.values, dtype=form.dtype).reshape(-1))
    for slot, array, bits in integer_streams:
        store_integers(slot, array, bits)
    new = Tensor(name=tensor.name, dtype=tensor.dtype, shape=tensor.shape, kind=tensor.kind,
                 chain=steps, slots=slots, streams=streams, op=tensor.op)
    new.form = _as_stored(form).with_(entropy=entropy_of(new))
    return new


def _as_stored(form: WeightForm) -> WeightForm:
    """`form` with its arrays in the dtypes `build` stores them in: exactly what `parse` of the
    built entry would decode, so using it instead cannot change any later stage's output."""
    v = form.values
    if isinstance(v, Shared):
        v = Shared(v.centroids.astype(form.dtype, copy=False), v.indices, v.bits)
    elif isinstance(v, Quantized):
        v = replace(v, scales=v.scales.astype(np.float32, copy=False))
    else:
        v = Plain(np.ascontiguousarray(v.values, dtype=form.dtype).reshape(-1))
    return form.with_(values=v)


def sparse_form(tensor_values: np.ndarray, keep: np.ndarray, index_bits: int, dtype: str) -> WeightForm:
    gaps, values = sparse.encode(tensor_values.reshape(-1), keep.reshape(-1), index_bits)
    return WeightForm(tensor_values.shape, dtype, Plain(values), gaps=gaps, index_bits=index_bits)


def dense_form(tensor_values: np.ndarray, dtype: str) -> WeightForm:
    return WeightForm(tensor_values.shape, dtype, Plain(tensor_values.reshape(-1)))


def dense_codes(form: WeightForm) -> np.ndarray:
    """A quantized form's codes for every element: pruned positions get the zero point (= 0.0)."""
    q = form.values
    if not form.is_sparse:
        return q.codes
    numel = int(np.prod(form.shape, dtype=np.int64))
    shifted = sparse.decode({"index_bits": form.index_bits}, Slot("int32", numel),
                            {"gaps": form.gaps, "values": q.codes.astype(np.int32) - int(q.zero_points[0])})
    return (shifted + int(q.zero_points[0])).astype(q.codes.dtype)
