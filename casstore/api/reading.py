"""Reading the repository for the API: a briefly cached listing, a pool of readers, JSON streaming.

The listing is re-read when older than LIST_TTL seconds (or when a job of ours finished), so the
API sees snapshots the scheduler or the CLI just took. `GET /api/cloud/backup/<id>` streams the
snapshot in `to_dict()`'s shape without holding it in memory: directories are nested objects,
`name.json` / `name.jsonl` appear parsed under `name` (NaN, Infinity and overflowing numbers as
null), and every other file (or a JSON file that does not parse) as {"$file": path, "size": n,
"href": raw download URL}: the JSON-ready form of read/dictview.py.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from casstore.client import Repository, open_repository
from casstore.errors import RepositoryNotFound, SnapshotNotFound
from casstore.format import layout
from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget
from casstore.read.dictview import _assign_keys, json_ready_file
from casstore.read.reader import PathNotFound, Snapshot
from casstore.repo.core import for_reads
from casstore.settings import Settings

LIST_TTL = 3.0
POOL_SIZE = 4
STREAM_CHUNK = 64 * 1024
MAX_PATH = 4096
SNAPSHOT_REF = re.compile(r"^(latest|[0-9a-f]{4,64}|unified_backup_\d{8}_\d{6})$")   # the last: a seed id


class BadPath(ValueError):
    """A path with `..`, NUL or control characters, or too long."""


def clean_path(path: str) -> str:
    """A snapshot-relative path, or BadPath; never lets `..` through."""
    if len(path) > MAX_PATH or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise BadPath("invalid characters in path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadPath("'..' is not allowed in a path")
    return "/".join(parts)


class RepoAccess:
    def __init__(self, settings: Settings, ttl: float = LIST_TTL) -> None:
        self.settings, self.ttl = settings, ttl
        self._lock = threading.Lock()
        self._listed: tuple[float, list, int] | None = None    # (when, snapshots, stored bytes)
        self._pool: list = []
        self._pool_lock = threading.Lock()

    @property
    def exists(self) -> bool:
        """Whether the local repository exists (sync needs one)."""
        return layout.is_local_repository(self.settings.repository)

    @property
    def readable(self) -> bool:
        """Whether there is anything to read: the local repository, or the configured remote."""
        return self.exists or bool(self.settings.remote)

    def _open(self) -> Repository:
        """The local repository (reads fall through to the remote), or the remote when there is none."""
        return open_repository(self.settings)

    # -- listing -------------------------------------------------------------------------------

    def listing(self, host: str | None = None, all_hosts: bool = False) -> tuple[list, int]:
        """(snapshots newest first under the host rule of reads, stored bytes), re-read when older than
        the TTL. Snapshots are the local repository's and the configured remote's."""
        with self._lock:
            if self._listed is None or time.monotonic() - self._listed[0] > self.ttl:
                self._listed = (time.monotonic(), *self._read_listing())
            every, stored = self._listed[1], self._listed[2]
        return for_reads(every, self.settings.host, host=host, all_hosts=all_hosts), stored

    def snapshots(self, host: str | None = None, all_hosts: bool = False) -> list:
        return self.listing(host, all_hosts)[0]

    def _read_listing(self) -> tuple[list, int]:
        if not self.readable:
            return [], 0
        try:
            with self.reader() as repo:
                stored = repo.stored_bytes()
                return repo.listing(all_hosts=True), stored
        except RepositoryNotFound:   # no local repository, and the remote holds none yet
            return [], 0

    def invalidate(self) -> None:
        with self._lock:
            self._listed = None

    def refresh(self) -> None:
        """Forget the listing and every pooled reader (their indexes may name deleted packs)."""
        self.invalidate()
        self.close()

    def resolve(self, ref: str, host: str | None = None, all_hosts: bool = False):
        """`latest` (under the host rule) or an id prefix -> SnapshotInfo (SnapshotNotFound otherwise)."""
        ref = ref.lower()
        if not SNAPSHOT_REF.match(ref):
            raise SnapshotNotFound(f"no snapshot with id {ref[:80]!r}")
        for attempt in range(2):
            wanted = self.snapshots(host, all_hosts) if ref == "latest" else self.snapshots(all_hosts=True)
            found = self._match(wanted, ref)
            if found:
                return found
            if attempt == 0:
                self.invalidate()  # maybe it was taken a moment ago
        raise SnapshotNotFound(f"no snapshot with id {ref}" if ref != "latest" else "no snapshot yet")

    @staticmethod
    def _match(snapshots: list, ref: str):
        if ref == "latest":
            return next((s for s in snapshots if not s.manifest.incomplete), None)
        if ref.startswith("unified_backup_"):   # imported by `casstore import-legacy`, tagged with it
            return next((s for s in snapshots if ref in s.manifest.tags), None)
        matches = [s for s in snapshots if s.id.startswith(ref)]
        if len(matches) > 1:
            raise SnapshotNotFound(f"snapshot id {ref} is ambiguous; give more digits")
        return matches[0] if matches else None

    # -- readers -------------------------------------------------------------------------------

    def checkout(self):
        """An open Repository for one request alone (pooled: index and manifests stay warm)."""
        with self._pool_lock:
            repo = self._pool.pop() if self._pool else None
        if repo is not None and repo.local_dir is None and self.exists:
            repo.close()   # opened on the remote before the first backup created the local repository
            repo = None
        return repo or self._open()

    def checkin(self, repo: Repository, broken: bool = False) -> None:
        with self._pool_lock:
            if not broken and len(self._pool) < POOL_SIZE:
                self._pool.append(repo)
                return
        repo.close()

    @contextmanager
    def reader(self) -> Iterator:
        repo = self.checkout()
        try:
            yield repo
        except BaseException:
            self.checkin(repo, broken=True)
            raise
        self.checkin(repo)

    def close(self) -> None:
        with self._pool_lock:
            for repo in self._pool:
                repo.close()
            self._pool.clear()


# -- finding a path -------------------------------------------------------------------------------


def find(snapshot: Snapshot, path: str) -> tuple[Entry | None, str]:
    """The entry at `path` (a real path, or to_dict()'s keys such as `ai_hub/collective_intelligence`)
    and its real path; (None, '') is the root. PathNotFound when neither form names anything."""
    if not path:
        return None, ""
    try:
        return snapshot.entry(path), path
    except PathNotFound:
        pass
    tree_id, entry, real = snapshot.manifest.tree, None, []
    for part in path.split("/"):
        if entry is not None and entry.type is not EntryType.DIR:
            raise PathNotFound(f"{path} is not in snapshot {snapshot.short_id}")
        entry = _assign_keys(snapshot.tree(tree_id)).get(part)
        if entry is None:
            raise PathNotFound(f"{path} is not in snapshot {snapshot.short_id}")
        real.append(entry.name.decode("utf-8", "surrogateescape"))
        tree_id = entry.subtree if entry.type is EntryType.DIR else tree_id
    return entry, "/".join(real)


# -- streaming JSON --------------------------------------------------------------------------------


def stream_snapshot(snapshot: Snapshot, entry: Entry | None, path: str, whole: bool) -> Iterator[bytes]:
    """The snapshot (whole: with its header, as to_dict()) or one path's value, as JSON bytes.

    The trees to be streamed are walked first, within the snapshot's declared totals, so a hostile
    DAG or a lying summary is refused before any header is sent; and the first piece is made
    before returning, so an error there is an error status too, never an empty 200.
    """
    plan_stream(snapshot, entry)
    budget = VisitBudget(snapshot.manifest.summary)
    parts = _coalesce(_header(snapshot, budget) if whole else _value(snapshot, entry, path, budget))
    first = next(parts, b"")
    return itertools.chain([first], parts)


def plan_stream(snapshot: Snapshot, entry: Entry | None) -> None:
    """Walk the trees a stream would visit (no file is read): IntegrityError if too many."""
    if entry is not None and entry.type is not EntryType.DIR:
        return
    tree = snapshot.manifest.tree if entry is None else entry.subtree
    VisitBudget(snapshot.manifest.summary).check_walk(snapshot.tree, tree)


def _header(snapshot: Snapshot, budget: VisitBudget) -> Iterator[str]:
    head = {"snapshot_id": snapshot.id, "backup_id": snapshot.id, "timestamp": snapshot.time.isoformat(),
            "host": snapshot.manifest.host, "tags": list(snapshot.manifest.tags)}
    yield json.dumps(head)[:-1] + ', "data_sources": '
    yield from _dir(snapshot, snapshot.manifest.tree, "", budget)
    yield "}"


def _value(snapshot: Snapshot, entry: Entry | None, path: str, budget: VisitBudget) -> Iterator[str]:
    if entry is None:
        yield from _dir(snapshot, snapshot.manifest.tree, "", budget)
    elif entry.type is EntryType.DIR:
        yield from _dir(snapshot, entry.subtree, path, budget)
    elif entry.type is EntryType.FILE:
        yield _file(snapshot, entry, path, budget)
    else:
        yield "null"


def _dir(snapshot: Snapshot, tree_id: bytes, path: str, budget: VisitBudget) -> Iterator[str]:
    """A directory as a JSON object, iteratively (an explicit stack: any depth)."""
    def members(tree: bytes) -> Iterator[tuple[str, Entry]]:
        return iter(_assign_keys(budget.spend(snapshot.tree(tree))).items())

    stack = [(path, members(tree_id), [True])]
    yield "{"
    while stack:
        prefix, items, first = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            yield "}"
            continue
        key, entry = item
        name = entry.name.decode("utf-8", "surrogateescape")
        child = f"{prefix}/{name}" if prefix else name
        yield ("" if first[0] else ",") + _dumps(key) + ":"
        first[0] = False
        if entry.type is EntryType.DIR:
            stack.append((child, members(entry.subtree), [True]))
            yield "{"
        elif entry.type is EntryType.FILE:
            yield _file(snapshot, entry, child, budget)
        else:
            yield "null"


def _file(snapshot: Snapshot, entry: Entry, path: str, budget: VisitBudget) -> str:
    value = json_ready_file(snapshot, path, entry, budget)
    if isinstance(value, dict) and "$file" in value:     # a reference: add where to download it
        value["href"] = file_href(snapshot, path)
    return _dumps(value)


def file_href(snapshot: Snapshot, path: str) -> str:
    return f"/api/cloud/backup/{snapshot.id}/file?path={quote(path, safe='/', errors='surrogateescape')}"


def _dumps(value: object) -> str:
    # allow_nan=False: the JSON-ready values hold no NaN/Infinity; if one slipped through, fail
    # loudly rather than send a document that JSON.parse rejects
    return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)


def _coalesce(parts: Iterator[str]) -> Iterator[bytes]:
    buffer, size = [], 0
    for part in parts:
        buffer.append(part)
        size += len(part)
        if size >= STREAM_CHUNK:
            yield "".join(buffer).encode("utf-8", "replace")
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode("utf-8", "replace")


def stream_file(opened, piece: int = 1 << 20) -> Iterator[bytes]:
    """An opened snapshot file's bytes, in pieces (closed at the end)."""
    with opened as fh:
        while chunk := fh.read(piece):
            yield chunk


# -- one directory, for the dashboard's snapshot view ------------------------------------------------


def directory_listing(snapshot, entry: Entry | None, path: str, limit: int) -> dict:
    """The directory at `path` (its entries, at most `limit`), or PathNotFound for anything else."""
    if entry is not None and entry.type is not EntryType.DIR:
        raise PathNotFound(f"{path} is not a directory in snapshot {snapshot.short_id}")
    entries = snapshot.tree(entry.subtree if entry is not None else snapshot.manifest.tree)
    rows = [_listing_row(snapshot, e, path) for e in entries[:limit]]
    return {"success": True, "backup_id": snapshot.id, "short_id": snapshot.short_id,
            "timestamp": snapshot.time.isoformat(), "host": snapshot.manifest.host, "path": path,
            "total": len(entries), "truncated": len(entries) > limit, "entries": rows}


def _listing_row(snapshot, entry: Entry, parent: str) -> dict:
    name = entry.name.decode("utf-8", "surrogateescape")
    path = f"{parent}/{name}" if parent else name
    row: dict = {"name": name, "path": path, "type": entry.type.value, "size": entry.size,
                 "mode": f"{entry.mode:04o}", "mtime_ns": entry.mtime_ns}
    if entry.type is EntryType.SYMLINK and isinstance(entry.content, bytes):
        row["target"] = entry.content.decode("utf-8", "surrogateescape")
    if entry.type is EntryType.FILE:
        row["href"] = file_href(snapshot, path)
    return row
