"""Giving the C heap's free memory back to the system where the allocator would keep it.

A delta's zstd tables, window and dictionary (about 20 MiB, format/delta.py) are freed after
each chunk, but glibc keeps freed memory in the thread's arena for reuse, so it stays in the
process's RSS for the rest of the snapshot (issue 17). `malloc_trim` returns it.

Without deltas too: glibc raises its mmap threshold to the size of each freed mmapped block (a
chunk's tail copy or compressed output, up to 8 MiB) and its trim threshold to twice that, so
every worker thread's arena then keeps up to 16 MiB of free memory at its top for good: 20-40 MiB
of a real-data snapshot's peak RSS. `bound_free_heap` fixes both thresholds: large blocks still
come from the arenas as they did (mapping and faulting each chunk's memory afresh, a 1-4 MiB mmap
threshold, cost 0.3-0.4 CPU-s a snapshot), but an arena gives back its free top beyond 2 MiB.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # lazy: a snapshot that reads nothing never needs it (start-up, 5M instructions)

    try:
        return ctypes.CDLL(None).malloc_trim     # glibc; not in musl, macOS or Windows
    except (OSError, AttributeError, TypeError):
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters
TRIM_THRESHOLD = 2 * 1024 * 1024
MMAP_THRESHOLD = 32 * 1024 * 1024                # the highest glibc's dynamic threshold reaches


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    import ctypes

    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def bound_free_heap() -> None:
    """Fix glibc's thresholds for the rest of the process: free memory at an arena's top beyond
    `TRIM_THRESHOLD` goes back to the system (nothing where there is no mallopt)."""
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def trim_heap() -> None:
    """Return every arena's free pages to the system (glibc); nothing where there is no such call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
