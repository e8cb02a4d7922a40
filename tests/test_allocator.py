"""allocator.keep_freed_memory: freed arrays' pages are reused instead of faulted in anew."""

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Arrays of varied sizes (100 KiB to 8 MiB), a few alive at a time, as the interpreter's nodes
# make them; prints the minor page faults of the second of two identical passes.
SCRIPT = """
import resource, sys
from deepcompress_cli import allocator
print(allocator.keep_freed_memory() if sys.argv[1] == "tuned" else "plain")
import numpy as np
sizes = np.random.default_rng(0).integers(100 << 10, 8 << 20, 200)
def run():
    live = []
    for size in sizes:
        live.append(np.ones(size, np.uint8))
        if len(live) > 3:
            live.pop(0)
run()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def faults(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, **(env or {})}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_pages_are_reused_not_faulted_again():
    status, tuned = faults("tuned")
    _, plain = faults("plain")
    assert status == "True"
    assert plain > 5000  # glibc's defaults: about 28,000 (110 MiB of fresh pages)
    assert tuned < 100


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_a_user_tuning_malloc_is_left_alone(env):
    status, _ = faults("tuned", env)
    assert status == "False"
