"""Keep large tensors on the heap while a Dask worker runs the LLM.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (so that workers hand
memory back to the OS). Setting any such variable turns off glibc's dynamic mmap
threshold: every allocation above 128 KiB is then a fresh ``mmap`` that the kernel must
zero, page by page, and ``munmap`` on free. A forward pass allocates hundreds of such
activations, and MiniLM featurized 25-50% slower in a worker than in a plain process
(``benchmarks/worker_malloc.py``; ``benchmarks/RESULTS.md``, Scale).

While the LLM runs, the mmap threshold is raised to glibc's ceiling so those tensors come
from the heap, and the trim threshold is raised too: otherwise a freed activation at the
top of the heap is handed back at once and the next one faults its pages in again. When
the last featurization in the process ends, both go back (glibc's default mmap threshold,
the environment's trim threshold) and ``malloc_trim`` returns the freed memory, as Dask
intends. Nothing changes where glibc's dynamic threshold is still on, where the user set
``MALLOC_MMAP_THRESHOLD_`` themselves, or off glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
HEAP_CEILING = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit systems
GLIBC_DEFAULT = 128 * 1024  # glibc's default mmap threshold, and trim threshold
KEEP_WHILE_RUNNING = 1 << 30  # trim threshold during the work: freed activations stay

_lock = threading.Lock()
_users = 0


@functools.cache
def _glibc():
    # find_library runs ldconfig: once per process, not once per chunk of texts.
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _tunable_glibc():
    """glibc's handle, if the dynamic mmap threshold was switched off by the environment."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return None
    return _glibc()


def _trim_threshold() -> int:
    try:
        return int(os.environ["MALLOC_TRIM_THRESHOLD_"])
    except (KeyError, ValueError):
        return GLIBC_DEFAULT


@contextlib.contextmanager
def large_tensors_on_the_heap() -> Iterator[None]:
    """Raise glibc's mmap and trim thresholds for the duration (counted across threads)."""
    global _users
    libc = _tunable_glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _users == 0:
            libc.mallopt(M_MMAP_THRESHOLD, HEAP_CEILING)
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_WHILE_RUNNING)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT)
                libc.mallopt(M_TRIM_THRESHOLD, _trim_threshold())
                libc.malloc_trim(0)
