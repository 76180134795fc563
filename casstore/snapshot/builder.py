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
import operator
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

from casstore._testing import pause_point, snapshot_time_ns
from casstore.errors import CasstoreError, ConfigError, SourceError
from casstore.format import codec
from casstore.format.pack import KIND_DATA, KIND_TREE, envelope_parts
from casstore.format.snapshot import SnapshotManifest, manifest_text
from casstore.format.tree import Entry, EntryType, encode_tree_rows
from casstore.fsio.heap import bound_free_heap
from casstore.fsio.lazypool import LazyPool
from casstore.fsio.readahead import FILE_AHEAD, ReadAhead
from casstore.remotes.local import remove_leftovers
from casstore.repo.blobstore import BlobStore
from casstore.repo.core import RepoCore
from casstore.snapshot import filescache
from casstore.snapshot.deltahints import DeltaHints
from casstore.snapshot.excludes import Excluder
from casstore.snapshot.pipeline import ChunkPipeline
from casstore.snapshot.summary import SnapshotSummary

if TYPE_CHECKING:
    from concurrent.futures import Future

    from casstore.chunker.sparse import ZeroRun
    from casstore.fsio.workers import WorkerPool
    from casstore.snapshot.smallfiles import BatchReads, FileStat, SmallRead

log = logging.getLogger(__name__)

# A file touched this close to the snapshot's start may still change within one timestamp tick
# without its size or mtime showing it, so its cached chunk list is not trusted (design 6).
RACY_WINDOW_NS = 2_000_000_000
READ_ATTEMPTS = 2
# Changed files at least this large may be read and cut on the side thread: two of them are then
# read and cut at once, on both cores and with two streams of disk reads (`_reads_on_side`).
SIDE_READ_MIN = 16 * 1024 * 1024

MAX_OPEN_DIRS = 64     # directory descriptors held open by the walk (the deepest ones)
# directories held while they wait for a file (a side read, a batch, chunks in flight); beyond
# this many the walk waits, so memory stays bounded however long a side read takes
MAX_WAITING_DIRS = 256
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | _NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _NONBLOCK

# Batches of small files go to forked worker processes (fsio/workers.py) instead of the pipeline's
# threads once the walk has listed this many small files to read before it needed any thread (a
# fork copies the calling thread only: a lock another held would stay held in the child). Two
# forks cost a few milliseconds, and a worker's reads, hashing and compression run beside the
# walk, not behind its GIL.
WORKER_MIN_FILES = 1000
SNAPSHOT_WORKERS = 2   # processes, beside the parent's walk and upload thread (2 cores)
# a batch of small files (`smallfiles.py`), one task: at most this many files, or bytes (a few MiB
# in flight over the pipeline's window)
BATCH_FILES = 128
BATCH_BYTES = 1024 * 1024

_FILE = EntryType.FILE.value
_NAME = operator.attrgetter("name")
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


class FileJob:
    """One file being chunked; `chunk_ids` fills in as the pipeline delivers (a plain class, as
    `_PendingTree` says why)."""

    __slots__ = ("name", "st", "chunk_ids", "size", "previous", "cacheable", "cached")

    def __init__(self, name: bytes, st: os.stat_result | FileStat, chunk_ids: list | None = None, *,
                 cached: list | None = None) -> None:
        self.name = name
        self.st = st
        self.chunk_ids: list = [] if chunk_ids is None else chunk_ids
        self.size: int | None = None            # bytes actually read (None: reused from the files cache)
        self.previous: list | None = None       # chunk ids the files cache had, to tell changed from unchanged
        self.cacheable = True                   # False when the file kept changing while it was read
        self.cached = cached    # its files cache entry: chunk ids of the previous version, delta bases


class _Aborted(Exception):
    """The snapshot failed elsewhere: a side read stops."""


