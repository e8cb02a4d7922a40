"""Running an ONNX graph: a plan in topological order that frees each value after its last use.

The interpreter reads a Package (an `.onnx` or `.dcz` file): stored weights are decoded once and
kept as numpy arrays.  Kernels live in `ops/`; the int8 mode swaps some of them for the integer
kernels of `quant.py`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import onnx

from ..errors import DczError
from ..graphs import graph_constants, implicit_inputs, node_subgraphs, opset_version, placeholder_name, \
    stored_constant, to_array, topological_order
from ..tensors import Package
from .ops import KERNELS, MAX_VALUE_BYTES, OpContext, kernel_name, load_all
from .ops.conv import FUSED_CLAMP, FUSED_INTO, FUSED_RESIDUAL, FUSED_SLICE
from .ops.gemm import FUSED_BIAS
from .ops.shape import FUSED_PARTS


def attribute_values(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (tensors as numpy arrays, graphs as GraphProto)."""
    values = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:  # a placeholder: None, the caller has its weight
            values[attr.name] = None if placeholder_name(attr.t) is not None else to_array(attr.t)
        elif attr.type == onnx.AttributeProto.TENSORS:
            values[attr.name] = [to_array(t) for t in attr.tensors]  # never opens a file
        else:
            values[attr.name] = onnx.helper.get_attribute_value(attr)
    return values


def inline_constant(node: onnx.NodeProto) -> np.ndarray | None:
    """The array of a Constant node whose `value` tensor holds its own data, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and placeholder_name(attr.t) is None:
            return to_array(attr.t)
    return None


class Plan:
    """One graph prepared to run: sorted nodes, their attributes, and when each value dies."""

    def __init__(self, graph: onnx.GraphProto, constants: dict[str, np.ndarray], opset: int):
        self.graph = graph
        self.opset = opset
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        self.outputs = [o.name for o in graph.output]
        self.constants = dict(constants)
        # Constant nodes whose tensor is in the table are constants already, and those holding a
        # tensor of their own become constants now: no node to run, and a weight held that way is
        # a layer's weight like an initializer (BatchNormalization folding, int8).
        for node in graph.node:
            value = inline_constant(node)
            if value is not None:
                self.constants[node.output[0]] = value
        nodes = [without_plan_marks(n) for n in topological_order(graph)
                 if stored_constant(n) is None and not (n.op_type == "Constant" and n.output[0] in self.constants)]
        self.nodes = fold_batch_norms(nodes, self.constants, set(self.outputs))
        self.nodes = fuse_conv_residual(self.nodes, set(self.outputs))
        self.nodes, clamps = fuse_conv_activation(self.nodes, self.constants, set(self.outputs), opset)
        self.nodes = fuse_conv_concat(self.nodes, self.constants, set(self.outputs), clamps)
        self.nodes, biased = fuse_matmul_bias(self.nodes, self.constants, set(self.outputs))
        self.attrs = [attribute_values(n) for n in self.nodes]
        for node, attrs in zip(self.nodes, self.attrs):
            if id(node) in clamps:
                attrs[FUSED_CLAMP] = clamps[id(node)]
            if id(node) in biased:
                attrs[FUSED_BIAS] = True
        self.reads = [[*node.input, *sorted(implicit_inputs(node))] for node in self.nodes]
        last_use = {}
        for i, names in enumerate(self.reads):
            for name in names:
                last_use[name] = i
        keep = set(self.outputs) | set(constants)
        self.dead_after = defaultdict(list)  # node index -> values no later node needs
        for name, i in last_use.items():
            if name not in keep:
                self.dead_after[i].append(name)


PLAN_MARK = "_fused"  # the prefix of the attributes the plan's fusions set (FUSED_CLAMP, ...)


def without_plan_marks(node: onnx.NodeProto) -> onnx.NodeProto:
    """The node, or a copy without the attributes that only the plan may set: a model that set
    them itself could have Convs write into each other's outputs."""
    if not any(a.name.startswith(PLAN_MARK) for a in node.attribute):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.attribute[:]
    copy.attribute.extend(a for a in node.attribute if not a.name.startswith(PLAN_MARK))
    return copy


