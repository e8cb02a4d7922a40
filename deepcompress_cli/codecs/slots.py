"""The vocabulary of encoding chains: element types, slots and steps.

A leaf module (numpy only), so that the codecs and the data model (tensors.py) both build on it
and the codecs never import the data model: tensors.py -> codecs -> codecs.slots, no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# dtype name -> (numpy dtype, ONNX TensorProto.DataType).  Only these are extracted into the table;
# any other tensor (strings, bfloat16, float8, int4 ...) stays inside the graph untouched.
DTYPES = {
    "float32": (np.dtype("<f4"), 1),
    "uint8": (np.dtype("u1"), 2),
    "int8": (np.dtype("i1"), 3),
    "uint16": (np.dtype("<u2"), 4),
    "int16": (np.dtype("<i2"), 5),
    "int32": (np.dtype("<i4"), 6),
    "int64": (np.dtype("<i8"), 7),
    "bool": (np.dtype("?"), 9),
    "float16": (np.dtype("<f2"), 10),
    "float64": (np.dtype("<f8"), 11),
    "uint32": (np.dtype("<u4"), 12),
    "uint64": (np.dtype("<u8"), 13),
}


def uint_dtype(bits: int) -> str:
    """The unsigned stream dtype that holds `bits`-bit integers (codes, indices, gaps)."""
    return "uint8" if bits <= 8 else "uint16"


def numpy_dtype(name: str) -> np.dtype:
    return DTYPES[name][0]


@dataclass(frozen=True)
class Slot:
    """Declared element type and count of one array in an encoding chain."""

    dtype: str
    count: int

    @property
    def nbytes(self) -> int:
        return self.count * numpy_dtype(self.dtype).itemsize


@dataclass
class Step:
    """One codec application: `input` slot -> `outputs` (role -> slot name), with JSON params."""

    codec: str
    input: str
    outputs: dict[str, str]
    params: dict = field(default_factory=dict)
