"""A model as a trainable function: forward with a record of what backward needs, then backward.

The forward pass runs the interpreter's own float32 kernels, node by node, on the main graph as
the file has it (no BatchNormalization folding or Relu fusion: those would change the weights
being trained).  Parameters are the model's float tensors that feed a differentiable op (weights
and biases); BatchNormalization statistics stay frozen.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..data import InputSpec, batch_size, declared_layout
from ..errors import DczError
from ..graphs import graph_constants, opset_version, stored_constant, table_names, topological_order
from ..interp.graph import attribute_values, run_nodes
from ..interp.ops import KERNELS, OpContext, kernel_name, load_all
from ..tensors import Package
from .grads import ALL_OUTPUTS, GRADS


FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
# Ops whose outputs are integers, booleans or shapes: no gradient flows through them (the path
# `x -> Shape -> ... -> Reshape` of a dynamic flatten only feeds Reshape its target shape).
NON_DIFFERENTIABLE = {"Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less",
                      "LessOrEqual", "Not", "And", "Or", "Xor", "NonZero", "IsNaN", "IsInf", "ConstantOfShape",
                      "Range", "Sign", "Round", "Floor", "Ceil"}
# Ops a trailing Softmax may hide behind (Softmax -> Flatten -> output is still probabilities).
PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout"}
# Which constants are parameters: the weights of linear layers and the biases added to them,
# embedding tables (Gather's data) and the affine part of layer / instance / group norms.
LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
TABLE_INPUTS = {"Gather": (0,), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
                "GroupNormalization": (1, 2)}


class Network:
    def __init__(self, package: Package, logits: str | None = None):
        load_all()
        model = package.graph
        self.opset = opset_version(model)
        graph = model.graph
        by_name = {t.name: t for t in package.tensors}
        self.constants = graph_constants(graph, lambda name: np.asarray(by_name[name].decode()))
        self.table_name = table_names(graph)  # graph value -> tensor table name
        self.nodes = [n for n in topological_order(graph) if stored_constant(n) is None]
        missing = next((n for n in self.nodes if n.op_type not in KERNELS), None)
        if missing is not None:
            raise DczError(f"retraining does not support op {missing.op_type}")
        self.attrs = [attribute_values(n) for n in self.nodes]
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.input_types = {i.name: i.type.tensor_type for i in graph.input if i.name not in self.constants}
        self.specs = [InputSpec.of(name, self.input_types[name]) for name in self.inputs]
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.logits = self._logits_value(graph, logits)
        self.params = self._trainable()
        if not self.params:
            raise DczError("retraining: no float weights feed a Conv, Gemm or MatMul on the way to the logits")
        self._needs_grad = self._grad_flow()

    def _logits_value(self, graph, requested: str | None) -> str:
        """What the loss is computed on: `requested`, else the first float graph output; a
        Softmax/LogSoftmax before it (possibly behind reshapes) is skipped to reach the logits."""
        if requested is not None:
            if requested not in self.producer:
                raise DczError(f"--logits {requested!r} is not a value computed by the model")
            return requested
        floats = [o.name for o in graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
        if not floats:
            raise DczError("retraining: the model has no float output to train (name one with --logits)")
        name = floats[0]
        node = self.producer.get(name)
        while node is not None and node.op_type in PASS_THROUGH:
            node = self.producer.get(node.input[0])
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0]
        return name

    def _trainable(self) -> dict[str, np.ndarray]:
        """Float32 table tensors that are linear-layer weights, biases added to a linear layer's
        output (Conv/Gemm input 2, or an Add right after one), embedding tables and norms' scales
        and biases (TABLE_INPUTS).  Pre-processing constants (a Sub of a mean, a Div by a std)
        and BatchNormalization statistics stay fixed."""
        params = {}
        for node in self.nodes:
            candidates = []
            if node.op_type in TABLE_INPUTS:
                candidates = [node.input[i] for i in TABLE_INPUTS[node.op_type] if i < len(node.input)]
            elif node.op_type in LINEAR_OPS:
                candidates = list(node.input[1:]) if node.op_type != "MatMul" else list(node.input)
                if node.op_type == "Gemm":
                    candidates = list(node.input)
            elif node.op_type == "Add":
                if any(self.producer.get(n) is not None and self.producer[n].op_type in LINEAR_OPS for n in node.input):
                    candidates = list(node.input)
            for name in candidates:
                value = self.constants.get(name)
                if name in self.table_name and value is not None and value.dtype == np.float32:
                    params[name] = value.copy()
        return params

    def _grad_flow(self) -> set[str]:
        """Values whose gradient backward must compute: downstream of a parameter."""
        flow = set(self.params)
        for node in self.nodes:
            if any(n in flow for n in node.input):
                if node.op_type in NON_DIFFERENTIABLE:
                    continue  # the gradient stops here
                if node.op_type not in GRADS:
                    if self._reaches_logits(node):
                        raise DczError(f"retraining does not support op {node.op_type} (node {node.name!r})")
                    continue
                flow.update(node.output)
        if self.logits not in flow:
            raise DczError(f"retraining: no trainable weight reaches the logits {self.logits!r}")
        return flow

    def _reaches_logits(self, start) -> bool:
        reached = set(start.output)
        for node in self.nodes[self.nodes.index(start) + 1:]:
            if node.op_type not in NON_DIFFERENTIABLE and any(n in reached for n in node.input):
                reached.update(node.output)
        return self.logits in reached

    def fixed_batch(self, layout: dict | None = None) -> int | None:
        """The batch size the model fixes on its inputs' sample axis (e.g. 1), else None; `layout`
        is the data's (data.sample_layout), by default the one the declared shapes imply."""
        return batch_size(self.specs, declared_layout(self.specs) if layout is None else layout)

    # ------------------------------------------------------------------------------ passes

    def forward(self, feeds: dict[str, np.ndarray], upto_logits: bool = True) -> tuple[np.ndarray, dict]:
        """(logits, every value computed), with the current parameters."""
        values = {**self.constants, **self.params, **feeds}
        # Every value stays (no dead_after): backward reads the inputs and outputs of each node.
        run_nodes(self.nodes, self.attrs, values, OpContext(self.opset), lambda node: KERNELS[kernel_name(node)],
                  stop_at=self.logits if upto_logits else None)
        return values[self.logits], values

    def backward(self, values: dict, grad_logits: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of the parameters, given the loss's gradient at the logits."""
        grads = {self.logits: grad_logits.astype(np.float32)}
        for node, attrs in zip(reversed(self.nodes), reversed(self.attrs)):
            if node.op_type in ALL_OUTPUTS:  # e.g. Split: every output's gradient at once
                g = [grads.pop(o, None) if o else None for o in node.output]
                reached = any(gi is not None for gi in g)
            else:
                g = grads.pop(node.output[0], None)
                reached = g is not None
            if not reached or node.op_type not in GRADS:
                continue
            y = [values.get(o) for o in node.output] if node.op_type in ALL_OUTPUTS else values[node.output[0]]
            needs = [bool(n) and n in self._needs_grad for n in node.input]
            if not any(needs):
                continue
            inputs = [values[n] if n else None for n in node.input]
            for name, gi, need in zip(node.input, GRADS[node.op_type](inputs, y, attrs, g, needs, self.opset), needs):
                if need and gi is not None:
                    grads[name] = grads[name] + gi if name in grads else gi
        return {name: grads[name] for name in self.params if name in grads}


# -------------------------------------------------------------------------------------- losses

def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean loss, its gradient at the logits) for class ids `labels`."""
    z = logits.reshape(len(logits), -1).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(z)
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return loss, (grad / n).reshape(logits.shape)


def distillation(logits: np.ndarray, teacher: np.ndarray) -> tuple[float, np.ndarray]:
    """(loss, its gradient) towards the original model's outputs, no labels needed.

    Class scores ([N, classes]): the mean KL divergence from the original's softmax to ours,
    whose gradient is bounded like cross-entropy's (MSE on raw logits is not).  Any other output
    (an encoder's hidden states, a detector's boxes, a map): the mean relative squared error
    ‖y − t‖² / ‖t‖² per sample, since a softmax over thousands of features says nothing."""
    if logits.ndim != 2:
        return relative_squared_error(logits, teacher)
    def log_softmax(z):
        z = z.reshape(len(z), -1).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(logits), log_softmax(teacher)
    q = np.exp(log_q)
    n = len(log_p)
    loss = float((q * (log_q - log_p)).sum() / n)
    return loss, ((np.exp(log_p) - q) / n).reshape(logits.shape)


def relative_squared_error(out: np.ndarray, teacher: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean over samples of ‖y − t‖² / ‖t‖², its gradient); an all-zero target counts as 1."""
    n = len(out)
    y, t = out.reshape(n, -1).astype(np.float64), teacher.reshape(n, -1).astype(np.float64)
    energy = np.maximum((t * t).sum(axis=1, keepdims=True), 1e-30)
    energy[energy <= 1e-30] = 1.0
    diff = y - t
    loss = float(((diff * diff) / energy).sum() / n)
    return loss, (2 * diff / energy / n).reshape(out.shape)
