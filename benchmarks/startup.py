"""How fast `deepcompress --help` (and each subcommand's) starts, next to a bare Python.

    python benchmarks/startup.py [--runs 10]

The CLI imports only click at start-up (numpy and onnx inside the commands); the goal is under
0.3 s.  Printed: median and worst wall time of each `--help` over --runs fresh processes, and of
`python -c pass` for scale.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ["", "pack", "export", "info", "prune", "share", "quantize", "svd", "huffman", "compress", "bench"]


def timed(args: list[str], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    base, _ = timed([sys.executable, "-c", "pass"], args.runs)
    print(f"{'command':34}{'median':>9}{'worst':>9}{'vs python':>11}")
    print(f"{'python -c pass':34}{1000 * base:>7.0f}ms")
    worst_all = 0.0
    for command in COMMANDS:
        argv = [sys.executable, "-m", "deepcompress_cli", *([command] if command else []), "--help"]
        median, worst = timed(argv, args.runs)
        worst_all = max(worst_all, median)
        label = f"deepcompress {command} --help".replace("  ", " ")
        print(f"{label:34}{1000 * median:>7.0f}ms{1000 * worst:>7.0f}ms{median / base:>10.1f}x")
    print(f"\nslowest median: {1000 * worst_all:.0f} ms (goal: under 300 ms)")


if __name__ == "__main__":
    main()
