"""Cutting a sparse file without reading or hashing its holes (issue 13, case 6).

A hole reads as zeros, so a sparse file is cut exactly as its bytes are: the same chunks, the
same ids, the same dedup as a dense read (no format change). What makes a hole cheap is that the
chunk starting at offset s depends only on the bytes from s to one byte past its cut (FastCDC
decides a cut on the byte after it) and, within max_size of the end of the file, on where the
file ends (the cutter's window is shorter there): nothing before the chunk's start counts. So a
chunk that starts inside a hole, fits in it with one byte to spare, and starts at least max_size
before the end of the file is the *zero chunk*: the one the cutter cuts at the start of a long
run of zeros (one length for a given chunker; max_size when zeros never match the cut mask).
The zero chunks that follow one another inside a hole are yielded as one `ZeroRun`, without
reading them, and the cutter restarts reading after them.

Holes come from `SEEK_HOLE`/`SEEK_DATA`, asked before the cutter starts and before each restart,
never while it reads (both move the file offset it reads from). Only holes of at least
2 x max_size + zero chunk + 1 bytes are used: the chunk that runs into such a hole ends within
max_size of the hole's start, so a zero chunk always fits after it and the cutter is never
stopped for nothing. Smaller holes are read (the kernel returns zeros without touching the
disk). A file system without `SEEK_HOLE` reports the whole file as data, and the file is read
as before. A file that changes while it is cut is caught as any file is: its size or mtime
differs afterwards.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from casstore.chunker import Chunker

_SEEK_HOLE = getattr(os, "SEEK_HOLE", None)
_SEEK_DATA = getattr(os, "SEEK_DATA", None)

_zero_lengths: dict[tuple, int] = {}


@dataclass(frozen=True)
class ZeroRun:
    """`count` zero chunks of `length` bytes each, one after another, found in a hole."""

    length: int
    count: int


def zero_chunk_length(chunker: Chunker) -> int:
    """The length of the chunk `chunker` cuts at the start of a run of zeros longer than max_size."""
    key = tuple(sorted(chunker.params().items()))
    if key not in _zero_lengths:
        first = next(iter(chunker.chunks(io.BytesIO(bytes(chunker.max_size)))))
        _zero_lengths[key] = len(first)
    return _zero_lengths[key]


def sparse_chunks(chunker: Chunker, fd: int, size: int, read_ahead: int = 0) -> Iterator[memoryview | ZeroRun]:
    """The chunks of the open file `fd` (`size` bytes when statted), from its start: as
    `chunker.chunks_of_fd` yields them, except that zero chunks inside large holes come as
    `ZeroRun`s, unread. A file without such a hole costs one `lseek` more than a dense read."""
    hole = _next_hole(fd, 0, size, chunker.max_size)   # no hole can hold a zero chunk run: dense
    if hole is None:
        os.lseek(fd, 0, os.SEEK_SET)
        yield from chunker.chunks_of_fd(fd, read_ahead)
        return
    zero = zero_chunk_length(chunker)
    big = 2 * chunker.max_size + zero + 1
    pos = 0
    while pos < size:
        hole = _next_hole(fd, pos, size, big)
        count = _zero_chunks_at(pos, hole, zero, chunker.max_size, size)
        if count:                   # a chunk starts inside a hole: its zero chunks are not read
            yield ZeroRun(zero, count)
            pos += count * zero
            continue
        os.lseek(fd, pos, os.SEEK_SET)
        for piece in chunker.chunks_of_fd(fd, read_ahead):   # dropped (and closed) on break
            yield piece
            pos += len(piece)
            if _zero_chunks_at(pos, hole, zero, chunker.max_size, size):
                break
        else:
            return     # the end of the file (it may have shrunk: the caller compares sizes)


def _zero_chunks_at(pos: int, hole: tuple[int, int] | None, zero: int, max_size: int, size: int) -> int:
    """How many zero chunks, one after another from `pos`, the hole holds: each needs the byte
    after it to be a zero too (the cutter looks at it), and a full max_size window of the file
    from its start (the cutter's window is shorter near the end of the file)."""
    if hole is None or not hole[0] <= pos:
        return 0
    room = min(hole[1] - pos - 1, size - pos - max_size + zero)
    return max(room, 0) // zero


def _next_hole(fd: int, pos: int, size: int, min_length: int) -> tuple[int, int] | None:
    """The first hole at or after `pos` (clipped to start there) at least `min_length` long, as
    (start, end); None when there is none or the file system cannot say."""
    if _SEEK_HOLE is None or _SEEK_DATA is None:
        return None
    while pos < size:
        try:
            start = os.lseek(fd, pos, _SEEK_HOLE)
        except OSError:          # ENXIO: pos is past the end (the file shrank); EINVAL: unsupported
            return None
        if start >= size:
            return None
        try:
            end = min(os.lseek(fd, start, _SEEK_DATA), size)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                return None
            end = size          # the hole runs to the end of the file
        if end <= start:
            return None
        if end - start >= min_length:
            return start, end
        pos = end
    return None
