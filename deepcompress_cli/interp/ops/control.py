"""Control flow: If, Loop, Scan and SequenceMap run subgraphs in the enclosing scope.

`ctx.run_graph(graph, bound)` runs a subgraph with `bound` (its own input names -> values) over
the enclosing scope's values, and returns its outputs.  Loop and Scan stack their per-iteration
outputs on a new axis; SequenceMap collects them into sequences (Python lists).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import DczError
from . import op
from .shape import input_at, norm_axis


@op("If")
def if_(inputs, attrs, ctx):
    branch = attrs["then_branch"] if bool(np.asarray(inputs[0]).reshape(-1)[0]) else attrs["else_branch"]
    return ctx.run_graph(branch, {})


def run_body(ctx, body, values: list) -> list:
    """The body's outputs with its inputs bound, in order, to `values`."""
    if len(values) != len(body.input):
        raise DczError(f"node {ctx.node_name!r}: its body takes {len(body.input)} inputs, not {len(values)}.")
    return ctx.run_graph(body, {i.name: v for i, v in zip(body.input, values)})


def stack(ctx, op_name: str, parts: list, axis: int, declared) -> np.ndarray:
    """Per-iteration outputs stacked on a new `axis`; with no iteration, an empty array shaped
    (as far as known) and typed from the body's declared output `declared` (a ValueInfoProto)."""
    if not parts:
        tensor = declared.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else np.float32
        dims = [d.dim_value for d in tensor.shape.dim]
        return np.zeros([*dims[:axis], 0, *dims[axis:]], dtype)
    if any(p is None or isinstance(p, list) for p in parts):
        raise DczError(f"{op_name} node {ctx.node_name!r}: a scan output must be a tensor.")
    parts = [np.asarray(p) for p in parts]  # numpy scalars too
    ctx.check_size(op_name, [len(parts), *parts[0].shape], parts[0].itemsize)
    try:
        return np.stack(parts, axis=axis)
    except ValueError:
        other = next(p.shape for p in parts if p.shape != parts[0].shape)
        raise DczError(f"{op_name} node {ctx.node_name!r}: scan outputs change shape between iterations "
                       f"({list(parts[0].shape)} then {list(other)}).") from None


@op("Loop")
def loop(inputs, attrs, ctx):
    """for i in range(M) while cond: (cond, carried..., scans...) = body(i, cond, carried...).

    An absent M runs until cond is false; an absent cond ignores the body's cond output (both
    absent: the spec's endless loop, refused).
    """
    body = attrs["body"]
    trips, cond = input_at(inputs, 0), input_at(inputs, 1)
    if trips is None and cond is None:
        raise DczError(f"Loop node {ctx.node_name!r} has neither a trip count nor a condition: it would never end.")
    trips = None if trips is None else int(np.asarray(trips).reshape(-1)[0])
    running = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    carried = list(inputs[2:])
    n_scans = len(body.output) - 1 - len(carried)
    scans = [[] for _ in range(n_scans)]
    i = 0
    while running and (trips is None or i < trips):
        outputs = run_body(ctx, body, [np.array(i, np.int64), np.array(running), *carried])
        if cond is not None:
            running = bool(np.asarray(outputs[0]).reshape(-1)[0])
        carried = outputs[1:1 + len(carried)]
        for parts, value in zip(scans, outputs[1 + len(carried):]):
            parts.append(value)
        i += 1
    declared = body.output[1 + len(carried):]
    return [*carried, *(stack(ctx, "Loop", parts, 0, d) for parts, d in zip(scans, declared))]


def scan_steps(ctx, body, states: list, xs: list, axes: list, reverse: list, steps: int) -> tuple[list, list]:
    """Runs the Scan body over `steps` slices of each x (on its axis, backwards where `reverse`):
    the final states and, per scan output, its per-step values in step order."""
    n_states = len(states)
    per_output = [[] for _ in range(len(body.output) - n_states)]
    for t in range(steps):
        slices = [x[(slice(None),) * axis + (steps - 1 - t if rev else t,)] for x, axis, rev in zip(xs, axes, reverse)]
        outputs = run_body(ctx, body, [*states, *slices])
        states = outputs[:n_states]
        for parts, value in zip(per_output, outputs[n_states:]):
            parts.append(value)
    return states, per_output


