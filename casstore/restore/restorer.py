"""Restore a snapshot (or one path of it) into a target directory.

Containment (design 5.7) is enforced at each file-system call, not by cleaning path strings:
every directory is opened with O_NOFOLLOW relative to its parent's descriptor, children are
created relative to that descriptor, new files with O_EXCL, and a name with `/`, NUL, `.` or `..`
is refused. An existing symlink at the destination is never followed: it is refused as a parent
and replaced (not written through) as a leaf when overwriting is allowed.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from casstore.errors import RestoreError
from casstore.format import codec
from casstore.format.pack import KIND_DATA
from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget
from casstore.read.reader import Snapshot
from casstore.repo.core import BlobReader, RepoCore
from casstore.restore.prefetch import Prefetcher

OVERWRITE_MODES = ("never", "if-changed", "always")


def _patterns(lines: Iterable[str]) -> Any:
    import pathspec  # lazy: start-up time (every command loads this module); only patterns need it

    return pathspec.GitIgnoreSpec.from_lines(lines)
MAX_LINK_GROUPS = 512   # hard-link groups restored as links (each keeps a directory descriptor open)
PREFETCH_WINDOW = 8   # chunks decoded ahead per directory (bounds memory: at most 8 x the max chunk size)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
EXISTING_SHOWN = 20


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


def safe_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


class Restorer:
    def __init__(self, snapshot: Snapshot, *, overwrite: str = "never", include: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (), dry_run: bool = False, verify: bool = False,
                 progress=None) -> None:
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
        self.as_root = os.geteuid() == 0
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="casstore-restore")
        self._prefetchers: list[Prefetcher] = []
        self._planned: set[int] = set()   # id() of file entries whose chunks are queued for prefetch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for dir_fd, _ in self._links.values():
            os.close(dir_fd)
        self._links.clear()

    # -- walking -----------------------------------------------------------------------------

    def restore_tree(self, dir_fd: int, tree_id: bytes, rel: str) -> None:
        chosen = []
        for entry in self.budget.spend(self.snapshot.tree(tree_id)):
            name = entry.name.decode("utf-8", "surrogateescape")
            path = f"{rel}/{name}" if rel else name
            if not safe_name(entry.name):
                self._error(path, "unsafe name refused")
            elif self._selected(path, entry):
                chosen.append((entry, path))
        prefetcher = self._prefetch([e for e, _ in chosen if e.type is EntryType.FILE])
        try:
            for entry, path in chosen:
                try:
                    self.restore_entry(dir_fd, entry, path)
                except OSError as exc:
                    self._error(path, _describe(exc))
        finally:
            self._prefetchers.pop()
            prefetcher.close()

    def _prefetch(self, files: list[Entry]) -> Prefetcher:
        """Fetch, decompress and verify this directory's chunks ahead, on the pool, in order."""
        prefetcher = Prefetcher(lambda chunk_id: self.repo.read_blob(KIND_DATA, chunk_id), self.pool, PREFETCH_WINDOW)
        if not self.dry_run:
            prefetcher.plan(chunk_id for entry in files for chunk_id in entry.chunks)
            self._planned.update(id(entry) for entry in files)
        self._prefetchers.append(prefetcher)
        return prefetcher

    def _chunks(self, entry: Entry) -> FileChunks:
        planned = id(entry) in self._planned
        self._planned.discard(id(entry))
        return FileChunks(entry, self._prefetchers[-1] if planned else None, self.repo)

    def _selected(self, path: str, entry: Entry) -> bool:
        is_dir = entry.type is EntryType.DIR
        if self.exclude and self.exclude.match_file(path + "/" if is_dir else path):
            return False
        if self.include and not is_dir:
            return self.include.match_file(path)
        return True

    def restore_entry(self, dir_fd: int, entry: Entry, path: str) -> None:
        if entry.type is EntryType.DIR:
            self._restore_dir(dir_fd, entry, path)
        elif entry.type is EntryType.FILE:
            self._restore_file(dir_fd, entry, path)
        elif entry.type is EntryType.SYMLINK:
            self._restore_symlink(dir_fd, entry, path)
        else:
            self._restore_special(dir_fd, entry, path)

    # -- entries -----------------------------------------------------------------------------

    def _restore_dir(self, dir_fd: int, entry: Entry, path: str) -> None:
        if self.dry_run:
            self.result.dirs += 1
            self.restore_tree(-1, entry.subtree, path)
            return
        existed = _lstat(dir_fd, entry.name) is not None
        child = open_child_dir(dir_fd, entry.name)
        before = (self.result.files, self.result.symlinks, self.result.dirs)
        try:
            self.restore_tree(child, entry.subtree, path)
            self._apply_metadata(child, entry)
        finally:
            os.close(child)
        if self.include and not existed and before == (self.result.files, self.result.symlinks, self.result.dirs):
            os.rmdir(entry.name, dir_fd=dir_fd)  # --include matched nothing below it: leave no empty shell
            return
        self.result.dirs += 1

    def _restore_file(self, dir_fd: int, entry: Entry, path: str) -> None:
        if self.dry_run:
            self._count_file(entry)
            return
        chunks = self._chunks(entry)
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
        if self.overwrite == "if-changed" and stat.S_ISREG(existing.st_mode) \
                and (existing.st_size, existing.st_mtime_ns) == (entry.size, entry.mtime_ns):
            self.result.skipped += 1
            return False
        return True

    def _write_file(self, dir_fd: int, entry: Entry, chunks: FileChunks, *, temp: bool) -> None:
        name = entry.name
        target = b".%s.%s.restore" % (name[:40], secrets.token_hex(4).encode()) if temp else name
        fd = os.open(target, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            for data in chunks:
                _write_all(fd, data)
                self.progress(len(data))
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
        self.result.symlinks += 1
        if self.dry_run:
            return
        existing = _lstat(dir_fd, entry.name)
        if existing is not None:
            if not self._may_replace(existing, entry, path):
                self.result.symlinks -= 1
                return
            os.unlink(entry.name, dir_fd=dir_fd)
        os.symlink(entry.content, entry.name, dir_fd=dir_fd)  # type: ignore[arg-type]
        os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _restore_special(self, dir_fd: int, entry: Entry, path: str) -> None:
        if self.dry_run or entry.type is EntryType.SOCKET:
            return
        if _lstat(dir_fd, entry.name) is not None:
            self.result.skipped += 1
            return
        if entry.type is EntryType.FIFO:
            os.mkfifo(entry.name, entry.mode, dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if entry.type is EntryType.CHARDEV else stat.S_IFBLK
            os.mknod(entry.name, entry.mode | kind, entry.content, dir_fd=dir_fd)  # type: ignore[arg-type]
        # mkfifo/mknod apply the umask and stamp "now": set the recorded metadata on what we just made
        if self.as_root:
            try:
                os.chown(entry.name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                pass
        os.chmod(entry.name, entry.mode, dir_fd=dir_fd)
        os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _apply_metadata(self, fd: int, entry: Entry) -> None:
        if self.as_root:
            try:
                os.fchown(fd, entry.uid, entry.gid)
            except OSError:
                pass
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _error(self, path: str, message: str) -> None:
        self.result.errors.append(f"{path}: {message}")


class FileChunks:
    """A file's chunks in order: from the directory's prefetcher when planned there, else read directly."""

    def __init__(self, entry: Entry, prefetcher: Prefetcher | None, repo: BlobReader) -> None:
        self._remaining = list(entry.chunks)
        self._prefetcher, self._repo = prefetcher, repo

    def __iter__(self):
        while self._remaining:
            chunk_id = self._remaining.pop(0)
            if self._prefetcher is None:
                yield self._repo.read_blob(KIND_DATA, chunk_id)
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
    entry = snapshot.entry(path) if path else None
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _verify_written(fd: int, entry: Entry, repo: RepoCore) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as fh:
        for chunk_id in entry.chunks:
            length = repo.index.locations(KIND_DATA, chunk_id)[0].raw_length
            if codec.blob_id(fh.read(length)) != chunk_id:
                raise OSError(errno.EIO, "restored content does not verify")
        if fh.read(1):
            raise OSError(errno.EIO, "restored file is longer than the snapshot says")


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)
