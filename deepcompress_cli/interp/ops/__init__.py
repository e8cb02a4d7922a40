"""Op kernels of the interpreter, grouped by concept (one module per family).

Every kernel has the signature

    def kernel(inputs: list[np.ndarray | None], attrs: dict, ctx: OpContext) -> list[np.ndarray]

- `inputs`: the node's inputs in order; an omitted optional input (empty name) is None.  A value is
  an array, a Python list of arrays (a sequence) or None (an empty optional).
- `attrs`: the node's attributes as Python values (ints, floats, bytes for strings, lists, numpy
  arrays for tensors, GraphProto for subgraphs); absent attributes are absent, so kernels apply the defaults
  of the ONNX spec for `ctx.opset`.
- kernels may return views of their inputs, so nothing may modify a value in place;
- returns the outputs in order (a kernel may return fewer than the node declares when the rest are
  optional and unused, e.g. Dropout's mask, BatchNormalization's training outputs).

Kernels register with `@op("Name")`.  An op missing from `KERNELS` is a DczError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ...errors import DczError

KERNELS: dict[str, Callable] = {}
# The largest array an op may create when its size comes from tensor *values* (a shape, repeats, a
# range, pads, scales) or from broadcasting that grows past both inputs: a model of a few bytes
# could otherwise ask for terabytes.  What such ops make in real models (shapes, masks, tiled
# biases, upsampled maps) is far smaller; Interpreter(max_bytes=...) raises it.
MAX_VALUE_BYTES = 1 << 30


@dataclass
class OpContext:
    opset: int  # the model's default-domain opset version
    node_name: str = ""
    num_outputs: int = 1  # outputs the node declares (Split without sizes needs it)
    run_graph: Callable | None = None  # run_graph(graph_proto, {its input name: value}) -> its outputs (If, Loop...)
    max_bytes: int = MAX_VALUE_BYTES
    # Buffers that nodes fused by the plan share during one run (the Convs that write their
    # outputs into the slices of the Concat they feed), by the name of the value they become.
    scratch: dict = field(default_factory=dict)

    def check_size(self, op_name: str, shape, itemsize: int) -> None:
        """Refuse, before allocating it, an output of `shape` that would pass `max_bytes`."""
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise DczError(f"{op_name} node {self.node_name!r}: negative dimension in output shape {dims}")
        nbytes = math.prod(dims) * itemsize  # exact: no int64 wrap for hostile shapes
        if nbytes > self.max_bytes:
            raise DczError(f"{op_name} node {self.node_name!r} would create a {nbytes:,}-byte array "
                           f"(shape {dims[:8]}{'...' if len(dims) > 8 else ''}); the limit is {self.max_bytes:,} bytes")


def kernel_name(node) -> str:
    """A node's key in KERNELS: its op type, prefixed by its domain outside the default one
    (onnxruntime's contrib ops register as "com.microsoft.Name")."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def op(*names: str):
    def register(kernel):
        for name in names:
            KERNELS[name] = kernel
        return kernel
    return register


def load_all() -> None:
    """Import every kernel module of this package (each registers its ops on import).

    Modules are found by listing the package, so a new op family is one new file.
    """
    import importlib
    import pkgutil
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
