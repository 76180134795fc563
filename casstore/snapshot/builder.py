"""Snapshot creation (design section 6): walk, chunk, dedup, pack, then commit.

Files whose size, mtime, ctime and inode match the files cache (and whose chunks are all still
indexed) are not read again. Everything else streams through the chunker and the pipeline; no
file is ever held whole in memory. The snapshot manifest is written last, after the packs and
the index: that write is the commit point.
"""

from __future__ import annotations

import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from casstore._testing import pause_point
from casstore.errors import ConfigError, SourceError
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain
from casstore.fsio.readahead import FILE_AHEAD, ReadAhead
from casstore.repo.blobstore import BlobStore
from casstore.repo.core import RepoCore
from casstore.snapshot import filescache
from casstore.snapshot.excludes import Excluder
from casstore.snapshot.pipeline import ChunkPipeline
from casstore.snapshot.summary import SnapshotSummary

log = logging.getLogger(__name__)

# A file touched this close to the snapshot's start may still change within one timestamp tick
# without its size or mtime showing it, so its cached chunk list is not trusted (design 6).
RACY_WINDOW_NS = 2_000_000_000
READ_ATTEMPTS = 2
# Changed files at least this large may be read and cut on the side thread: two of them are then
# read and cut at once, on both cores and with two streams of disk reads (`_reads_on_side`).
SIDE_READ_MIN = 16 * 1024 * 1024

_SPECIAL = {stat.S_IFIFO: EntryType.FIFO, stat.S_IFSOCK: EntryType.SOCKET,
            stat.S_IFCHR: EntryType.CHARDEV, stat.S_IFBLK: EntryType.BLOCKDEV}


@dataclass
class SnapshotResult:
    id: str
    manifest: SnapshotManifest
    summary: SnapshotSummary

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def incomplete(self) -> bool:
        return self.manifest.incomplete


@dataclass
class FileJob:
    """One file being chunked; `chunk_ids` fills in as the pipeline delivers."""

    name: bytes
    st: os.stat_result
    chunk_ids: list = field(default_factory=list)
    previous: list | None = None      # chunk ids the files cache had, to tell changed from unchanged
    cacheable: bool = True            # False when the file kept changing while it was read


class _Aborted(Exception):
    """The snapshot failed elsewhere: a side read stops."""


@dataclass
class _PendingTree:
    """A walked directory whose tree is encoded once all files are read."""

    entries: list[Entry] = field(default_factory=list)    # symlinks and special files
    jobs: list[FileJob] = field(default_factory=list)     # regular files, read or reused
    dirs: list[tuple[bytes, os.stat_result, _PendingTree]] = field(default_factory=list)


@dataclass
class _SideRead:
    item: _Item
    job: FileJob
    jobs: list[FileJob]       # the directory's files, which the job joins once read
    future: Future


@dataclass(slots=True)
class _Item:
    """One directory entry, statted, that the snapshot will record."""

    path: str
    name: str
    rel: bytes
    st: os.stat_result
    reuse: list | None      # a regular file's chunk ids from the files cache, if they can be trusted

    @property
    def will_read(self) -> bool:
        return self.reuse is None and stat.S_ISREG(self.st.st_mode)


