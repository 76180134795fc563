"""Small files read, hashed and compressed in batches on the pipeline's workers.

A source of many small files (1-4 KB JSON documents) spent its time in thread round trips: every
file's single chunk went to a worker and back, about 24 futex calls a file. A file no larger than
the chunker's minimum is one chunk, so no cutting is needed: a batch of such files goes to a
worker as one task, which opens each through its own duplicate of the directory's descriptor,
checks it is still the file that was listed, reads it, checks it did not change while read (once
more if it did); then the batch is hashed, and what is not stored yet compressed and verified in
one zstd call each way (`codec.encode_verified_many`: a call per file cost three times as much).
The walk thread then only lists, stats and applies results in order.

The same rules as the walk's own reads hold (design 6): `O_NOFOLLOW|O_NONBLOCK`, the (device,
inode) that was listed, a file read twice at most and recorded as last read. A file that grew past
the limit since it was listed is closed and handed back as `grown`: the walk thread opens it again
(the listed identity checked again) and reads it through the chunker. The batch's descriptor is
the walk's to close (when it records the batch, or when the snapshot fails): a task that a failed
snapshot cancels never runs, so a task owns no descriptor.

With many small files the batches go to forked worker processes instead (`fsio/workers.py`,
started by the builder): the same `read_batch`, given the directory's descriptor over a socket;
what it read comes back pickled as columns (`BatchReads`), each file's fstat as the few numbers
the snapshot records in a plain tuple (a pickled `os.stat_result` cost 7 microseconds, a tuple
one; a `SmallRead` and a `FileStat` a file, a Python call each to unpickle).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from casstore._testing import pause_point, pausing

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
READ_ATTEMPTS = 2

PrepareMany = Callable[[list[bytes]], Sequence[tuple[bytes, object, int]]]


class FileStat(NamedTuple):
    """The fields of a file's fstat that a snapshot records (in its tree and files cache) or checks."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


def file_stat(st: os.stat_result) -> FileStat:
    return FileStat(st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                    st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class SmallRead:
    """What reading one listed small file gave."""

    st: FileStat | None = None           # the file's fstat after the last read
    size: int = 0                        # bytes read
    prepared: tuple | None = None        # (id, encoded or None, raw length); None for an empty file
    changed: bool = False                # changed while read, twice: stored as last read, not cached
    error: OSError | None = None         # could not be opened or read
    replaced: str | None = None          # no longer the listed file: why (nothing was read)
    grown: bool = False                  # grew past the limit: the walk opens it again and cuts it
    data: bytes = b""                    # what was read, until prepared

    def __reduce__(self) -> tuple:       # a tuple of fields: a third of the slots' state to unpickle
        return SmallRead, (self.st, self.size, self.prepared, self.changed, self.error, self.replaced, self.grown,
                           self.data)


class BatchReads(NamedTuple):
    """What reading a batch gave, as columns (what a worker process answers, pickled): a file read
    as listed is its fstat fields as a plain tuple, its size and its prepared chunk; anything else
    (an error, a file replaced, grown or changed while read) is its `SmallRead` in `unusual`. A
    `SmallRead` and a `FileStat` a file were each a Python call to unpickle in the walk's process,
    the critical path of an initial snapshot of small files (issue 14)."""

    stats: list[tuple[int, ...] | None]       # `FileStat` fields; None: see `unusual`
    sizes: list[int]
    prepared: list[tuple | None]              # every file's, unusual ones' too (a changed file is stored)
    unusual: dict[int, SmallRead]


def columns(reads: list[SmallRead]) -> BatchReads:
    """`reads` as a `BatchReads`."""
    batch = BatchReads([], [], [], {})
    for i, read in enumerate(reads):
        usual = read.st is not None and not read.changed
        batch.stats.append(tuple(read.st) if usual else None)      # type: ignore[arg-type]
        batch.sizes.append(read.size)
        batch.prepared.append(read.prepared)
        if not usual:
            batch.unusual[i] = read
            read.prepared = None
    return batch


def read_batch(dir_fd: int, files: list[tuple[str, tuple[int, int]]], limit: int,
               prepare_many: PrepareMany) -> list[SmallRead]:
    """Read each (name, listed (device, inode)) relative to `dir_fd` (a duplicate the batch owns:
    the walk may close its own meanwhile), then prepare what was read, all at once (hashed, and
    compressed and verified in one call: `ChunkPipeline.prepare_many`)."""
    pause = pausing("snapshot-before-open")
    reads = [read_small(dir_fd, name, ident, limit, pause) for name, ident in files]
    with_data = [read for read in reads if read.data]
    if with_data:
        for read, prepared in zip(with_data, prepare_many([read.data for read in with_data]), strict=True):
            read.prepared, read.data = prepared, b""
    return reads


def read_small(dir_fd: int, name: str, ident: tuple[int, int], limit: int, pause: bool = True) -> SmallRead:
    if pause:
        pause_point("snapshot-before-open")
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return SmallRead(replaced="was replaced by a symlink; not followed")
        return SmallRead(error=exc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident:
            return SmallRead(replaced="was replaced since it was listed; skipped")
        return _read_stable(fd, st, limit)
    except OSError as exc:
        return SmallRead(error=exc)
    finally:
        os.close(fd)


def _read_stable(fd: int, before: os.stat_result, limit: int) -> SmallRead:
    """Read the whole file; again once if its size or mtime changed meanwhile."""
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            before = os.fstat(fd)
        if before.st_size > limit:
            return SmallRead(grown=True)
        data = os.pread(fd, before.st_size + 1, 0)    # one more byte: a file that grew shows it
        if len(data) > limit:
            return SmallRead(grown=True)
        after = os.fstat(fd)
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and len(data) == after.st_size:
            return SmallRead(st=file_stat(after), size=len(data), data=data)
    return SmallRead(st=file_stat(after), size=len(data), data=data, changed=True)


def read_batch_columns(dir_fd: int, files: list[tuple[str, tuple[int, int]]], limit: int,
                       prepare_many: PrepareMany) -> BatchReads:
    """`read_batch`'s reads as columns (`BatchReads`): what a worker process sends back over its
    socket, and what a pipeline thread hands to the builder the same way."""
    return columns(read_batch(dir_fd, files, limit, prepare_many))
