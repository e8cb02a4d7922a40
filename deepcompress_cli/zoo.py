"""Real architectures for size and speed work: the onnx wheel's `light_*` models, materialized.

The onnx package ships AlexNet, VGG-19, ResNet-50, SqueezeNet ... under
`onnx/backend/test/data/light/` with every weight as a `ConstantOfShape` node (to keep the wheel
small).  `materialize` turns each of those into a real float32 initializer of random values
(He-scaled normal, seeded), which is what benchmarks and round-trip tests need.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper


def light_models() -> dict[str, str]:
    """name (e.g. 'bvlc_alexnet') -> path of the shipped light model."""
    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return {f[len("light_"):-len(".onnx")]: os.path.join(folder, f)
            for f in sorted(os.listdir(folder)) if f.startswith("light_") and f.endswith(".onnx")}


DISTRIBUTIONS = ("normal", "laplace", "uniform")


def materialize(name_or_path: str, seed: int = 0, distribution: str = "normal") -> onnx.ModelProto:
    """The model with random weights of variance 2 / fan_in (He), drawn from `distribution`.

    The distribution matters for compression: k-means on uniform weights leaves far fewer
    distinct shared values in use than on normal ones, so Huffman codes them much shorter.
    """
    path = light_models().get(name_or_path, name_or_path)
    model = onnx.load(path)
    graph = model.graph
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    materialized, kept_nodes = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
            if fan_in:
                std = np.sqrt(2.0 / fan_in)
                if distribution == "normal":
                    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
                elif distribution == "laplace":
                    values = rng.laplace(0, std / np.sqrt(2), shape).astype(np.float32)
                elif distribution == "uniform":
                    values = rng.uniform(-std * np.sqrt(3), std * np.sqrt(3), shape).astype(np.float32)
                else:
                    raise ValueError(f"unknown distribution {distribution!r}")
            else:  # biases, BatchNorm statistics: small positive values keep variances valid
                values = rng.uniform(0.01, 0.1, shape).astype(np.float32)
            materialized.append(numpy_helper.from_array(values, node.output[0]))
        else:
            kept_nodes.append(node)
    used = {name for node in kept_nodes for name in node.input}
    dead = {name for name in shapes if name not in used}
    del graph.node[:]
    graph.node.extend(kept_nodes)
    keep_init = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep_init + materialized)
    keep_inputs = [i for i in graph.input if i.name not in dead]
    if model.ir_version < 4:  # IR < 4: every initializer is also a graph input
        keep_inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in materialized]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    return model


def with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The light models are exported for batch 1 (input dims and Reshape targets say 1): make the
    batch dimension symbolic so they also run at other batch sizes."""
    weights = {t.name for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in weights and dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    del model.graph.value_info[:]
    reshape_shapes = {node.input[1] for node in model.graph.node if node.op_type == "Reshape"}
    for i, t in enumerate(model.graph.initializer):
        if t.name in reshape_shapes:
            shape = numpy_helper.to_array(t).copy()
            if shape.size and shape[0] == 1:
                shape[0] = -1
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(shape, t.name))
    return model