class _PendingTree:
    """A walked directory: its tree is written once its files are all in and the walk has left it.

    The walk hands out a directory's files before it enters its subdirectories, so its files cache
    record can be written in the walk's order (`listed`), and its tree right after its
    subdirectories' trees (post-order). Only directories still waiting for a file (a batch or a
    side read in flight, chunks not yet applied) are held: memory follows the walk's depth.

    This class and the walk's other private records are plain classes, not dataclasses: every
    command's start-up made each dataclass's methods (about 2.7M instructions each).
    """

    def __init__(self, rel: bytes, name: bytes, st: os.stat_result, parent: _PendingTree | None,
                 cached: filescache.Record | None) -> None:
        self.rel = rel
        self.name = name                  # in its parent
        self.st = st                      # its own fstat, for its entry in the parent
        self.parent = parent
        self.cached = cached              # its record in the old files cache
        self.entries: list[Entry] = []    # symlinks, specials, written subdirectories
        self.jobs: list[FileJob] = []     # regular files, read or reused
        self.outstanding = 0              # files being read on a worker or the side thread
        self.listed = False               # every file has been handed out
        self.complete = 0                 # jobs known to hold all their chunk ids

    def files_done(self) -> bool:
        if not self.listed or self.outstanding:
            return False
        while self.complete < len(self.jobs) and None not in self.jobs[self.complete].chunk_ids:
            self.complete += 1
        return self.complete == len(self.jobs)


class _Frame:
    """A directory on the walk's stack: its listing, how far it got, and its open descriptor."""

    def __init__(self, fd: int | None, ident: tuple[int, int], rel: bytes, pending: _PendingTree,
                 items: list[_Item], ahead: ReadAhead) -> None:
        self.fd = fd                      # None while closed to bound open descriptors; reopened via ".."
        self.ident = ident                # (st_dev, st_ino) it was opened as
        self.rel = rel
        self.pending = pending
        self.items = items
        self.ahead = ahead
        self.next = 0                     # index of the next item to record
        self.reads = 0                    # files of this directory read so far (for the read-ahead)
        self.batch: list[tuple[_Item, FileJob]] = []   # small files not yet sent
        self.batch_bytes = 0


class _Batch:
    """Small files of one directory sent to be read together (`smallfiles.py`)."""

    def __init__(self, pending: _PendingTree, files: list[tuple[_Item, FileJob]], dir_fd: int, size: int) -> None:
        self.pending = pending
        self.files = files
        self.dir_fd = dir_fd      # the batch's own duplicate of the directory's descriptor
        self.size = size
        self.reads: BatchReads | None = None     # what reading them gave, once applied


class _SideRead:
    def __init__(self, item: _Item, job: FileJob, pending: _PendingTree, future: Future) -> None:
        self.item = item
        self.job = job
        self.pending = pending    # the file's directory, which the job joins once read
        self.future = future


class _Item:
    """One directory entry, statted, that the snapshot will record."""

    __slots__ = ("name", "name_bytes", "rel", "st", "cached", "reuse", "small")

    def __init__(self, name: str, name_bytes: bytes, rel: bytes, st: os.stat_result, cached: list | None,
                 reuse: list | None) -> None:
        self.name = name
        self.name_bytes = name_bytes    # `name` as stored in trees and the files cache
        self.rel = rel
        self.st = st
        self.cached = cached            # a regular file's entry in the old files cache
        self.reuse = reuse              # its chunk ids from there, if they can be trusted
        self.small = False              # read in a batch on a worker (`smallfiles.py`)

    @property
    def will_read(self) -> bool:
        return self.reuse is None and stat.S_ISREG(self.st.st_mode)


