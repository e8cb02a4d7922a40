"""Codec registry and the encoding-chain machinery shared by every codec.

A codec module defines `NAME`, `ROLES` (the output roles it produces), and
`check(params, target, parts)` (validate declared slots before anything is allocated) and
`decode(params, target, arrays)`; `label(params)` is the short text `info` shows, and `SINCE`
(default 1) the encoding version that defined the codec.
Adding a codec is adding a module and one line to `CODECS`; the reader's structure never changes.

This package does not import the data model (tensors.py): the chain functions take any object
with `name`, `dtype`, `shape`, `numel`, `chain`, `slots`, `streams` and `stored_bytes` (a Tensor).
"""

from __future__ import annotations

from ..errors import DczError
from . import bitpack, codebook, huffman, linear, raw, scale, sparse
from .slots import Slot, Step

CODECS = {module.NAME: module for module in (raw, sparse, codebook, linear, bitpack, huffman, scale)}

MAX_STEPS = 16
# Decoded bytes a tensor may claim per stored byte (plus a floor): a tiny file cannot make the
# reader allocate a huge tensor.  The densest legitimate chain (sparse 8-bit gaps of an all-zero
# tensor, Huffman-coded at 1 bit per entry) expands about 8192x.
# The same bound holds the fuzzer (benchmarks/fuzz_reader.py) to account, applied to a whole file.
MAX_EXPANSION = 1 << 16
EXPANSION_FLOOR = 1 << 16


def expansion_budget(stored_bytes: int) -> int:
    """Most bytes any slot (decoded tensor included) may declare for this many stored bytes."""
    return MAX_EXPANSION * stored_bytes + EXPANSION_FLOOR


def codec(name: str):
    try:
        return CODECS[name]
    except KeyError:
        raise DczError(f"unknown codec {name!r}") from None


def since(name: str) -> int:
    """The encoding version that defined codec `name`."""
    return getattr(codec(name), "SINCE", 1)


def encoding_version(tensors) -> int:
    """The oldest encoding version whose codecs every chain of `tensors` uses (at least 1)."""
    return max((since(step.codec) for t in tensors for step in t.chain), default=1)


def step_label(step: Step) -> str:
    module = codec(step.codec)
    return module.label(step.params) if hasattr(module, "label") else module.NAME


def slot_of(tensor, name: str) -> Slot:
    return Slot(tensor.dtype, tensor.numel) if name == "tensor" else tensor.slots[name]


def validate_chain(tensor) -> None:
    """Structural and size checks of a tensor's chain, before any of its data is touched."""
    where = f"tensor {tensor.name!r}"
    if not 1 <= len(tensor.chain) <= MAX_STEPS:
        raise DczError(f"{where}: encoding chain must have 1..{MAX_STEPS} steps")
    available = {"tensor"}  # slots produced so far and not yet consumed
    defined = {"tensor"}
    for i, step in enumerate(tensor.chain):
        module = codec(step.codec)
        if step.input not in available or (step.input == "tensor") != (i == 0):
            raise DczError(f"{where}: step {i} ({step.codec}) reads slot {step.input!r} that is not available")
        if set(step.outputs) != set(module.ROLES):
            raise DczError(f"{where}: codec {step.codec} needs outputs {sorted(module.ROLES)}")
        available.discard(step.input)
        for slot in step.outputs.values():
            if slot in defined:
                raise DczError(f"{where}: slot {slot!r} is produced twice")
            if slot not in tensor.slots:
                raise DczError(f"{where}: slot {slot!r} is not declared")
            defined.add(slot)
            available.add(slot)
    if defined - {"tensor"} != set(tensor.slots):
        raise DczError(f"{where}: declared slots do not match the encoding chain")
    if available != set(tensor.streams):
        raise DczError(f"{where}: streams do not match the chain's final slots")
    for slot, stream in tensor.streams.items():
        if tensor.slots[slot].nbytes != stream.length:
            raise DczError(f"{where}: stream {slot!r} length {stream.length} != count x width "
                           f"{tensor.slots[slot].nbytes}")
    budget = expansion_budget(tensor.stored_bytes)
    for slot in ["tensor", *tensor.slots]:
        if slot_of(tensor, slot).nbytes > budget:
            raise DczError(f"{where}: slot {slot!r} claims more data than the file can hold")
    for step in tensor.chain:
        try:
            codec(step.codec).check(step.params, slot_of(tensor, step.input),
                                    {role: tensor.slots[s] for role, s in step.outputs.items()})
        except DczError as e:
            raise DczError(f"{where}: {e}") from None


def decode_slot(tensor, slot: str):
    """The flat array of any slot: a stream as stored, or the decoded input of a step."""
    if slot in tensor.streams:
        return tensor.streams[slot].array(tensor.slots[slot].dtype)
    step = next(s for s in tensor.chain if s.input == slot)
    target = slot_of(tensor, slot)
    parts = {role: decode_slot(tensor, out) for role, out in step.outputs.items()}
    out = codec(step.codec).decode(step.params, target, parts)
    if out.size != target.count:
        raise DczError(f"tensor {tensor.name!r}: codec {step.codec} decoded {out.size} "
                       f"elements, expected {target.count}")
    return out


def decode_chain(tensor):
    """Run the chain backwards from the streams to the flat tensor (a 1-D numpy array)."""
    return decode_slot(tensor, "tensor")


def decode_tensor(tensor):
    """The tensor's values in its shape."""
    return decode_chain(tensor).reshape(tensor.shape)
