"""Other tools run on the same model in the same benchmark run: onnxruntime's quantizers, zlib and
zstd of the .onnx, and NNCodec (MPEG NNR reference software, DeepCABAC) in its own venv.

Each function returns one row: {"label", "seconds", "bytes", and "onnx" (a runnable model to judge)
or "lossless": True}, or {"label", "error"} when the tool fails.  Used by post_training.py and
default_compress_real.py.

NNCodec needs torch, so it lives in a separate venv (never a dependency of this project):

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.13.0 'numpy<2' Click scikit-learn tqdm h5py pybind11 pandas onnx
    /work/peers-venv/bin/pip install --no-deps --no-build-isolation nncodec==2.1.3

(`--no-deps`: its torchvision requirement would pull a CUDA build of torch; the coder does not use
torchvision, opencv, ptflops or torchmetrics, which the script below stands in for.)  Override the
venv's python with $NNCODEC_PYTHON.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zlib

import numpy as np

PEERS_PYTHON = os.environ.get("NNCODEC_PYTHON", "/work/peers-venv/bin/python")


def opset13(model_path: str, work: str) -> str:
    """The model onnxruntime's quantizer starts from: per-channel QDQ needs opset >= 13, so an older
    model (mnist_cnn is opset 11) is converted first (onnx.version_converter; same weights)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(model_path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return model_path
    out = os.path.join(work, os.path.basename(model_path).replace(".onnx", ".opset13.onnx"))
    onnx.save(version_converter.convert_version(model, 13), out)
    return out


def ort_static(model_path: str, feeds: list[dict], work: str, tag: str) -> dict:
    """onnxruntime quantize_static: QDQ, per-channel int8 weights and int8 activations, calibrated
    (MinMax) on `feeds` (one dict of inputs per calibration sample)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    label = f"ORT quantize_static QDQ per-channel int8 ({len(feeds)} calib)"
    out = os.path.join(work, f"{tag}.ort_static.onnx")
    start = time.perf_counter()
    try:
        quantize_static(opset13(model_path, work), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001 - a peer failing is a row, the run goes on
        return {"label": label, "error": str(e).splitlines()[0][:150]}
    return {"label": label, "seconds": time.perf_counter() - start, "bytes": os.path.getsize(out), "onnx": out}


def ort_dynamic(model_path: str, work: str, tag: str) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    label = "ORT quantize_dynamic per-channel int8"
    out = os.path.join(work, f"{tag}.ort_dynamic.onnx")
    start = time.perf_counter()
    try:
        quantize_dynamic(opset13(model_path, work), out, per_channel=True, weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        return {"label": label, "error": str(e).splitlines()[0][:150]}
    return {"label": label, "seconds": time.perf_counter() - start, "bytes": os.path.getsize(out), "onnx": out}


def lossless(model_path: str) -> list[dict]:
    """zlib -9 and zstd -19 of the .onnx bytes (the zstandard module, else the zstd program)."""
    with open(model_path, "rb") as f:
        data = f.read()
    start = time.perf_counter()
    rows = [{"label": "zlib -9 of the .onnx (lossless)", "bytes": len(zlib.compress(data, 9)),
             "seconds": time.perf_counter() - start, "lossless": True}]
    start = time.perf_counter()
    try:
        import zstandard
        size = len(zstandard.ZstdCompressor(level=19).compress(data))
    except ImportError:
        if shutil.which("zstd") is None:
            return rows
        size = len(subprocess.run(["zstd", "-19", "-c", model_path], capture_output=True, check=True).stdout)
    rows.append({"label": "zstd -19 of the .onnx (lossless)", "bytes": size, "seconds": time.perf_counter() - start,
                 "lossless": True})
    return rows


# Runs in the peers venv (torch, nncodec, onnx): codes every float parameter of the model (initializers
# and Constant nodes, subgraphs included) with NNCodec's data-free coder at one qp, decodes them
# back into an .onnx, and prints the bitstream's size.
NNCODEC_SCRIPT = r'''
import importlib.abc, importlib.machinery, os, sys, types

OPTIONAL = ("torchvision", "cv2", "ptflops", "torchmetrics")


class Any:
    """Stands for anything of the optional packages nncodec.framework imports (its training and
    data-set code), which the coder never calls."""
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return Any()
    def __getattr__(self, name): return Any()
    def __mro_entries__(self, bases): return (object,)


class Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Any()


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots): self.roots = roots
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        module = Stub(spec.name)
        module.__path__ = []
        return module
    def exec_module(self, module): pass


missing = set()
for name in OPTIONAL:
    try:
        __import__(name)
    except ImportError:
        missing.add(name)
sys.meta_path.insert(0, Finder(missing))

import numpy as np, onnx
from onnx import numpy_helper
from nncodec.nnc import compression as nnc

src, qp, bitstream, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = onnx.load(src)
# What a PyTorch state_dict would hold: weights, biases, norm parameters.  Float constants that
# steer shapes or ranges (Resize scales, Pad values, Clip bounds...) are not parameters: coding
# them lossily changes output shapes.
NOT_PARAMETERS = {"Resize", "Upsample", "Pad", "Clip", "Range", "Tile", "Expand", "Reshape", "Slice",
                  "ConstantOfShape", "Where", "Equal", "Less", "Greater"}
consumers = {}


def readers(graph):
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                readers(attr.g)


readers(model.graph)
tensors = {}


def parameter(t, name):
    return t.data_type == onnx.TensorProto.FLOAT and len(t.dims) and not consumers.get(name, set()) & NOT_PARAMETERS


def walk(graph, prefix):
    for t in graph.initializer:
        if parameter(t, t.name):
            tensors[f"{prefix}{t.name}"] = t
    for i, node in enumerate(graph.node):
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and parameter(attr.t, node.output[0]):
                tensors[f"{prefix}const{i}:{node.output[0]}"] = attr.t
            if attr.type == onnx.AttributeProto.GRAPH:
                walk(attr.g, f"{prefix}{i}.{attr.name}/")


walk(model.graph, "")
params = {k: numpy_helper.to_array(t).astype(np.float32) for k, t in tensors.items()}
nnc.compress(params, bitstream_path=bitstream, qp=qp, verbose=False)
decoded = nnc.decompress(bitstream)
decoded = decoded[0] if isinstance(decoded, tuple) else decoded
for k, t in tensors.items():
    t.CopyFrom(numpy_helper.from_array(np.asarray(decoded[k], np.float32).reshape(tuple(t.dims)), t.name))
onnx.save(model, out)
print(os.path.getsize(bitstream))
'''


def nncodec_unavailable() -> str | None:
    """Why NNCodec cannot run here, or None."""
    if not os.path.exists(PEERS_PYTHON):
        return f"{PEERS_PYTHON} not found"
    probe = subprocess.run([PEERS_PYTHON, "-c", "import nncodec, torch, onnx"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"nncodec not importable: {(probe.stderr.strip().splitlines() or ['?'])[-1][:150]}"
    return None


def nncodec(model_path: str, qp: int, work: str, tag: str) -> dict:
    """NNCodec 2.1.3's data-free coder at `qp`; bytes = its bitstream (weights only: the graph is extra)."""
    script = os.path.join(work, "nncodec_run.py")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(NNCODEC_SCRIPT)
    bitstream, out = os.path.join(work, f"{tag}.qp{qp}.nnc"), os.path.join(work, f"{tag}.qp{qp}.onnx")
    print(f"  running: NNCodec qp {qp} on {os.path.basename(model_path)}", file=sys.stderr, flush=True)
    label = f"NNCodec 2.1.3 qp {qp} (data-free, DeepCABAC)"
    start = time.perf_counter()
    done = subprocess.run([PEERS_PYTHON, script, model_path, str(qp), bitstream, out], capture_output=True,
                          text=True, cwd=work)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"label": label, "seconds": seconds, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:150]}
    return {"label": label, "seconds": seconds, "bytes": int(done.stdout.split()[-1]), "onnx": out}


def calibration_feeds(arrays: dict[str, np.ndarray], count: int) -> list[dict]:
    """The first `count` samples of axis-0-batched inputs, one dict per sample (quantize_static's reader)."""
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(min(count, len(next(iter(arrays.values())))))]