def _no_progress(n: int) -> None:
    pass


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
        self.progress = progress or _no_progress
        self.cache_file = filescache.cache_path(repo.settings.cache_dir, repo.config.id, self.source)
        self.old_cache = filescache.CacheReader(self.cache_file, repo.config.sealer)
        self.new_cache = filescache.CacheWriter(self.cache_file, self.old_cache, repo.config.sealer)
        self.skip_dirs = _identities([repo.local_dir, repo.settings.cache_dir])
        # one large file at a time is read and cut on a side thread while the walk goes on
        self._side = LazyPool(1, "casstore-read")
        self._side_idle = threading.Semaphore(1)
        self._side_reads: deque[_SideRead] = deque()
        # directories waiting for their files: in the walk's order (files cache records) and in
        # the order the walk left them (trees); batches of small files read, not yet recorded
        self._listing: deque[_PendingTree] = deque()
        self._leaving: deque[_PendingTree] = deque()
        self._batches_read: deque[_Batch] = deque()
        # small-file batches go to threads or to worker processes, decided once the walk has seen
        # enough of them or needs a thread (`_decide`); until then they are held here
        self.workers: WorkerPool | None = None
        self._decided = False
        self._held: deque[_Batch] = deque()
        self._held_files = 0
        self._sent: deque[_Batch] = deque()     # batches a worker (process or thread) reads, not yet recorded
        self._root: bytes | None = None
        self._aborted = threading.Event()
        self._lock = threading.Lock()
        self._zero_chunks: dict[int, tuple[bytes, bytes]] = {}   # length -> (zeros, id), for holes

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
            self._walk(root_fd)
            self._settle()
            assert self._root is not None
            return self._root
        except BaseException:
            self._aborted.set()      # a side read stops at its next chunk
            self.new_cache.discard()
            raise
        finally:
            self._side.shutdown(wait=True, cancel_futures=True)
            self.pipeline.close()
            self._close_workers()

    def _walk(self, root_fd: int) -> None:
        """Walk the source depth first, a directory's files before its subdirectories; trees are
        written as their directories complete (`_write_ready`)."""
        stack = [self._frame(root_fd, os.fstat(root_fd), b"", b"", None)]
        self._lowest_open = 0      # frames below this index have closed their descriptor
        try:
            while stack:
                frame = stack[-1]
                if frame.next < len(frame.items):
                    if frame.items[frame.next].reuse is not None:
                        self._add_reused(frame)
                    else:
                        self._step(frame, stack)
                else:
                    self._files_listed(frame)
                    self.summary.dirs_total += 1
                    stack.pop()
                    self._leave(frame, stack)
                    self._leaving.append(frame.pending)
                    self._write_ready()
        finally:
            for frame in stack:
                _close(frame.fd)

    def _frame(self, fd: int, st: os.stat_result, rel: bytes, name: bytes, parent: _PendingTree | None) -> _Frame:
        cached = self.old_cache.lookup(rel)
        items = self._stat_entries(fd, cached.entries if cached is not None else {}, rel)
        ahead_files = []
        for item in items:
            if item.reuse is None and stat.S_ISREG(item.st.st_mode):    # `will_read`, without a call an item
                if item.st.st_size <= self.min_chunk:
                    item.small = True
                else:
                    ahead_files.append((item.name, item.st.st_size))
        ahead = ReadAhead(ahead_files)
        pending = _PendingTree(rel, name, st, parent, cached)
        self._listing.append(pending)
        return _Frame(fd, (st.st_dev, st.st_ino), rel, pending, items, ahead)

    def _step(self, frame: _Frame, stack: list[_Frame]) -> None:
        """Record the next entry of the directory on top of the stack (descending into a directory)."""
        item = frame.items[frame.next]
        frame.next += 1
        if stat.S_ISDIR(item.st.st_mode):
            self._files_listed(frame)
            child = self._enter(frame, item)
            if child is not None:
                stack.append(child)
                self._limit_open(stack)
            return
        if item.small:
            self._batch_file(frame, item)
            return
        if item.will_read:
            frame.ahead.reading(frame.reads, frame.fd)
            frame.reads += 1
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
        return self._frame(fd, st, item.rel + b"/", item.name_bytes, frame.pending)

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

    def _stat_entries(self, fd: int, cached: filescache.Entries, rel: bytes) -> list[_Item]:
        """Stat a directory's entries, dropping excluded and unreadable ones: the files (and other
        non-directories) sorted by name, then the subdirectories sorted by name.

        All of a directory is statted before any file is read, so the files that will be read
        are known in advance and can be read ahead. `cached` is the directory's files cache record.
        """
        items: list[_Item] = []
        dirs: list[_Item] = []
        excluded, skip_dirs = self.excluder.excluded_entry, self.skip_dirs
        for dirent in self._scan(fd, rel):
            name = dirent.name.encode("utf-8", "surrogateescape")
            entry_rel = rel + name
            try:
                st = dirent.stat(follow_symlinks=False)
            except OSError as exc:
                self._error(entry_rel.decode("utf-8", "surrogateescape"), exc)
                continue
            regular = stat.S_ISREG(st.st_mode)
            is_dir = not regular and stat.S_ISDIR(st.st_mode)
            if excluded(entry_rel, dirent.name, is_dir) or (not regular and (st.st_dev, st.st_ino) in skip_dirs):
                self.summary.excluded += 1
                continue
            entry = cached.get(name) if regular and cached else None
            # well formed: as `_cache_record` writes it, [size, mtime_ns, ctime_ns, inode, [chunk ids]]
            if entry is not None and not (type(entry) is list and len(entry) == 5 and type(entry[4]) is list):
                entry = None       # a damaged entry (the cache is local state): read as a file new to it
            reuse = self._cached_chunks(entry, st) if entry is not None else None
            (dirs if is_dir else items).append(_Item(dirent.name, name, entry_rel, st, entry, reuse))
        items += dirs       # files before subdirectories: a directory's files are all handed out first
        return items

    def _scan(self, fd: int, rel: bytes) -> list[os.DirEntry]:
        try:
            with os.scandir(fd) as it:      # scans a duplicate of `fd`; stats relative to it
                return sorted(it, key=_NAME)
        except OSError as exc:
            self._error(rel.decode("utf-8", "surrogateescape") or ".", exc)
            return []

    def _entry(self, frame: _Frame, item: _Item) -> Entry | None:
        st = item.st
        name = item.name_bytes
        if stat.S_ISREG(st.st_mode):
            self._add_file(frame, item, FileJob(name, st, cached=item.cached))
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

    # -- directories complete ----------------------------------------------------------------

    def _write_ready(self) -> None:
        """Record every directory whose files are all in: files cache records in the walk's order,
        trees in the order the walk left them (children first). Waits when too many are held."""
        self._collect()
        self._write_done()
        while len(self._listing) > MAX_WAITING_DIRS or len(self._leaving) > MAX_WAITING_DIRS:
            self._catch_up()
            self._write_done()

    def _write_done(self) -> None:
        while self._listing and self._listing[0].files_done():
            pending = self._listing.popleft()
            self.new_cache.add(pending.rel, self._cache_record(pending), pending.cached)
        while self._leaving and self._leaving[0].files_done():
            self._write_tree(self._leaving.popleft())

    def _settle(self) -> None:
        """After the walk: wait for every file, then write what is left (the root's tree last)."""
        while self._side_reads or self._listing or self._leaving:
            self._catch_up()
            self._write_done()

    def _catch_up(self) -> None:
        """Wait for the oldest side read, else for every chunk and batch in flight."""
        self._decide()
        if self._side_reads:
            self._side_done(self._side_reads.popleft())
        else:
            self.pipeline.drain()
        self._collect()
        if not self._side_reads and not self._batches_read and self._stuck():
            raise RuntimeError("internal error: a directory waits for a file nothing reads")

    def _stuck(self) -> bool:
        heads = [queue[0] for queue in (self._listing, self._leaving) if queue]
        return bool(heads) and not self.pipeline.busy() and not any(head.files_done() for head in heads)

    def _collect(self) -> None:
        """Take in side reads and batches of small files that finished."""
        while self._side_reads and self._side_reads[0].future.done():
            self._side_done(self._side_reads.popleft())
        while self._batches_read:
            self._record_batch(self._batches_read.popleft())

    def _cache_record(self, pending: _PendingTree) -> filescache.Entries:
        return {job.name: [job.st.st_size, job.st.st_mtime_ns, job.st.st_ctime_ns, job.st.st_ino, job.chunk_ids]
                for job in pending.jobs if job.cacheable}

    def _write_tree(self, pending: _PendingTree) -> None:
        rows = [entry.as_list() for entry in pending.entries]
        rows += self._file_rows(pending.jobs)
        tree_id = encode_tree_rows(rows, self._store_tree)
        if pending.parent is None:
            self._root = tree_id
        else:
            pending.parent.entries.append(_make_entry(pending.name, EntryType.DIR, pending.st, tree_id))

    # -- files -------------------------------------------------------------------------------

    def _add_reused(self, frame: _Frame) -> None:
        """Record the run of files from `frame.next` on that the files cache vouches for (nothing
        to open or read): one call for the run, not a few per file (most of a no-change walk)."""
        items, at, jobs = frame.items, frame.next, frame.pending.jobs
        size = 0
        while at < len(items) and (item := items[at]).reuse is not None:
            jobs.append(FileJob(item.name_bytes, item.st, item.reuse, cached=item.cached))
            size += item.st.st_size
            at += 1
        summary, count = self.summary, at - frame.next
        summary.files_total += count
        summary.bytes_total += size
        summary.files_unchanged += count
        frame.next = at
        self.progress(size)             # progress counts the whole source, read or reused

    def _add_file(self, frame: _Frame, item: _Item, job: FileJob) -> None:
        pending = frame.pending
        fd = self._open_listed(self._fd_of(frame), item)
        if fd is None:
            return
        self._decide()          # a read through the chunker starts the pipeline's threads
        self._count_file(job)
        if self._reads_on_side(item, job) and self._side_idle.acquire(blocking=False):
            _ = self.chunker       # made here, on the walk's thread, so never twice
            future = self._side.submit(self._read_on_side, fd, item.rel, job)
            pending.outstanding += 1
            self._side_reads.append(_SideRead(item, job, pending, future))
        else:
            self._read_done(item, job, pending, self._read_file(fd, item.rel, job))

    def _batch_file(self, frame: _Frame, item: _Item) -> None:
        """Queue a small file for a worker's batch (`smallfiles.py`)."""
        frame.batch.append((item, FileJob(item.name_bytes, item.st)))
        frame.batch_bytes += item.st.st_size
        frame.pending.outstanding += 1
        if len(frame.batch) >= BATCH_FILES or frame.batch_bytes >= BATCH_BYTES:
            self._send_batch(frame)

    def _files_listed(self, frame: _Frame) -> None:
        """Every file of the directory is handed out (the walk goes on to its subdirectories)."""
        if not frame.pending.listed:
            self._send_batch(frame)
            frame.pending.listed = True

    def _send_batch(self, frame: _Frame) -> None:
        files, size = frame.batch, frame.batch_bytes
        if not files:
            return
        frame.batch, frame.batch_bytes = [], 0
        # the batch's own descriptor: the walk may close the frame's
        batch = _Batch(frame.pending, files, os.dup(self._fd_of(frame)), size)
        if not self._decided:
            self._held.append(batch)
            self._held_files += len(files)
            if self._held_files >= WORKER_MIN_FILES:
                self._decide()
            return
        self._dispatch(batch)
        self._collect()           # batches applied meanwhile join their directories (a flat one too)

    def _decide(self) -> None:
        """Once: worker processes for the small files if the walk has held enough of them and no
        thread runs yet, else the pipeline's threads; then send what was held."""
        if self._decided:
            return
        self._decided = True
        # before any thread or worker allocates: their arenas would keep up to 16 MiB free each
        # (fsio/heap.py); a snapshot that reads nothing never gets here
        bound_free_heap()
        if self._held_files >= WORKER_MIN_FILES and hasattr(os, "fork") and threading.active_count() == 1:
            self._start_workers()
        while self._held:      # one at a time: if one fails, the rest stay held, to be closed
            self._dispatch(self._held.popleft())

    def _start_workers(self) -> None:
        """Fork the workers: each reads, hashes and compresses a batch as `read_batch` does on a
        thread. They inherit the open repository (its index, to skip compressing stored chunks,
        and in an encrypted repository its keys, which hashing and sealing need)."""
        from casstore.fsio.workers import WorkerPool  # lazy: start-up of every snapshot (sockets, pickle)
        from casstore.snapshot import smallfiles

        limit, prepare = self.min_chunk, self.pipeline.prepare_many

        def handle(dir_fd: int, files: list[tuple[str, tuple[int, int]]]) -> BatchReads:
            return smallfiles.read_batch_columns(dir_fd, files, limit, prepare)
        self.workers = WorkerPool(handle, SNAPSHOT_WORKERS, what="snapshot", error=CasstoreError)

    def _dispatch(self, batch: _Batch) -> None:
        """Send a batch to a worker process or a thread; its result is applied in order (`_store_batch`)."""
        from casstore.snapshot import smallfiles

        files = [(item.name, (item.st.st_dev, item.st.st_ino)) for item, _ in batch.files]
        try:
            if self.workers is not None:
                ticket = self.workers.submit(batch.dir_fd, files)   # the worker gets its own copy
                self._sent.append(batch)
                self.pipeline.add_started(ticket, lambda reads: self._store_batch(batch, reads), batch.size)
                return
            # the batch keeps its descriptor until it is recorded, as a worker process's does: a
            # task that a failed snapshot cancels never runs, so it must not be the one to close it
            limit, prepare, dir_fd = self.min_chunk, self.pipeline.prepare_many, batch.dir_fd
            self.pipeline.submit_task(lambda: smallfiles.read_batch_columns(dir_fd, files, limit, prepare),
                                      lambda reads: self._store_batch(batch, reads), batch.size)
            self._sent.append(batch)
        except BaseException:
            self._close_batch(batch)
            raise

    def _close_workers(self) -> None:
        """End the worker processes (at once when batches are unanswered: a failed or interrupted
        snapshot) and close the held batches' descriptors."""
        unanswered = bool(self._sent)
        for batch in (*self._held, *self._sent):
            self._close_batch(batch)
        self._held.clear()
        self._sent.clear()
        if self.workers is not None:
            workers, self.workers = self.workers, None
            workers.close(abort=unanswered or self._aborted.is_set())

    @staticmethod
    def _close_batch(batch: _Batch) -> None:
        if batch.dir_fd >= 0:
            os.close(batch.dir_fd)
            batch.dir_fd = -1

    def _store_batch(self, batch: _Batch, reads: BatchReads) -> None:
        """A batch's chunks into the store, in order (under the pipeline's lock, on any thread);
        counted once for the batch."""
        summary = self.summary
        read_bytes = 0
        new: list[tuple[bytes, tuple[bytes, ...], int]] = []    # blobs not stored when the batch was read
        for (_, job), prepared in zip(batch.files, reads.prepared, strict=True):
            if prepared is not None:
                blob_id, encoded, raw_length = prepared
                job.chunk_ids = [blob_id]
                read_bytes += raw_length
                if encoded is not None:
                    new.append((blob_id, envelope_parts(encoded), raw_length))
        if new:        # none is a delta: a batch's blobs are compressed on their own
            added, added_raw, added_stored = self.store.add_encoded_many(KIND_DATA, new)
            summary.blobs_added += added
            summary.bytes_added += added_raw
            summary.bytes_added_stored += added_stored
        reads.prepared.clear()      # the blobs are in the pack now
        summary.bytes_read += read_bytes
        self.progress(read_bytes)
        batch.reads = reads
        self._batches_read.append(batch)

    def _record_batch(self, batch: _Batch) -> None:
        """A read batch's files join their directory (on the walk's thread)."""
        pending, reads = batch.pending, batch.reads
        assert reads is not None
        from casstore.snapshot.smallfiles import FileStat

        summary, jobs, make_stat = self.summary, pending.jobs, FileStat._make
        for i, ((item, job), st, size) in enumerate(zip(batch.files, reads.stats, reads.sizes, strict=True)):
            pending.outstanding -= 1
            if st is None:        # not read as listed, or changed while read
                self._record_unusual(batch, item, job, reads.unusual[i])
                continue
            summary.files_total += 1
            summary.bytes_total += job.st.st_size
            job.st, job.size = make_stat(st), size
            if item.cached is None:
                summary.files_new += 1
            else:
                job.previous = item.cached[4]
            jobs.append(job)
        if self._sent and self._sent[0] is batch:
            self._close_batch(self._sent.popleft())

    def _record_unusual(self, batch: _Batch, item: _Item, job: FileJob, read: SmallRead) -> None:
        pending = batch.pending
        if read.replaced is not None:
            self._changed(item.rel, read.replaced)
        elif read.error is not None:
            self._error(item.rel.decode("utf-8", "surrogateescape"), read.error)
        elif read.grown:       # grew past one chunk since it was listed: opened again, as listed
            fd = self._open_listed(batch.dir_fd, item)
            if fd is None:
                return
            self._count_file(job)
            self._read_done(item, job, pending, self._read_file(fd, item.rel, job))
        else:
            self._count_file(job)
            job.st, job.size = read.st, read.size     # type: ignore[assignment]
            if read.changed:
                self._changed_while_read(item.rel, job)
            self._read_done(item, job, pending, True)

    def _count_file(self, job: FileJob) -> None:
        self.summary.files_total += 1
        self.summary.bytes_total += job.st.st_size

    def _open_listed(self, dir_fd: int, item: _Item) -> int | None:
        """Open a listed regular file through its directory's descriptor; None (and a warning) when
        it is no longer that file: a symlink is not followed, a FIFO or device is never opened
        blocking, and a file replaced since it was listed is not read in its place."""
        pause_point("snapshot-before-open")
        try:
            fd = os.open(item.name, _FILE_FLAGS, dir_fd=dir_fd)
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
        return job.st.st_size >= SIDE_READ_MIN and item.cached is not None

    def _read_on_side(self, fd: int, rel: bytes, job: FileJob) -> bool:
        try:
            return self._read_file(fd, rel, job)
        finally:
            self._side_idle.release()

    def _side_done(self, side_read: _SideRead) -> None:
        side_read.pending.outstanding -= 1
        self._read_done(side_read.item, side_read.job, side_read.pending, side_read.future.result())

    def _read_done(self, item: _Item, job: FileJob, pending: _PendingTree, read: bool) -> None:
        if not read:
            return
        if item.cached is None:
            self.summary.files_new += 1
        else:
            job.previous = item.cached[4]
        pending.jobs.append(job)

    def _cached_chunks(self, cached: list, st: os.stat_result) -> list | None:
        """The file's chunk ids from its files cache entry when they can be trusted, else None."""
        size, mtime_ns, ctime_ns, inode, chunk_ids = cached      # well formed (`_stat_entries`)
        if (size, mtime_ns, ctime_ns, inode) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return None
        if max(mtime_ns, ctime_ns) > self.start_ns - RACY_WINDOW_NS:
            return None
        if all(map(isinstance, chunk_ids, repeat(bytes, len(chunk_ids)))) and \
                self.store.has_all(KIND_DATA, chunk_ids):
            return list(chunk_ids)
        return None

    def _read_file(self, fd: int, rel: bytes, job: FileJob) -> bool:
        """Chunk the open file into the pipeline (and close it); read it again from the start once
        if it changes while being read. Its recorded size is the bytes actually read."""
        rel_text = rel.decode("utf-8", "surrogateescape")
        try:
            for _attempt in range(READ_ATTEMPTS):
                try:
                    before, after, read = self._chunk_file(fd, job, self._delta_hints(job.cached))
                except OSError as exc:
                    self._error(rel_text, exc)
                    return False
                job.st, job.size = after, read
                if _same_version(before, after) and read == after.st_size:
                    return True
        finally:
            os.close(fd)
        self._changed_while_read(rel, job)
        return True

    def _changed_while_read(self, rel: bytes, job: FileJob) -> None:
        with self._lock:
            self.summary.changed_during_read += 1
        job.cacheable = False
        log.warning("%s changed while it was read; stored as last read, re-read next snapshot",
                    rel.decode("utf-8", "surrogateescape"))

    def _delta_hints(self, cached: list | None) -> DeltaHints:
        """Candidate delta bases: the file's chunk ids in the previous snapshot (its files cache entry)."""
        if not self.store.config.delta_chain or cached is None:     # an entry is well formed (`_stat_entries`)
            return DeltaHints([])
        return DeltaHints([c for c in cached[4] if isinstance(c, bytes)])

    def _chunk_file(self, fd: int, job: FileJob, hints: DeltaHints) -> tuple[os.stat_result, os.stat_result, int]:
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
            self._submit(data, slots, hints)
        else:
            from casstore.chunker.sparse import ZeroRun, sparse_chunks

            for piece in sparse_chunks(self.chunker, fd, before.st_size, read_ahead=FILE_AHEAD):
                if isinstance(piece, ZeroRun):
                    read += piece.length * piece.count
                    self._submit_zeros(piece, slots)
                else:
                    read += len(piece)
                    self._submit(piece, slots, hints)  # a view into a fresh block: no copy
        return before, os.fstat(fd), read

    def _submit(self, data: bytes | memoryview, slots: list, hints: DeltaHints | None = None) -> None:
        if not data:
            return
        if hints:
            self.pipeline.submit(data, self._slot(slots), *hints.next(data))
        else:
            self.pipeline.submit(data, self._slot(slots))

    def _submit_zeros(self, run: ZeroRun, slots: list) -> None:
        """Zero chunks from a hole: the first hashed and stored as any chunk, the rest named by id
        (each is the same bytes, so the same id a dense read gives)."""
        zeros, blob_id = self._zero_chunk(run.length)
        self._submit(zeros, slots)
        for _ in range(run.count - 1):
            self.pipeline.submit_known(blob_id, run.length, self._slot(slots))

    def _zero_chunk(self, length: int) -> tuple[bytes, bytes]:
        with self._lock:
            if length not in self._zero_chunks:
                zeros = bytes(length)
                self._zero_chunks[length] = (zeros, codec.blob_id(zeros, self.repo.config.sealer))
            return self._zero_chunks[length]

    def _slot(self, slots: list) -> Callable[[bytes, int, int], None]:
        """The next chunk's place in `slots`, and how its result is recorded there."""
        if self._aborted.is_set():
            raise _Aborted()
        position = len(slots)
        slots.append(None)

        def deliver(blob_id: bytes, raw_length: int, added: int) -> None:   # in order, one at a time
            slots[position] = blob_id
            self._count_chunk(raw_length, added)

        return deliver

    def _count_chunk(self, raw_length: int, added: int) -> None:
        """A chunk applied (under the pipeline's lock)."""
        self.summary.bytes_read += raw_length
        if added:
            self.summary.blobs_added += 1
            self.summary.bytes_added += raw_length
            self.summary.bytes_added_stored += added
        self.progress(raw_length)

    def _file_rows(self, jobs: list[FileJob]) -> list[list]:
        """The directory's file entries as tree rows (`Entry.as_list()`), made without an `Entry`
        each: a directory of small files made one per file (issue 14)."""
        rows = []
        unchanged = changed = 0
        for job in jobs:
            if job.previous is not None:
                if list(job.previous) == job.chunk_ids:
                    unchanged += 1
                else:
                    changed += 1
            st = job.st
            rows.append([job.name, _FILE, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns,
                         st.st_size if job.size is None else job.size, st.st_ino if st.st_nlink > 1 else 0,
                         job.chunk_ids])
        self.summary.files_unchanged += unchanged
        self.summary.files_changed += changed
        return rows

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
    _refuse_labels_not_text(repo.settings.host, tags)
    repo.load_index()
    repo.load_plans()  # blobs only in packs a gc plan condemns count as missing (design 5.4)
    remove_leftovers(repo.remote)   # temp files an earlier killed run left (issue 13, case 11)
    builder = SnapshotBuilder(repo, source, excludes, progress)
    # the index lives for the whole build: keep the cyclic collector from rescanning it on every
    # collection (it was 6% of an incremental snapshot's main thread); and the build makes objects
    # by the hundred thousand (entries, rows, records, each freed by its reference count, no
    # cycles) while the collector ran every 700 allocations: 0.4-0.7 of the 6 CPU seconds of an
    # initial snapshot of 200k small files' critical path (issue 14). It runs again after the index.
    collecting = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        root = builder.build()
        builder.store.wait_uploads()
        pause_point("snapshot-before-index")
        builder.store.flush()
    except BaseException:
        builder.new_cache.discard()
        raise
    finally:
        gc.unfreeze()
        if collecting:
            gc.enable()
        builder.store.close()
    try:
        snapshot_id, manifest = _commit(repo, builder, root, tags)
    except BaseException:
        builder.new_cache.discard()
        raise
    builder.new_cache.publish()   # only after the commit
    filescache.save_last(builder.cache_file, manifest.host, snapshot_id)
    # the table now holds exactly what the index objects list, this snapshot's included: saved,
    # the next open restores it instead of decoding this snapshot's index object (issue 14: that
    # decode, a Python object per new blob, was most of a no-change snapshot's peak RSS). A snapshot
    # that wrote no index left the table as `load_index` saved it: not written again.
    if builder.store.session_indexes:
        repo.table_cache.save(repo.index)
    return SnapshotResult(snapshot_id, manifest, builder.summary)


