"""Snapshot creation (design section 6): walk, chunk, dedup, pack, then commit.

Files whose size, mtime, ctime and inode match the files cache (and whose chunks are all still
indexed) are not read again. Everything else streams through the chunker and the pipeline; no
file is ever held whole in memory. The snapshot manifest is written last, after the packs and
the index: that write is the commit point.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from casstore._testing import pause_point, snapshot_time_ns
from casstore.errors import ConfigError, SourceError
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain
from casstore.fsio.readahead import FILE_AHEAD, ReadAhead
from casstore.remotes.local import remove_leftovers
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

MAX_OPEN_DIRS = 64     # directory descriptors held open by the walk (the deepest ones)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | _NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _NONBLOCK

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
    size: int | None = None           # bytes actually read (None: reused from the files cache)
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
class _Frame:
    """A directory on the walk's stack: its listing, how far it got, and its open descriptor."""

    fd: int | None                    # None while closed to bound open descriptors; reopened via ".."
    ident: tuple[int, int]            # (st_dev, st_ino) it was opened as
    path: str
    rel: bytes
    pending: _PendingTree
    items: list[_Item]
    ahead: ReadAhead
    next: int = 0                     # index of the next item to record
    reads: int = 0                    # files of this directory read so far (for the read-ahead)


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
        self.old_cache = filescache.load(self.cache_file, repo.config.sealer)
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
    #
    # The walk holds against a source that changes under it (issue 13): every directory is opened
    # relative to its parent's descriptor with O_NOFOLLOW|O_DIRECTORY and must be the directory
    # that was listed (same device and inode), every file likewise with O_NOFOLLOW|O_NONBLOCK, so
    # a directory swapped for a symlink is never followed and a file swapped for a FIFO never
    # blocks. The walk is iterative (an explicit stack), so depth is bounded by memory, not by
    # Python's recursion limit; only the deepest MAX_OPEN_DIRS directories keep a descriptor open,
    # and an ancestor is reopened through ".." (and its identity checked) when the walk returns.

    def build(self) -> bytes:
        try:
            root_fd = os.open(self.source, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise SourceError(f"source {self.source} is not a directory") from None
            raise SourceError(f"cannot read source {self.source}: {exc.strerror}") from None
        try:
            pending = self._walk(root_fd)
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

    def _walk(self, root_fd: int) -> _PendingTree:
        """Walk the source depth first. Trees are encoded later (`_finish_tree`), once every file
        of the whole walk is read, so a large file read on the side thread never holds up the walk."""
        stack = [self._frame(root_fd, os.fstat(root_fd), self.source, b"")]
        root = stack[0].pending
        self._lowest_open = 0      # frames below this index have closed their descriptor
        try:
            while stack:
                frame = stack[-1]
                if frame.next < len(frame.items):
                    self._step(frame, stack)
                else:
                    self.summary.dirs_total += 1
                    stack.pop()
                    self._leave(frame, stack)
        finally:
            for frame in stack:
                _close(frame.fd)
        return root

    def _frame(self, fd: int, st: os.stat_result, path: str, rel: bytes) -> _Frame:
        items = self._stat_entries(fd, path, rel)
        ahead = ReadAhead([(item.name, item.st.st_size) for item in items if item.will_read])
        return _Frame(fd, (st.st_dev, st.st_ino), path, rel, _PendingTree(), items, ahead)

    def _step(self, frame: _Frame, stack: list[_Frame]) -> None:
        """Record the next entry of the directory on top of the stack (descending into a directory)."""
        item = frame.items[frame.next]
        frame.next += 1
        if item.will_read:
            frame.ahead.reading(frame.reads, frame.fd)
            frame.reads += 1
        if stat.S_ISDIR(item.st.st_mode):
            child = self._enter(frame, item)
            if child is not None:
                stack.append(child)
                self._limit_open(stack)
            return
        entry = self._entry(frame, item)
        if entry is not None:
            frame.pending.entries.append(entry)

    def _enter(self, frame: _Frame, item: _Item) -> _Frame | None:
        """Open a listed subdirectory through its parent's descriptor, refusing anything else."""
        pause_point("snapshot-before-open")
        try:
            fd = os.open(item.name, _DIR_FLAGS, dir_fd=self._fd_of(frame))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._changed(item.rel, "is no longer a directory; not followed")
            else:
                self._error(item.rel.decode("utf-8", "surrogateescape"), exc)
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (item.st.st_dev, item.st.st_ino):
            os.close(fd)
            self._changed(item.rel, "was replaced by another directory; skipped")
            return None
        child = self._frame(fd, st, item.path, item.rel + b"/")
        frame.pending.dirs.append((item.name.encode("utf-8", "surrogateescape"), st, child.pending))
        return child

    def _leave(self, child: _Frame, stack: list[_Frame]) -> None:
        """Close a finished directory, reopening its parent through ".." if the parent's was closed."""
        try:
            if stack and stack[-1].fd is None:
                parent = stack[-1]
                parent.fd = _reopen_parent(child.fd, parent.ident)   # type: ignore[arg-type]
                self._lowest_open = len(stack) - 1
                if parent.fd is None:
                    self._changed(parent.rel.rstrip(b"/") or b".", "was moved during the snapshot; rest skipped")
                    parent.next = len(parent.items)
        finally:
            _close(child.fd)
            child.fd = None

    def _limit_open(self, stack: list[_Frame]) -> None:
        while len(stack) - self._lowest_open > MAX_OPEN_DIRS:
            frame = stack[self._lowest_open]
            _close(frame.fd)
            frame.fd = None
            self._lowest_open += 1

    @staticmethod
    def _fd_of(frame: _Frame) -> int:
        assert frame.fd is not None   # the top of the stack always holds its descriptor
        return frame.fd

    def _finish_tree(self, root: _PendingTree) -> bytes:
        """Encode every tree, children before parents, without recursion."""
        stack: list[tuple[_PendingTree, list[Entry]]] = [(root, [])]
        while True:
            pending, done = stack[-1]
            if len(done) < len(pending.dirs):
                stack.append((pending.dirs[len(done)][2], []))
                continue
            stack.pop()
            entries = pending.entries + [self._file_entry(job) for job in pending.jobs] + done
            tree_id = encode_tree_chain(entries, self._store_tree)
            if not stack:
                return tree_id
            parent, parent_done = stack[-1]
            name, st, _ = parent.dirs[len(parent_done)]
            parent_done.append(_make_entry(name, EntryType.DIR, st, tree_id))

    def _stat_entries(self, fd: int, path: str, rel: bytes) -> list[_Item]:
        """Stat a directory's entries (sorted by name), dropping excluded and unreadable ones.

        All of a directory is statted before any file is read, so the files that will be read
        are known in advance and can be read ahead.
        """
        items = []
        for dirent in self._scan(fd, rel):
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
            items.append(_Item(os.path.join(path, dirent.name), dirent.name, entry_rel, st, reuse))
        return items

    def _scan(self, fd: int, rel: bytes) -> list[os.DirEntry]:
        try:
            with os.scandir(fd) as it:      # scans a duplicate of `fd`; stats relative to it
                return sorted(it, key=lambda d: d.name)
        except OSError as exc:
            self._error(rel.decode("utf-8", "surrogateescape") or ".", exc)
            return []

    def _entry(self, frame: _Frame, item: _Item) -> Entry | None:
        st = item.st
        name = item.name.encode("utf-8", "surrogateescape")
        if stat.S_ISREG(st.st_mode):
            self._add_file(frame, item, FileJob(name, st), frame.pending.jobs)
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                return _make_entry(name, EntryType.SYMLINK, st, os.readlink(name, dir_fd=self._fd_of(frame)))
            except OSError as exc:
                self._error(item.rel.decode("utf-8", "surrogateescape"), exc)
                return None
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return None
        content = st.st_rdev if kind in (EntryType.CHARDEV, EntryType.BLOCKDEV) else None
        return _make_entry(name, kind, st, content)

    # -- files -------------------------------------------------------------------------------

    def _add_file(self, frame: _Frame, item: _Item, job: FileJob, jobs: list[FileJob]) -> None:
        if item.reuse is not None:
            self._count_file(job)
            job.chunk_ids = item.reuse
            self.summary.files_unchanged += 1
            self.progress(job.st.st_size)   # progress counts the whole source, read or reused
            self._keep(item, job, jobs)
            return
        fd = self._open_file(frame, item)
        if fd is None:
            return
        self._count_file(job)
        if self._reads_on_side(item, job) and self._side_idle.acquire(blocking=False):
            _ = self.chunker       # made here, on the walk's thread, so never twice
            future = self._side.submit(self._read_on_side, fd, item.rel, job)
            self._side_reads.append(_SideRead(item, job, jobs, future))
        else:
            self._read_done(item, job, jobs, self._read_file(fd, item.rel, job))

    def _count_file(self, job: FileJob) -> None:
        self.summary.files_total += 1
        self.summary.bytes_total += job.st.st_size

    def _open_file(self, frame: _Frame, item: _Item) -> int | None:
        """Open a listed regular file through its directory's descriptor; None (and a warning) when
        it is no longer that file: a symlink is not followed, a FIFO or device is never opened
        blocking, and a file replaced since it was listed is not read in its place."""
        pause_point("snapshot-before-open")
        try:
            fd = os.open(item.name, _FILE_FLAGS, dir_fd=self._fd_of(frame))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._changed(item.rel, "was replaced by a symlink; not followed")
            else:
                self._error(item.rel.decode("utf-8", "surrogateescape"), exc)
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (item.st.st_dev, item.st.st_ino):
            os.close(fd)
            self._changed(item.rel, "was replaced since it was listed; skipped")
            return None
        return fd

    def _reads_on_side(self, item: _Item, job: FileJob) -> bool:
        """A large file that changed since the last snapshot may be read on the side thread.

        Changed large files are what an incremental snapshot spends its time on, reading and
        cutting while the workers idle (the new data is small): two at once halve that. A file
        new to the snapshot stays on the walk's thread: in a first snapshot compression keeps
        both cores busy already, and a second reader would only add its read blocks to memory.
        """
        return job.st.st_size >= SIDE_READ_MIN and item.rel in self.old_cache

    def _read_on_side(self, fd: int, rel: bytes, job: FileJob) -> bool:
        try:
            return self._read_file(fd, rel, job)
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

    def _read_file(self, fd: int, rel: bytes, job: FileJob) -> bool:
        """Chunk the open file into the pipeline (and close it); read it again from the start once
        if it changes while being read. Its recorded size is the bytes actually read."""
        rel_text = rel.decode("utf-8", "surrogateescape")
        try:
            for _attempt in range(READ_ATTEMPTS):
                try:
                    before, after, read = self._chunk_file(fd, job)
                except OSError as exc:
                    self._error(rel_text, exc)
                    return False
                job.st, job.size = after, read
                if _same_version(before, after) and read == after.st_size:
                    return True
        finally:
            os.close(fd)
        with self._lock:
            self.summary.changed_during_read += 1
        job.cacheable = False
        log.warning("%s changed while it was read; stored as last read, re-read next snapshot", rel_text)
        return True

    def _chunk_file(self, fd: int, job: FileJob) -> tuple[os.stat_result, os.stat_result, int]:
        """Feed the file's chunks to the pipeline; return its fstat before and after reading, and
        how many bytes were read."""
        slots: list = []
        job.chunk_ids = slots  # a re-read starts a fresh list; late deliveries go to the old one
        os.lseek(fd, 0, os.SEEK_SET)
        before = os.fstat(fd)
        read = 0
        if before.st_size <= self.min_chunk:
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
                data = fh.read()
            read = len(data)
            self._submit(data, slots)
        else:
            for piece in self.chunker.chunks_of_fd(fd, read_ahead=FILE_AHEAD):
                read += len(piece)
                self._submit(piece, slots)  # a view into a fresh block: no copy
        return before, os.fstat(fd), read

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
        return _make_entry(job.name, EntryType.FILE, job.st, job.chunk_ids, job.size)

    # -- trees and commit --------------------------------------------------------------------

    def _store_tree(self, body: bytes) -> bytes:
        tree_id, added = self.store.add(KIND_TREE, body)
        if added:
            self.summary.blobs_added += 1
            self.summary.bytes_added += len(body)
            self.summary.bytes_added_stored += added
        return tree_id

    def _error(self, rel: str, exc: OSError | str) -> None:
        message = f"{rel}: {exc if isinstance(exc, str) else exc.strerror or exc}"
        log.warning("skipped %s", message)
        with self._lock:
            self.summary.errors.append(message)

    def _changed(self, rel: bytes, what: str) -> None:
        """An entry changed between listing and opening: warned, counted, never followed."""
        with self._lock:
            self.summary.changed_during_read += 1
        self._error(rel.decode("utf-8", "surrogateescape"), f"changed during the snapshot: {what}")


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
    remove_leftovers(repo.remote)   # temp files an earlier killed run left (issue 13, case 11)
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
    manifest = SnapshotManifest(time_ns=snapshot_time_ns(builder.start_ns), host=repo.settings.host,
                                source=builder.source, tree=root, tags=sorted(set(tags)), parent=parent,
                                incomplete=bool(summary.errors), summary=summary.as_dict())
    pause_point("snapshot-before-commit")
    snapshot_id, _ = repo.write_snapshot(manifest)
    if builder.new_cache != builder.old_cache:
        filescache.save(builder.cache_file, builder.new_cache, repo.config.sealer)  # only after the commit
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


def _make_entry(name: bytes, kind: EntryType, st: os.stat_result, content: object, size: int | None = None) -> Entry:
    link = st.st_ino if kind is EntryType.FILE and st.st_nlink > 1 else 0
    if size is None:
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


def _reopen_parent(child_fd: int, ident: tuple[int, int]) -> int | None:
    """The parent directory of `child_fd`, through "..", if it is still the directory `ident` names."""
    try:
        fd = os.open("..", _DIR_FLAGS, dir_fd=child_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        return None
    return fd


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
