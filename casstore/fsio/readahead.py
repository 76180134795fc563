"""Ask the kernel to read source files before the chunker reaches them.

A cold snapshot reads every file once, on the main thread. Read one after another, each small
file costs a disk round trip during which the hash and compress workers run dry (profiles showed
both cores idle for a third of a cold snapshot). `posix_fadvise(WILLNEED)` starts the read in the
background and returns, so by the time the builder opens a file its pages are already cached and
the disk works while the CPUs do. Hints only fill the page cache: they cost no process memory, and
a file that changed or vanished in between is simply read as it is then.

Only files the walk itself will read are hinted (the files cache vouches for the others; files of
one chunk are read at once by a worker in batches, `snapshot/smallfiles.py`), and the window
is bounded in bytes and in files, so a directory of huge files never floods the page cache. Large
files get their first `FIRST_HINT` bytes hinted here; the chunker hints the rest as it goes
(`hint_range`).
"""

from __future__ import annotations

import os
from collections import deque

AHEAD_BYTES = 64 * 1024 * 1024    # hinted and not yet read, at most (page cache, not process memory)
AHEAD_FILES = 1024
FIRST_HINT = 4 * 1024 * 1024      # of one file, when it enters the window
FILE_AHEAD = 96 * 1024 * 1024     # hinted beyond the block being cut in a large file

_CAN_HINT = hasattr(os, "posix_fadvise")
# O_NONBLOCK: a file replaced by a FIFO since it was statted must not hang the hint
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def hint_range(fd: int, offset: int, length: int) -> None:
    """Start reading `length` bytes at `offset` of an open file in the background (best effort)."""
    if _CAN_HINT and length > 0:
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


def hint_file(path: str, length: int, dir_fd: int | None = None) -> None:
    """Hint the start of a file: `path`, relative to `dir_fd` when given."""
    try:
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return
    try:
        hint_range(fd, 0, length)
    finally:
        os.close(fd)


class ReadAhead:
    """A sliding window of hints over the files one directory will read, in reading order."""

    def __init__(self, files: list[tuple[str, int]], ahead_bytes: int = AHEAD_BYTES,
                 ahead_files: int = AHEAD_FILES) -> None:
        self._files = files
        self._ahead_bytes, self._ahead_files = ahead_bytes, ahead_files
        self._next = 0                                    # first file not hinted yet
        self._window: deque[tuple[int, int]] = deque()    # (file index, bytes hinted), not yet reached
        self._window_bytes = 0

    def reading(self, index: int, dir_fd: int | None = None) -> None:
        """The builder starts reading file `index` of the list: slide the window past it.
        With `dir_fd`, the files' names are relative to that directory descriptor."""
        while self._window and self._window[0][0] <= index:
            self._window_bytes -= self._window.popleft()[1]
        self._next = max(self._next, index + 1)
        while (self._next < len(self._files) and len(self._window) < self._ahead_files
               and self._window_bytes < self._ahead_bytes):
            path, size = self._files[self._next]
            length = min(size, FIRST_HINT)
            if dir_fd is None:
                hint_file(path, length)
            else:
                hint_file(path, length, dir_fd)
            self._window.append((self._next, length))
            self._window_bytes += length
            self._next += 1