def fold_batch_norms(nodes: list, constants: dict, outputs: set) -> list:
    """Conv -> BatchNormalization (inference, constant statistics) becomes one Conv.

    w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * g / sqrt(var + eps) + beta:
    the BatchNormalization pass over the activations disappears, as in every inference engine.
    `constants` gains the folded weights (under new names); the original arrays are untouched.
    """
    readers, producer = _single_reader_producers(nodes, outputs)
    folded, removed = {}, set()
    for node in nodes:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or len(node.input) != 5:
            continue
        conv = producer.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or readers[node.input[0]] != 1 or conv.output[0] in outputs:
            continue
        params = [constants.get(n) for n in node.input[1:]]
        weight = constants.get(conv.input[1])
        bias = constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight is None or any(p is None for p in params) or (len(conv.input) > 2 and conv.input[2] and bias is None):
            continue
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        factor = gamma / np.sqrt(var + epsilon)
        fused = onnx.NodeProto()
        fused.CopyFrom(conv)
        w_name, b_name = f"{conv.output[0]}::folded_w", f"{conv.output[0]}::folded_b"
        constants[w_name] = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
        constants[b_name] = ((0 if bias is None else bias) - mean) * factor + beta
        constants[b_name] = constants[b_name].astype(weight.dtype)
        del fused.input[:]
        fused.input.extend([conv.input[0], w_name, b_name])
        fused.output[0] = node.output[0]
        folded[id(conv)] = fused
        removed.add(id(node))
    return [folded.get(id(n), n) for n in nodes if id(n) not in removed]


def _single_reader_producers(nodes: list, outputs: set) -> tuple[dict, dict]:
    readers = defaultdict(int)
    for node in nodes:
        for name in [*node.input, *implicit_inputs(node)]:  # a subgraph's reads count too
            readers[name] += 1
    producer = {o: node for node in nodes for o in node.output}
    return readers, producer


