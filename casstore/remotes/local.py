"""A directory as a remote: the embedded default repository, a NAS mount or a second disk.

Objects are files below the root, one per key. Writes are atomic and durable (see
`casstore.fsio.durable`): readers never see a partial object, and a crash leaves either the old
state or the new one, plus at most a temp file that listings ignore.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from casstore.errors import ObjectExists, ObjectNotFound, RemoteError
from casstore.fsio.durable import FileSystem, write_durably
from casstore.fsio.private import make_dirs
from casstore.remotes.base import ObjectInfo, Remote, validate_key


class LocalRemote(Remote):
    takes_buffers = True   # os.write takes any buffer: a pack is written from its buffer, not copied
    def __init__(self, root: str, fs: FileSystem | None = None, *, create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.fs = fs or FileSystem()
        self.url = f"file://{self.root}"
        if create:
            make_dirs(self.root)
        self._made_dirs: set[str] = set()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _ensure_parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if parent in self._made_dirs:
            return
        if not os.path.isdir(parent):
            make_dirs(parent)
            # the new directory entries themselves must survive a crash
            self.fs.fsync_dir(os.path.dirname(parent))
        self._made_dirs.add(parent)

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        path = self._path(key)
        self._ensure_parent(path)
        if if_match is None:
            return self._write(key, path, data, exclusive=if_absent)
        # compare-and-swap: the etag check and the rename must be one step, or two writers both
        # win (two gc runs holding gc/lease); a lock beside the object makes them one, across threads
        # (the in-process lock: on NFS flock is a POSIX lock, which threads of one process share) and
        # across processes and hosts (flock)
        with _cas_lock(path):
            if _etag(path) != if_match:
                raise ObjectExists(f"{key}: etag does not match")
            return self._write(key, path, data, exclusive=False)

    def _write(self, key: str, path: str, data: bytes, *, exclusive: bool) -> ObjectInfo:
        try:
            write_durably(self.fs, path, data, exclusive=exclusive)
        except FileExistsError as exc:
            raise ObjectExists(key) from exc
        except OSError as exc:
            raise _translate(exc, key) from exc
        return self._stat(key)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        if length:
            return self._get_range(key, offset, length)
        try:
            with open(self._path(key), "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                end = size if length is None else offset + length
                if offset > size or end > size:
                    raise ObjectNotFound(f"{key}: range {offset}..{end} past the end ({size} bytes)")
                fh.seek(offset)
                return fh.read(end - offset)
        except OSError as exc:
            raise _translate(exc, key) from exc

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        """One blob of a pack: open, pread, close (a restore of small files reads one per file,
        and a buffered open costs four more system calls)."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    size = os.fstat(fd).st_size
                    raise ObjectNotFound(f"{key}: range {offset}..{offset + length} past the end ({size} bytes)")
                return data
            finally:
                os.close(fd)
        except OSError as exc:
            raise _translate(exc, key) from exc

    def _stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise _translate(exc, key) from exc
        return ObjectInfo(key, st.st_size, st.st_mtime_ns / 1e9, _etag_of(st))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        top = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            if not stat.S_ISDIR(os.stat(top).st_mode):
                return
        except FileNotFoundError:
            return   # nothing was ever written under this prefix
        except OSError as exc:
            # ESTALE, EIO on a NAS: a listing that failed is an error, never "empty" (design 5.6)
            raise RemoteError(f"listing {prefix or '/'} failed: {exc.strerror or exc}") from exc
        for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                try:
                    validate_key(key)
                except ValueError:
                    continue  # temp files and foreign files are not objects
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while listing: it is no longer an object
                except OSError as exc:
                    raise RemoteError(f"listing {prefix or '/'} failed at {key}: {exc.strerror or exc}") from exc
                yield ObjectInfo(key, st.st_size, st.st_mtime_ns / 1e9, _etag_of(st))

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self.fs.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _translate(exc, key) from exc
        # the removal itself must survive a crash: local gc deletes packs only after the new index
        # and the index deletions are durable, so each step's directory entry is made durable too
        self.fs.fsync_dir(os.path.dirname(path))


_CAS_THREADS = threading.Lock()


@contextmanager
def _cas_lock(path: str) -> Iterator[None]:
    """Exclusive while comparing and swapping `path`: a `.lock` file beside it (never a valid key)."""
    lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
    with _CAS_THREADS:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# a temp file of casstore.fsio.durable.temp_name: `.<name>.<12 hex>.tmp`
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
LEFTOVER_AGE = 3600.0    # a temp file this old belongs to a write that died (writes take seconds)


def leftovers(remote: Remote, min_age: float = 0.0) -> list[tuple[str, int]]:
    """(path, size) of the temp files killed or failed writes left in a local repository; a remote
    that is not a local directory has none (its PUTs are atomic)."""
    local: object = remote
    while not isinstance(local, LocalRemote):      # through test and counting wrappers
        local = getattr(local, "inner", None)
        if local is None:
            return []
    now, found = time.time(), []
    for dirpath, _dirnames, filenames in os.walk(local.root):
        for name in filenames:
            if _TEMP_NAME.match(name):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if now - st.st_mtime >= min_age:
                    found.append((path, st.st_size))
    return sorted(found)


def remove_leftovers(remote: Remote, min_age: float = LEFTOVER_AGE) -> tuple[int, int]:
    """Delete leftover temp files older than `min_age` (a live writer's are seconds old); return
    (files, bytes) removed. Best effort: a file that cannot be removed stays for the next run."""
    files = size = 0
    for path, length in leftovers(remote, min_age):
        try:
            os.unlink(path)
        except OSError:
            continue
        files, size = files + 1, size + length
    return files, size


def _etag_of(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _etag(path: str) -> str | None:
    try:
        return _etag_of(os.stat(path))
    except FileNotFoundError:
        return None


def _raise(exc: OSError) -> None:
    raise RemoteError(f"listing failed: {exc}") from exc


def _translate(exc: OSError, key: str) -> RemoteError:
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(key)
    if exc.errno == errno.ENOSPC:
        return RemoteError(f"{key}: no space left on device")
    return RemoteError(f"{key}: {exc.strerror or exc}")
