"""The logical form of a compressed weight, and its mapping to and from codec chains.

Stages think in terms of `WeightForm`: where the kept weights are (dense, or a sparse relative
index), how their values are stored (plain floats, shared centroids, or linear integer codes) and
how integer streams are stored (fixed width or Huffman).  Only this module knows the chains:

    dense, plain floats         raw
    pruned                      sparse(index_bits) -> gaps (packed at index_bits), values (floats)
    shared                      [sparse ->] codebook(bits) -> codebook (floats), indices (packed at bits)
    quantized                   [sparse ->] linear(bits) -> codes (packed at bits), scales, zero_points
    channel-scaled              scale(channels, inner) -> channel_scales, then any form above on the
                                scaled-down values (slot `scaled` instead of `tensor`; a plain dense
                                one is the stream `scaled` itself)
    ... + huffman               integer streams (gaps, indices, codes) Huffman-coded where smaller
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from . import container
from .codecs import bitpack, decode_slot, huffman, linear, scale, sparse, validate_chain
from .errors import DczError
from .tensors import Slot, Step, Stream, Tensor, uint_dtype


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
    # A `scale` step before everything else: the tensor is the form's values times its channel's
    # scale (float32, one per channel, channel of element i = (i // inner) % channels).  None: no step.
    scales: np.ndarray | None = None
    channels: int = 1
    inner: int = 1

    @property
    def is_sparse(self) -> bool:
        return self.gaps is not None

    @property
    def is_scaled(self) -> bool:
        return self.scales is not None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def scale_params(self) -> dict:
        return {"channels": self.channels, "inner": self.inner}

    def entry_values(self) -> np.ndarray:
        """The float value of every entry (every weight when dense) as stored: before any
        channel scaling (a scaled form's entries are the scaled-down values)."""
        return self.values.floats()

    def dense_values(self) -> np.ndarray:
        """The decoded tensor (flat, in the form's dtype), whatever the form: exactly what a
        reader decodes from the entry `build` makes of it (the codecs' own decode steps)."""
        flat = np.ascontiguousarray(self.entry_values(), dtype=self.dtype).reshape(-1)
        if self.is_sparse:
            flat = sparse.decode({"index_bits": self.index_bits}, Slot(self.dtype, self.numel),
                                 {"gaps": self.gaps, "values": flat})
        if self.is_scaled:
            flat = scale.decode(self.scale_params, Slot(self.dtype, self.numel),
                                {"values": flat, "scales": self.scales.astype(np.float32, copy=False)})
        return flat

    def unscaled(self) -> "WeightForm":
        """The same weights without a scale step: the same positions (sparse entries, fillers
        included), each entry's decoded value plain.  A stage that re-derives the values (quantize,
        share) starts from this, so that it works on the real weights, not the scaled-down ones."""
        if not self.is_scaled:
            return self
        dense = self.dense_values()
        entries = dense[sparse.positions({"index_bits": self.index_bits}, Slot(self.dtype, self.numel), self.gaps)] \
            if self.is_sparse else dense
        return self.with_(values=Plain(entries), scales=None, channels=1, inner=1)

    def with_(self, **changes) -> "WeightForm":
        return replace(self, **changes)


def entropy_of(tensor: Tensor) -> str:
    return "huffman" if any(s.codec == "huffman" for s in tensor.chain) else "packed"


def quantized_form(tensor: Tensor) -> WeightForm | None:
    """The tensor's form when its values are linear codes (what `export --qdq` and the int8
    interpreter can use as they are), else None: a `linear` step elsewhere in the chain (say on a
    codebook's values) does not make the weight's own values codes.

    A channel-scaled form (`scale` -> [`sparse` ->] `linear`) is given as the equivalent dense
    per-channel one: the same codes (the zero point where pruned), each channel's step the linear
    scale times the channel's scale.  That equals the decoded tensor up to float32 rounding of
    the product (the reader multiplies twice).  When no such form exists (a layout that is no axis
    of the shape, a product that is not a finite positive float32): None, and the user decodes
    the floats (the int8 interpreter then quantizes them itself)."""
    if not any(s.codec == "linear" for s in tensor.chain):
        return None
    form = parse(tensor)
    if not isinstance(form.values, Quantized):
        return None
    return _folded(form) if form.is_scaled else form


def _folded(form: WeightForm) -> WeightForm | None:
    """A scaled quantized form as one dense per-channel Quantized (see quantized_form), or None."""
    q, channels, inner = form.values, form.channels, form.inner
    if q.channels == 1:
        steps = np.full(channels, q.scales[0], dtype=np.float64)
        zero_points = np.full(channels, q.zero_points[0], dtype=q.zero_points.dtype)
    elif (q.channels, q.inner) == (channels, inner) and not form.is_sparse:
        steps, zero_points = q.scales.astype(np.float64), q.zero_points
    else:
        return None
    if channels > 1 and linear.channel_axis(form.shape, channels, inner) is None:
        return None
    with np.errstate(over="ignore", under="ignore"):
        scales = (steps * form.scales.astype(np.float64)).astype(np.float32)
    if not np.all(np.isfinite(scales)) or not np.all(scales > 0):
        return None
    codes = dense_codes(form.with_(scales=None))
    return WeightForm(form.shape, form.dtype, replace(q, codes=codes, scales=scales, zero_points=zero_points,
                                                      channels=channels, inner=inner), entropy=form.entropy)


def parse(tensor: Tensor) -> WeightForm:
    """Read a tensor's chain back into its logical form (decoding integer streams)."""
    if tensor.form is not None:  # built by a stage in this run: the form it stored, as stored
        return tensor.form
    first = tensor.chain[0]
    scaled = {}
    base = "tensor"  # the slot holding the (scaled-down) tensor
    if first.codec == "scale":
        scaled = {"scales": decode_slot(tensor, first.outputs["scales"]), **first.params}
        base = first.outputs["values"]
    gaps, index_bits, values_slot = None, 0, base
    step = next((s for s in tensor.chain if s.input == base), None)
    if step is not None and step.codec == "sparse":
        gaps, index_bits = decode_slot(tensor, step.outputs["gaps"]), step.params["index_bits"]
        values_slot = step.outputs["values"]
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
    return WeightForm(tensor.shape, tensor.dtype, values, gaps, index_bits, entropy_of(tensor), **scaled)


def build(tensor: Tensor, form: WeightForm) -> Tensor:
    """A new table entry (same name, kind and op as `tensor`) storing `form`."""
    steps: list[Step] = []
    slots: dict[str, Slot] = {}
    streams: dict[str, Stream] = {}

    def store(slot: str, array: np.ndarray) -> None:
        slots[slot] = Slot(str(array.dtype), len(array))
        streams[slot] = Stream.of(array)

    def store_integers(slot: str, array: np.ndarray, bits: int) -> None:
        # Huffman only where it is smaller than the fixed-width form, counting what each adds to
        # the file (padding, header): tiny streams lose to their code tables.
        slots[slot] = Slot(str(array.dtype), len(array))
        packed = bitpack.encode(array, bits) if bits % 8 else array  # whole bytes need no packing
        fixed = Step("bitpack", slot, {"packed": f"{slot}.packed"}, {"bits": bits}) if bits % 8 else None
        if form.entropy == "huffman":
            parts, params = huffman.encode(array)
            coded = Step("huffman", slot, {role: f"{slot}.{role}" for role in parts}, params)
            as_slots = {f"{slot}.{role}": Slot(str(part.dtype), part.size) for role, part in parts.items()}
            whole = {slot: slots[slot]}
            if fixed:
                plain = _cost([fixed], {f"{slot}.packed": Slot("uint8", packed.size)}, whole)
            else:
                plain = _cost([], whole, {})
            if _cost([coded], as_slots, whole) < plain:
                steps.append(coded)
                for role, part in parts.items():
                    store(f"{slot}.{role}", part)
                return
        if fixed:
            steps.append(fixed)
            store(f"{slot}.packed", packed)
        else:
            streams[slot] = Stream.of(array)

    values_slot = "tensor"
    if form.is_scaled:
        steps.append(Step("scale", "tensor", {"values": "scaled", "scales": "channel_scales"}, form.scale_params))
        slots["scaled"] = Slot(form.dtype, form.numel)
        store("channel_scales", form.scales.astype(np.float32))
        values_slot = "scaled"
    base = values_slot
    integer_streams = []
    if form.is_sparse:
        steps.append(Step("sparse", base, {"gaps": "gaps", "values": "values"},
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
    elif form.is_scaled:  # the scaled-down tensor is itself the stream
        store("scaled", np.ascontiguousarray(v.values, dtype=form.dtype).reshape(-1))
    else:
        steps.append(Step("raw", "tensor", {"data": "data"}))
        store("data", np.ascontiguousarray(v.values, dtype=form.dtype).reshape(-1))
    for slot, array, bits in integer_streams:
        store_integers(slot, array, bits)
    new = Tensor(name=tensor.name, dtype=tensor.dtype, shape=tensor.shape, kind=tensor.kind,
                 chain=steps, slots=slots, streams=streams, op=tensor.op)
    new.form = _as_stored(form).with_(entropy=entropy_of(new))
    return new


def readable(tensor: Tensor) -> bool:
    """Whether the reader accepts this entry, by its own rules (structure, sizes, the expansion
    bound): a stage tries another form instead of writing a file that `info` refuses."""
    try:
        validate_chain(tensor)
    except DczError:
        return False
    return True


# What each stream costs in the file beyond its bytes, as container.write lays it out by default
# (the compact 1.1 layout): the padding container.stream_start puts before it (none for small
# streams, up to 63 bytes before an aligned one: counted at worst), and its header text (its row
# in the stream table, its slot and stream entries, the steps), which the header's zlib shrinks:
# measured on the sample models and mnist_cnn, a tensor entry's extra JSON deflates to 0.2-0.34 of
# its raw bytes, so a third, rounded up (overestimating the header only makes Huffman pay less often).
_LAYOUT = container.FLAG_PACKED  # what container.write(compact=True) uses
_HEADER_DEFLATE = 3  # raw header bytes per stored byte, at least
_STREAM_ROW = len('{"crc32":4294967295,"length":,"offset":4294967296},')


def _json_size(value) -> int:
    return len(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True))


def _stream_bytes(nbytes: int) -> int:
    """A stream's bytes plus the most padding the layout can put before it."""
    worst_end = 1  # one byte past an aligned offset: the most padding an aligned start needs
    return container.stream_start(worst_end, nbytes, _LAYOUT) - worst_end + nbytes


def _cost(steps: list[Step], leaves: dict[str, Slot], inner: dict[str, Slot]) -> int:
    """File bytes of some steps, the streams they leave and the slots they pass between them."""
    text = sum(_json_size({"codec": s.codec, "input": s.input, "outputs": s.outputs, "params": s.params}) + 1
               for s in steps)
    for slot, declared in {**inner, **leaves}.items():
        text += _json_size({slot: {"count": declared.count, "dtype": declared.dtype}}) + 1  # slot entry
    data = 0
    for slot, declared in leaves.items():
        data += _stream_bytes(declared.nbytes)
        text += _STREAM_ROW + len(str(declared.nbytes))
        text += len(slot) + 10  # its stream reference, "slot":12345,
    return data + -(-text // _HEADER_DEFLATE)


def file_cost(tensor: Tensor) -> int:
    """Bytes the entry adds to a `.dcz` file beyond its name, dtype, shape and kind: its streams
    with their padding and its header text (chain, slots, stream table rows) as deflated, roughly."""
    leaves = {slot: tensor.slots[slot] for slot in tensor.streams}
    inner = {slot: declared for slot, declared in tensor.slots.items() if slot not in leaves}
    return _cost(tensor.chain, leaves, inner)


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
    scales = None if form.scales is None else form.scales.astype(np.float32, copy=False)
    return form.with_(values=v, scales=scales)


def sparse_form(tensor_values: np.ndarray, keep: np.ndarray, index_bits: int, dtype: str) -> WeightForm:
    gaps, values = sparse.encode(tensor_values.reshape(-1), keep.reshape(-1), index_bits)
    return WeightForm(tensor_values.shape, dtype, Plain(values), gaps=gaps, index_bits=index_bits)


def entry_channels(form: WeightForm, channels: int, inner: int) -> np.ndarray:
    """The channel of every entry of `form` (every element when dense): (position // inner) % channels."""
    if form.is_sparse:
        at = sparse.positions({"index_bits": form.index_bits}, Slot(form.dtype, form.numel), form.gaps)
    else:
        at = np.arange(form.numel, dtype=np.int64)
    return (at // inner) % channels


def channel_scaled(form: WeightForm, channels: int, inner: int, method: str = "max") -> WeightForm:
    """`form` (no scale step yet) with one: each channel divided by its own scale
    (codecs.scale.channel_scales of the decoded tensor), its entries Plain (float64) and in the same
    positions; a stage then quantizes or clusters them (`form.with_(values=...)`)."""
    if form.is_scaled:
        raise ValueError("form is already channel-scaled")
    scales = scale.channel_scales(form.dense_values(), channels, inner, method)
    per_entry = scales.astype(np.float64)[entry_channels(form, channels, inner)]
    normalized = form.entry_values().astype(np.float64) / per_entry
    return form.with_(values=Plain(normalized), scales=scales, channels=channels, inner=inner)


def grid_form(shape: tuple[int, ...], dtype: str, levels: np.ndarray, steps: np.ndarray, bits: int,
              channels: int, inner: int, gaps: np.ndarray | None = None, index_bits: int = 0) -> WeightForm:
    """Weights on a uniform grid with a step per channel: entry value = levels[i] x steps[c], with
    integer `levels` in [-2^(bits-1), 2^(bits-1) - 1] (one per entry: every element when dense,
    else one per sparse entry of `gaps`, fillers 0) and positive float32-representable `steps`.

    Dense: `linear` per channel (symmetric: zero point 2^(bits-1), scales = steps), no scale step
    (encoding version 1).  Sparse: `scale` (steps) -> `sparse` -> `linear` per tensor with scale 1.0,
    which decodes to the same float32 products.  Either way `quantized_form` gives the codes and
    steps back per channel, for `export --qdq` and the int8 interpreter."""
    offset = 1 << (bits - 1)
    levels = np.asarray(levels).reshape(-1)
    if len(levels) and (int(levels.min()) < -offset or int(levels.max()) >= offset):
        raise ValueError(f"levels outside the {bits}-bit range")
    codes = (levels.astype(np.int64) + offset).astype(uint_dtype(bits))
    steps = np.asarray(steps, dtype=np.float32).reshape(-1)
    if gaps is None:
        q = Quantized(codes, steps, np.full(channels, offset, dtype=codes.dtype), bits, channels, inner, True)
        return WeightForm(tuple(shape), dtype, q)
    q = Quantized(codes, np.ones(1, np.float32), np.full(1, offset, dtype=codes.dtype), bits, 1, 1, True)
    return WeightForm(tuple(shape), dtype, q, gaps=gaps, index_bits=index_bits, scales=steps,
                      channels=channels, inner=inner)


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
