"""CPU training speed: let glibc keep freed memory instead of returning it to the OS at every step.

A training step on CPU allocates and frees the same large buffers every time (the logits of a 50,304-token
vocabulary alone are 100 MB at batch 8 x 64). glibc serves every allocation above 32 MB with a fresh
`mmap` and gives it back with `munmap` when freed, so each step pays for page faults that zero those pages
again: on the 2-core CPU machine that was as much system time as compute, and half of the step
(docs/benchmarks.md). `keep_freed_memory()` tells glibc to serve large allocations from its heap and not to
trim it (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)`), so after the first few steps
every step reuses the pages of the ones before. The cost: the process keeps its peak memory until it exits. Numerics are unchanged.

Only Linux with glibc; elsewhere (and with `DATGPT_KEEP_FREED_MEMORY=0`) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
ENV = "DATGPT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Apply the setting to this process; True when glibc accepted it."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
