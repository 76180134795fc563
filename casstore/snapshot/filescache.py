"""The files cache: per directory, name -> (size, mtime_ns, ctime_ns, inode, chunk ids) of the last snapshot.

Local and disposable. Keyed by repository id and source path, so two sources or two repositories
never share one. A cached chunk list is trusted only when every chunk is still in the index outside
condemned packs (checked by the builder), so a gc that removed data can never make a later
snapshot skip a blob that no longer exists.

On disk (version 2) it is a stream of msgpack objects: the header `{"v": 2}`, then one record
`[directory (relative bytes, "" or "a/b/"), {name: entry}]` per directory that holds regular files,
in the walk's order of directories (depth first, names sorted, a directory before its
subdirectories); in an encrypted repository each record is sealed (a msgpack bin of the sealed
record), since it names files. A snapshot reads it alongside its walk (`CacheReader`): memory holds one
directory's record, never the whole cache. The new cache is streamed to a temp file as the
snapshot's directories complete (`CacheWriter`); it replaces the old one atomically and only
after the snapshot that produced it committed. While every record so far equals the old one
nothing is written at all, so a snapshot of an unchanged source writes no cache. A version 1
cache (one map of path -> entry, loaded whole) is still read once, then replaced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import BinaryIO

import blake3
import msgpack

from casstore.errors import CasstoreError
from casstore.format.crypto import KIND_FILES_CACHE, Sealer, seal_if, unseal_if
from casstore.fsio.durable import FileSystem, temp_name
from casstore.fsio.private import make_dirs, open_private

log = logging.getLogger(__name__)

CacheEntry = list  # [size, mtime_ns, ctime_ns, inode, [chunk ids]]
Entries = dict[bytes, CacheEntry]   # one directory's files by name
CACHE_VERSION = 2
_HEADER = msgpack.packb({"v": CACHE_VERSION})
_COPY_PIECE = 1 << 20


def cache_path(cache_dir: str, repo_id: str, source: str) -> str:
    key = blake3.blake3(os.fsencode(os.path.abspath(source))).hexdigest()[:24]   # any path, UTF-8 or not
    return os.path.join(cache_dir, repo_id, f"files-{key}")


def walk_key(rel: bytes) -> tuple[str, ...]:
    """A directory's place in the walk's order: its names as the walk sorts them (str), so that
    comparing keys is comparing positions (depth first, names sorted, parents first)."""
    return tuple(part.decode("utf-8", "surrogateescape") for part in rel.split(b"/") if part)


class Record:
    """One directory's entries in the old cache, and where its bytes lie in the old file (a plain
    class: a dataclass's methods cost every snapshot's start-up about 2.5M instructions)."""

    __slots__ = ("rel", "entries", "start", "end")

    def __init__(self, rel: bytes, entries: Entries, start: int, end: int) -> None:
        self.rel, self.entries, self.start, self.end = rel, entries, start, end


class CacheReader:
    """The old cache, read in the walk's order: `lookup` one directory at a time, in that order."""

    def __init__(self, path: str, sealer: Sealer | None = None) -> None:
        self.path, self.sealer = path, sealer
        self.size = 0
        self.header_end = 0       # 0: no version 2 file to copy records from
        self._fh: BinaryIO | None = None
        self._records: Iterator[Record] = iter(())
        self._head: Record | None = None
        try:
            self._open()
        except FileNotFoundError:
            pass
        except (ValueError, msgpack.UnpackException, OSError, CasstoreError) as exc:
            log.warning("ignoring unreadable files cache %s: %s", path, exc)
            self.close()
            self.header_end, self._records = 0, iter(())

    def _open(self) -> None:
        fh = self._fh = open(self.path, "rb")   # noqa: SIM115 (held open: read alongside the walk)
        self.size = os.fstat(fh.fileno()).st_size
        unpacker = msgpack.Unpacker(fh, max_buffer_size=1 << 30, strict_map_key=False)
        first = unpacker.unpack()
        if isinstance(first, dict) and first.get("v") == CACHE_VERSION:
            self.header_end = unpacker.tell()
            self._records = self._stream(unpacker)
        elif isinstance(first, dict) and self.sealer is None:    # version 1: one map, read whole this once
            self.close()
            self._records = iter(_legacy_records(first))
        self._advance()

    def _stream(self, unpacker: msgpack.Unpacker) -> Iterator[Record]:
        start = unpacker.tell()
        try:
            for doc in unpacker:
                end = unpacker.tell()
                rel, entries = self._record(doc)
                if not isinstance(rel, bytes) or not isinstance(entries, dict):
                    raise ValueError("bad record")
                yield Record(rel, entries, start, end)
                start = end
        except (ValueError, TypeError, msgpack.UnpackException, OSError, CasstoreError) as exc:
            log.warning("files cache %s is damaged from byte %d on: %s", self.path, start, exc)
            self.size = -1     # never equal to what was copied: the cache is rewritten

    def _record(self, doc: object) -> list:
        """A record as stored: sealed (bytes) in an encrypted repository, a plain array otherwise."""
        if isinstance(doc, bytes):
            doc = msgpack.unpackb(unseal_if(self.sealer, KIND_FILES_CACHE, doc, "files cache"))
        elif self.sealer is not None:
            raise ValueError("a plain record in an encrypted repository's files cache")
        if not isinstance(doc, list) or len(doc) != 2:
            raise ValueError("bad record")
        return doc

    def _advance(self) -> None:
        self._head = next(self._records, None)

    def lookup(self, rel: bytes) -> Record | None:
        """The record of directory `rel`, skipping those of directories the walk has passed."""
        key = None       # computed only when the head is another directory (a deep path is long)
        while self._head is not None:
            record = self._head
            if record.rel != rel:
                key = walk_key(rel) if key is None else key
                if walk_key(record.rel) > key:
                    return None
            self._advance()
            if record.rel == rel:
                return record
        return None

    def copy_to(self, fd: int, end: int) -> None:
        """Write the old file's bytes [0, end) to `fd` (records the new cache repeats unchanged)."""
        assert self._fh is not None
        offset = 0
        while offset < end:
            piece = os.pread(self._fh.fileno(), min(_COPY_PIECE, end - offset), offset)
            if not piece:
                raise OSError("files cache shrank while it was copied")
            _write_all(fd, piece)
            offset += len(piece)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _legacy_records(doc: dict) -> list[Record]:
    by_dir: dict[bytes, Entries] = {}
    for rel, entry in doc.items():
        if isinstance(rel, bytes):
            directory, _, name = rel.rpartition(b"/")
            by_dir.setdefault(directory + b"/" if directory else b"", {})[name] = entry
    return sorted((Record(rel, entries, 0, 0) for rel, entries in by_dir.items()), key=lambda r: walk_key(r.rel))


