"""ONNX's own node tests (generated from the installed onnx wheel) run through our interpreter.

`cases()` generates them once per process (onnx.backend.test.case.node.collect_testcases runs
every op's export(), which takes a few seconds); `outcome(case)` runs one and says whether it
passes, fails (and why) or uses ops the interpreter lacks.  An output passes when it has the
expected dtype and shape and its values are close (integers, bools and strings equal; NaN equals
NaN); the ml_dtypes types (float8, bfloat16, int4 ...) compare as float32 once their dtype matches.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from deepcompress_cli.interp.graph import Interpreter, unsupported_ops
from deepcompress_cli.onnx_io import from_onnx

RTOL, ATOL = 1e-3, 1e-4  # a case may ask for looser ones


@functools.cache
def cases() -> dict:
    """name -> TestCase, every node test of the installed onnx."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # export()s divide by zero on purpose
        warnings.simplefilter("ignore")
        return {case.name: case for case in collect_testcases(None)}


def as_value(x):
    """A data-set entry as the interpreter gives values: arrays, lists (sequences), None (empty optional)."""
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, onnx.SequenceProto):
        return [as_value(t) for t in numpy_helper.to_list(x)]
    if isinstance(x, onnx.OptionalProto):
        return numpy_helper.to_optional(x)
    return x


def mismatch(want, got, rtol: float, atol: float) -> str | None:
    """Why `got` differs from the expected `want`, or None when it matches."""
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"expected a sequence of {len(want)}, got {type(got).__name__}"
        return next((why for w, g in zip(want, got) if (why := mismatch(w, g, rtol, atol))), None)
    if want is None:
        return None if got is None else "expected an empty optional"
    if got is None or isinstance(got, list):
        return f"expected a tensor, got {type(got).__name__}"
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return f"shape {got.shape} != {want.shape}"
    if want.dtype.kind in "OUS":
        return None if np.array_equal(want.astype(str), got.astype(str)) else "strings differ"
    if got.dtype != want.dtype:  # the output's ONNX type is part of the result
        return f"dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "iub":
        return None if np.array_equal(want, got) else f"values differ: {got.reshape(-1)[:8]} != {want.reshape(-1)[:8]}"
    if want.dtype.kind == "V":  # ml_dtypes types (float8, bfloat16, int4 ...) compare as float32
        want, got = want.astype(np.float32), got.astype(np.float32)
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    close = np.isclose(got64, want64, rtol=rtol, atol=atol, equal_nan=True)
    if not close.all():
        bad = np.flatnonzero(~close)
        return (f"{bad.size}/{close.size} values differ, first at {bad[0]}: "
                f"{got64.reshape(-1)[bad[0]]} != {want64.reshape(-1)[bad[0]]}")
    return None


def outcome(case) -> tuple[str, str]:
    """("pass", ""), ("fail", why) or ("unsupported", the missing ops) for one node test."""
    missing = unsupported_ops(case.model)
    if missing:
        return "unsupported", ", ".join(sorted(missing))
    try:
        interpreter = Interpreter(from_onnx(case.model, None))
    except Exception as e:  # noqa: BLE001 - any failure is the case's verdict
        return "fail", f"load: {type(e).__name__}: {e}"
    names = [i.name for i in case.model.graph.input]
    rtol, atol = max(case.rtol, RTOL), max(case.atol, ATOL)
    for inputs, outputs in case.data_sets:
        feeds = {n: as_value(x) for n, x in zip(names, inputs)}
        try:
            got = interpreter.run({n: v for n, v in feeds.items() if n in interpreter.plan.inputs})
        except Exception as e:  # noqa: BLE001
            return "fail", f"run: {type(e).__name__}: {e}"
        if len(got) < len(outputs):
            return "fail", f"{len(got)} outputs, expected {len(outputs)}"
        for i, (want, value) in enumerate(zip(outputs, got)):
            why = mismatch(as_value(want), value, rtol, atol)
            if why:
                return "fail", f"output {i}: {why}"
    return "pass", ""