@op("Scan")
def scan(inputs, attrs, ctx):
    """(states..., scan outputs...) = body(states..., one slice of each scan input) per step.

    Opset 8 has a batch axis 0 and sequence_lens (input 0); scan outputs past a batch entry's
    length are zeros.  Opset 9+ scans each input on its own axis/direction and stacks each output
    on its own axis/direction.
    """
    body = attrs["body"]
    n_scan = attrs["num_scan_inputs"]
    if ctx.opset < 9:
        return _scan8(inputs, attrs, ctx, body, n_scan)
    n_states = len(inputs) - n_scan
    states, xs = list(inputs[:n_states]), list(inputs[n_states:])
    axes = [norm_axis(a, x.ndim, "Scan") for a, x in zip(attrs.get("scan_input_axes", [0] * n_scan), xs)]
    reverse = [bool(d) for d in attrs.get("scan_input_directions", [0] * n_scan)]
    lengths = {x.shape[a] for x, a in zip(xs, axes)}
    if len(lengths) != 1:
        raise DczError(f"Scan node {ctx.node_name!r}: scan inputs have different lengths {sorted(lengths)}.")
    states, per_output = scan_steps(ctx, body, states, xs, axes, reverse, lengths.pop())
    n_out = len(per_output)
    out_axes = list(attrs.get("scan_output_axes", [0] * n_out))
    out_reverse = [bool(d) for d in attrs.get("scan_output_directions", [0] * n_out)]
    stacked = []
    for parts, axis, rev, declared in zip(per_output, out_axes, out_reverse, body.output[n_states:]):
        rank = parts[0].ndim + 1 if parts else len(declared.type.tensor_type.shape.dim) + 1
        stacked.append(stack(ctx, "Scan", parts[::-1] if rev else parts, norm_axis(axis, rank, "Scan"), declared))
    return [*states, *stacked]


def _scan8(inputs, attrs, ctx, body, n_scan):
    lens = inputs[0]
    n_states = len(inputs) - 1 - n_scan
    states, xs = list(inputs[1:1 + n_states]), list(inputs[1 + n_states:])
    batch, steps = xs[0].shape[0], xs[0].shape[1]
    lens = np.full(batch, steps) if lens is None else np.asarray(lens).reshape(-1)
    if lens.shape != (batch,) or (lens < 0).any() or (lens > steps).any():
        raise DczError(f"Scan node {ctx.node_name!r}: sequence_lens {lens.tolist()[:8]} do not fit "
                       f"batch {batch} and {steps} steps.")
    reverse = [bool(d) for d in attrs.get("directions", [0] * n_scan)]
    finals, outputs = [], []
    for b in range(batch):  # entries may have different lengths: one scan each
        final, per_output = scan_steps(ctx, body, [s[b] for s in states], [x[b, :lens[b]] for x in xs],
                                       [0] * n_scan, reverse, int(lens[b]))
        finals.append(final)
        padded = []
        for parts, declared in zip(per_output, body.output[n_states:]):
            part = stack(ctx, "Scan", parts, 0, declared)
            padded.append(np.concatenate([part, np.zeros((steps - len(parts), *part.shape[1:]), part.dtype)]))
        outputs.append(padded)
    return [*(np.stack(s) for s in zip(*finals)), *(np.stack(o) for o in zip(*outputs))]


@op("SequenceMap")
def sequence_map(inputs, attrs, ctx):
    """The body on each element of the input sequence (with the same element of each further
    sequence, or a tensor as it is); every body output is collected into a sequence."""
    body = attrs["body"]
    sequence, extras = inputs[0], inputs[1:]
    if any(isinstance(e, list) and len(e) != len(sequence) for e in extras):
        raise DczError(f"SequenceMap node {ctx.node_name!r}: its sequences have different lengths.")
    results = [[] for _ in body.output]
    for i, element in enumerate(sequence):
        outputs = run_body(ctx, body, [element, *(e[i] if isinstance(e, list) else e for e in extras)])
        for collected, value in zip(results, outputs):
            collected.append(value)
    return results