def _clamp_bounds(node: onnx.NodeProto, constants: dict, opset: int) -> tuple[float, float] | None:
    """(low, high) of a Relu, or of a Clip whose bounds are constants; None for anything else."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    if opset < 11:
        attrs = {a.name: a.f for a in node.attribute}
        return attrs.get("min", -math.inf), attrs.get("max", math.inf)
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            bounds.append(default)
        elif name in constants and constants[name].size == 1 and constants[name].dtype.kind == "f":
            bounds.append(float(constants[name].reshape(())))
        else:
            return None
    return bounds[0], bounds[1]


def fuse_conv_activation(nodes: list, constants: dict, outputs: set, opset: int) -> tuple[list, dict]:
    """Conv -> Relu / Clip (constant bounds) becomes one Conv that clamps each fresh block of its
    output (one pass over memory and one array less).  Returns the nodes and id(conv) -> bounds."""
    readers, producer = _single_reader_producers(nodes, outputs)
    fused, bounds, removed = {}, {}, set()
    for node in nodes:
        clamp = _clamp_bounds(node, constants, opset)
        conv = producer.get(node.input[0]) if clamp is not None and node.input else None
        if conv is None or conv.op_type != "Conv" or readers[node.input[0]] != 1 or conv.output[0] in outputs \
                or id(conv) in fused:
            continue
        merged = onnx.NodeProto()
        merged.CopyFrom(conv)
        merged.output[0] = node.output[0]
        fused[id(conv)] = merged
        bounds[id(merged)] = clamp
        removed.add(id(node))
    new_nodes = [fused.get(id(n), n) for n in nodes if id(n) not in removed]
    return new_nodes, bounds


def fuse_conv_residual(nodes: list, outputs: set) -> list:
    """Conv -> Add (or a two-input Sum) of another value becomes one Conv that adds that value
    to each fresh block of its output (a ResNet's shortcut), before any fused activation: one
    pass over memory less.  The merged node takes the Add's place (the other value may be made
    after the Conv), with the addend as its fourth input and the FUSED_RESIDUAL attribute (on
    the node itself, so that the activation fusion's copy keeps it)."""
    readers, producer = _single_reader_producers(nodes, outputs)
    fused, removed = {}, set()
    for node in nodes:
        if node.op_type not in ("Add", "Sum") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        for mine, other in ((0, 1), (1, 0)):
            conv = producer.get(node.input[mine])
            if conv is None or conv.op_type != "Conv" or len(conv.input) > 3 or readers[node.input[mine]] != 1 \
                    or conv.output[0] in outputs or id(conv) in removed or node.input[other] == node.input[mine] \
                    or not node.input[other]:
                continue
            merged = onnx.NodeProto()
            merged.CopyFrom(conv)
            while len(merged.input) < 3:
                merged.input.append("")  # no bias
            merged.input.append(node.input[other])
            merged.output[0] = node.output[0]
            merged.attribute.append(onnx.helper.make_attribute(FUSED_RESIDUAL, 1))
            fused[id(node)] = merged
            removed.add(id(conv))
            break
    return [fused.get(id(n), n) for n in nodes if id(n) not in removed]


def fuse_conv_concat(nodes: list, constants: dict, outputs: set, clamps: dict) -> list:
    """A Concat on the channel axis of Conv outputs (an Inception or fire module, a detector's
    neck) lets those Convs write into the slices of one buffer, which the Concat then returns
    without copying (ops/conv.py `_concat_part`; any part that does not fit falls back to the
    copy).  Each Conv needs a constant weight (its channel count) and the Concat as its one
    reader; the marks go on copies of the nodes, as attributes, and a copied Conv keeps its
    entry in `clamps` (fuse_conv_activation's, by node id; updated here)."""
    readers, producer = _single_reader_producers(nodes, outputs)
    replaced = {}
    for node in nodes:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or not node.input \
                or len(set(node.input)) != len(node.input):
            continue
        parts = [producer.get(name) for name in node.input]
        weights = [constants.get(p.input[1]) if p is not None and p.op_type == "Conv" and len(p.input) > 1 else None
                   for p in parts]
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if any(w is None or not name or readers[name] != 1 or name in outputs or id(p) in replaced
               for w, p, name in zip(weights, parts, node.input)) or weights[0].ndim < 3 \
                or len({w.ndim for w in weights}) != 1 or axis not in (1, 1 - weights[0].ndim):
            continue
        total, first = sum(w.shape[0] for w in weights), 0
        for part, w in zip(parts, weights):
            marked = onnx.NodeProto()
            marked.CopyFrom(part)
            marked.attribute.extend([onnx.helper.make_attribute(FUSED_INTO, node.output[0]),
                                     onnx.helper.make_attribute(FUSED_SLICE, [first, total])])
            replaced[id(part)] = marked
            if id(part) in clamps:
                clamps[id(marked)] = clamps.pop(id(part))
            first += w.shape[0]
        marked = onnx.NodeProto()
        marked.CopyFrom(node)
        marked.attribute.append(onnx.helper.make_attribute(FUSED_PARTS, node.output[0]))  # the buffer's key
        replaced[id(node)] = marked
    return [replaced.get(id(n), n) for n in nodes]


def fuse_matmul_bias(nodes: list, constants: dict, outputs: set) -> tuple[list, set]:
    """MatMul -> Add of a constant vector over the last axis (a transformer's bias) becomes one
    MatMul with the bias as a third input, added in place to its fresh product."""
    readers, producer = _single_reader_producers(nodes, outputs)
    fused, removed = {}, set()
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for mine, other in ((0, 1), (1, 0)):
            matmul, bias = producer.get(node.input[mine]), constants.get(node.input[other])
            weight = constants.get(matmul.input[1]) if matmul is not None and matmul.op_type == "MatMul" else None
            if weight is None or bias is None or readers[node.input[mine]] != 1 or matmul.output[0] in outputs \
                    or id(matmul) in fused or weight.ndim != 2 or bias.shape not in ((weight.shape[1],),) \
                    or bias.dtype != weight.dtype:
                continue
            merged = onnx.NodeProto()
            merged.CopyFrom(matmul)
            merged.input.append(node.input[other])
            merged.output[0] = node.output[0]
            fused[id(matmul)] = merged
            removed.add(id(node))
            break
    new_nodes = [fused.get(id(n), n) for n in nodes if id(n) not in removed]
    return new_nodes, {id(n) for n in fused.values()}


class Interpreter:
    """Runs a model's main graph (and its subgraphs: If, Loop, Scan, SequenceMap) in numpy float32."""

    observe = None  # observe(value name, array) after every node, e.g. for calibration

    def __init__(self, package: Package, max_bytes: int = MAX_VALUE_BYTES):
        load_all()
        self.max_bytes = max_bytes  # cap on one value that an op sizes from tensor values (ops/__init__.py)
        self.opset = opset_version(package.graph)
        self.weights = {t.name: t.decode() for t in package.tensors}
        self.model = package.graph
        unsupported = sorted(unsupported_ops(self.model))
        if unsupported:
            raise DczError(f"unsupported op{'s' if len(unsupported) > 1 else ''}: {', '.join(unsupported)}")
        self._subplans: dict[int, Plan] = {}  # id(subgraph attribute) -> its plan
        self.plan = self._plan(self.model.graph)

    def _plan(self, graph: onnx.GraphProto, outer: dict | None = None) -> Plan:
        """The plan of `graph` and, made now too, those of its subgraphs (If branches, loop
        bodies): a subgraph's plan holds the constants of every enclosing scope, so its layers'
        weights are known at load (to fold BatchNormalization, to prepare int8 weights)."""
        # A Loop/Scan body's own inputs shadow the enclosing constants of the same name.
        shadowed = {i.name for i in graph.input}
        inherited = {name: value for name, value in (outer or {}).items() if name not in shadowed}
        plan = Plan(graph, {**inherited, **graph_constants(graph, self.weights.__getitem__)}, self.opset)
        for attrs in plan.attrs:
            for value in attrs.values():
                if isinstance(value, onnx.GraphProto):
                    self._subplans[id(value)] = self._plan(value, plan.constants)
        return plan

    def kernel_for(self, node: onnx.NodeProto):
        return KERNELS[kernel_name(node)]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.plan.inputs if n not in feeds]
        if missing:
            raise DczError(f"missing model input(s): {', '.join(missing)}")
        if self.observe is not None:  # calibration needs the inputs' ranges too
            for name in self.plan.inputs:
                self.observe(name, feeds[name])
        with np.errstate(all="ignore"):  # NaN and Inf propagate as IEEE says, without a warning per op
            return self.run_plan(self.plan, feeds)

    def run_plan(self, plan: Plan, feeds: dict, scope: dict | None = None) -> list:
        """`plan`'s outputs from `feeds`; a subgraph also sees `scope`, the enclosing graph's
        values, which its own constants and inputs shadow.  Values are arrays, lists (sequences)
        or None (empty optionals)."""
        values = {**(scope or {}), **plan.constants, **feeds}
        ctx = OpContext(self.opset, run_graph=lambda g, bound: self._run_subgraph(g, bound, values),
                        max_bytes=self.max_bytes)
        run_nodes(plan.nodes, plan.attrs, values, ctx, self.kernel_for, plan.dead_after, self.observe)
        return [values[name] for name in plan.outputs]

    def _run_subgraph(self, graph: onnx.GraphProto, bound: dict, scope: dict) -> list:
        """An If branch or a Loop/Scan/SequenceMap body, its inputs `bound` by name."""
        plan = self._subplans.get(id(graph))
        if plan is None:
            plan = self._subplans[id(graph)] = self._plan(graph)
        return self.run_plan(plan, bound, scope)


