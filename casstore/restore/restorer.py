"""Restore a snapshot (or one path of it) into a target directory.

Containment (design 5.7) is enforced at each file-system call, not by cleaning path strings:
every directory is opened with O_NOFOLLOW relative to its parent's descriptor, children are
created relative to that descriptor, new files with O_EXCL, and a name with `/`, NUL, `.` or `..`
is refused. An existing symlink at the destination is never followed: it is refused as a parent
and replaced (not written through) as a leaf when overwriting is allowed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from casstore.chunker.sparse import zero_chunk_length
from casstore.errors import CasstoreError, RestoreError
from casstore.format import codec
from casstore.format.pack import KIND_DATA
from casstore.format.tree import Entry, EntryType, safe_name
from casstore.format.walk import VisitBudget
from casstore.fsio.workers import WorkerPool
from casstore.read.reader import Snapshot, checked_size
from casstore.remotes.local import LocalRemote
from casstore.repo.core import RepoCore
from casstore.restore.packreads import read_data_blobs
from casstore.restore.prefetch import Prefetcher

OVERWRITE_MODES = ("never", "if-changed", "always")


def _patterns(lines: Iterable[str]) -> Any:
    import pathspec  # lazy: start-up time (every command loads this module); only patterns need it

    return pathspec.GitIgnoreSpec.from_lines(lines)
MAX_LINK_GROUPS = 512   # hard-link groups restored as links (each keeps a directory descriptor open)
PREFETCH_WINDOW = 8   # chunks decoded ahead per directory (bounds memory: at most 8 x the max chunk size)
MAX_OPEN_DIRS = 64       # directory descriptors a restore keeps open (the deepest ones)
SPARSE_MIN = 4096        # a chunk of zeros at least this long, or a page of zeros in a chunk, is a hole
_ZERO_PAGE = bytes(SPARSE_MIN)
MAX_ID = 2**32 - 2       # uid/gid range of the platform ((uid_t)-1 means "unchanged")
MAX_TIME_NS = 2**63 - 1
MAX_DEVICE = 2**64 - 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
EXISTING_SHOWN = 20
# Small files are written in batches on a thread of their own (`_SmallBatch`): one task reads, decodes and
# verifies each file's chunks and writes the file, instead of a thread round trip per chunk with
# the walk thread doing every write. A batch holds at most this many files and bytes.
SMALL_FILE_MAX = 1024 * 1024
RESTORE_WORKERS = 2   # processes; the parent walks and counts beside them (2 cores: measured best)
SMALL_BATCH_FILES = 32
# A longer name is written on the walk's path, where it fails alone (no Linux file system holds one):
# a batch of SMALL_BATCH_FILES names of at most this many bytes, with their chunk ids, stays within
# a worker's job message (fsio/workers.py MAX_MESSAGE); a hostile tree's longer names made the
# whole restore fail with an internal error
BATCH_NAME_MAX = 255
SMALL_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCHES = 8             # batches in flight on the thread (bounds memory to about 8 x SMALL_BATCH_BYTES)
# Worker processes take the batches instead (fsio/workers.py) when the snapshot holds at least
# this many files (two forks cost a few milliseconds) and the repository is local (its reads are
# open/pread/close: nothing shared with the parent, unlike a remote's connection pool).
WORKER_MIN_FILES = 1000
DEFERRED_DIRS = 16          # directories whose batches are still being written when the walk leaves them


class Pending(Protocol):
    """A batch being written: a thread's Future or a worker's Ticket."""

    def result(self) -> list[bool | str]: ...

    def cancel(self) -> bool: ...


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)
    existing: int = 0        # files left alone because they exist (--overwrite never): one summary, not N errors
    existing_paths: list[str] = field(default_factory=list)   # the first EXISTING_SHOWN of them

    @property
    def ok(self) -> bool:
        return not self.errors and not self.existing

    def as_dict(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes,
                "skipped": self.skipped, "dry_run": self.dry_run, "errors": self.errors,
                "existing": self.existing, "existing_paths": self.existing_paths, "ok": self.ok}


def _refusal(entry: Entry, privileged: bool) -> str | None:
    """Why an entry is not restored (an unsafe name, metadata out of the platform's range, a
    device node without --privileged), or None."""
    if not safe_name(entry.name):
        return "unsafe name refused"
    if not 0 <= entry.mode <= 0o7777 or not 0 <= entry.uid <= MAX_ID or not 0 <= entry.gid <= MAX_ID \
            or not -MAX_TIME_NS <= entry.mtime_ns <= MAX_TIME_NS:
        return (f"metadata out of range (mode {entry.mode:#o}, uid {entry.uid}, gid {entry.gid}, "
                f"mtime {entry.mtime_ns}); not restored")
    if entry.type in (EntryType.CHARDEV, EntryType.BLOCKDEV):
        if not privileged:
            return "device node not created (restore with --privileged as root to create device nodes)"
        if not 0 <= entry.content <= MAX_DEVICE:   # type: ignore[operator]
            return f"device number {entry.content} out of range; not restored"
    return None


class Restorer:
    def __init__(self, snapshot: Snapshot, *, overwrite: str = "never", include: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (), dry_run: bool = False, verify: bool = False,
                 privileged: bool = False, progress=None) -> None:
        if overwrite not in OVERWRITE_MODES:
            raise RestoreError(f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}")
        self.snapshot, self.repo = snapshot, snapshot.repo
        self.overwrite, self.dry_run, self.verify = overwrite, dry_run, verify
        self.include = _patterns(include) if include else None
        self.exclude = _patterns(exclude) if exclude else None
        self.progress = progress or (lambda n: None)
        self.result = RestoreResult(dry_run=dry_run)
        self.budget = VisitBudget(snapshot.manifest.summary)
        # hard-link identity -> (descriptor of the directory, name) of the first copy restored
        self._links: dict[int, tuple[int, bytes]] = {}
        # Privileged restore (root only, and only when asked): recorded owners, setuid/setgid bits
        # and device nodes. By default a restore as root plants none of them (issue 13, case 9).
        self.privileged = privileged
        self.same_owner = privileged and os.geteuid() == 0
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="casstore-restore")
        # small-file batches on one thread of their own: a batch is mostly Python and short system
        # calls, each of which hands the GIL over, so two batch threads and the walk thread spent
        # their time passing it (futex) rather than working: a restore of 200k small files took
        # 17.4 s (9.6 s system) with batches on the pool of 2, 11.0 s (3.5 s system) on one thread
        self.small_pool = ThreadPoolExecutor(1, thread_name_prefix="casstore-restore-small")
        self._prefetchers: list[Prefetcher] = []
        self._planned: set[int] = set()   # id() of file entries whose chunks are queued for prefetch
        self._zero: tuple[bytes, bytes] | None = None    # (id, bytes) of the repository's zero chunk
        self._batches: deque[_SmallBatch] = deque()     # in flight, oldest first
        self._new_batches: list[_SmallBatch] = []        # sent for the directory being listed
        self.workers: WorkerPool | None = None
        self._deferred: deque[_DirFrame] = deque()       # left, waiting for their batches (FIFO: children first)

    def start_workers(self) -> None:
        """Fork the small-file workers when they pay and are safe: many files, a local repository,
        no thread running yet (a fork copies one thread; a lock another held would stay held)."""
        if self.dry_run or self.verify or not hasattr(os, "fork") or threading.active_count() != 1 \
                or not isinstance(self.repo.remote, LocalRemote) \
                or int(self.snapshot.manifest.summary.get("files_total", 0)) < WORKER_MIN_FILES:
            return
        store, same_owner = self.repo.read_blob_ready(), self.same_owner

        def read_all(chunk_ids: list[bytes]) -> Mapping[bytes, bytes]:
            return read_data_blobs(store, chunk_ids, alone=False)

        def handle(dir_fd: int, files: list[SmallFile]) -> list[bool | str]:
            return write_small_files(read_all, dir_fd, files, same_owner=same_owner, exact_mode=True)
        self.workers = WorkerPool(handle, RESTORE_WORKERS, what="restore", error=RestoreError, setup=_no_umask)

    def close(self) -> None:
        if self.workers is not None:
            # batches still unanswered mean the restore failed or was interrupted: stop at once
            self.workers.close(abort=bool(self._batches))
        for frame in self._deferred:
            if frame.fd is not None:
                os.close(frame.fd)
        self._deferred.clear()
        for batch in self._batches:
            batch.future.cancel()
        self.small_pool.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for batch in self._batches:
            batch.close()
        self._batches.clear()
        for dir_fd, _ in self._links.values():
            os.close(dir_fd)
        self._links.clear()

    # -- walking -----------------------------------------------------------------------------
    #
    # Iterative (an explicit stack), so a directory 10,000 levels deep restores like any other.
    # A directory's files, symlinks and special files are restored before its subdirectories, so
    # at most one directory's chunks are prefetched at a time. Only the deepest MAX_OPEN_DIRS
    # directories keep a descriptor; an ancestor's is reopened through ".." (identity checked).

    def restore_tree(self, dir_fd: int, tree_id: bytes, rel: str) -> None:
        """Restore the tree `tree_id` into the open directory `dir_fd` (not closed here)."""
        top = _DirFrame(dir_fd, _identity(dir_fd), None, rel, owned=False)
        top.dirs = self._restore_entries(dir_fd, tree_id, rel)
        top.batches = self._take_batches()
        self._run([top])

    def _restore_dirs(self, dir_fd: int, entry: Entry, path: str) -> None:
        """Restore one directory entry (and everything below it) into the open directory `dir_fd`."""
        top = _DirFrame(dir_fd, _identity(dir_fd), None, path, owned=False)
        top.dirs = [(entry, path)]
        self._run([top])

    def _run(self, stack: list[_DirFrame]) -> None:
        try:
            while stack:
                frame = stack[-1]
                if frame.next < len(frame.dirs):
                    entry, path = frame.dirs[frame.next]
                    frame.next += 1
                    try:
                        child = self._enter_dir(frame, entry, path)
                    except OSError as exc:
                        self._error(path, _describe(exc))
                        continue
                    stack.append(child)
                    self._limit_open(stack)
                else:
                    stack.pop()
                    self._leave_dir(frame, stack)
            self._settle_all()
            self._finish_batches(list(self._batches))
        finally:
            for frame in stack:
                if frame.owned and frame.fd is not None and frame.fd >= 0:
                    os.close(frame.fd)

    def _enter_dir(self, parent: _DirFrame, entry: Entry, path: str) -> _DirFrame:
        if self.dry_run:
            frame = _DirFrame(-1, (0, 0), entry, path, owned=False)
        else:
            parent_fd = _fd_of(parent)
            existed = _lstat(parent_fd, entry.name) is not None
            fd = open_child_dir(parent_fd, entry.name)
            frame = _DirFrame(fd, _identity(fd), entry, path, owned=True, existed=existed,
                              before=(self.result.files, self.result.symlinks, self.result.dirs))
        try:
            frame.dirs = self._restore_entries(_fd_of(frame), entry.subtree, path)
            frame.batches = self._take_batches()
        except BaseException:
            if frame.owned:
                os.close(_fd_of(frame))
            raise
        return frame

    def _leave_dir(self, frame: _DirFrame, stack: list[_DirFrame]) -> None:
        if self._deferrable(frame):
            self._defer(frame, stack[-1])
            return
        self._finish_batches(frame.batches)   # its files are written before its own mtime is set
        if frame.entry is None:
            return       # a top frame: the caller's directory
        if self.dry_run:
            self.result.dirs += 1
            return
        parent = stack[-1]
        if frame.fd is None:          # lost (moved away while restoring): so is a closed parent
            if parent.fd is None:
                self._lose(parent)
            return
        try:
            if parent.fd is None:
                parent.fd = _reopen_parent(frame.fd, parent.ident)
            self._settle_metadata(frame)
        finally:
            os.close(frame.fd)
            frame.fd = None
        if parent.fd is None:
            self._lose(parent)
            return
        if self.include and not frame.existed and frame.before == (self.result.files, self.result.symlinks,
                                                                   self.result.dirs):
            # --include matched nothing below it: leave no empty shell
            os.rmdir(frame.entry.name, dir_fd=parent.fd)
            return
        self.result.dirs += 1

    # A directory whose small files are still being written is set aside (its descriptor kept)
    # rather than waited for, so the walk lists the next directories meanwhile and the writers are
    # never idle between directories. Set-aside directories are finished oldest first (a child
    # before its parent), at most DEFERRED_DIRS waiting. Not with --include, whose empty-shell
    # check needs the directory's files counted when it is left.

    def _deferrable(self, frame: _DirFrame) -> bool:
        return (frame.entry is not None and frame.fd is not None and not self.dry_run and not self.include
                and any(batch.fd is not None for batch in frame.batches))

    def _defer(self, frame: _DirFrame, parent: _DirFrame) -> None:
        assert frame.fd is not None
        if parent.fd is None:
            parent.fd = _reopen_parent(frame.fd, parent.ident)
        self._deferred.append(frame)
        self.result.dirs += 1
        if parent.fd is None:
            self._lose(parent)
        while len(self._deferred) > DEFERRED_DIRS:
            self._settle(self._deferred.popleft())

    def _settle(self, frame: _DirFrame) -> None:
        """A set-aside directory: wait for its files, then set its own metadata."""
        try:
            self._finish_batches(frame.batches)
            self._settle_metadata(frame)
        finally:
            if frame.fd is not None:
                os.close(frame.fd)
                frame.fd = None

    def _settle_all(self) -> None:
        while self._deferred:
            self._settle(self._deferred.popleft())

    def _settle_metadata(self, frame: _DirFrame) -> None:
        assert frame.fd is not None and frame.entry is not None
        try:
            self._apply_metadata(frame.fd, frame.entry)
        except OSError as exc:
            self._error(frame.path, _describe(exc))

    def _lose(self, frame: _DirFrame) -> None:
        self._error(frame.path or ".", "moved during the restore; the rest of it is skipped")
        frame.next = len(frame.dirs)

    def _limit_open(self, stack: list[_DirFrame]) -> None:
        """Keep at most MAX_OPEN_DIRS descriptors: close the shallowest owned ones."""
        if self.dry_run or len(stack) <= MAX_OPEN_DIRS:
            return
        frame = stack[-MAX_OPEN_DIRS - 1]
        if frame.owned and frame.fd is not None:
            os.close(frame.fd)
            frame.fd = None

    def _restore_entries(self, dir_fd: int, tree_id: bytes, rel: str) -> list[tuple[Entry, str]]:
        """Restore a directory's non-directory entries; return its subdirectories to restore next."""
        chosen, dirs = [], []
        for entry in self.budget.spend(self.snapshot.tree(tree_id)):
            name = entry.name.decode("utf-8", "surrogateescape")
            path = f"{rel}/{name}" if rel else name
            problem = _refusal(entry, self.privileged)
            if problem:
                self._error(path, problem)
            elif not self._selected(path, entry):
                continue
            elif entry.type is EntryType.DIR:
                dirs.append((entry, path))
            else:
                chosen.append((entry, path))
        chosen = self._send_small_files(dir_fd, chosen)
        prefetcher = self._prefetch([e for e, _ in chosen if e.type is EntryType.FILE])
        try:
            for entry, path in chosen:
                try:
                    self.restore_entry(dir_fd, entry, path)
                except (OSError, OverflowError, ValueError) as exc:   # one file's failure, reported
                    self._error(path, _describe(exc))
        finally:
            self._prefetchers.pop()
            prefetcher.close()
        return dirs

    # -- small files, in batches on their own thread ---------------------------------------------------

    def _batchable(self, entry: Entry) -> bool:
        """A new small file with nothing to share: written whole by a worker. Hard links, --verify,
        a dry run, large files and overlong names take the walk thread's path."""
        return (entry.type is EntryType.FILE and not self.dry_run and not self.verify and not entry.link
                and entry.size <= SMALL_FILE_MAX and len(entry.chunks) <= 4 and len(entry.name) <= BATCH_NAME_MAX)

    def _send_small_files(self, dir_fd: int, chosen: list[tuple[Entry, str]]) -> list[tuple[Entry, str]]:
        """Send the directory's small files to the pool in batches; return the entries left."""
        rest: list[tuple[Entry, str]] = []
        batch: list[tuple[Entry, str]] = []
        size = 0
        for entry, path in chosen:
            if not self._batchable(entry):
                rest.append((entry, path))
                continue
            try:   # the chunks must hold the recorded size, within the snapshot's declared totals
                self.budget.spend_bytes(checked_size(self.repo, entry, ""))
            except CasstoreError as exc:
                self._error(path, str(exc))
                continue
            batch.append((entry, path))
            size += entry.size
            if len(batch) >= SMALL_BATCH_FILES or size >= SMALL_BATCH_BYTES:
                self._send_batch(dir_fd, batch)
                batch, size = [], 0
        if batch:
            self._send_batch(dir_fd, batch)
        return rest

    def _send_batch(self, dir_fd: int, files: list[tuple[Entry, str]]) -> None:
        while len(self._batches) >= (self.workers.capacity if self.workers is not None else MAX_BATCHES):
            self._finish_batches([self._batches[0]])
        own_fd = os.dup(dir_fd)     # the batch's own: the walk may close the directory's meanwhile
        payload = [(e.name, e.chunks, self._mode(e), e.mtime_ns, e.uid, e.gid) for e, _ in files]
        try:
            if self.workers is not None:
                pending: Pending = self.workers.submit(own_fd, payload)
            else:
                pending = self.small_pool.submit(write_small_files, self._read_all, own_fd, payload,
                                                 same_owner=self.same_owner, exact_mode=False)
            batch = _SmallBatch(own_fd, files, pending)
        except BaseException:
            os.close(own_fd)
            raise
        self._batches.append(batch)
        self._new_batches.append(batch)

    def _take_batches(self) -> list[_SmallBatch]:
        batches, self._new_batches = self._new_batches, []
        return batches

    def _read_all(self, chunk_ids: list[bytes]) -> Mapping[bytes, bytes]:
        """A batch's chunks: a local repository's a run of a pack at a time (packreads.py); a remote
        one's each through the blob store, which keeps them in the local blob cache."""
        store = self.repo.read_blob_ready()
        if isinstance(self.repo.remote, LocalRemote):
            return read_data_blobs(store, chunk_ids)
        return {chunk_id: store.read(KIND_DATA, chunk_id) for chunk_id in chunk_ids}

    def _finish_batches(self, batches: list[_SmallBatch]) -> None:
        """Wait for these batches and count their files; a file that met an existing name
        (--overwrite decides) or whose chunks a worker left unread goes the walk thread's way."""
        for batch in batches:
            if batch.fd is None:
                continue     # finished earlier
            try:
                outcomes = batch.future.result()
                for (entry, path), outcome in zip(batch.files, outcomes, strict=True):
                    if outcome is True:
                        self._count_file(entry)
                        self.progress(entry.size)
                    elif outcome is False:
                        self._take_over(batch.fd, entry, path)
                    else:
                        self._error(path, outcome)
            finally:
                batch.close()
                self._batches.remove(batch)

    def _take_over(self, dir_fd: int, entry: Entry, path: str) -> None:
        try:
            self._write_checked(dir_fd, entry, path, FileChunks(entry, None, self._read_chunk))
        except (OSError, OverflowError, ValueError) as exc:
            self._error(path, _describe(exc))

    def _prefetch(self, files: list[Entry]) -> Prefetcher:
        """Fetch, decompress and verify this directory's chunks ahead, on the pool, in order."""
        prefetcher = Prefetcher(self._read_chunk, self.pool, PREFETCH_WINDOW)
        if not self.dry_run:
            self._learn_zero_chunk(files)
            prefetcher.plan(chunk_id for entry in files for chunk_id in entry.chunks)
            self._planned.update(id(entry) for entry in files)
        self._prefetchers.append(prefetcher)
        return prefetcher

    def _chunks(self, entry: Entry) -> FileChunks:
        planned = id(entry) in self._planned
        self._planned.discard(id(entry))
        if not planned:
            self._learn_zero_chunk([entry])
        return FileChunks(entry, self._prefetchers[-1] if planned else None, self._read_chunk)

    def _read_chunk(self, chunk_id: bytes) -> bytes:
        """A chunk's bytes. The zero chunk, named once per chunk length of a sparse file's holes, is
        not read, decompressed and verified each time: its id is the hash of its bytes."""
        zero = self._zero
        if zero is not None and chunk_id == zero[0]:
            return zero[1]
        return self.repo.read_blob(KIND_DATA, chunk_id)

    def _learn_zero_chunk(self, files: list[Entry]) -> None:
        """Know the zero chunk once a file is long enough to hold a run of them (chunker/sparse.py)."""
        if self._zero is None and any(entry.size >= 2 * self.repo.config.max_blob_size for entry in files):
            zeros = bytes(zero_chunk_length(self.repo.config.make_chunker()))
            self._zero = (codec.blob_id(zeros, self.repo.config.sealer), zeros)

    def _selected(self, path: str, entry: Entry) -> bool:
        is_dir = entry.type is EntryType.DIR
        if self.exclude and self.exclude.match_file(path + "/" if is_dir else path):
            return False
        if self.include and not is_dir:
            return self.include.match_file(path)
        return True

    def restore_entry(self, dir_fd: int, entry: Entry, path: str) -> None:
        if entry.type is EntryType.DIR:
            self._restore_dirs(dir_fd, entry, path)
        elif entry.type is EntryType.FILE:
            self._restore_file(dir_fd, entry, path)
        elif entry.type is EntryType.SYMLINK:
            self._restore_symlink(dir_fd, entry, path)
        else:
            self._restore_special(dir_fd, entry)

    # -- entries -----------------------------------------------------------------------------

    def _restore_file(self, dir_fd: int, entry: Entry, path: str) -> None:
        if self.dry_run:
            self._count_file(entry)
            return
        chunks = self._chunks(entry)
        try:
            # the chunks must hold the recorded size, within the snapshot's declared totals
            # (a file naming one chunk thousands of times is refused, not written for ever)
            self.budget.spend_bytes(checked_size(self.repo, entry, ""))
        except CasstoreError as exc:
            chunks.discard()
            self._error(path, str(exc))
            return
        self._write_checked(dir_fd, entry, path, chunks)

    def _write_checked(self, dir_fd: int, entry: Entry, path: str, chunks: FileChunks) -> None:
        """Write a file whose size was checked: replace what exists (as --overwrite says), link it
        to the first copy of its inode, or create it."""
        try:
            existing = _lstat(dir_fd, entry.name)
            if existing is not None:
                if not self._may_replace(existing, entry, path):
                    return
                self._write_file(dir_fd, entry, chunks, temp=True)
            elif not self._link_to_first_copy(dir_fd, entry):
                self._write_file(dir_fd, entry, chunks, temp=False)
                self._remember_link(dir_fd, entry)
            self._count_file(entry)
        finally:
            chunks.discard()  # whatever was not written leaves the prefetch queue

    def _link_to_first_copy(self, dir_fd: int, entry: Entry) -> bool:
        """Hard-link a file to the first restored copy of the same inode; False to write it instead."""
        first = self._links.get(entry.link) if entry.link else None
        if first is None:
            return False
        try:
            os.link(first[1], entry.name, src_dir_fd=first[0], dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False   # another file system, or the first copy is gone: write a copy instead
        return True

    def _remember_link(self, dir_fd: int, entry: Entry) -> None:
        if entry.link and entry.link not in self._links and len(self._links) < MAX_LINK_GROUPS:
            self._links[entry.link] = (os.dup(dir_fd), entry.name)

    def _count_file(self, entry: Entry) -> None:
        self.result.files += 1
        self.result.bytes += entry.size

    def _may_replace(self, existing: os.stat_result, entry: Entry, path: str) -> bool:
        if stat.S_ISDIR(existing.st_mode):
            self._error(path, "a directory is in the way")
            return False
        if self.overwrite == "never":
            self.result.existing += 1
            if len(self.result.existing_paths) < EXISTING_SHOWN:
                self.result.existing_paths.append(path)
            return False
        if self.overwrite == "if-changed" and entry.type is EntryType.FILE and stat.S_ISREG(existing.st_mode) \
                and (existing.st_size, existing.st_mtime_ns) == (entry.size, entry.mtime_ns):
            self.result.skipped += 1
            return False
        return True

    def _write_file(self, dir_fd: int, entry: Entry, chunks: FileChunks, *, temp: bool) -> None:
        name = entry.name
        target = b".%s.%s.restore" % (name[:40], secrets.token_hex(4).encode()) if temp else name
        fd = os.open(target, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            _write_sparse(fd, chunks, self.progress)
            if self.verify:
                _verify_written(fd, entry, self.repo)
            self._apply_metadata(fd, entry)
        except BaseException:
            os.close(fd)
            os.unlink(target, dir_fd=dir_fd)
            raise
        os.close(fd)
        if temp:
            # rename replaces whatever is at `name` (a symlink included) without following it
            os.rename(target, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _restore_symlink(self, dir_fd: int, entry: Entry, path: str) -> None:
        if not self.dry_run:
            existing = _lstat(dir_fd, entry.name)
            if existing is not None:
                if not self._may_replace(existing, entry, path):
                    return
                os.unlink(entry.name, dir_fd=dir_fd)
            os.symlink(entry.content, entry.name, dir_fd=dir_fd)  # type: ignore[arg-type]
            _set_symlink_time(dir_fd, entry.name, entry.mtime_ns)
        self.result.symlinks += 1      # counted once made: one that fails is an error line, not a symlink

    def _restore_special(self, dir_fd: int, entry: Entry) -> None:
        if self.dry_run or entry.type is EntryType.SOCKET:
            return
        if _lstat(dir_fd, entry.name) is not None:
            self.result.skipped += 1
            return
        if entry.type is EntryType.FIFO:
            kind = stat.S_IFIFO
            os.mkfifo(entry.name, self._mode(entry), dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if entry.type is EntryType.CHARDEV else stat.S_IFBLK
            os.mknod(entry.name, self._mode(entry) | kind, entry.content, dir_fd=dir_fd)  # type: ignore[arg-type]
        # mkfifo/mknod apply the umask and stamp "now": set the recorded metadata on what we just made
        _set_node_metadata(dir_fd, entry.name, kind, self._mode(entry), entry, same_owner=self.same_owner)

    def _apply_metadata(self, fd: int, entry: Entry) -> None:
        _set_metadata(fd, self._mode(entry), entry.mtime_ns, entry.uid, entry.gid, same_owner=self.same_owner)

    def _mode(self, entry: Entry) -> int:
        """The recorded permission bits; setuid and setgid only when restoring privileged."""
        return entry.mode if self.privileged else entry.mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _error(self, path: str, message: str) -> None:
        self.result.errors.append(f"{path}: {message}")


@dataclass
class _DirFrame:
    """A directory being restored: its subdirectories still to do, and its open descriptor."""

    fd: int | None                  # None while closed to bound open descriptors; -1 in a dry run
    ident: tuple[int, int]
    entry: Entry | None             # None for a top frame (the caller's directory)
    path: str
    owned: bool                     # opened here, so closed here
    existed: bool = True
    before: tuple[int, int, int] = (0, 0, 0)
    dirs: list[tuple[Entry, str]] = field(default_factory=list)
    next: int = 0
    batches: list[_SmallBatch] = field(default_factory=list)   # its small files, being written


@dataclass
class _SmallBatch:
    """Small files of one directory, written on the small-file thread through the batch's own directory descriptor."""

    fd: int | None
    files: list[tuple[Entry, str]]
    future: Pending

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _fd_of(frame: _DirFrame) -> int:
    assert frame.fd is not None   # the top of the stack always holds its descriptor
    return frame.fd


def _identity(fd: int) -> tuple[int, int]:
    if fd < 0:
        return (0, 0)
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _reopen_parent(child_fd: int, ident: tuple[int, int]) -> int | None:
    """The parent of directory `child_fd`, through "..", if it is still the directory `ident` names."""
    try:
        fd = os.open("..", _DIR_FLAGS, dir_fd=child_fd)
    except OSError:
        return None
    if _identity(fd) != ident:
        os.close(fd)
        return None
    return fd


class FileChunks:
    """A file's chunks in order: from the directory's prefetcher when planned there, else read directly."""

    def __init__(self, entry: Entry, prefetcher: Prefetcher | None, read: Callable[[bytes], bytes]) -> None:
        self._remaining = list(entry.chunks)
        self._prefetcher, self._read = prefetcher, read

    def __iter__(self):
        while self._remaining:
            chunk_id = self._remaining.pop(0)
            if self._prefetcher is None:
                yield self._read(chunk_id)
            else:
                yield self._prefetcher.take(chunk_id)

    def discard(self) -> None:
        if self._prefetcher is not None and self._remaining:
            self._prefetcher.skip(self._remaining)
        self._remaining = []


def open_child_dir(dir_fd: int, name: bytes) -> int:
    """Create (if needed) and open a child directory, refusing to pass through a symlink."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "refusing to restore through a symlink or non-directory") from None
        raise


def restore_snapshot(snapshot: Snapshot, target: str, *, path: str = "", **options) -> RestoreResult:
    """Restore `snapshot` (or only `path` in it) below `target`, which is created if missing."""
    restorer = Restorer(snapshot, **options)
    try:
        return _restore(restorer, snapshot, target, path, options)
    finally:
        restorer.close()


def _restore(restorer: Restorer, snapshot, target: str, path: str, options: dict) -> RestoreResult:
    snapshot.repo.read_blob_ready()  # load the index once, before worker threads read blobs
    restorer.start_workers()         # forked now, inheriting the loaded index, before any thread starts
    entry = snapshot.entry(path) if path else None
    if entry is None or entry.type is EntryType.DIR:   # a hostile DAG is refused before anything is written
        restorer.budget.check_walk(snapshot.tree, snapshot.manifest.tree if entry is None else entry.subtree)
    if not options.get("dry_run"):
        os.makedirs(target, exist_ok=True)
    root_fd = -1 if options.get("dry_run") else os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if entry is None:
            restorer.restore_tree(root_fd, snapshot.manifest.tree, "")
        else:
            _restore_path(restorer, root_fd, path)
    finally:
        if root_fd >= 0:
            os.close(root_fd)
    return restorer.result


def _restore_path(restorer: Restorer, root_fd: int, path: str) -> None:
    """Restore one path, creating its parent directories inside the target."""
    # the same normalization the snapshot lookup uses, so `..` can never climb out of the target
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    if not all(safe_name(p.encode("utf-8", "surrogateescape")) for p in parts):
        raise RestoreError(f"{path!r} is not a path inside the snapshot")
    fd, opened = root_fd, []
    try:
        for depth in range(len(parts) - 1):
            if not restorer.dry_run:
                fd = open_child_dir(fd, parts[depth].encode("utf-8", "surrogateescape"))
                opened.append(fd)
        entry = restorer.snapshot.entry("/".join(parts))
        assert entry is not None  # _restore looked this path up already: it is an entry, not the root
        restorer.restore_entry(fd, entry, "/".join(parts))
    finally:
        for opened_fd in opened:
            os.close(opened_fd)


def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _write_sparse(fd: int, chunks: Iterable[bytes], progress: Callable[[int], None]) -> None:
    """Write the chunks in order; a chunk of zeros of at least SPARSE_MIN bytes becomes a hole
    (skipped by seeking), and the file is cut to its length at the end, so a sparse file
    restores sparse and a file ending in zeros keeps its size."""
    size, holes = 0, False
    for data in chunks:
        # a chunk is counted only when its first page is zeros: counting every byte of every chunk
        # (a byte-at-a-time loop in CPython) was 28% of a restore's instructions (2,020-file benchmark)
        if len(data) >= SPARSE_MIN and data.startswith(_ZERO_PAGE) and data.count(0) == len(data):
            os.lseek(fd, len(data), os.SEEK_CUR)
            holes = True
        elif _write_with_holes(fd, data, size):
            holes = True
        size += len(data)
        progress(len(data))
    if holes:       # a new file written without a hole already has its length: one call fewer
        os.ftruncate(fd, size)


def _no_progress(n: int) -> None:
    pass


SmallFile = tuple[bytes, list[bytes], int, int, int, int]    # name, chunk ids, mode, mtime_ns, uid, gid
ReadAll = Callable[[list[bytes]], Mapping[bytes, bytes]]      # chunk ids -> their verified bytes


def write_small_files(read_all: ReadAll, dir_fd: int, files: list[SmallFile], *,
                      same_owner: bool, exact_mode: bool) -> list[bool | str]:
    """Each file read, verified and written whole, in a batch's thread or worker process. Per
    file: True (written), False (something exists at its name, or `read_all` left a chunk of it
    out: the walk takes it over), or the error that stopped it. `exact_mode`: the process's
    umask is 0 (a worker's), so the file is created with its mode and needs no fchmod (unless
    fchown just cleared setuid/setgid)."""
    blobs = read_all([chunk_id for file in files for chunk_id in file[1]])
    outcomes: list[bool | str] = []
    for name, chunks, mode, mtime_ns, uid, gid in files:
        if not all(chunk_id in blobs for chunk_id in chunks):
            outcomes.append(False)     # not read here: the walk reads it, and names what is wrong
            continue
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, mode if exact_mode else 0o600, dir_fd=dir_fd)
        except FileExistsError:
            outcomes.append(False)
            continue
        except (OSError, OverflowError, ValueError) as exc:
            outcomes.append(_describe(exc))
            continue
        try:
            _write_sparse(fd, [blobs[chunk_id] for chunk_id in chunks], _no_progress)
            _set_metadata(fd, mode, mtime_ns, uid, gid, same_owner=same_owner, created_with_mode=exact_mode)
            outcomes.append(True)
        except (OSError, OverflowError, ValueError) as exc:
            os.unlink(name, dir_fd=dir_fd)
            outcomes.append(_describe(exc))
        finally:
            os.close(fd)
    return outcomes


def _set_metadata(target: int | str | bytes, mode: int, mtime_ns: int, uid: int, gid: int, *, same_owner: bool,
                  created_with_mode: bool = False, at: Mapping[str, Any] | None = None) -> None:
    """Owner (restoring as root: best effort), permission bits and mtime of an open file or
    directory (its descriptor), or of a node by its name (`at`: the *at() arguments it is relative
    to). `created_with_mode`: created with exactly `mode` (a worker's umask is 0), so no chmod,
    unless chown ran (it clears setuid and setgid)."""
    at = at or {}
    if same_owner:
        with contextlib.suppress(OSError):
            os.chown(target, uid, gid, **at)
    if same_owner or not created_with_mode:
        os.chmod(target, mode, **at)
    os.utime(target, ns=(mtime_ns, mtime_ns), **at)


def _set_node_metadata(dir_fd: int, name: bytes, kind: int, mode: int, entry: Entry, *, same_owner: bool) -> None:
    """Owner (as root: best effort), mode and mtime of the FIFO or device node of kind `kind` just made
    at `name`, set on that node only. Another process may have swapped it meanwhile (in a target others
    can write to) for a symlink or a hard link to a file outside, whose metadata a chmod by name would
    change. So the node is opened O_PATH|O_NOFOLLOW (a symlink is opened as itself, a device is not
    opened at all), its kind checked, and its metadata set through /proc/self/fd (O_PATH cannot fchmod)."""
    with _made_node(dir_fd, name, kind) as (target, at):
        _set_metadata(target, mode, entry.mtime_ns, entry.uid, entry.gid, same_owner=same_owner, at=at)


def _set_symlink_time(dir_fd: int, name: bytes, mtime_ns: int) -> None:
    """The mtime of the symlink just made at `name`, set on that symlink only: swapped meanwhile for a
    hard link to a file outside, a utime by name would stamp that file (as _set_node_metadata says)."""
    with _made_node(dir_fd, name, stat.S_IFLNK) as (target, at):
        os.utime(target, ns=(mtime_ns, mtime_ns), **at)     # a magic link leads to the symlink, not past it


@contextlib.contextmanager
def _made_node(dir_fd: int, name: bytes, kind: int) -> Iterator[tuple[str | bytes, dict[str, Any]]]:
    """A path that reaches the node of kind `kind` at `name` and nothing else, with the *at()
    arguments to use it with: `name` opened O_PATH|O_NOFOLLOW, its kind checked, reached through
    /proc/self/fd while the descriptor is open. Not Linux (no O_PATH): the name itself, relative to
    `dir_fd`, never following a symlink (lchmod exists there)."""
    if not hasattr(os, "O_PATH"):
        yield name, {"dir_fd": dir_fd, "follow_symlinks": False}
        return
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
            raise OSError(errno.EEXIST, "replaced by something else as it was made; left alone")
        yield f"/proc/self/fd/{fd}", {}
    finally:
        os.close(fd)


def _write_with_holes(fd: int, data: bytes, offset: int) -> bool:
    """Write one chunk (at `offset` in the file), seeking over its runs of whole zero pages: the
    chunk that runs from data into a hole (up to max_size bytes) keeps that hole a hole. Whether
    it skipped any (the file then needs its length set at the end)."""
    view = memoryview(data)
    written = 0
    for start, end in _zero_pages(data, offset):
        _write_all(fd, view[written:start])
        os.lseek(fd, end - start, os.SEEK_CUR)
        written = end
    _write_all(fd, view[written:] if written else data)
    return written > 0


def _zero_pages(data: bytes, offset: int) -> Iterator[tuple[int, int]]:
    """Runs of zero pages in `data` (pages of the file: aligned to SPARSE_MIN counting from the
    file's start, `data` being at `offset`), as (start, end) positions in `data`."""
    found = data.find(_ZERO_PAGE)
    while found >= 0:
        start = found + (-(offset + found)) % SPARSE_MIN      # the first page boundary in the run
        end = start
        while data[end:end + SPARSE_MIN] == _ZERO_PAGE:
            end += SPARSE_MIN
        if end > start:
            yield start, end
        found = data.find(_ZERO_PAGE, max(end, start + 1))   # the next page boundary at least


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _verify_written(fd: int, entry: Entry, repo: RepoCore) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as fh:
        for chunk_id in entry.chunks:
            length = repo.index.locations(KIND_DATA, chunk_id)[0].raw_length
            if codec.blob_id(fh.read(length), repo.config.sealer) != chunk_id:
                raise OSError(errno.EIO, "restored content does not verify")
        if fh.read(1):
            raise OSError(errno.EIO, "restored file is longer than the snapshot says")


def _describe(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _no_umask() -> None:
    """A restore worker creates files with the modes they are given: no fchmod after each open."""
    os.umask(0)
