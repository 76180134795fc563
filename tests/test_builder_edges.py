"""The snapshot writer at its edges (snapshot/builder.py, issue 19): what it does with a source, a
files cache or a repository that is not what it expected.

- the source: not a directory, missing, or a remote repository as the target;
- the walk's races, each placed exactly after a directory was listed and before anything in it was
  opened: an entry gone before it is statted, a subdirectory gone, replaced by another directory or
  by a file, a large file gone, replaced by another file or a directory, shrunk to one chunk or to
  nothing, a symlink replaced, a directory that cannot be listed;
- a tree deeper than the descriptors the walk keeps open, and an ancestor moved away meanwhile;
- the files cache's reuse rule: a file is read again unless size, mtime, ctime and inode all match,
  its chunks are all stored and it was not touched within the racy window; a damaged entry costs
  a read, never a wrong snapshot;
- the summary's counters and the progress callback over a first, an unchanged and a changed
  snapshot, on the threads' path and the worker processes' path; the manifest's start, duration, tags;
- a failed walk or commit keeps the old files cache; a batch that fails leaves no descriptor open;
  the garbage collector is left as found;
- small-file batches close at exactly their file or byte bound; a changed chunk is stored as a
  delta against the files cache's chunks; identical directories share a tree; the fixed chunker.
Every race hits an entry whose name is not UTF-8: the error lines name it, the manifest stores it.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import stat
from pathlib import Path

import msgpack
import pytest

import casstore.snapshot.builder as builder
from casstore.client import Repository
from casstore.errors import ConfigError, SourceError
from casstore.format.tree import EntryType
from casstore.remotes.memory import MemoryRemote
from casstore.settings import load_settings
from casstore.snapshot import filescache, smallfiles
from casstore.snapshot.builder import SnapshotBuilder, take_snapshot
from tests.helpers import KiB, age_tree, det_bytes, init_repo, open_repo, write

MIN_CHUNK = 16 * KiB          # init_repo's chunker (64 KiB average): a file up to this is one chunk
LARGE = 200 * KiB             # read through the chunker on the walk's thread
# the entries the races hit have names that are not UTF-8 (a name is bytes): every error line names
# them as `os.fsdecode` does, never fails on them
ODD = os.fsdecode(b"\xff")
GONE, SMALL, SUB, BIG, LINK, HOT = (f"{name}{ODD}" for name in ("gone.txt", "small.json", "sub", "big.bin", "link",
                                                                "hot.json"))


def _after_listing(monkeypatch, rel: bytes, action) -> None:
    """Run `action` once, right after directory `rel` was listed and statted, before any of its
    entries is opened: the window a source changing under the snapshot aims for."""
    real = SnapshotBuilder._stat_entries
    done: list[bool] = []

    def listing(self, *args):
        items = real(self, *args)
        if args[-1] == rel and not done:
            done.append(True)
            action()
        return items

    monkeypatch.setattr(SnapshotBuilder, "_stat_entries", listing)


def _stored_files(repo: Repository, snapshot_id: str) -> dict[str, bytes]:
    snap = open_repo(repo.local_dir).get(snapshot_id)
    return {info.path: snap.read_bytes(info.path) for info in snap.walk() if info.type == "file"}


def _paths(repo: Repository, snapshot_id: str) -> set[str]:
    return {info.path for info in open_repo(repo.local_dir).get(snapshot_id).walk()}


# -- the source and the repository -----------------------------------------------------------------


def test_a_source_that_is_a_file_or_missing_is_one_error_and_no_snapshot(tmp_path):
    repo = init_repo(tmp_path / "repo")
    plain = write(tmp_path / "plain.txt", b"not a directory")
    with pytest.raises(SourceError) as caught:
        take_snapshot(repo, str(plain))
    assert str(caught.value) == f"source {plain} is not a directory"
    missing = tmp_path / "missing"
    with pytest.raises(SourceError) as caught:
        take_snapshot(repo, str(missing))
    assert str(caught.value) == f"cannot read source {missing}: {os.strerror(errno.ENOENT)}"
    assert open_repo(tmp_path / "repo").snapshots() == []


def test_a_snapshot_straight_into_a_remote_repository_is_refused_and_writes_nothing(tmp_path):
    write(tmp_path / "data" / "a.txt", b"a")
    remote = MemoryRemote()
    repo = Repository.init_remote(remote, load_settings())
    before = sorted(remote.list(""))
    with pytest.raises(ConfigError) as caught:
        take_snapshot(repo, str(tmp_path / "data"))
    assert str(caught.value) == (f"{repo.location} is a remote repository, which is read-only here: a snapshot is "
                                 "built in a local repository and reaches a remote through `casstore sync`")
    assert sorted(remote.list("")) == before


# -- the walk's races ------------------------------------------------------------------------------


def test_an_entry_gone_between_listing_and_stat_is_named_and_the_rest_stored(tmp_path, monkeypatch, caplog):
    source = tmp_path / "data"
    write(source / GONE, b"here when listed")
    write(source / SMALL, b"listed, gone before its batch is read")
    write(source / "kept.txt", b"kept")
    real = SnapshotBuilder._scan

    def scan(self, fd, rel):
        found = real(self, fd, rel)
        if rel == b"":
            os.unlink(source / GONE)
        return found

    monkeypatch.setattr(SnapshotBuilder, "_scan", scan)
    _after_listing(monkeypatch, b"", lambda: os.unlink(source / SMALL))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert result.summary.errors == [f"{GONE}: {os.strerror(errno.ENOENT)}", f"{SMALL}: {os.strerror(errno.ENOENT)}"]
    assert result.incomplete and result.summary.changed_during_read == 0
    assert f"skipped {GONE}: {os.strerror(errno.ENOENT)}" in caplog.messages     # the warning names it too
    stored = open_repo(tmp_path / "repo").get(result.id).summary["errors"]         # escaped, as the CLI shows it
    assert stored == [f"gone.txt\\xff: {os.strerror(errno.ENOENT)}", f"small.json\\xff: {os.strerror(errno.ENOENT)}"]
    assert _stored_files(repo, result.id) == {"kept.txt": b"kept"}


def test_a_directory_that_cannot_be_listed_is_recorded_empty_with_an_error(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / f"bad{ODD}" / "hidden.txt", b"unlisted")
    write(source / "good" / "seen.txt", b"seen")
    real = os.scandir

    def scandir(target=".", *args):
        if isinstance(target, int) and os.readlink(f"/proc/self/fd/{target}").endswith(f"/bad{ODD}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(target, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert result.summary.errors == [f"bad{ODD}/: {os.strerror(errno.EIO)}"]
    assert result.incomplete
    assert _paths(repo, result.id) == {f"bad{ODD}", "good", "good/seen.txt"}


def test_a_source_whose_top_cannot_be_listed_is_named_as_dot(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / "a.txt", b"a")
    real = os.scandir

    def scandir(target=".", *args):
        if isinstance(target, int) and os.readlink(f"/proc/self/fd/{target}") == str(source):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(target, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    result = init_repo(tmp_path / "repo").snapshot(str(source))
    assert result.summary.errors == [f".: {os.strerror(errno.EIO)}"]
    assert result.summary.files_total == 0 and result.summary.dirs_total == 1


@pytest.mark.parametrize("how", ["removed", "replaced by a directory", "replaced by a file", "replaced by a symlink"])
def test_a_subdirectory_that_changed_after_listing_is_never_entered(tmp_path, monkeypatch, how):
    source = tmp_path / "data"
    write(source / SUB / "old.txt", b"listed")
    write(source / "zz.txt", b"beside it")
    write(tmp_path / "elsewhere" / "secret.txt", b"never stored")

    def change() -> None:
        (source / SUB).rename(tmp_path / "sub.moved")
        if how == "replaced by a directory":
            write(source / SUB / "new.txt", b"never stored")
        elif how == "replaced by a file":
            write(source / SUB, b"never stored")
        elif how == "replaced by a symlink":
            (source / SUB).symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    _after_listing(monkeypatch, b"", change)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    expected = {
        "removed": (f"{SUB}: {os.strerror(errno.ENOENT)}", 0),
        "replaced by a directory": (f"{SUB}: changed during the snapshot: was replaced by another directory; skipped",
                                    1),
        "replaced by a file": (f"{SUB}: changed during the snapshot: is no longer a directory; not followed", 1),
        "replaced by a symlink": (f"{SUB}: changed during the snapshot: is no longer a directory; not followed", 1),
    }[how]
    assert (result.summary.errors, result.summary.changed_during_read) == ([expected[0]], expected[1])
    assert result.incomplete
    assert _stored_files(repo, result.id) == {"zz.txt": b"beside it"}
    assert result.summary.dirs_total == 1


@pytest.mark.parametrize("how", ["removed", "replaced by a file", "replaced by a directory", "replaced by a symlink",
                                 "unreadable"])
def test_a_large_file_that_changed_after_listing_is_not_read_in_its_place(tmp_path, monkeypatch, how):
    source = tmp_path / "data"
    write(source / BIG, det_bytes(LARGE, "listed"))
    write(source / "zz.bin", det_bytes(LARGE, "kept"))
    write(tmp_path / "secret.bin", det_bytes(LARGE, "secret"))

    def change() -> None:
        if how == "unreadable":             # a bad sector: the read fails (EIO)
            real_readv = os.readv

            def readv(fd, buffers):
                if os.readlink(f"/proc/self/fd/{fd}").endswith(BIG):
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                return real_readv(fd, buffers)
            monkeypatch.setattr(os, "readv", readv)
            return
        if how == "replaced by a file":     # made first, so it cannot take the listed file's inode
            os.rename(write(tmp_path / "new.bin", det_bytes(LARGE, "secret")), source / BIG)
            return
        os.unlink(source / BIG)
        if how == "replaced by a directory":
            (source / BIG).mkdir()
        elif how == "replaced by a symlink":
            (source / BIG).symlink_to(tmp_path / "secret.bin")

    _after_listing(monkeypatch, b"", change)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    expected = {
        "removed": (f"{BIG}: {os.strerror(errno.ENOENT)}", 0),
        "replaced by a file": (f"{BIG}: changed during the snapshot: was replaced since it was listed; skipped", 1),
        "replaced by a directory": (f"{BIG}: changed during the snapshot: was replaced since it was listed; skipped",
                                    1),
        "replaced by a symlink": (f"{BIG}: changed during the snapshot: was replaced by a symlink; not followed", 1),
        "unreadable": (f"{BIG}: {os.strerror(errno.EIO)}", 0),
    }[how]
    assert (result.summary.errors, result.summary.changed_during_read) == ([expected[0]], expected[1])
    assert result.incomplete
    assert _stored_files(repo, result.id) == {"zz.bin": det_bytes(LARGE, "kept")}
    counted = 2 if how == "unreadable" else 1       # a file that failed while read was counted when opened
    assert result.summary.files_total == counted and result.summary.bytes_total == counted * LARGE


@pytest.mark.parametrize("how, said", [
    ("replaced by a symlink", "changed during the snapshot: was replaced by a symlink; not followed"),
    ("replaced by a file", "changed during the snapshot: was replaced since it was listed; skipped")])
def test_a_small_file_that_changed_after_listing_is_named_as_a_large_one_is(tmp_path, monkeypatch, how, said):
    """A small file (read in a batch, not on the walk) replaced after listing: the same error line."""
    source = tmp_path / "data"
    write(source / "small.json", b'{"listed": true}')
    write(source / "kept.json", b'{"kept": true}')
    write(tmp_path / "secret.json", b'{"secret": true}')

    def change() -> None:
        if how == "replaced by a file":
            os.rename(write(tmp_path / "new.json", b'{"new": true}'), source / "small.json")
        else:
            os.unlink(source / "small.json")
            (source / "small.json").symlink_to(tmp_path / "secret.json")

    _after_listing(monkeypatch, b"", change)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert (result.summary.errors, result.summary.changed_during_read) == ([f"small.json: {said}"], 1)
    assert _stored_files(repo, result.id) == {"kept.json": b'{"kept": true}'}


@pytest.mark.parametrize("size", [0, 1, MIN_CHUNK])
def test_a_large_file_that_shrank_to_one_chunk_before_it_was_read_is_stored_as_read(tmp_path, monkeypatch, size):
    source = tmp_path / "data"
    write(source / "shrinks.bin", det_bytes(LARGE, "listed"))
    now = det_bytes(size, "now")
    _after_listing(monkeypatch, b"", lambda: (source / "shrinks.bin").write_bytes(now))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert not result.summary.errors and result.summary.changed_during_read == 0
    snap = open_repo(tmp_path / "repo").get(result.id)
    entry = snap.entry("shrinks.bin")
    assert snap.read_bytes("shrinks.bin") == now and entry.size == size
    assert len(entry.content) == (1 if size else 0)        # one chunk, or none for an empty file
    assert result.summary.bytes_read == size
    assert result.summary.blobs_added == (1 if size else 0) + 1      # its chunk, and the root's tree
    assert open_repo(tmp_path / "repo").check(read_data=True).ok


def test_a_symlink_replaced_after_listing_is_named_and_not_stored(tmp_path, monkeypatch):
    source = tmp_path / "data"
    source.mkdir()
    (source / LINK).symlink_to("target")
    write(source / "kept.txt", b"kept")

    def change() -> None:
        os.unlink(source / LINK)
        write(source / LINK, b"a file now")

    _after_listing(monkeypatch, b"", change)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert result.summary.errors == [f"{LINK}: {os.strerror(errno.EINVAL)}"]
    assert _paths(repo, result.id) == {"kept.txt"}


def test_special_files_are_recorded_with_their_kind_and_device_number(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    os.mkfifo(source / "fifo")
    os.mknod(source / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(source / "block", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    os.chmod(source / "null", 0o620)      # past the umask
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(source / "sock"))
    server.close()
    (source / "link").symlink_to("fifo")
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert not result.summary.errors and result.summary.files_total == 0
    snap = open_repo(tmp_path / "repo").get(result.id)
    seen = {name: snap.entry(name) for name in snap.ls()}
    assert {name: e.type for name, e in seen.items()} == {
        "fifo": EntryType.FIFO, "null": EntryType.CHARDEV, "block": EntryType.BLOCKDEV, "sock": EntryType.SOCKET,
        "link": EntryType.SYMLINK}
    assert seen["null"].content == os.makedev(1, 3) and seen["block"].content == os.makedev(7, 200)
    assert seen["null"].mode == 0o620 and seen["block"].mode == 0o600
    assert seen["fifo"].content is None and seen["sock"].content is None
    assert seen["link"].content == b"fifo" and seen["link"].size == len(b"fifo")
    assert all(e.size == 0 for name, e in seen.items() if name != "link")


# -- the files cache's reuse rule ------------------------------------------------------------------


def _cache_file(repo: Repository, source: Path) -> str:
    return filescache.cache_path(repo.settings.cache_dir, repo.config.id, str(source))


def _edit_cache(repo: Repository, source: Path, rel: bytes, name: bytes, edit) -> None:
    """Rewrite the files cache with `edit(entry)` as the entry of `rel` + `name` (the cache is local
    state: a crash, a disk error or another program may leave anything in it)."""
    path = _cache_file(repo, source)
    with open(path, "rb") as fh:
        unpacker = msgpack.Unpacker(fh, strict_map_key=False)
        header, records = next(unpacker), list(unpacker)
    for record_rel, entries in records:
        if record_rel == rel:
            entries[name] = edit(entries[name])
    with open(path, "wb") as fh:
        for doc in (header, *records):
            fh.write(msgpack.packb(doc))


def _bump(field: int):
    return lambda entry: [v + 1 if i == field else v for i, v in enumerate(entry)]


EDITS = {
    "size": _bump(0), "mtime": _bump(1), "ctime": _bump(2), "inode": _bump(3),
    "a chunk not stored": lambda e: [*e[:4], [*e[4][:-1], bytes(32)]],
    "a chunk id not bytes": lambda e: [*e[:4], [*e[4][:-1], "not an id"]],
    "chunks not a list": lambda e: [*e[:4], 7],
    "four fields": lambda e: e[:4],
    "six fields": lambda e: [*e, 0],
    "not a list": lambda e: 7,
    "a map": lambda e: {"size": e[0]},
}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("size", [LARGE, 3 * KiB])
def test_a_file_whose_cache_entry_does_not_match_in_every_field_is_read_again(tmp_path, monkeypatch, edit, size):
    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)      # ctimes are now: trust the cache for these files
    source = tmp_path / "data"
    data = det_bytes(size, "f")
    write(source / "f.bin", data)
    write(source / "other.bin", det_bytes(size, "other"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    _edit_cache(repo, source, b"", b"f.bin", EDITS[edit])
    second = repo.snapshot(str(source))
    assert not second.summary.errors
    assert second.summary.bytes_read == size and second.summary.files_total == 2
    assert second.summary.files_new + second.summary.files_changed + second.summary.files_unchanged == 2
    assert _stored_files(repo, second.id) == _stored_files(repo, first.id)
    assert second.manifest.tree == first.manifest.tree
    third = repo.snapshot(str(source))      # the entry is rewritten: trusted again
    assert third.summary.bytes_read == 0 and third.summary.files_unchanged == 2


@pytest.mark.parametrize("size", [LARGE, 3 * KiB])
def test_an_untouched_cache_entry_is_trusted_and_nothing_is_read(tmp_path, monkeypatch, size):
    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)
    source = tmp_path / "data"
    write(source / "f.bin", det_bytes(size, "f"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    _edit_cache(repo, source, b"", b"f.bin", lambda entry: entry)
    second = repo.snapshot(str(source))
    assert (second.summary.bytes_read, second.summary.files_unchanged, second.summary.blobs_added) == (0, 1, 0)
    assert second.manifest.tree == first.manifest.tree


def test_the_racy_window_is_exact_a_file_touched_within_it_is_read_again(tmp_path, monkeypatch):
    """A file whose ctime (or mtime) is within RACY_WINDOW_NS of the snapshot's start may still
    change within one timestamp tick unseen: read again. At exactly the window's edge it is trusted."""
    source = tmp_path / "data"
    path = write(source / "f.bin", det_bytes(LARGE, "f"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    touched = max(os.stat(path).st_mtime_ns, os.stat(path).st_ctime_ns)

    class Clock:
        def __init__(self, now: int) -> None:
            self.now = now

        def time_ns(self) -> int:
            return self.now

    for start, read in ((touched + builder.RACY_WINDOW_NS - 1, LARGE), (touched + builder.RACY_WINDOW_NS, 0),
                        (touched + builder.RACY_WINDOW_NS - 1, LARGE)):
        with monkeypatch.context() as patch:
            patch.setattr(builder, "time", Clock(start))
            result = repo.snapshot(str(source))
        assert (result.summary.bytes_read, result.summary.files_unchanged) == (read, 1), start - touched


# -- deep trees --------------------------------------------------------------------------------------


def _open_below(root: Path) -> int:
    """Descriptors this process holds open on `root` or anything below it."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        held += target == str(root) or target.startswith(f"{root}/")
    return held


def test_a_tree_deeper_than_the_open_descriptors_is_walked_whole_holding_only_the_deepest(tmp_path, monkeypatch):
    """Only the deepest MAX_OPEN_DIRS directories keep a descriptor (and the one being listed); each
    ancestor is reopened on the way back, so the directories after the deep one are all recorded."""
    depth = builder.MAX_OPEN_DIRS + 6
    source = tmp_path / "data"
    level = source
    for i in range(depth):
        write(level / "e" / "f.txt", f"level {i}")       # after "d": read once the walk came back up
        level = level / "d"
    write(level / "leaf.txt", b"leaf")
    held: list[int] = []
    _after_listing(monkeypatch, b"d/" * depth, lambda: held.append(_open_below(source)))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert held == [builder.MAX_OPEN_DIRS + 1]
    assert not result.summary.errors and result.summary.dirs_total == 2 * depth + 1
    stored = _stored_files(repo, result.id)
    assert stored == {"d/" * i + "e/f.txt": f"level {i}".encode() for i in range(depth)} | {
        "d/" * depth + "leaf.txt": b"leaf"}
    assert _open_below(source) == 0


def test_an_ancestor_the_walk_closed_and_that_moved_meanwhile_is_named_and_the_rest_skipped(tmp_path, monkeypatch):
    """The walk returns to a closed ancestor through ".." and checks it is the directory it left; a
    subtree moved elsewhere meanwhile leads somewhere else: the walk names each ancestor it cannot
    return to, stores nothing after it, and never records the place the subtree was moved to."""
    depth = builder.MAX_OPEN_DIRS + 6
    source = tmp_path / "data"
    chain = source / "top" / "deep"
    write(chain / ("d/" * depth) / "leaf.txt", b"leaf")
    write(source / "top" / "later" / "after.txt", b"after the deep directory")
    write(source / "zlater" / "after.txt", b"after the top")
    write(tmp_path / "elsewhere" / "beside.txt", b"never stored")
    moved = chain / "d" / "d" / "d"          # the directory below it is still open; it and its parents are not

    def move() -> None:
        moved.rename(tmp_path / "elsewhere" / "d")

    _after_listing(monkeypatch, b"top/deep/" + b"d/" * depth, move)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    lost = ["top/deep/d/d", "top/deep/d", "top/deep", "top", "."]
    assert result.summary.errors == [f"{rel}: changed during the snapshot: was moved during the snapshot; rest skipped"
                                     for rel in lost]
    assert result.summary.changed_during_read == len(lost) and result.incomplete
    paths = _paths(repo, result.id)
    assert not {p for p in paths if "later" in p or "beside" in p}
    assert "top/deep/" + "d/" * depth + "leaf.txt" in paths     # read before the move, from where it was


# -- what a snapshot counts --------------------------------------------------------------------------


SMALL_FILES = 150


def _mixed_source(root: Path) -> dict[str, bytes]:
    files = {f"a/a{i:03}.json": det_bytes(100 + 37 * i, i) for i in range(SMALL_FILES)}
    files |= {"a/empty.json": b"", "z/large.bin": det_bytes(LARGE, "large")}
    for rel, data in files.items():
        write(root / rel, data)
    write(root / ".env", b"SECRET=1")                 # excluded by default
    os.symlink("a/a000.json", root / "link")
    os.mkfifo(root / "fifo")
    age_tree(root)
    return files


def _stored_blobs(repo: Repository) -> dict[tuple, tuple[int, int]]:
    """(kind, id) -> (raw length, stored length) of every blob the index lists."""
    return {key: (locations[0].raw_length, locations[0].length) for key, locations in repo.load_index().blobs()}


def _counted(repo: Repository, source: Path) -> tuple:
    before = _stored_blobs(repo)
    progress: list[int] = []
    result = open_repo(repo.local_dir).snapshot(str(source), progress=progress.append)
    new = {key: sizes for key, sizes in _stored_blobs(repo).items() if key not in before}
    return result.summary, sum(progress), new, result


@pytest.mark.parametrize("workers", [False, True], ids=["threads", "workers"])
def test_the_summary_counts_every_file_byte_and_blob_of_a_first_an_unchanged_and_a_changed_snapshot(
        tmp_path, monkeypatch, workers):
    from casstore.fsio import workers as fsio_workers
    from tests.test_snapshot_workers import _ThreadsSinceNow

    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)
    monkeypatch.setattr(builder, "WORKER_MIN_FILES", SMALL_FILES // 2 if workers else 10**9)
    monkeypatch.setattr(builder, "threading", _ThreadsSinceNow())
    started: list[int] = []
    real = fsio_workers.WorkerPool      # imported by the builder when it starts its workers
    monkeypatch.setattr(fsio_workers, "WorkerPool", lambda *args, **kwargs: started.append(1) or real(*args, **kwargs))
    source = tmp_path / "data"
    files = _mixed_source(source)
    total = sum(map(len, files.values()))
    repo = init_repo(tmp_path / "repo")

    summary, progressed, new, first = _counted(repo, source)
    assert bool(started) == workers
    assert (summary.files_total, summary.files_new, summary.files_changed, summary.files_unchanged) == (
        len(files), len(files), 0, 0)
    assert (summary.dirs_total, summary.excluded, summary.errors, summary.changed_during_read) == (3, 1, [], 0)
    assert summary.bytes_total == summary.bytes_read == progressed == total
    assert summary.blobs_added == len(new)
    assert summary.bytes_added == sum(raw for raw, _ in new.values())
    assert summary.bytes_added_stored == sum(stored for _, stored in new.values())
    assert _stored_files(repo, first.id) == files

    summary, progressed, new, second = _counted(repo, source)
    assert (summary.files_total, summary.files_new, summary.files_changed, summary.files_unchanged) == (
        len(files), 0, 0, len(files))
    assert (summary.bytes_total, summary.bytes_read, progressed) == (total, 0, total)
    assert (summary.blobs_added, summary.bytes_added, summary.bytes_added_stored, new) == (0, 0, 0, {})
    assert second.manifest.tree == first.manifest.tree and second.manifest.parent == first.id

    changed = {"a/a001.json": b'{"changed": 1}', "z/large.bin": det_bytes(LARGE + 1, "larger"),
               "a/new.json": b'{"new": 1}'}
    for rel, data in changed.items():
        write(source / rel, data)
    os.unlink(source / "a" / "a002.json")
    files = {rel: data for rel, data in (files | changed).items() if rel != "a/a002.json"}
    summary, progressed, new, third = _counted(repo, source)
    assert (summary.files_total, summary.files_new, summary.files_changed, summary.files_unchanged) == (
        len(files), 1, 2, len(files) - 3)
    assert summary.bytes_total == progressed == sum(map(len, files.values()))
    assert summary.bytes_read == sum(map(len, changed.values()))
    assert summary.blobs_added == len(new)
    assert summary.bytes_added == sum(raw for raw, _ in new.values())
    assert summary.bytes_added_stored == sum(stored for _, stored in new.values())
    assert _stored_files(repo, third.id) == files and third.manifest.parent == second.id


# -- the parent, the commit, the process ---------------------------------------------------------------


def test_the_parent_is_this_sources_previous_snapshot_even_when_the_noted_one_was_forgotten(tmp_path, monkeypatch):
    source, other = tmp_path / "data", tmp_path / "other"
    write(source / "a.txt", b"a")
    write(other / "b.txt", b"b")
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    assert first.manifest.parent is None
    second = repo.snapshot(str(source))
    assert second.manifest.parent == first.id            # the one noted after the commit
    repo.snapshot(str(other))                            # newer, of another source: never a parent
    repo.delete_snapshot(second.id)
    third = repo.snapshot(str(source))
    assert third.manifest.parent == first.id             # the noted one is gone: found among the manifests
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    fourth = open_repo(tmp_path / "repo").snapshot(str(source))
    assert fourth.manifest.parent == third.id            # no note at all: found among the manifests


@pytest.mark.parametrize("where", ["build", "commit"])
def test_a_snapshot_that_fails_keeps_the_files_cache_it_started_from(tmp_path, monkeypatch, where):
    """The files cache is replaced only after the snapshot that made it committed: a failure before
    (in the walk, or writing the manifest) leaves the old one, which the next snapshot trusts."""
    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)
    source = tmp_path / "data"
    write(source / "a.bin", det_bytes(LARGE, "a"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    write(source / "b.bin", det_bytes(LARGE, "b"), mtime_ns=os.stat(source / "a.bin").st_mtime_ns)   # new
    with monkeypatch.context() as patch:
        if where == "build":
            patch.setattr(SnapshotBuilder, "_settle", lambda self: (_ for _ in ()).throw(OSError(errno.EIO, "walk")))
        else:
            patch.setattr(type(repo), "write_snapshot", lambda self, manifest: (_ for _ in ()).throw(
                OSError(errno.EIO, "commit")))
        with pytest.raises(OSError):
            repo.snapshot(str(source))
    assert len(open_repo(tmp_path / "repo").snapshots()) == 1
    assert not [n for n in os.listdir(os.path.dirname(_cache_file(repo, source))) if n.endswith(".tmp")]
    after = repo.snapshot(str(source))
    assert after.summary.bytes_read == LARGE and after.summary.files_unchanged == 1 and after.summary.files_new == 1


@pytest.mark.parametrize("enabled", [True, False])
def test_a_snapshot_leaves_the_garbage_collector_as_it_found_it(tmp_path, enabled):
    write(tmp_path / "data" / "a.txt", b"a")
    repo = init_repo(tmp_path / "repo")
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        repo.snapshot(str(tmp_path / "data"))
        assert gc.isenabled() == enabled and gc.get_freeze_count() == 0
        with pytest.raises(SourceError):
            take_snapshot(repo, str(tmp_path / "missing"))
        assert gc.isenabled() == enabled and gc.get_freeze_count() == 0
    finally:
        gc.enable() if was else gc.disable()


@pytest.mark.parametrize("workers", [False, True], ids=["threads", "workers"])
def test_a_small_file_that_keeps_changing_while_read_is_stored_as_last_read_and_read_again_next_time(
        tmp_path, monkeypatch, caplog, workers):
    from tests.test_snapshot_workers import _ThreadsSinceNow

    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)
    monkeypatch.setattr(builder, "WORKER_MIN_FILES", 10 if workers else 10**9)
    monkeypatch.setattr(builder, "threading", _ThreadsSinceNow())
    source = tmp_path / "data"
    hot = write(source / HOT, b"0")
    for i in range(20):
        write(source / f"s{i:02}.json", f"{i}")
    age_tree(source)
    real = os.pread

    def pread(fd, n, offset):
        data = real(fd, n, offset)
        if os.readlink(f"/proc/self/fd/{fd}") == str(hot):
            with open(hot, "ab") as fh:              # after each read, before its check
                fh.write(b"1")
        return data

    repo = init_repo(tmp_path / "repo")
    with monkeypatch.context() as patch:
        patch.setattr(smallfiles.os, "pread", pread)
        result = repo.snapshot(str(source))
    assert not result.summary.errors and result.summary.changed_during_read == 1
    assert f"{HOT} changed while it was read; stored as last read, re-read next snapshot" in caplog.messages
    snap = open_repo(tmp_path / "repo").get(result.id)
    assert snap.read_bytes(HOT) == b"01" and snap.entry(HOT).size == 2      # the second read
    assert result.summary.files_new == 21 and result.summary.bytes_read == 2 + sum(len(f"{i}") for i in range(20))
    again = repo.snapshot(str(source))
    assert again.summary.bytes_read == 3 and again.summary.files_unchanged == 20     # only it, as it is now
    assert open_repo(tmp_path / "repo").get(again.id).read_bytes(HOT) == b"011"


@pytest.mark.parametrize("workers", [False, True], ids=["threads", "workers"])
def test_a_batch_that_fails_to_be_stored_fails_the_snapshot_and_leaves_no_descriptor_open(
        tmp_path, monkeypatch, workers):
    """A failure while small files are prepared (compression, the store's disk full) is the
    snapshot's failure: nothing is committed, every descriptor the walk and its batches held on the
    source is closed, and the next snapshot stores everything."""
    from casstore.snapshot.pipeline import ChunkPipeline
    from tests.test_snapshot_workers import _ThreadsSinceNow

    monkeypatch.setattr(builder, "WORKER_MIN_FILES", 50 if workers else 10**9)
    monkeypatch.setattr(builder, "threading", _ThreadsSinceNow())
    source = tmp_path / "data"
    files = {f"d{d}/f{i:03}.json": det_bytes(300 + i, f"{d}-{i}") for d in range(4) for i in range(150)}
    for rel, data in files.items():
        write(source / rel, data)
    real_init, real_prepare = ChunkPipeline.__init__, ChunkPipeline.prepare_many

    def small_window(self, store, **kwargs):       # one batch in flight: the next waits for it
        real_init(self, store, **{**kwargs, "window": 1, "window_bytes": 1})

    def failing(self, chunks):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    repo = init_repo(tmp_path / "repo")
    with monkeypatch.context() as patch:
        patch.setattr(ChunkPipeline, "__init__", small_window)
        patch.setattr(ChunkPipeline, "prepare_many", failing)
        with pytest.raises(Exception, match=os.strerror(errno.ENOSPC)):
            repo.snapshot(str(source))
        assert _open_below(source) == 0
    assert open_repo(tmp_path / "repo").snapshots() == []
    with monkeypatch.context() as patch:
        patch.setattr(ChunkPipeline, "prepare_many", real_prepare)
        result = repo.snapshot(str(source))
    assert _stored_files(repo, result.id) == files and result.summary.bytes_read == sum(map(len, files.values()))


def test_a_directory_only_exclude_leaves_a_symlink_fifo_or_file_of_that_name(tmp_path):
    source = tmp_path / "data"
    write(source / "a" / "unified_backups" / "x.txt", b"excluded by default")
    write(source / "a" / "logs" / "today.log", b"excluded by the user")
    write(source / "b" / "logs", b"a file named logs")
    source.joinpath("c").mkdir()
    (source / "c" / "unified_backups").symlink_to("../a")
    os.mkfifo(source / "c" / "logs")
    repo = init_repo(tmp_path / "repo")
    result = take_snapshot(repo, str(source), excludes=("logs/",))
    assert result.summary.excluded == 2
    assert _paths(repo, result.id) == {"a", "b", "b/logs", "c", "c/logs", "c/unified_backups"}


def test_a_changed_chunk_of_a_file_is_stored_as_a_delta_against_its_previous_version(tmp_path, monkeypatch):
    """The files cache names a changed file's previous chunks: they are its delta bases (the
    repository's delta setting is on by default), so a few bytes changed cost a few bytes stored."""
    source = tmp_path / "data"
    data = bytearray(det_bytes(LARGE, "v1"))       # incompressible: stored whole, a chunk costs its size
    write(source / "f.bin", bytes(data))
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    data[LARGE // 2:LARGE // 2 + 8] = b"CHANGED!"
    write(source / "f.bin", bytes(data))
    second = repo.snapshot(str(source))
    assert second.summary.files_changed == 1 and second.summary.bytes_read == LARGE
    assert 0 < second.summary.bytes_added_stored < second.summary.bytes_added / 4
    assert _stored_files(repo, second.id) == {"f.bin": bytes(data)}


def test_two_identical_directories_are_stored_as_one_tree(tmp_path):
    """A directory's entry records no inode (only a file's hard-link group does), so identical
    directories, here two copies with the same names, modes and times, share their trees."""
    source = tmp_path / "data"
    for copy in ("a", "b"):
        write(source / copy / "x" / "f.txt", b"same")
        os.mkfifo(source / copy / "x" / "fifo")
        (source / copy / "x" / "link").symlink_to("f.txt")
    os.link(source / "a" / "x" / "fifo", source / "a" / "fifo-link")    # a FIFO with two names: not a file
    os.link(source / "b" / "x" / "fifo", source / "b" / "fifo-link")
    age_tree(source)
    for copy in ("a", "b"):
        os.utime(source / copy / "x", ns=(10**18, 10**18))
        os.utime(source / copy, ns=(10**18, 10**18))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    snap = open_repo(tmp_path / "repo").get(result.id)
    assert snap.entry("a").subtree == snap.entry("b").subtree
    assert all(snap.entry(f"a/{name}").link == 0 for name in ("x", "fifo-link", "x/fifo", "x/link"))
    # nor a size but a symlink's (its target's length): a directory's st_size depends on the file system
    assert [snap.entry(f"a/{name}").size for name in ("x", "fifo-link", "x/fifo", "x/link")] == [0, 0, 0, 5]


def test_a_repository_with_the_fixed_chunker_snapshots_every_size(tmp_path, monkeypatch):
    """The fixed chunker has no minimum chunk size: every non-empty file goes through it."""
    from dataclasses import replace

    from casstore.chunker import FixedChunker
    from casstore.format.config import RepoConfig

    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)
    config = replace(RepoConfig.new(), chunker=FixedChunker(4 * KiB).params())
    repo = Repository.init_local(str(tmp_path / "repo"), load_settings(), config)
    source = tmp_path / "data"
    files = {"empty": b"", "one": b"1", "block": det_bytes(4 * KiB, "b"), "more": det_bytes(10 * KiB + 1, "m")}
    for name, data in files.items():
        write(source / name, data)
    age_tree(source)
    first = repo.snapshot(str(source))
    assert not first.summary.errors and first.summary.bytes_read == sum(map(len, files.values()))
    snap = open_repo(tmp_path / "repo").get(first.id)
    assert _stored_files(repo, first.id) == files
    assert [len(snap.entry(name).content) for name in files] == [0, 1, 1, 3]
    assert repo.snapshot(str(source)).summary.files_unchanged == len(files)


def test_a_batch_of_small_files_closes_at_exactly_its_file_or_byte_bound(tmp_path, monkeypatch):
    """A batch (one task: its files' bytes are held together) takes files until it holds
    BATCH_FILES of them or BATCH_BYTES bytes, whichever comes first; the directory's rest follows."""
    monkeypatch.setattr(builder, "WORKER_MIN_FILES", 10**9)     # on threads, in this process
    source = tmp_path / "data"
    per_file = builder.BATCH_BYTES // MIN_CHUNK               # files of MIN_CHUNK bytes that fill a batch
    files = {f"many/f{i:04}": f"{i:010}".encode() for i in range(builder.BATCH_FILES + 1)}
    files |= {f"full/f{i:04}": det_bytes(MIN_CHUNK, i) for i in range(per_file + 1)}
    for rel, data in files.items():
        write(source / rel, data)
    batches: list[tuple[str, int]] = []
    real = smallfiles.read_batch

    def recording(dir_fd, names, *args, **kwargs):
        batches.append((os.readlink(f"/proc/self/fd/{dir_fd}").rsplit("/", 1)[1], len(names)))
        return real(dir_fd, names, *args, **kwargs)

    monkeypatch.setattr(smallfiles, "read_batch", recording)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert sorted(batches) == [("full", 1), ("full", per_file), ("many", 1), ("many", builder.BATCH_FILES)]
    assert _stored_files(repo, result.id) == files


def test_the_manifest_records_the_start_the_duration_in_milliseconds_and_the_tags_once_sorted(tmp_path, monkeypatch):
    write(tmp_path / "data" / "a.txt", b"a")
    repo = init_repo(tmp_path / "repo")
    start = 1_700_000_000_123_456_789
    readings = iter([start, start + 1_235_000_500])      # the start, then the commit: 1235.0005 ms later

    class Clock:
        @staticmethod
        def time_ns() -> int:
            return next(readings)

    monkeypatch.setattr(builder, "time", Clock)
    result = take_snapshot(repo, str(tmp_path / "data"), tags=("nightly", "alpha", "nightly"))
    stored = open_repo(tmp_path / "repo").get(result.id)
    assert stored.manifest.time_ns == start and stored.summary["duration_ms"] == 1235
    assert stored.manifest.tags == ["alpha", "nightly"] and stored.manifest.source == str(tmp_path / "data")
    assert 0 < stored.summary["repository_bytes"] <= repo.stored_bytes()


def test_a_snapshot_passes_its_pause_points_in_the_commit_order(tmp_path):
    """The test hooks crash and interruption tests stop a snapshot at (casstore/_testing.py): one
    before each source entry is opened; `snapshot-before-index` once its packs are written;
    `snapshot-before-commit` once its index is written too, the manifest (the commit) not yet."""
    from casstore._testing import set_pause_hook
    from tests.helpers import objects

    source = tmp_path / "data"
    for name in ("a/one.bin", "a/two.bin", "b/three.bin"):
        write(source / name, det_bytes(LARGE, name))
    for i in range(4):
        write(source / "b" / f"small{i}.json", f"{i}")
    repo = init_repo(tmp_path / "repo")
    seen: list[tuple[str, int, int, int]] = []

    def hook(name: str) -> None:
        seen.append((name, *(len(objects(tmp_path / "repo", kind)) for kind in ("data", "index", "snapshots"))))

    set_pause_hook(hook)
    try:
        repo.snapshot(str(source))
    finally:
        set_pause_hook(None)
    opens = [point for point in seen if point[0] == "snapshot-before-open"]
    assert len(opens) == 2 + 3 + 4             # two directories, three large files, four small ones
    rest = [point for point in seen if point[0] != "snapshot-before-open"]
    assert [name for name, *_ in rest] == ["snapshot-before-index", "snapshot-before-commit"]
    (_, packs, indexes, snapshots), (_, packs_then, indexes_then, snapshots_then) = rest
    assert packs > 0 and (indexes, snapshots) == (0, 0)
    assert packs_then == packs and indexes_then > 0 and snapshots_then == 0
    assert len(objects(tmp_path / "repo", "snapshots")) == 1
