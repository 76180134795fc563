"""RecordSpill: fixed-size records kept in an unnamed temporary file instead of in memory.

A writer's session and the index table's unsettled tails each hold a record per new blob until
the session's index is written or the table settled; in memory they grew an initial snapshot of a
million small files by over 100 MB (issue 14). Written here, they cost the process nothing until
they are read back: by position (`read`, a lookup), or all at once through a `window` that is
released as it goes (settling), so reading them back does not hold them all either.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading


class RecordSpill:
    """An append-only unnamed temporary file of records, read back by position. Appends may come
    from several upload threads; reads take no lock (a record is read only after its append)."""

    def __init__(self) -> None:
        self._fd = -1          # the file is made with the first append (a reading store writes none)
        self._end = 0
        self._lock = threading.Lock()

    def append(self, data: bytes | bytearray) -> int:
        """Write `data` at the end; return where it starts."""
        with self._lock:
            if self._fd < 0:
                # unnamed (gone when closed or collected); the file system's, not the process's, memory
                self._file = tempfile.TemporaryFile(prefix="casstore-records-")   # noqa: SIM115 (lives with self)
                self._fd = self._file.fileno()
            at, self._end = self._end, self._end + len(data)
            view, done = memoryview(data), 0
            while done < len(view):            # a regular file takes it at once; a full disk raises
                done += os.pwrite(self._fd, view[done:], at + done)
        return at

    def read(self, at: int, size: int) -> bytes:
        data = os.pread(self._fd, size, at)
        if len(data) != size:
            raise OSError(f"record spill file: {size} bytes at {at} read back as {len(data)}")
        return data

    def window(self) -> SpillWindow:
        """Everything written so far, mapped (for a pass over most of it)."""
        return SpillWindow(self._fd, self._end)


class SpillWindow:
    """A read-only mapping of a spill; `release` gives back the pages read so far (they would
    otherwise count in the process's RSS until it is closed)."""

    def __init__(self, fd: int, size: int) -> None:
        self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None

    def __getitem__(self, span: slice) -> bytes:
        return self._map[span] if self._map is not None else b""

    def release(self) -> None:
        if self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()

    def __enter__(self) -> SpillWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