def run_nodes(nodes: list, attrs: list, values: dict, ctx: OpContext, kernel_for, dead_after: dict | None = None,
              observe=None, stop_at: str | None = None) -> None:
    """Run `nodes` (in order, with their `attrs`) on `values` (name -> array, updated in place).

    The one execution loop of the interpreter and the trainer.  `kernel_for(node)` picks the kernel;
    `dead_after[i]` names values to drop after node i (the trainer passes None: backward needs
    them all); `observe(name, value)` sees every output; the run stops once `stop_at` is computed.
    """
    for i, node in enumerate(nodes):
        inputs = [values[n] if n else None for n in node.input]
        ctx.node_name, ctx.num_outputs = node.name, len(node.output)
        try:
            outputs = kernel_for(node)(inputs, attrs[i], ctx)
        except DczError:
            raise
        except Exception as e:  # a kernel failing on these inputs is the model's fault, not a crash
            raise DczError(f"{node.op_type} node {node.name!r} failed: {type(e).__name__}: {e}") from None
        for name, value in zip(node.output, outputs):
            if name:
                values[name] = value
                if observe is not None:
                    observe(name, value)
        if dead_after is not None:
            for name in dead_after.get(i, ()):
                values.pop(name, None)
        if stop_at is not None and stop_at in values:
            break


def unsupported_ops(model: onnx.ModelProto) -> set[str]:
    """Op types anywhere in the model (subgraphs included) that have no kernel."""
    load_all()
    ops = set()

    def walk(graph):
        for node in graph.node:
            if kernel_name(node) not in KERNELS:
                ops.add(kernel_name(node))
            for sub in node_subgraphs(node):
                walk(sub)
    walk(model.graph)
    return ops
