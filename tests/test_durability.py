"""Durability order of local writes (design 5.3), recorded through the file-system shim.

SIGKILL keeps the page cache, so it cannot test fsync; instead a recording FileSystem is
injected into LocalRemote (and into the files cache) and a whole init + snapshot is recorded.
On that record: every published object (rename or link) was written to a temp file in the same
directory and fsynced before it was published, and its directory fsynced after; every new
directory's parent fsynced before the commit; packs before indexes before the snapshot, each
durable before the next starts (design 5.1); the files cache replaced only after the commit.
"""

from __future__ import annotations

import os

import pytest

import casstore.snapshot.filescache
from casstore.client import Repository
from casstore.format.config import RepoConfig
from casstore.fsio.durable import DROP_CACHED_MIN, FileSystem, write_durably
from casstore.remotes.local import LocalRemote
from casstore.settings import load_settings
from tests.helpers import KiB, MiB, det_bytes, write


class Recorder(FileSystem):
    """Records (operation, path[, destination]) for every durability-relevant call."""

    def __init__(self, log: list | None = None) -> None:
        super().__init__()
        self.log = [] if log is None else log
        self._fd_paths: dict[int, str] = {}

    def write_new(self, path, data):
        fd = super().write_new(path, data)
        self._fd_paths[fd] = path
        self.log.append(("write", path))
        return fd

    def fsync(self, fd):
        super().fsync(fd)
        self.log.append(("fsync", self._fd_paths[fd]))

    def drop_cached(self, fd):
        super().drop_cached(fd)
        self.log.append(("drop_cached", self._fd_paths[fd]))

    def close(self, fd):
        super().close(fd)
        self.log.append(("close", self._fd_paths.pop(fd)))

    def rename(self, src, dst):
        super().rename(src, dst)
        self.log.append(("rename", src, dst))

    def link(self, src, dst):
        super().link(src, dst)
        self.log.append(("link", src, dst))

    def unlink(self, path):
        super().unlink(path)
        self.log.append(("unlink", path))

    def fsync_dir(self, path):
        super().fsync_dir(path)
        self.log.append(("fsync_dir", os.path.abspath(path)))


def _directories(root) -> set[str]:
    return {os.path.abspath(d) for d, _, _ in os.walk(root)}


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """Record init + two snapshots (the second with changes) of a multi-pack source."""
    source = tmp_path / "data"
    for i in range(6):
        write(source / f"dir{i % 3}" / f"file{i}.bin", det_bytes(300 * KiB, i))
    write(source / "doc.json", '{"a": 1}')
    log: list = []
    monkeypatch.setattr(casstore.snapshot.filescache, "FileSystem", lambda: Recorder(log))
    root = str(tmp_path / "repo")
    dirs_before = _directories(tmp_path)
    remote = LocalRemote(root, fs=Recorder(log))
    settings = load_settings()
    config = RepoConfig.new(avg_size=64 * KiB, pack_size=512 * KiB)
    Repository.init_remote(remote, settings, config)
    repo = Repository(remote, config, settings, local_dir=remote.root)
    repo.snapshot(str(source))
    write(source / "dir1" / "new.bin", det_bytes(MiB, "new"))
    repo.snapshot(str(source))
    new_dirs = _directories(tmp_path) - dirs_before
    return log, root, new_dirs


def _publications(log):
    return [(i, e) for i, e in enumerate(log) if e[0] in ("rename", "link")]


def test_every_publication_is_temp_write_fsync_rename_fsync_dir(recorded):
    log, root, _ = recorded
    published = _publications(log)
    assert len(published) >= 10
    for i, (op, src, dst) in published:
        assert os.path.dirname(src) == os.path.dirname(dst), f"temp file not beside {dst}"
        assert os.path.basename(src).startswith(".") and src.endswith(".tmp")
        writes = [j for j in range(i) if log[j] == ("write", src)]
        fsyncs = [j for j in range(i) if log[j] == ("fsync", src)]
        assert writes and fsyncs and writes[0] < fsyncs[0] < i, f"{op} of {dst} before its fsync"
        later_dir_syncs = [j for j in range(i + 1, len(log)) if log[j] == ("fsync_dir", os.path.dirname(dst))]
        assert later_dir_syncs, f"directory of {dst} never fsynced after the {op}"
        if op == "link":  # exclusive create: the temp name goes away after the link
            assert any(log[j] == ("unlink", src) for j in range(i + 1, len(log)))


