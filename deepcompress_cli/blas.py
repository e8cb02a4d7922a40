"""Process-level tuning of numpy's BLAS, applied before numpy is first imported.

numpy's bundled OpenBLAS picks its AVX2 (Haswell) kernels on some AVX-512 CPUs it does not
recognise (AMD Zen 4 among them); on this project's machines its SkylakeX kernels run the
interpreter's convolutions about 1.6x faster.  Only done when every AVX-512 subset those kernels
use is present and the user has not chosen a core type already.
"""

from __future__ import annotations

import os
import sys

AVX512_FLAGS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}


def tune() -> None:
    if "numpy" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return
    if AVX512_FLAGS <= set(flags):
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
