"""Reading a snapshot from Python without restoring it: ls, walk, read_bytes, read_json, open, to_dict."""

from __future__ import annotations

import bisect
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from casstore.errors import CasstoreError, IntegrityError
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget, load_tree_chain, walk_tree
from casstore.read.dictview import json_ready_dict, snapshot_dict
from casstore.repo.core import RepoCore, SnapshotInfo

# Decoded trees a Snapshot keeps (in entries, about 400 bytes each as objects). A restore walks every
# tree twice (the visit budget's check, then the writing walk): kept whole, a million-file snapshot
# held 512 MiB of decoded trees (issue 14). Beyond this many, trees are decoded again when read again.
TREE_CACHE_ENTRIES = 131_072


class PathNotFound(CasstoreError, KeyError, FileNotFoundError):
    """A path that is not in the snapshot."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "path not found"


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    type: str
    size: int
    mtime: datetime
    mode: int
    target: str | None = None     # a symlink's target


class Snapshot:
    """One snapshot, read lazily: trees and chunks are fetched only when a path needs them."""

    def __init__(self, repo: RepoCore, info: SnapshotInfo) -> None:
        self.repo, self.info = repo, info
        self.id, self.manifest = info.id, info.manifest
        self._trees: dict[bytes, list[Entry]] = {}
        self._tree_entries = 0      # entries held in _trees (filled up to TREE_CACHE_ENTRIES, then kept)

    # -- identity ----------------------------------------------------------------------------

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def time(self) -> datetime:
        return self.manifest.time

    @property
    def summary(self) -> dict:
        return dict(self.manifest.summary)

    def __repr__(self) -> str:
        return f"<Snapshot {self.short_id} {self.time.isoformat()} {self.manifest.host}>"

    # -- trees -------------------------------------------------------------------------------

    def tree(self, tree_id: bytes) -> list[Entry]:
        """A directory's entries, following a split directory's chain of tree blobs."""
        entries = self._trees.get(tree_id)
        if entries is None:
            entries = load_tree_chain(lambda i: self.repo.read_blob(KIND_TREE, i), tree_id)
            if self._tree_entries + len(entries) <= TREE_CACHE_ENTRIES:
                self._trees[tree_id] = entries
                self._tree_entries += len(entries)
        return entries

    def entry(self, path: str) -> Entry | None:
        """The entry at `path` ('' or '/' is the root, returned as None)."""
        parts = _split(path)
        tree_id, found = self.manifest.tree, None
        for depth, part in enumerate(parts):
            if found is not None and found.type is not EntryType.DIR:
                above = b"/".join(parts[:depth]).decode("utf-8", "surrogateescape")  # names are bytes
                raise PathNotFound(f"{above} is not a directory")
            found = next((e for e in self.tree(tree_id) if e.name == part), None)
            if found is None:
                raise PathNotFound(f"{path} is not in snapshot {self.short_id}")
            if found.type is EntryType.DIR:
                tree_id = found.subtree
        return found

    def _dir_tree(self, path: str) -> bytes:
        found = self.entry(path)
        if found is None:
            return self.manifest.tree
        if found.type is not EntryType.DIR:
            raise PathNotFound(f"{path} is not a directory")
        return found.subtree

    def ls(self, path: str = "") -> list[str]:
        """Names in the directory at `path`, sorted."""
        return [e.name.decode("utf-8", "surrogateescape") for e in self.tree(self._dir_tree(path))]

    def walk(self, path: str = "") -> Iterator[FileInfo]:
        """Every entry below `path`, depth first, as FileInfo."""
        prefix = "/".join(p.decode("utf-8", "surrogateescape") for p in _split(path))
        budget = VisitBudget(self.manifest.summary)
        for rel, e in walk_tree(lambda tree_id: budget.spend(self.tree(tree_id)), self._dir_tree(path), prefix):
            yield _file_info(rel, e)

    def children(self, path: str = "") -> list[FileInfo]:
        """The entries of the directory at `path`, one level: only the trees on the path are read."""
        prefix = "/".join(p.decode("utf-8", "surrogateescape") for p in _split(path))
        entries = VisitBudget(self.manifest.summary).spend(self.tree(self._dir_tree(path)))
        return [_file_info(posixpath.join(prefix, e.name.decode("utf-8", "surrogateescape")), e) for e in entries]

    # -- file contents -----------------------------------------------------------------------

    def _file(self, path: str) -> Entry:
        found = self.entry(path)
        if found is None or found.type is not EntryType.FILE:
            raise PathNotFound(f"{path} is not a file in snapshot {self.short_id}")
        return found

    def open(self, path: str) -> io.BufferedReader:
        """A seekable, streaming file object; only the chunks that are read are fetched."""
        entry = self._file(path)
        VisitBudget(self.manifest.summary).spend_bytes(entry.size)   # within the declared totals
        return io.BufferedReader(ChunkedFile(self.repo, entry), buffer_size=1 << 20)

    def read_bytes(self, path: str) -> bytes:
        return self.read_entry(self._file(path), path)

    def read_entry(self, entry: Entry, path: str, budget: VisitBudget | None = None) -> bytes:
        """A file entry's bytes, after checking that its chunks hold the size it records and that
        the size fits the snapshot's declared totals (a hostile entry naming one chunk a thousand
        times is refused before anything is allocated)."""
        size = checked_size(self.repo, entry, path)
        (budget or VisitBudget(self.manifest.summary)).spend_bytes(size)
        return b"".join(self.repo.read_blob(KIND_DATA, chunk_id) for chunk_id in entry.chunks)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def read_json(self, path: str) -> object:
        return json.loads(self.read_bytes(path))

    def to_dict(self, json_ready: bool = False):
        """The seed's shape: {'snapshot_id', 'timestamp', 'data_sources': {...}}, read lazily.

        json_ready=True: plain dicts, read whole, that `json.dumps` writes as standard JSON (files
        that are not JSON as {"$file": path, "size": n} references; NaN and Infinity as None).
        A name that is not UTF-8 has the key `os.fsdecode` gives it (b"caf\\xe9" -> "caf\\udce9")."""
        return json_ready_dict(self) if json_ready else snapshot_dict(self)


def _file_info(path: str, e: Entry) -> FileInfo:
    name = path.rsplit("/", 1)[-1]
    return FileInfo(path, name, e.type.value, e.size, _mtime(e.mtime_ns), e.mode, _link_target(e))


def _link_target(entry: Entry) -> str | None:
    if entry.type is not EntryType.SYMLINK or not isinstance(entry.content, bytes):
        return None
    return entry.content.decode("utf-8", "surrogateescape")


class ChunkedFile(io.RawIOBase):
    """A file in a snapshot as a raw, seekable stream over its chunks (whose lengths must add up
    to the size the entry records, so a Content-Length taken from it holds)."""

    def __init__(self, repo: RepoCore, entry: Entry) -> None:
        self._repo, self._chunks = repo, list(entry.chunks)
        self._starts = _chunk_starts(repo, self._chunks)
        self._size = self._starts[-1]
        if self._size != entry.size:
            raise IntegrityError(_size_mismatch(entry.name.decode("utf-8", "surrogateescape"), entry.size, self._size))
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._size:
            return 0
        index = _find_chunk(self._starts, self._pos)
        data = self._chunk(index)
        skip = self._pos - self._starts[index]
        piece = memoryview(data)[skip:skip + len(buffer)]
        buffer[:len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def _chunk(self, index: int) -> bytes:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._repo.read_blob(KIND_DATA, self._chunks[index]))
        return self._cached[1]


def _chunk_starts(repo: RepoCore, chunk_ids: list[bytes]) -> list[int]:
    starts = [0]
    for chunk_id in chunk_ids:
        locations = repo.index.locations(KIND_DATA, chunk_id)
        if not locations:
            repo.load_index()
            locations = repo.index.locations(KIND_DATA, chunk_id)
        if not locations:
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]} is not in any index")
        starts.append(starts[-1] + locations[0].raw_length)
    return starts


def checked_size(repo, entry: Entry, path: str) -> int:
    """The file's size, once its chunks are known to hold exactly that many bytes."""
    stored = _chunk_starts(repo, list(entry.chunks))[-1]
    if stored != entry.size:
        raise IntegrityError(_size_mismatch(path, entry.size, stored))
    return stored


def _size_mismatch(path: str, recorded: int, stored: int) -> str:
    where = f"{path}: " if path else ""
    return f"{where}size recorded as {recorded} but its chunks hold {stored} bytes (corrupt or hostile)"


def _mtime(mtime_ns: int) -> datetime:
    try:
        return datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
    except (OverflowError, ValueError, OSError):
        return datetime.fromtimestamp(0).astimezone()    # out of the platform's range: shown as the epoch


def _find_chunk(starts: list[int], pos: int) -> int:
    return bisect.bisect_right(starts, pos) - 1


def _split(path: str) -> list[bytes]:
    clean = posixpath.normpath("/" + path.strip()).strip("/")
    return [p.encode("utf-8", "surrogateescape") for p in clean.split("/") if p and p != "."]