def test_new_directories_are_made_durable_before_the_commit(recorded):
    """A directory made for an object has its own entry fsynced (its parent's fsync_dir) after it
    was created and before the snapshot that relies on it commits."""
    log, root, new_dirs = recorded
    publications = _publications(log)
    checked = 0
    for directory in sorted(new_dirs):
        if directory == os.path.abspath(root) or not directory.startswith(os.path.abspath(root)):
            continue
        first_write = next(i for i, e in enumerate(log) if e[0] == "write" and e[1].startswith(directory + "/"))
        created_after = max([i for i, _ in publications if i < first_write], default=-1)
        commit = next((i for i, e in publications if i > first_write and "/snapshots/" in e[2]), len(log))
        parent = ("fsync_dir", os.path.dirname(directory))
        assert any(log[i] == parent for i in range(created_after + 1, commit)), \
            f"new directory {directory} not made durable before the commit at {commit}"
        checked += 1
    assert checked >= 4   # data/, data/<xx>/..., index/, snapshots/


def test_packs_then_index_then_snapshot_each_durable_before_the_next(recorded):
    log, root, _ = recorded

    def kind(dst: str) -> str:
        rel = os.path.relpath(dst, root)
        return rel.split(os.sep, 1)[0] if os.sep in rel else rel

    published = [(i, kind(e[2]), e[2]) for i, e in _publications(log)
                 if e[2].startswith(root) and kind(e[2]) in ("data", "index", "snapshots")]
    commits = [i for i, k, _ in published if k == "snapshots"]
    assert len(commits) == 2
    start = 0
    for commit in commits:
        session = [(i, k, dst) for i, k, dst in published if start < i <= commit]
        kinds = [k for _, k, _ in session]
        assert kinds[-1] == "snapshots" and "index" in kinds and "data" in kinds
        assert kinds == sorted(kinds, key=["data", "index", "snapshots"].index), kinds
        index_at = next(i for i, k, _ in session if k == "index")
        for i, k, dst in session:
            if k == "data":  # the pack and its directory are durable before the index is published
                dir_sync = next(j for j in range(i + 1, len(log)) if log[j] == ("fsync_dir", os.path.dirname(dst)))
                assert dir_sync < index_at
        index_dst = next(dst for _, k, dst in session if k == "index")
        idx_dir_sync = next(j for j in range(index_at + 1, len(log))
                            if log[j] == ("fsync_dir", os.path.dirname(index_dst)))
        assert idx_dir_sync < commit
        start = commit


def test_files_cache_is_replaced_only_after_the_commit(recorded):
    log, root, _ = recorded
    published = _publications(log)
    cache_writes = [i for i, e in published if not e[2].startswith(root)]
    commits = [i for i, e in published if "/snapshots/" in e[2]]
    assert len(cache_writes) == 2
    for cache_at, commit in zip(cache_writes, commits, strict=True):
        assert cache_at > commit


def test_nothing_is_written_outside_the_shim(tmp_path, recorded):
    """Every object file in the repository was published through a recorded rename or link."""
    log, root, _ = recorded
    published = {e[2] for _, e in _publications(log)}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name != "lock":
                assert path in published, f"{path} was not written through the durable path"


def test_a_pack_sized_write_leaves_the_page_cache_only_after_its_fsync(tmp_path):
    """A written pack's pages are dropped once they are on disk (dirty ones cannot be); an object
    below DROP_CACHED_MIN (a manifest, an index) keeps them."""
    log: list = []
    fs = Recorder(log)
    big, small = str(tmp_path / "pack"), str(tmp_path / "manifest")
    write_durably(fs, big, det_bytes(DROP_CACHED_MIN, "pack"))
    write_durably(fs, small, det_bytes(DROP_CACHED_MIN - 1, "manifest"))
    ops = [(op, os.path.basename(path)[1:].split(".")[0]) for op, path, *_ in log if op in ("fsync", "drop_cached")]
    assert ops == [("fsync", "pack"), ("drop_cached", "pack"), ("fsync", "manifest")]
    with open(big, "rb") as fh:
        assert fh.read() == det_bytes(DROP_CACHED_MIN, "pack")


def test_a_file_system_that_refuses_the_cache_advice_still_gets_the_pack(tmp_path, monkeypatch):
    """Dropping cached pages is advice: where the file system refuses it, the write stands."""
    def refuse(*_args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    path = str(tmp_path / "pack")
    write_durably(FileSystem(), path, det_bytes(DROP_CACHED_MIN, "pack"))
    with open(path, "rb") as fh:
        assert fh.read() == det_bytes(DROP_CACHED_MIN, "pack")
