"""Running an ONNX graph: a plan in topological order that frees each value after its last use.

The interpreter reads a Package (an `.onnx` or `.dcz` file): stored weights are decoded once and
kept as numpy arrays.  Kernels live in `ops/`; the int8 mode swaps some of them for the integer
kernels of `quant.py`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import DczError
from ..onnx_io import _placeholder_name, to_array
from ..tensors import Package
from .ops import KERNELS, OpContext, load_all
from .ops.conv import FUSED_RELU


def attribute_values(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (tensors as numpy arrays, graphs as GraphProto)."""
    values = {}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:  # a placeholder: None, the caller has its weight
            values[attr.name] = None if _placeholder_name(attr.t) is not None else to_array(attr.t)
        elif attr.type == onnx.AttributeProto.TENSORS:
            values[attr.name] = [to_array(t) for t in attr.tensors]  # never opens a file
        else:
            values[attr.name] = onnx.helper.get_attribute_value(attr)
    return values


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Values a (sub)graph reads from enclosing scopes: used but not defined inside it."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= outer_names(sub)
        defined.update(node.output)
    return used - defined


class Plan:
    """One graph prepared to run: sorted nodes, their attributes, and when each value dies."""

    def __init__(self, graph: onnx.GraphProto, constants: dict[str, np.ndarray], opset: int):
        self.graph = graph
        self.opset = opset
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        self.outputs = [o.name for o in graph.output]
        self.constants = dict(constants)
        self.nodes = fold_batch_norms(self._sorted(graph), self.constants, set(self.outputs))
        self.nodes, relu_fused = fuse_conv_relu(self.nodes, set(self.outputs))
        self.attrs = [attribute_values(n) for n in self.nodes]
        for node, attrs in zip(self.nodes, self.attrs):
            if id(node) in relu_fused:
                attrs[FUSED_RELU] = True
        self.reads = [[*[n for n in node.input], *sorted(self._implicit(node))] for node in self.nodes]
        last_use = {}
        for i, names in enumerate(self.reads):
            for name in names:
                last_use[name] = i
        keep = set(self.outputs) | set(constants)
        self.dead_after = defaultdict(list)  # node index -> values no later node needs
        for name, i in last_use.items():
            if name not in keep:
                self.dead_after[i].append(name)

    @staticmethod
    def _implicit(node: onnx.NodeProto) -> set[str]:
        names = set()
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= outer_names(sub)
        return names

    @staticmethod
    def _sorted(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
        """Kahn's order, stable with respect to the file's node order.

        Only values produced inside this graph constrain the order; anything else is a graph
        input, a constant or (in a subgraph) a value of the enclosing scope.
        """
        produced = {o for node in graph.node for o in node.output}
        ready, order, pending = set(), [], list(graph.node)
        while pending:
            waiting = []
            for node in pending:
                needs = (set(node.input) | Plan._implicit(node)) & produced
                if needs <= ready:
                    order.append(node)
                    ready.update(node.output)
                else:
                    waiting.append(node)
            if len(waiting) == len(pending):
                raise DczError(f"the graph has a cycle (at node {waiting[0].name or waiting[0].op_type!r})")
            pending = waiting
        return order


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
        for name in node.input:
            readers[name] += 1
    producer = {o: node for node in nodes for o in node.output}
    return readers, producer


def fuse_conv_relu(nodes: list, outputs: set) -> tuple[list, set]:
    """Conv -> Relu becomes one Conv that clamps its own fresh output (one pass and one array less)."""
    readers, producer = _single_reader_producers(nodes, outputs)
    fused, removed = {}, set()
    for node in nodes:
        if node.op_type != "Relu":
            continue
        conv = producer.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or readers[node.input[0]] != 1 or conv.output[0] in outputs \
                or id(conv) in fused:
            continue
        merged = onnx.NodeProto()
        merged.CopyFrom(conv)
        merged.output[0] = node.output[0]
        fused[id(conv)] = merged
        removed.add(id(node))
    new_nodes = [fused.get(id(n), n) for n in nodes if id(n) not in removed]
    return new_nodes, {id(n) for n in fused.values()}


class Interpreter:
    """Runs a model's main graph (and If subgraphs) in numpy float32."""

    observe = None  # observe(value name, array) after every node, e.g. for calibration

    def __init__(self, package: Package):
        load_all()
        self.opset = next((o.version for o in package.graph.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.weights = {t.name: t.decode() for t in package.tensors}
        self.model = package.graph
        unsupported = sorted(unsupported_ops(self.model))
        if unsupported:
            raise DczError(f"unsupported op{'s' if len(unsupported) > 1 else ''}: {', '.join(unsupported)}")
        self.plan = self._plan(self.model.graph)
        self._subplans: dict[int, Plan] = {}

    def _constants(self, graph: onnx.GraphProto) -> dict[str, np.ndarray]:
        constants = {}
        for t in graph.initializer:
            name = _placeholder_name(t)
            constants[t.name] = self.weights[name] if name is not None else numpy_helper.to_array(t)
        return constants

    def _plan(self, graph: onnx.GraphProto) -> Plan:
        return Plan(graph, self._constants(graph), self.opset)

    def kernel_for(self, node: onnx.NodeProto):
        return KERNELS[node.op_type]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.plan.inputs if n not in feeds]
        if missing:
            raise DczError(f"missing model input(s): {', '.join(missing)}")
        if self.observe is not None:  # calibration needs the inputs' ranges too
            for name in self.plan.inputs:
                self.observe(name, feeds[name])
        return self.run_plan(self.plan, feeds)

    def run_plan(self, plan: Plan, feeds: dict) -> list:
        values = {**plan.constants, **feeds}
        ctx = OpContext(self.opset, run_graph=lambda g, outer: self._run_subgraph(g, outer, values))
        for i, node in enumerate(plan.nodes):
            inputs = [values[n] if n else None for n in node.input]
            ctx.node_name, ctx.num_outputs = node.name, len(node.output)
            attrs = plan.attrs[i]
            if node.op_type == "Constant" and _placeholder_name(node.attribute[0].t) is not None:
                attrs = {"value": self.weights[_placeholder_name(node.attribute[0].t)]}
            try:
                outputs = self.kernel_for(node)(inputs, attrs, ctx)
            except DczError:
                raise
            except Exception as e:  # a kernel failing on these inputs is the model's fault, not a crash
                raise DczError(f"{node.op_type} node {node.name!r} failed: {type(e).__name__}: {e}") from None
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = value
                    if self.observe is not None:
                        self.observe(name, value)
            for name in plan.dead_after.get(i, ()):
                values.pop(name, None)
        return [values[name] for name in plan.outputs]

    def _run_subgraph(self, graph: onnx.GraphProto, extra: dict, scope: dict) -> list:
        plan = self._subplans.get(id(graph))
        if plan is None:
            plan = self._subplans[id(graph)] = self._plan(graph)
        return self.run_plan(plan, {**scope, **extra})


def unsupported_ops(model: onnx.ModelProto) -> set[str]:
    """Op types anywhere in the model (subgraphs included) that have no kernel."""
    load_all()
    ops = set()

    def walk(graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in KERNELS:
                ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)
    walk(model.graph)
    return ops
