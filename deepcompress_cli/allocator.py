"""Process-level tuning of the C allocator (glibc's malloc), which numpy's arrays come from.

The interpreter and the trainer allocate and free arrays of the same few sizes node after node.
glibc by default hands arrays over 128 KiB to fresh `mmap`s or gives a freed heap top back to
the system; either way the next array of that size starts on untouched pages, and the kernel's
page faults (zeroing 4 KiB each) then cost more than the arithmetic: 3,360 faults per MiniLM-L3
run at batch 1 (22 ms of CPU, 13.5 ms without them), 31,000 per SqueezeNet run at batch 32
(675 ms, 529 ms without).  Keeping freed memory for reuse is what inference engines' arenas do.

Only glibc is tuned (through `mallopt`); elsewhere, or when the user tunes malloc (a MALLOC_*
variable, or glibc.malloc in GLIBC_TUNABLES), nothing changes.  Freed memory stays mapped for
reuse (a freed heap top up to 1 GiB) instead of going back to the system; the peak is about the
same.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 1 << 30  # a freed heap top up to this size stays for reuse
MMAP_ABOVE_BYTES = 32 << 20  # glibc's largest allowed threshold: bigger arrays still get their own mmap

_tuned = False


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory; True when it did (or had already)."""
    global _tuned
    if _tuned:
        return True
    user_tuned = any(name.startswith("MALLOC_") for name in os.environ) or \
        "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if user_tuned:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave it be
        return False
    # Setting either threshold also turns off glibc's own adjustment of the other, so both are set.
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    return _tuned