class SnapshotBuilder:
    def __init__(self, repo: RepoCore, source: str, excludes: tuple[str, ...], progress: Callable[[int], None] | None):
        self.repo = repo
        self.source = os.path.abspath(source)
        self.store: BlobStore = repo.blob_store()
        self.pipeline = ChunkPipeline(self.store)
        self._chunker = None
        self.min_chunk = int(repo.config.chunker.get("min_size", 0))
        self.excluder = Excluder(self.source, tuple(repo.settings.exclude) + tuple(excludes))
        self.summary = SnapshotSummary()
        self.start_ns = time.time_ns()
        self.progress = progress or (lambda n: None)
        self.cache_file = filescache.cache_path(repo.settings.cache_dir, repo.config.id, self.source)
        self.old_cache = filescache.load(self.cache_file)
        self.new_cache: dict[bytes, list] = {}
        self.skip_dirs = _identities([repo.local_dir, repo.settings.cache_dir])
        # one large file at a time is read and cut on a side thread while the walk goes on
        self._side = ThreadPoolExecutor(1, thread_name_prefix="casstore-read")
        self._side_idle = threading.Semaphore(1)
        self._side_reads: list[_SideRead] = []
        self._aborted = threading.Event()
        self._lock = threading.Lock()

    @property
    def chunker(self):
        if self._chunker is None:  # made on first use: a no-change snapshot never cuts anything
            self._chunker = self.repo.config.make_chunker()
        return self._chunker

    # -- walking -----------------------------------------------------------------------------

    def build(self) -> bytes:
        try:
            root_stat = os.stat(self.source)
        except OSError as exc:
            raise SourceError(f"cannot read source {self.source}: {exc.strerror}") from None
        if not stat.S_ISDIR(root_stat.st_mode):
            raise SourceError(f"source {self.source} is not a directory")
        try:
            pending = self._tree(self.source, b"")
            for side_read in self._side_reads:       # every large file read on the side thread
                self._read_done(side_read.item, side_read.job, side_read.jobs, side_read.future.result())
            self.pipeline.drain()
            return self._finish_tree(pending)
        except BaseException:
            self._aborted.set()      # a side read stops at its next chunk
            raise
        finally:
            self._side.shutdown(wait=True, cancel_futures=True)
            self.pipeline.close()

    def _tree(self, path: str, rel: bytes) -> _PendingTree:
        """Walk one directory. Its tree is encoded later (`_finish_tree`), once every file of the
        whole walk is read, so a large file read on the side thread never holds up the walk."""
        pending = _PendingTree()
        items = self._stat_entries(path, rel)
        ahead = ReadAhead([(item.path, item.st.st_size) for item in items if item.will_read])
        reads = 0
        for item in items:
            if item.will_read:
                ahead.reading(reads)
                reads += 1
            entry = self._entry(item, pending)
            if entry is not None:
                pending.entries.append(entry)
        self.summary.dirs_total += 1
        return pending

    def _finish_tree(self, pending: _PendingTree) -> bytes:
        entries = pending.entries + [self._file_entry(job) for job in pending.jobs]
        entries += [_make_entry(name, EntryType.DIR, st, self._finish_tree(child)) for name, st, child in pending.dirs]
        return encode_tree_chain(entries, self._store_tree)

    def _stat_entries(self, path: str, rel: bytes) -> list[_Item]:
        """Stat a directory's entries (sorted by name), dropping excluded and unreadable ones.

        All of a directory is statted before any file is read, so the files that will be read
        are known in advance and can be read ahead.
        """
        items = []
        for dirent in self._scan(path, rel):
            entry_rel = rel + dirent.name.encode("utf-8", "surrogateescape")
            rel_text = entry_rel.decode("utf-8", "surrogateescape")
            try:
                st = dirent.stat(follow_symlinks=False)
            except OSError as exc:
                self._error(rel_text, exc)
                continue
            if self.excluder.excluded(rel_text, stat.S_ISDIR(st.st_mode)) or (st.st_dev, st.st_ino) in self.skip_dirs:
                self.summary.excluded += 1
                continue
            reuse = self._cached_chunks(entry_rel, st) if stat.S_ISREG(st.st_mode) else None
            items.append(_Item(dirent.path, dirent.name, entry_rel, st, reuse))
        return items

    def _scan(self, path: str, rel: bytes) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda d: d.name)
        except OSError as exc:
            self._error(rel.decode("utf-8", "surrogateescape") or ".", exc)
            return []

    def _entry(self, item: _Item, pending: _PendingTree) -> Entry | None:
        st = item.st
        name = item.name.encode("utf-8", "surrogateescape")
        if stat.S_ISDIR(st.st_mode):
            pending.dirs.append((name, st, self._tree(item.path, item.rel + b"/")))
            return None
        if stat.S_ISREG(st.st_mode):
            self._add_file(item, FileJob(name, st), pending.jobs)
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                return _make_entry(name, EntryType.SYMLINK, st, os.readlink(os.fsencode(item.path)))
            except OSError as exc:
                self._error(item.rel.decode("utf-8", "surrogateescape"), exc)
                return None
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return None
        content = st.st_rdev if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else None
        return _make_entry(name, kind, st, content)

    # -- files -------------------------------------------------------------------------------

    def _add_file(self, item: _Item, job: FileJob, jobs: list[FileJob]) -> None:
        self.summary.files_total += 1
        self.summary.bytes_total += job.st.st_size
        if item.reuse is not None:
            job.chunk_ids = item.reuse
            self.summary.files_unchanged += 1
            self.progress(job.st.st_size)   # progress counts the whole source, read or reused
            self._keep(item, job, jobs)
        elif self._reads_on_side(item, job) and self._side_idle.acquire(blocking=False):
            _ = self.chunker       # made here, on the walk's thread, so never twice
            future = self._side.submit(self._read_on_side, item.path, item.rel, job)
            self._side_reads.append(_SideRead(item, job, jobs, future))
        else:
            self._read_done(item, job, jobs, self._read_file(item.path, item.rel, job))

    def _reads_on_side(self, item: _Item, job: FileJob) -> bool:
        """A large file that changed since the last snapshot may be read on the side thread.

        Changed large files are what an incremental snapshot spends its time on, reading and
        cutting while the workers idle (the new data is small): two at once halve that. A file
        new to the snapshot stays on the walk's thread: in a first snapshot compression keeps
        both cores busy already, and a second reader would only add its read blocks to memory.
        """
        return job.st.st_size >= SIDE_READ_MIN and item.rel in self.old_cache

    def _read_on_side(self, path: str, rel: bytes, job: FileJob) -> bool:
        try:
            return self._read_file(path, rel, job)
        finally:
            self._side_idle.release()

    def _read_done(self, item: _Item, job: FileJob, jobs: list[FileJob], read: bool) -> None:
        if not read:
            return
        cached = self.old_cache.get(item.rel)
        if cached is None:
            self.summary.files_new += 1
        else:
            job.previous = cached[4]
        self._keep(item, job, jobs)

    def _keep(self, item: _Item, job: FileJob, jobs: list[FileJob]) -> None:
        if job.cacheable:
            self.new_cache[item.rel] = [job.st.st_size, job.st.st_mtime_ns, job.st.st_ctime_ns, job.st.st_ino,
                                        job.chunk_ids]
        jobs.append(job)

    def _cached_chunks(self, rel: bytes, st: os.stat_result) -> list | None:
        """The file's chunk ids from the files cache when they can be trusted, else None."""
        cached = self.old_cache.get(rel)
        if cached is not None and self._reusable(cached, st):
            return list(cached[4])
        return None

    def _reusable(self, cached: list, st: os.stat_result) -> bool:
        size, mtime_ns, ctime_ns, inode, chunk_ids = cached
        if (size, mtime_ns, ctime_ns, inode) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return False
        if max(mtime_ns, ctime_ns) > self.start_ns - RACY_WINDOW_NS:
            return False
        return all(self.store.has(KIND_DATA, chunk_id) for chunk_id in chunk_ids)

    def _read_file(self, path: str, rel: bytes, job: FileJob) -> bool:
        """Chunk the file into the pipeline; re-read once if it changes while being read."""
        rel_text = rel.decode("utf-8", "surrogateescape")
        for _attempt in range(READ_ATTEMPTS):
            try:
                before, after = self._chunk_file(path, job)
            except OSError as exc:
                self._error(rel_text, exc)
                return False
            job.st = after
            if _same_version(before, after):
                return True
        with self._lock:
            self.summary.changed_during_read += 1
        job.cacheable = False
        log.warning("%s changed while it was read; stored as last read, re-read next snapshot", rel_text)
        return True

    def _chunk_file(self, path: str, job: FileJob) -> tuple[os.stat_result, os.stat_result]:
        """Feed the file's chunks to the pipeline; return its fstat before and after reading."""
        slots: list = []
        job.chunk_ids = slots  # a re-read starts a fresh list; late deliveries go to the old one
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb", buffering=0) as fh:
            before = os.fstat(fh.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise OSError(0, "no longer a regular file")
            if before.st_size <= self.min_chunk:
                self._submit(fh.read(), slots)
            else:
                for piece in self.chunker.chunks_of_fd(fh.fileno(), read_ahead=FILE_AHEAD):
                    self._submit(piece, slots)  # a view into a fresh block: no copy
            return before, os.fstat(fh.fileno())

    def _submit(self, data: bytes | memoryview, slots: list) -> None:
        if not data:
            return
        if self._aborted.is_set():
            raise _Aborted()
        position = len(slots)
        slots.append(None)

        def deliver(blob_id: bytes, raw_length: int, added: int) -> None:   # in order, one at a time
            slots[position] = blob_id
            self.summary.bytes_read += raw_length
            if added:
                self.summary.blobs_added += 1
                self.summary.bytes_added += raw_length
                self.summary.bytes_added_stored += added
            self.progress(raw_length)

        self.pipeline.submit(data, deliver)

    def _file_entry(self, job: FileJob) -> Entry:
        if job.previous is not None:
            if list(job.previous) == job.chunk_ids:
                self.summary.files_unchanged += 1
            else:
                self.summary.files_changed += 1
        return _make_entry(job.name, EntryType.FILE, job.st, job.chunk_ids)

    # -- trees and commit --------------------------------------------------------------------

    def _store_tree(self, body: bytes) -> bytes:
        tree_id, added = self.store.add(KIND_TREE, body)
        if added:
            self.summary.blobs_added += 1
            self.summary.bytes_added += len(body)
            self.summary.bytes_added_stored += added
        return tree_id

    def _error(self, rel: str, exc: OSError) -> None:
        message = f"{rel}: {exc.strerror or exc}"
        log.warning("skipped %s", message)
        with self._lock:
            self.summary.errors.append(message)


def refuse_remote(repo: RepoCore) -> None:
    """Straight into a shared remote a snapshot would have no checkpoints, confirmation or re-check,
    so gc could sweep its packs under it (design 9): it is built locally and synced instead."""
    if repo.local_dir is None:
        raise ConfigError(f"{repo.location} is a remote repository, which is read-only here: a snapshot is "
                          "built in a local repository and reaches a remote through `casstore sync`")


def take_snapshot(repo: RepoCore, source: str, *, tags: tuple[str, ...] = (), excludes: tuple[str, ...] = (),
                  progress: Callable[[int], None] | None = None) -> SnapshotResult:
    """Snapshot `source` into `repo`: packs, then the index, then the manifest (the commit)."""
    refuse_remote(repo)
    repo.load_index()
    repo.load_plans()  # blobs only in packs a gc plan condemns count as missing (design 5.4)
    builder = SnapshotBuilder(repo, source, excludes, progress)
    # the index and the files cache live for the whole build: keep the cyclic collector from
    # rescanning them on every collection (it was 6% of an incremental snapshot's main thread)
    gc.freeze()
    try:
        root = builder.build()
        builder.store.wait_uploads()
        pause_point("snapshot-before-index")
        builder.store.flush()
    finally:
        gc.unfreeze()
        builder.store.close()
    summary = builder.summary
    summary.repository_bytes = repo.stored_bytes()
    summary.duration_ms = (time.time_ns() - builder.start_ns) // 1_000_000
    parent = _parent(repo, builder)
    manifest = SnapshotManifest(time_ns=builder.start_ns, host=repo.settings.host, source=builder.source,
                                tree=root, tags=sorted(set(tags)), parent=parent,
                                incomplete=bool(summary.errors), summary=summary.as_dict())
    pause_point("snapshot-before-commit")
    snapshot_id, _ = repo.write_snapshot(manifest)
    if builder.new_cache != builder.old_cache:
        filescache.save(builder.cache_file, builder.new_cache)  # only after the commit
    filescache.save_last(builder.cache_file, manifest.host, snapshot_id)
    return SnapshotResult(snapshot_id, manifest, summary)


def _parent(repo: RepoCore, builder: SnapshotBuilder) -> str | None:
    """This host's previous snapshot of the source: the one noted locally if it still exists (one
    stat), else found by reading every manifest (a new cache, or the noted one was forgotten)."""
    noted = filescache.load_last(builder.cache_file, repo.settings.host)
    if noted is not None and repo.has_snapshot(noted):
        return noted
    previous = repo.snapshots(limit=1, source=builder.source)
    return previous[0].id if previous else None


def _make_entry(name: bytes, kind: EntryType, st: os.stat_result, content: object) -> Entry:
    link = st.st_ino if kind is EntryType.FILE and st.st_nlink > 1 else 0
    size = st.st_size if kind in (EntryType.FILE, EntryType.SYMLINK) else 0
    return Entry(name, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, size, link, content)


def _same_version(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def _identities(paths: list[str | None]) -> set[tuple[int, int]]:
    found = set()
    for path in paths:
        if path:
            try:
                st = os.stat(path)
                found.add((st.st_dev, st.st_ino))
            except OSError:
                pass
    return found
