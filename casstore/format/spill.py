"""RecordSpill: fixed-size records kept in an unnamed temporary file instead of in memory.

A writer's session and the index table's unsettled tails each hold a record per new blob until
the session's index is written or the table settled; in memory they grew an initial snapshot of a
million small files by over 100 MB (issue 14). Written here, they cost the process nothing until
they are read back, one by one (`read`). A mapping of the file was tried for settling, which reads
every record back: the records lie in the order they came, and the kernel maps 16 pages around
every page read, so even giving pages back every 1,024 records held nearly the whole file (43 MB
at 1M records); a `pread` a record costs about 1 us, so settling many reads them in the file's
order, many at a time (`index._Tails.grouped`).
"""

from __future__ import annotations

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
