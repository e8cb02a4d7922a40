"""One-node ONNX models for kernel tests: the model, an oracle's outputs (onnxruntime, or
onnx.reference where onnxruntime lacks the op or departs from the spec), and the kernel's."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from deepcompress_cli.interp.ops import KERNELS, OpContext, load_all

load_all()


def one_node(op_type, inputs, attrs, opset, n_out=1):
    """(model, node, feeds): inputs None are omitted (trailing ones left out: onnxruntime's DFT
    crashes on them)."""
    names = [f"x{i}" if a is not None else "" for i, a in enumerate(inputs)]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op_type, names, [f"y{i}" for i in range(n_out)], **attrs)
    graph = helper.make_graph(
        [node], "case",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs) if a is not None],
        [helper.make_empty_tensor_value_info(o) for o in node.output])
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id],
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    return model, node, {n: a for n, a in zip(names, inputs) if a is not None}


def oracle_run(model, feeds, oracle="ort") -> list:
    if oracle == "ref":
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feeds)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def attr_values(node) -> dict:
    def value(attr):
        v = helper.get_attribute_value(attr)
        return numpy_helper.to_array(v) if attr.type == onnx.AttributeProto.TENSOR else v
    return {a.name: value(a) for a in node.attribute}


def oracle_and_kernel(op_type, inputs, attrs, opset, oracle):
    """(the kernel's first output, the oracle's); the kernel must not write its inputs."""
    model, node, feeds = one_node(op_type, inputs, attrs, opset)
    want = np.asarray(oracle_run(model, feeds, oracle)[0])
    before = [None if a is None else a.copy() for a in inputs]
    got = KERNELS[op_type](list(inputs), attr_values(node), OpContext(opset=opset, node_name="n"))[0]
    for a, b in zip(inputs, before):
        assert a is None or np.array_equal(a, b, equal_nan=True)
    return np.asarray(got), want


def check(op_type, inputs, attrs=None, opset=18, oracle="ort", tol=1e-5):
    got, want = oracle_and_kernel(op_type, inputs, attrs or {}, opset, oracle)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def run(op_type, inputs, attrs=None, opset=18):
    return KERNELS[op_type](list(inputs), attrs or {}, OpContext(opset=opset, node_name="n"))[0]
