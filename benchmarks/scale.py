"""Peak memory and wall time of `compress` and `bench` on VGG-19 (issue 12's limits).

    python benchmarks/scale.py [--model vgg19] [--workdir DIR] [--only compress bench-onnx bench-dcz]

The onnx wheel's light VGG-19 is materialized with random weights (seeded, dynamic batch, as the
benchmarks build it); each command then runs in its own process, so its peak RSS (getrusage of
the child) and wall time are its own.  Printed beside the limits: `compress` <= 3x the model,
`bench` <= 4x.  Wall times are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deepcompress_cli import zoo  # noqa: E402

LIMITS = {"compress": 3.0, "bench-onnx": 4.0, "bench-dcz": 4.0}


def run(args: list[str]) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS bytes) of `python -m deepcompress_cli *args`."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    # A fresh process per command: RUSAGE_CHILDREN's maxrss is the largest child so far, so each
    # command runs under its own small wrapper that reports only its own child.
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "deepcompress_cli", *args],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    peak = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0  # Linux: KiB
    if proc.returncode:
        print("\n".join(lines[-5:-1]), file=sys.stderr)
    return proc.returncode, wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src, dcz = os.path.join(tmp, f"{args.model}.onnx"), os.path.join(tmp, f"{args.model}.dcz")
        model = zoo.with_dynamic_batch(zoo.materialize(args.model, seed=0))
        with open(src, "wb") as f:
            f.write(model.SerializeToString())
        del model
        size = os.path.getsize(src)
        print(f"{args.model}: {size / 1e6:.1f} MB")
        commands = {"compress": ["-q", "compress", src, "-o", dcz],
                    "bench-onnx": ["-q", "bench", src],
                    "bench-dcz": ["-q", "bench", src, dcz]}
        if any(c.startswith("bench-dcz") for c in args.only) and "compress" not in args.only:
            args.only.insert(0, "compress")  # bench of the .dcz needs one
        print(f"{'command':<12}{'exit':>5}{'wall s':>9}{'peak MB':>9}{'x model':>9}{'limit':>7}")
        for name in args.only:
            rc, wall, peak = run(commands[name])
            ratio = peak / size
            verdict = "ok" if rc == 0 and ratio <= LIMITS[name] else "OVER" if rc == 0 else "FAIL"
            print(f"{name:<12}{rc:>5}{wall:>9.1f}{peak / 1e6:>9.0f}{ratio:>9.2f}{LIMITS[name]:>6.1f}x {verdict}",
                  flush=True)


if __name__ == "__main__":
    main()
