"""A model as a trainable function: forward with a record of what backward needs, then backward.

The forward pass runs the interpreter's own float32 kernels, node by node, on the main graph as
the file has it (no BatchNormalization folding or Relu fusion: those would change the weights
being trained).  Parameters are the model's float tensors that feed a differentiable op (weights
and biases); BatchNormalization statistics stay frozen.
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..errors import DczError
from ..interp.graph import Plan, attribute_values
from ..interp.ops import KERNELS, OpContext, load_all
from ..onnx_io import _placeholder_name
from ..tensors import Package
from .grads import GRADS

FROZEN_INPUTS = {"BatchNormalization": {1, 2, 3, 4}}  # inference statistics: not trained


class Network:
    def __init__(self, package: Package):
        load_all()
        model = package.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        graph = model.graph
        by_name = {t.name: t for t in package.tensors}
        self.constants: dict[str, np.ndarray] = {}
        self.table_name: dict[str, str] = {}  # graph value -> tensor table name
        for t in graph.initializer:
            name = _placeholder_name(t)
            if name is not None:
                self.constants[t.name] = np.asarray(by_name[name].decode())
                self.table_name[t.name] = name
            else:
                self.constants[t.name] = numpy_helper.to_array(t)
        self.nodes = Plan._sorted(graph)
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute and _placeholder_name(node.attribute[0].t):
                name = _placeholder_name(node.attribute[0].t)
                self.constants[node.output[0]] = np.asarray(by_name[name].decode())
                self.table_name[node.output[0]] = name
        self.nodes = [n for n in self.nodes if n.output[0] not in self.constants]
        self.attrs = [attribute_values(n) for n in self.nodes]
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.output = graph.output[0].name
        self.logits = self._logits_value()
        self.params = self._trainable()
        self._needs_grad = self._grad_flow()

    def _logits_value(self) -> str:
        """The model's first output, or the input of a trailing Softmax (loss on logits)."""
        producer = {o: n for n in self.nodes for o in n.output}
        node = producer.get(self.output)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0]
        return self.output

    def _trainable(self) -> dict[str, np.ndarray]:
        """Float constants of the table feeding a differentiable op (weights, biases), as float32."""
        params = {}
        for node in self.nodes:
            frozen = FROZEN_INPUTS.get(node.op_type, set())
            for i, name in enumerate(node.input):
                value = self.constants.get(name)
                if (name in self.table_name and node.op_type in GRADS and i not in frozen
                        and value is not None and value.dtype == np.float32):
                    params[name] = value.copy()
        return params

    def _grad_flow(self) -> set[str]:
        """Values whose gradient backward must compute: downstream of a parameter."""
        flow = set(self.params)
        for node in self.nodes:
            if any(n in flow for n in node.input):
                if node.op_type not in GRADS:
                    if self._reaches_logits(node):
                        raise DczError(f"retraining does not support op {node.op_type} (node {node.name!r})")
                    continue
                flow.update(node.output)
        return flow

    def _reaches_logits(self, start) -> bool:
        reached = set(start.output)
        for node in self.nodes[self.nodes.index(start) + 1:]:
            if any(n in reached for n in node.input):
                reached.update(node.output)
        return self.logits in reached

    # ------------------------------------------------------------------------------ passes

    def forward(self, feeds: dict[str, np.ndarray], upto_logits: bool = True) -> tuple[np.ndarray, dict]:
        """(logits, every value computed), with the current parameters."""
        values = {**self.constants, **self.params, **feeds}
        ctx = OpContext(self.opset)
        for node, attrs in zip(self.nodes, self.attrs):
            ctx.node_name, ctx.num_outputs = node.name, len(node.output)
            inputs = [values[n] if n else None for n in node.input]
            try:
                outputs = KERNELS[node.op_type](inputs, attrs, ctx)
            except KeyError:
                raise DczError(f"retraining does not support op {node.op_type}") from None
            for name, value in zip(node.output, outputs):
                if name:
                    values[name] = value
            if upto_logits and self.logits in values:
                break
        return values[self.logits], values

    def backward(self, values: dict, grad_logits: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of the parameters, given the loss's gradient at the logits."""
        grads = {self.logits: grad_logits.astype(np.float32)}
        for node, attrs in zip(reversed(self.nodes), reversed(self.attrs)):
            g = grads.pop(node.output[0], None)
            if g is None or node.op_type not in GRADS:
                continue
            needs = [bool(n) and n in self._needs_grad for n in node.input]
            if not any(needs):
                continue
            inputs = [values[n] if n else None for n in node.input]
            for name, gi, need in zip(node.input, GRADS[node.op_type](inputs, values[node.output[0]], attrs, g,
                                                                        needs, self.opset), needs):
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
    """(mean KL divergence from the original model's softmax to ours, its gradient): no labels
    needed, and the gradient is bounded like cross-entropy's (MSE on raw logits is not)."""
    def log_softmax(z):
        z = z.reshape(len(z), -1).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(logits), log_softmax(teacher)
    q = np.exp(log_q)
    n = len(log_p)
    loss = float((q * (log_q - log_p)).sum() / n)
    return loss, ((np.exp(log_p) - q) / n).reshape(logits.shape)
