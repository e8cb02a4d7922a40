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


_THREAD_CALLS = ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_", "openblas_{}_num_threads")


def _openblas_threads():
    """(get, set) of numpy's OpenBLAS thread count through ctypes, or None where not found."""
    import ctypes

    import numpy  # noqa: F401 - loads its BLAS

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern in _THREAD_CALLS:
            get, set_ = (getattr(lib, pattern.format(v), None) for v in ("get", "set"))
            if get is not None and set_ is not None:
                return get, set_
    return None


class single_threaded:
    """`with single_threaded():` numpy's BLAS on one thread meanwhile.

    Batched small matrix products (one per depthwise channel: 25 x 25 x a few thousand) are
    15x slower on OpenBLAS's threads than on one: each tiny call wakes and joins the pool, and on
    a busy machine the spinning threads wait for cores.  A no-op where the library is not found.
    """

    _calls = False  # not looked up yet

    def __enter__(self):
        if single_threaded._calls is False:
            single_threaded._calls = _openblas_threads()
        self._before = None
        if single_threaded._calls is not None:
            get, set_ = single_threaded._calls
            self._before = get()
            set_(1)
        return self

    def __exit__(self, *exc):
        if self._before is not None:
            single_threaded._calls[1](self._before)
        return False
