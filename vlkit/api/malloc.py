"""glibc ``malloc`` settings for CPU inference.

PyTorch's CPU allocator is plain ``malloc``. A prefill step allocates and frees activations of
tens of megabytes (W1: 16-46 MB per MLP tensor). With glibc's defaults such blocks are
``mmap``-ed and unmapped on free, or trimmed off the heap top, so every step touches them as
fresh pages and pays a page fault per 4 KiB: on the 2-core development machine an elementwise
op over a ``[4096, 1408]`` tensor took 30 ms inside the engine against 1-5 ms when its memory
was already mapped, and W1's time to first token halved once the memory was kept (1.8 s ->
0.93 s). The loop thread makes it worse: a non-main thread gets its own arena, whose large
blocks always go through ``mmap``.

:func:`tune_malloc` keeps freed memory mapped for reuse: one arena (the engine's thread shares
the main heap), no ``mmap`` below 1 GiB, no trimming below 1 GiB. The process's resident size
then stays at its high-water mark instead of shrinking after a step, as a GPU's caching
allocator does. It is called once, before the pipeline's loop thread starts; it does nothing
on non-glibc systems, and ``VLKIT_MALLOC_TUNING=0`` turns it off. Other allocators
(``LD_PRELOAD`` of jemalloc or tcmalloc) are detected by glibc ignoring ``mallopt``; nothing
breaks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger("vlkit.api.malloc")

# from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

KEEP_BYTES = 1 << 30

_done: bool | None = None


def tune_malloc() -> bool:
    """Apply the settings above once per process; return whether they are in effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("VLKIT_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1),
        (M_MMAP_THRESHOLD, KEEP_BYTES),
        (M_TRIM_THRESHOLD, KEEP_BYTES),
    ))
    logger.debug("malloc tuning %s", "applied" if ok else "refused by the C library")
    _done = ok
    return ok
