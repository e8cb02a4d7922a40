"""A model over 2 GB (ONNX external data) through pack, compress and export, checked tensor by tensor.

    python benchmarks/large_model.py [--layers 9] [--width 8192] [--workdir DIR]

Builds an MLP of `--layers` fully-connected layers of width x width float32 weights (default 9 x
256 MiB = 2.25 GiB, past protobuf's 2 GB limit), saved as ONNX with external data, then runs the
real command line, each command in its own process so its wall time and peak RSS are its own:

- `pack` (lossless) then `export`: every exported weight equals the original bit for bit;
- `compress` then `export`: every exported weight equals the `.dcz`'s decoded tensor bit for bit
  (the lossy part is `compress`; what it stored must come back unchanged).

Needs about 3x the model size in free disk space under --workdir and ~2x in memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from deep_compression import run_measured  # noqa: E402

from deepcompress_cli.files import read_model  # noqa: E402


def build(path: str, layers: int, width: int) -> int:
    """Write the model with its weights in `<path>.data`; returns the weight bytes."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(2 / width)))
        inits.append(numpy_helper.from_array(w, f"fc{i}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(width, np.float32), f"fc{i}.bias"))
        y = f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
            y = f"r{i}"
        x = y
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=1024)
    return layers * width * width * 4


def weights(path: str) -> dict[str, np.ndarray]:
    model = onnx.load(path)  # loads the external data
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        src = os.path.join(work, "large.onnx")
        start = time.perf_counter()
        size = build(src, args.layers, args.width)
        print(f"model: {args.layers} x Gemm {args.width}x{args.width}, {size / 2**30:.2f} GiB of weights in "
              f"external data (built in {time.perf_counter() - start:.0f} s)\n")
        files = {k: os.path.join(work, f) for k, f in (("pack", "large.dcz"), ("pack_onnx", "large.out.onnx"),
                                                       ("compress", "small.dcz"), ("compress_onnx", "small.out.onnx"))}
        steps = {
            "pack": ["pack", src, "-o", files["pack"]],
            "export (of pack)": ["export", files["pack"], "-o", files["pack_onnx"]],
            "compress": ["compress", src, "-o", files["compress"]],
            "export (of compress)": ["export", files["compress"], "-o", files["compress_onnx"]],
        }
        print(f"{'step':24}{'wall s':>8}{'peak RSS':>12}{'RSS/model':>11}{'output':>12}")
        outputs = {"pack": "pack", "export (of pack)": "pack_onnx", "compress": "compress",
                   "export (of compress)": "compress_onnx"}
        for step, argv in steps.items():
            seconds, rss_mb, _ = run_measured(["-q", *argv], os.path.join(work, "log"))
            out = files[outputs[step]]
            out_size = os.path.getsize(out) + (os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0)
            print(f"{step:24}{seconds:>8.1f}{rss_mb:>9.0f} MB{rss_mb * 2**20 / size:>10.2f}x{out_size / 2**20:>9.0f} MB")

        original = weights(src)
        exported = weights(files["pack_onnx"])
        assert original.keys() == exported.keys()
        for name in original:
            assert original[name].tobytes() == exported[name].tobytes(), f"pack/export changed {name}"
        del exported
        print(f"\npack -> export: all {len(original)} tensors bit-identical to the original")
        stored = {t.name: t for t in read_model(files["compress"]).tensors}
        exported = weights(files["compress_onnx"])
        for name in original:
            assert stored[name].decode().tobytes() == exported[name].tobytes(), f"export changed {name}"
        ratio = size / os.path.getsize(files["compress"])
        print(f"compress -> export: all {len(original)} tensors equal the .dcz's decoded tensors; "
              f"compress ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
