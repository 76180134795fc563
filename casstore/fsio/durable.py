"""Durable local writes, through a small file-system shim that tests can record.

Invariant (design 5.3): temp file in the same directory -> write -> fsync -> rename -> fsync
the directory. A rename never comes before its file's fsync. Every call that matters for
durability goes through `FileSystem`, so a test can record the order of write, fsync, rename
and directory fsync, or crash the process at the Nth call (CASSTORE_TEST_CRASH_AT_IO, casstore/_testing.py).
"""

from __future__ import annotations

import os

from casstore._testing import CRASH_AT_IO, crash_hook
from casstore.fsio.private import open_private

# A file written durably and at least this large (a pack) leaves the page cache once it is on disk:
# it is written once and rarely read soon, so its pages would only push out the source's and the
# system's (borg drops its segments the same way). Its freed pages are what the next pack's
# writes reuse: on a virtual machine a page the guest has not touched lately costs a host fault
# on first write, which made copying the initial snapshot's 340 MB of packs into the page cache
# 1.3 s of system time, 0.1 s with the drop (benchmarks/RESULTS.md, s11perf14).
DROP_CACHED_MIN = 1 << 20
_CAN_DROP = hasattr(os, "posix_fadvise")


class FileSystem:
    """The durability-relevant system calls. Subclassed in tests to record or inject faults."""

    def __init__(self) -> None:
        self._crash = crash_hook(CRASH_AT_IO)  # test hook: SIGKILL self at call N

    def _tick(self) -> None:
        if self._crash is not None:
            self._crash()

    def write_new(self, path: str, data: bytes) -> int:
        """Create `path` exclusively and write `data`; return the open descriptor."""
        self._tick()
        fd = open_private(path, os.O_WRONLY | os.O_EXCL)   # repository objects are the owner's alone
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            raise
        return fd

    def fsync(self, fd: int) -> None:
        self._tick()
        os.fsync(fd)

    def drop_cached(self, fd: int) -> None:
        """Ask the kernel to drop the file's pages from the page cache (clean ones: after its fsync)."""
        if _CAN_DROP:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:     # advice only: a file system that refuses it keeps the pages, the write stands
                pass

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        self._tick()
        os.rename(src, dst)

    def link(self, src: str, dst: str) -> None:
        """Hard link `src` to `dst`, failing if `dst` exists (atomic create-if-absent)."""
        self._tick()
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        self._tick()
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._tick()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_name(path: str) -> str:
    """A temp file name beside `path`; never a valid object key, so listings skip it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")


def write_durably(fs: FileSystem, path: str, data: bytes, *, exclusive: bool = False) -> None:
    """Atomically and durably make `path` hold `data`.

    With `exclusive`, fail with FileExistsError if `path` exists (a hard link publishes the temp
    file only if the name is free, so there is no window where two writers both win).
    """
    tmp = temp_name(path)
    fd = fs.write_new(tmp, data)
    try:
        fs.fsync(fd)
        if len(data) >= DROP_CACHED_MIN:
            fs.drop_cached(fd)
    finally:
        fs.close(fd)
    try:
        if exclusive:
            fs.link(tmp, path)
            fs.unlink(tmp)
        else:
            fs.rename(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    fs.fsync_dir(os.path.dirname(path) or ".")


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
