"""The numpy interpreter next to onnxruntime and onnx.reference, batch 1 and 32.

    python benchmarks/interpreter.py [--models bvlc_alexnet resnet50 squeezenet mnist_cnn] [--runs 10]

Side by side in one run, per model and batch: this interpreter fp32 and int8, onnxruntime fp32,
onnxruntime int8 (`quantize_dynamic`), and onnx.reference; median latency and the ratio to
onnxruntime fp32.  The onnx wheel's light_* models are materialized with random weights;
mnist_cnn comes from ../shared/models (skipped when absent).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deepcompress_cli import blas  # noqa: E402

blas.tune()  # as the command line does, before numpy is imported

import numpy as np  # noqa: E402

from deepcompress_cli import zoo  # noqa: E402
from deepcompress_cli.benchmarking import latency  # noqa: E402
from deepcompress_cli.files import read_model  # noqa: E402
from deepcompress_cli.interp.graph import Interpreter  # noqa: E402
from deepcompress_cli.interp.quant import Int8Interpreter  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "models")


def median_ms(fn, runs: int, warmup: int = 1) -> float:
    return latency(fn, runs, warmup)["median_ms"]


def model_path(name: str, workdir: str) -> str | None:
    if name == "mnist_cnn":
        path = os.path.join(SHARED, "mnist_cnn.onnx")
        return path if os.path.exists(path) else None
    path = os.path.join(workdir, f"{name}.onnx")
    with open(path, "wb") as f:  # batch 1 and 32 both: the light models are exported for batch 1
        f.write(zoo.with_dynamic_batch(zoo.materialize(name)).SerializeToString())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bvlc_alexnet", "resnet50", "squeezenet", "mnist_cnn"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--reference-runs", type=int, default=2, help="onnx.reference is slow")
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"{os.cpu_count()} cores, numpy {np.__version__}, onnxruntime {ort.__version__}, onnx {onnx.__version__}")
    header = f"{'model':14}{'batch':>6}  " + "".join(f"{c:>22}" for c in
                                                    ("ours fp32", "ours int8", "ORT fp32", "ORT int8 (dynamic)", "onnx.reference"))
    print(header)
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            path = model_path(name, workdir)
            if path is None:
                print(f"{name:14}  skipped: ../shared/models/mnist_cnn.onnx not found")
                continue
            package = read_model(path)
            fp32, int8 = Interpreter(package), Int8Interpreter(package)
            q_path = os.path.join(workdir, f"{name}.int8.onnx")
            quantize_dynamic(path, q_path, weight_type=QuantType.QInt8)
            sessions = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in
                        (("fp32", path), ("int8", q_path))}
            reference = ReferenceEvaluator(onnx.load(path))
            input_name = fp32.plan.inputs[0]
            dims = [d.dim_value or 1 for d in next(i for i in fp32.model.graph.input if i.name == input_name)
                    .type.tensor_type.shape.dim]
            for batch in args.batches:
                x = np.random.default_rng(0).random([batch, *dims[1:]], dtype=np.float32)
                feeds = {input_name: x}
                times = {
                    "ours fp32": median_ms(lambda: fp32.run(feeds), args.runs),
                    "ours int8": median_ms(lambda: int8.run(feeds), args.runs),
                    "ORT fp32": median_ms(lambda: sessions["fp32"].run(None, feeds), args.runs),
                    "ORT int8": median_ms(lambda: sessions["int8"].run(None, feeds), args.runs),
                    "onnx.reference": median_ms(lambda: reference.run(None, feeds), args.reference_runs, 0),
                }
                base = times["ORT fp32"]
                print(f"{name:14}{batch:>6}  " + "".join(f"{t:>12.1f} ms {t / base:>5.2f}x" for t in times.values()))
            del fp32, int8, sessions, reference


if __name__ == "__main__":
    main()