def _refuse_labels_not_text(host: str, tags: tuple[str, ...]) -> None:
    """The host name and the tags are stored as the text they are and looked up as typed, so one that
    is not UTF-8 (bytes from the command line or the environment) is refused before anything is read,
    never at the commit, after the data is stored."""
    for what, text in (("host name", host), *(("tag", tag) for tag in tags)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            hint = " (CASSTORE_HOST)" if what == "host name" else ""
            raise ConfigError(f"the {what} '{manifest_text(text)}'{hint} is not UTF-8 text") from None


def _commit(repo: RepoCore, builder: SnapshotBuilder, root: bytes,
            tags: tuple[str, ...]) -> tuple[str, SnapshotManifest]:
    """Write the manifest: the commit point."""
    summary = builder.summary
    summary.repository_bytes = repo.stored_bytes()
    summary.duration_ms = (time.time_ns() - builder.start_ns) // 1_000_000
    parent = _parent(repo, builder)
    manifest = SnapshotManifest(time_ns=snapshot_time_ns(builder.start_ns), host=repo.settings.host,
                                source=manifest_text(builder.source), tree=root, tags=sorted(set(tags)), parent=parent,
                                incomplete=bool(summary.errors), summary=summary.as_dict())
    pause_point("snapshot-before-commit")
    snapshot_id, _ = repo.write_snapshot(manifest)
    return snapshot_id, manifest


def _parent(repo: RepoCore, builder: SnapshotBuilder) -> str | None:
    """This host's previous snapshot of the source: the one noted locally if it still exists (one
    stat), else found by reading every manifest (a new cache, or the noted one was forgotten)."""
    noted = filescache.load_last(builder.cache_file, repo.settings.host)
    if noted is not None and repo.has_snapshot(noted):
        return noted
    previous = repo.snapshots(limit=1, source=builder.source)
    return previous[0].id if previous else None


def _make_entry(name: bytes, kind: EntryType, st: os.stat_result, content: object) -> Entry:
    """A symlink's, directory's or special file's entry (a regular file's is made from its job, with
    its hard-link group: `_file_rows`). Only a symlink has a size, its target's length: a directory's
    st_size depends on the file system, and the same folder must store the same tree on any."""
    size = st.st_size if kind is EntryType.SYMLINK else 0
    return Entry(name, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, size, 0, content)


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
