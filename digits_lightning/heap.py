"""The C heap of this process keeps the memory it frees, for the next step to reuse.

Every training step allocates and frees the same large activations (the default CNN's first maps
are 14 MB a batch). glibc's malloc hands blocks that large back to the system on `free` and maps
fresh pages for the next step, whose first touch of each 4 KiB page is a page fault: thousands a
step (`tests/test_heap.py`), which made a float32 `fit` on a 2-core VM train 1.15x as long
(`benchmarks/heap_reuse.py`). Raising its two thresholds keeps those blocks in the heap, for a few
MB more at the peak; the results are bit for bit the same. Other C libraries (macOS, Windows,
musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>: free memory at the heap's top kept up to this size
_M_MMAP_THRESHOLD = -3  # blocks at least this large get their own mapping, unmapped on free
_KEEP = 1 << 30  # past any batch's activations; some glibc versions refuse more than 32 MiB
_KEEP_OLD_GLIBC = 32 << 20


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to 1 GiB for reuse; True where it took it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took = mallopt(_M_MMAP_THRESHOLD, _KEEP) or mallopt(_M_MMAP_THRESHOLD, _KEEP_OLD_GLIBC)
    return bool(took and mallopt(_M_TRIM_THRESHOLD, _KEEP))