class CacheWriter:
    """The new cache, streamed to a temp file beside the old one as directories complete.

    Records equal to the old cache's, from its start on, are not written but counted; the first
    difference starts the temp file with a copy of those old bytes. Best effort throughout: a
    full or unwritable cache directory costs the next snapshot a re-read, never this one its success.
    """

    def __init__(self, path: str, old: CacheReader, sealer: Sealer | None = None) -> None:
        self.path, self.old, self.sealer = path, old, sealer
        self._copied_upto = old.header_end     # old bytes that the new cache repeats so far
        self._tmp: str | None = None
        self._fd: int | None = None
        self._fs: FileSystem | None = None
        self._broken = False

    def add(self, rel: bytes, entries: Entries, old: Record | None) -> None:
        """The directory `rel` completed with `entries` (its cacheable files); `old` is its old record."""
        if self._broken:
            return
        if (self._fd is None and self.old.header_end and old is not None and old.start == self._copied_upto
                and old.entries == entries):
            self._copied_upto = old.end
            return
        if entries:
            self._write(self._stored(msgpack.packb([rel, entries])))
        elif old is not None and self._fd is None:
            self._write(b"")     # the old record is not repeated: the copied prefix ends before it

    def _write(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self._start()
            assert self._fd is not None
            _write_all(self._fd, data)
        except OSError as exc:
            self._give_up(exc)

    def _stored(self, record: bytes) -> bytes:
        return record if self.sealer is None else msgpack.packb(seal_if(self.sealer, KIND_FILES_CACHE, record))

    def _start(self) -> None:
        make_dirs(os.path.dirname(self.path))
        self._fs = FileSystem()
        self._tmp = temp_name(self.path)
        copy = bool(self.old.header_end)
        self._fd = self._fs.write_new(self._tmp, b"" if copy else _HEADER)
        if copy:
            self.old.copy_to(self._fd, self._copied_upto)

    @property
    def unchanged(self) -> bool:
        """Every record equals the old cache's, and the old cache holds nothing more."""
        return self._fd is None and not self._broken and bool(self.old.header_end) \
            and self._copied_upto == self.old.size

    def publish(self) -> None:
        """Replace the old cache with the new one (after the commit): fsync, rename, fsync the directory."""
        if self._broken or self.unchanged:
            self.discard()
            return
        try:
            if self._fd is None:
                self._write(b"")      # an empty or unchanged-prefix cache still replaces the old
            if self._fd is None or self._fs is None or self._tmp is None:
                return
            fd, self._fd = self._fd, None
            try:
                self._fs.fsync(fd)
            finally:
                self._fs.close(fd)
            self._fs.rename(self._tmp, self.path)
            self._tmp = None
            self._fs.fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        if not self._broken:
            log.warning("could not save the files cache %s: %s (the next snapshot reads every file)", self.path,
                        exc.strerror or exc)
        self._broken = True
        self.discard()

    def discard(self) -> None:
        """Drop the temp file (a failed snapshot, or nothing to replace)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None
        self.old.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _last_path(cache_file: str) -> str:
    return cache_file + ".last"


def load_last(cache_file: str, host: str) -> str | None:
    """The id of this host's last snapshot of the source, as noted after it committed (a hint)."""
    try:
        with open(_last_path(cache_file), "rb") as fh:
            doc = msgpack.unpackb(fh.read())
        return doc["snapshot"] if isinstance(doc, dict) and doc.get("host") == host else None
    except (OSError, ValueError, KeyError, msgpack.UnpackException):
        return None


def save_last(cache_file: str, host: str, snapshot_id: str) -> None:
    """Note the snapshot just committed, so the next one finds its parent without reading every
    manifest. A hint only: written without fsync (a lost note means one scan), never trusted
    unless the snapshot still exists."""
    path = _last_path(cache_file)
    tmp = f"{path}.{os.urandom(4).hex()}.tmp"
    try:
        make_dirs(os.path.dirname(path))
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
            fh.write(msgpack.packb({"host": host, "snapshot": snapshot_id}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not note the last snapshot in %s: %s", path, exc)
