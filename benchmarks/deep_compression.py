"""Deep Compression at the paper's settings on AlexNet- and VGG-19-shaped models, next to zlib.

    python benchmarks/deep_compression.py [--models bvlc_alexnet vgg19] [--workdir DIR]

The onnx wheel's light_* architectures are materialized with random He-normal weights (seeded),
then the real command line runs on them, each command in its own process so that its wall time
and peak RSS are its own.  Printed side by side in one run: size after each stage and the total
ratio (paper: AlexNet 35x, VGG-16 49x), the wall time of each stage and of the whole `compress`
next to `zlib -6` on the same .onnx bytes, decode throughput, peak RSS, and the zeroth-order
entropy bound of what the stages store (positions + shared-weight indices), which no symbol-by-
symbol code can beat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deepcompress_cli import zoo  # noqa: E402
from deepcompress_cli.encoding import Shared, parse  # noqa: E402
from deepcompress_cli.files import read_model  # noqa: E402
from deepcompress_cli.stages.entropy import entropy_bits  # noqa: E402

# Fraction of weights KEPT per layer (Han et al. 2016, tables 4 and 5).  VGG-19's extra conv3_4,
# conv4_4 and conv5_4 take the value of the layer before them.
KEEP = {
    "bvlc_alexnet": {"conv1": .84, "conv2": .38, "conv3": .35, "conv4": .37, "conv5": .37,
                     "fc6": .09, "fc7": .09, "fc8": .25},
    "vgg19": {"conv1_1": .58, "conv1_2": .22, "conv2_1": .34, "conv2_2": .36, "conv3_1": .53,
              "conv3_2": .24, "conv3_3": .42, "conv3_4": .42, "conv4_1": .32, "conv4_2": .27,
              "conv4_3": .34, "conv4_4": .34, "conv5_1": .35, "conv5_2": .29, "conv5_3": .36,
              "conv5_4": .36, "fc6": .04, "fc7": .04, "fc8": .23},
}
PAPER_RATIO = {"bvlc_alexnet": 35, "vgg19": 49}


def run_measured(args: list[str], log: str) -> tuple[float, float, str]:
    """Run the CLI in a child process: (wall seconds, its own peak RSS in MB, its stdout).

    fork + exec + wait4 gives the rusage of exactly that child, not of all children so far.
    """
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os.execv(sys.executable, [sys.executable, "-m", "deepcompress_cli", *args])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"deepcompress {' '.join(args)} failed ({os.waitstatus_to_exitcode(status)})")
    with open(log) as f:
        return wall, usage.ru_maxrss / 1024, f.read()


def entropy_bound_bytes(dcz: str) -> float:
    """Zeroth-order entropy of the positions (as a keep/drop stream) and of the value indices."""
    total = 0.0
    for t in read_model(dcz).tensors:
        if not t.is_weight:
            total += t.stored_bytes
            continue
        form = parse(t)
        dense = t.decode().reshape(-1)
        keep = dense != 0
        p = keep.mean()
        positions = 0.0 if p in (0, 1) else -len(dense) * (p * np.log2(p) + (1 - p) * np.log2(1 - p))
        shared = isinstance(form.values, Shared)
        values = entropy_bits(form.values.indices[form.entry_values() != 0]) if shared else 32 * keep.sum()
        total += (positions + values) / 8 + (form.values.centroids.nbytes if shared else 0)
    return total


def bench(name: str, workdir: str, distribution: str) -> dict:
    model = zoo.materialize(name, seed=0, distribution=distribution)
    src = os.path.join(workdir, f"{name}.onnx")
    data = model.SerializeToString()
    with open(src, "wb") as f:
        f.write(data)
    del model
    onnx_bytes = len(data)
    start = time.perf_counter()
    zlib6 = len(zlib.compress(data, 6))
    zlib6_s = time.perf_counter() - start
    del data
    layer_args = [f"--layer-sparsity={layer}_w_0={1 - keep:.2f}" for layer, keep in KEEP[name].items()]
    out = {s: os.path.join(workdir, f"{name}.{s}.dcz") for s in ("p", "pq", "pqh", "all", "idx8", "iter3", "j1")}
    steps = {
        "prune": ["prune", src, "-o", out["p"], *layer_args],
        "share": ["share", out["p"], "-o", out["pq"]],
        "huffman": ["huffman", out["pq"], "-o", out["pqh"]],
        "compress": ["--json", "-j", "2", "compress", src, "-o", out["all"], *layer_args],
        "compress -j 1": ["--json", "-j", "1", "compress", src, "-o", out["j1"], *layer_args],
        # The paper's 5-bit fc index suits fixed-width storage; under Huffman coding a wider gap
        # alphabet avoids filler entries (27% of VGG fc6's entries at 4% density).
        "compress --index-bits 8": ["--json", "compress", src, "-o", out["idx8"], *layer_args, "--index-bits", "8"],
        # Stopping Lloyd early leaves the linear init's evenly spaced centroids nearly in place:
        # skewed cluster sizes code into fewer bits, at a larger error (a rate-distortion trade).
        "compress --max-iter 3": ["--json", "compress", src, "-o", out["iter3"], *layer_args, "--max-iter", "3"],
    }
    results = {}
    for step, args in steps.items():
        results[step] = run_measured(args, os.path.join(workdir, f"{name}.{step}.log"))
    report = json.loads(results["compress"][2])
    assert open(out["all"], "rb").read() == open(out["pqh"], "rb").read(), "compress != prune|share|huffman"
    assert open(out["all"], "rb").read() == open(out["j1"], "rb").read(), "compress -j 2 != -j 1"
    # Decode throughput: every tensor back to float32, in this process.
    package = read_model(out["all"])
    start = time.perf_counter()
    decoded = sum(t.decode().nbytes for t in package.tensors)
    decode_s = time.perf_counter() - start
    sizes = {s: os.path.getsize(p) for s, p in out.items()}
    return {
        "model": name, "onnx_bytes": onnx_bytes, "zlib6_bytes": zlib6, "zlib6_s": zlib6_s,
        "weights_bytes": report["totals"]["bytes_original"], "weights_pqh": report["totals"]["bytes_pqh"],
        "ratio_weights": report["totals"]["ratio_weights"], "sizes": sizes,
        "variants": {label: (json.loads(results[step][2])["totals"]["ratio_weights"],
                             shared_rmse(json.loads(results[step][2])))
                     for label, step in (("converged k-means (default)", "compress"),
                                         ("--index-bits 8", "compress --index-bits 8"),
                                         ("--max-iter 3", "compress --max-iter 3"))},
        "entropy_bound": entropy_bound_bytes(out["all"]),
        "times": {s: r[0] for s, r in results.items()}, "rss_mb": {s: r[1] for s, r in results.items()},
        "decode_mb_s": decoded / 1e6 / decode_s,
    }


def shared_rmse(report: dict) -> float:
    """RMS error of the shared weights over all kept weights of all layers."""
    kept = sum(r["kept"] for r in report["layers"])
    return float(np.sqrt(sum(r["rmse"] ** 2 * r["kept"] for r in report["layers"]) / kept))


def mb(n: float) -> str:
    return f"{n / 1e6:8.2f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bvlc_alexnet", "vgg19"], choices=sorted(KEEP))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--weights", default="normal", choices=zoo.DISTRIBUTIONS,
                        help="distribution of the random weights (default: normal, He-scaled)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for name in args.models:
            r = bench(name, workdir, args.weights)
            onnx_mb = r["onnx_bytes"] / 1e6
            print(f"\n== {name} ({args.weights} weights): {mb(r['onnx_bytes'])} .onnx, "
                  f"weights {mb(r['weights_bytes'])} ==")
            print(f"{'':24}{'file':>12}{'ratio':>9}")
            print(f"{'original .onnx':24}{mb(r['onnx_bytes']):>12}{1:>8.1f}x")
            print(f"{'zlib -6 of .onnx':24}{mb(r['zlib6_bytes']):>12}{r['onnx_bytes'] / r['zlib6_bytes']:>8.2f}x")
            for stage, label in (("p", "prune (P)"), ("pq", "+ share (P+Q)"), ("pqh", "+ huffman (P+Q+H)")):
                print(f"{label:24}{mb(r['sizes'][stage]):>12}{r['onnx_bytes'] / r['sizes'][stage]:>8.1f}x")
            print(f"{'entropy bound (P+Q)':24}{mb(r['entropy_bound']):>12}{r['onnx_bytes'] / r['entropy_bound']:>8.1f}x")
            print(f"{'--index-bits 8 (P+Q+H)':24}{mb(r['sizes']['idx8']):>12}{r['onnx_bytes'] / r['sizes']['idx8']:>8.1f}x")
            print(f"{'--max-iter 3 (P+Q+H)':24}{mb(r['sizes']['iter3']):>12}{r['onnx_bytes'] / r['sizes']['iter3']:>8.1f}x")
            print(f"\nweights only ({mb(r['weights_bytes'])}; paper: {PAPER_RATIO[name]}x):")
            for label, (ratio, rmse) in r["variants"].items():
                print(f"  {label:30}{ratio:>7.1f}x   RMSE of shared weights {rmse:.6f}")
            print(f"\n{'step':26}{'wall s':>9}{'peak RSS':>12}{'RSS/model':>11}")
            for step in r["times"]:
                print(f"{step:26}{r['times'][step]:>9.2f}{r['rss_mb'][step]:>9.0f} MB{r['rss_mb'][step] / onnx_mb:>10.2f}x")
            print(f"{'zlib -6':26}{r['zlib6_s']:>9.2f}")
            print(f"compress -j 2 speed-up over -j 1: {r['times']['compress -j 1'] / r['times']['compress']:.2f}x "
                  f"(same bytes)")
            print(f"compress / zlib -6 time: {r['times']['compress'] / r['zlib6_s']:.2f}x;  "
                  f"decode: {r['decode_mb_s']:.0f} MB/s of float32 weights")


if __name__ == "__main__":
    main()
