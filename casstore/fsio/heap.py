"""Giving the C heap's free memory back to the system where the allocator would keep it.

A delta's zstd tables, window and dictionary (about 20 MiB, format/delta.py) are freed after
each chunk, but glibc keeps freed memory in the thread's arena for reuse, so it stays in the
process's RSS for the rest of the snapshot (issue 17). `malloc_trim` returns it.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim     # glibc; not in musl, macOS or Windows
    except (OSError, AttributeError, TypeError):
        return None


def trim_heap() -> None:
    """Return every arena's free pages to the system (glibc); nothing where there is no such call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
