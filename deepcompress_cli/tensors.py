"""The in-memory model: a stripped ONNX graph plus a table of encoded tensors.

A tensor is stored as an *encoding chain*: an ordered list of codec steps, each of which turns one
array (its `input` slot) into named output slots.  Slots that no later step consumes are the
streams written to the file.  Decoding runs the steps backwards until the slot `tensor` is known.
See docs/FORMAT.md for the on-disk form.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .codecs import decode_tensor, step_label
from .codecs.slots import DTYPES, Slot, Step, numpy_dtype, uint_dtype  # noqa: F401 - re-exported
from .errors import DczError

ONNX_TYPE_TO_DTYPE = {onnx_type: name for name, (_, onnx_type) in DTYPES.items()}
FLOAT_DTYPES = ("float32", "float16", "float64")
KINDS = ("conv", "fc", "other")  # other = not a compressible weight: stages leave it alone


class Stream:
    """The bytes of one leaf slot: an in-memory array, or a region of an opened `.dcz` file.

    File regions are CRC-checked the first time they are read, so a corrupt stream is reported
    before anything is decoded from it.
    """

    def __init__(self, data, crc32: int | None = None):
        self._data = data  # np.ndarray or memoryview of the file
        self._expected_crc = crc32
        self._verified = crc32 is None

    @classmethod
    def of(cls, array: np.ndarray) -> "Stream":
        """A stream of `array`'s elements, little-endian as the format says, whatever the input's order."""
        array = np.ascontiguousarray(array)
        return cls(array.astype(array.dtype.newbyteorder("<"), copy=False))

    @property
    def length(self) -> int:
        return self._data.nbytes

    def buffer(self) -> memoryview:
        view = memoryview(self._data).cast("B")
        if not self._verified:
            if zlib.crc32(view) != self._expected_crc:
                raise DczError("CRC-32 mismatch in a data stream: the file is corrupt")
            self._verified = True
        return view

    def crc32(self) -> int:
        return zlib.crc32(self.buffer())

    def array(self, dtype: str) -> np.ndarray:
        if isinstance(self._data, np.ndarray) and self._data.dtype == numpy_dtype(dtype):
            return self._data
        return np.frombuffer(self.buffer(), dtype=numpy_dtype(dtype))


@dataclass
class Tensor:
    """One entry of the tensor table."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str
    chain: list[Step]
    slots: dict[str, Slot]  # every slot except `tensor`
    streams: dict[str, Stream]  # leaf slots only
    op: str = ""  # op type of the first consumer; derived from the graph, not stored
    # The logical form a stage built this entry from (encoding.WeightForm), kept so the next
    # stage need not decode the streams again; None for entries read from a file.
    form: object = field(default=None, repr=False, compare=False)

    @classmethod
    def raw(cls, name: str, array: np.ndarray, kind: str, op: str = "") -> "Tensor":
        dtype = next((n for n, (d, _) in DTYPES.items() if d == array.dtype.newbyteorder("<")), None)
        if dtype is None:
            raise DczError(f"tensor {name!r}: unsupported dtype {array.dtype}")
        flat = np.ascontiguousarray(array, dtype=numpy_dtype(dtype)).reshape(-1)
        return cls(name=name, dtype=dtype, shape=tuple(int(d) for d in array.shape), kind=kind,
                   chain=[Step("raw", "tensor", {"data": "data"})],
                   slots={"data": Slot(dtype, flat.size)}, streams={"data": Stream.of(flat)}, op=op)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * numpy_dtype(self.dtype).itemsize

    @property
    def stored_bytes(self) -> int:
        return sum(s.length for s in self.streams.values())

    @property
    def is_weight(self) -> bool:
        return self.kind != "other"

    @property
    def chain_label(self) -> str:
        return "+".join(step_label(step) for step in self.chain)

    def decode(self) -> np.ndarray:
        return decode_tensor(self)  # the codecs decode; the data model only holds the table


def select_kind(name: str, dtype: str, shape: tuple[int, ...], consumer_kind: str | None,
                include: Iterable[str] = (), exclude: Iterable[str] = ()) -> str:
    """Decide whether a tensor is a compressible weight, and of which kind.

    A weight is a float tensor feeding a weight input of Conv/ConvTranspose (conv) or Gemm/MatMul
    (fc), or any other float tensor of at least 1024 elements and 2 dims (embeddings, weights
    reached through a Transpose...); 1-D tensors are biases or norm scales, which pruning would
    wreck.  `--include`/`--exclude` globs override.
    """
    if dtype not in FLOAT_DTYPES or any(fnmatch.fnmatchcase(name, g) for g in exclude):
        return "other"
    numel = 1
    for d in shape:
        numel *= d
    forced = any(fnmatch.fnmatchcase(name, g) for g in include)
    if consumer_kind is not None:
        return consumer_kind
    if forced or (numel >= 1024 and len(shape) >= 2):
        return "conv" if len(shape) == 4 else "fc"
    return "other"


@dataclass
class Package:
    """A whole model: the ONNX graph with its tensors replaced by placeholders, plus the table."""

    graph: object  # onnx.ModelProto; every extracted tensor is a placeholder naming its entry
    tensors: list[Tensor]
    file_bytes: int | None = None  # size of the file it was read from (stdin included)
    # User notes (`--metadata KEY=VALUE`: source hash, recipe, version), kept by every stage.
    metadata: dict[str, str] = field(default_factory=dict)
    # (device, inode) of every file it was read from (the model, its external data): no output
    # may replace one of them, whatever name it is given.
    source_files: set[tuple[int, int]] = field(default_factory=set)

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)
