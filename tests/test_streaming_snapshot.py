"""Issue 14: a snapshot's memory follows the walk's depth, not the number of files.

- trees are written as their directories complete, and the walk holds at most MAX_WAITING_DIRS
  directories waiting for files;
- the files cache is read and written one directory at a time, in the walk's order, survives
  directories that appear and vanish between snapshots, is not rewritten when nothing changed,
  and a version 1 cache (one map) is still trusted once;
- small files are read in batches on the pipeline's workers, with the walk's rules (a file that
  grew past one chunk, or was swapped for a FIFO, after it was listed);
- restore writes small files in batches and still respects what exists at the destination.
"""

from __future__ import annotations

import os
import threading

import msgpack
import pytest

import casstore.snapshot.builder
from casstore.format.pack import KIND_TREE
from casstore.repo.blobstore import BlobStore
from casstore.snapshot import filescache, smallfiles
from casstore.snapshot.builder import SnapshotBuilder
from tests.helpers import KiB, age_tree, det_bytes, file_contents, init_repo, open_repo, write


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch):
    """age_tree moves mtimes back, but ctimes are now: trust the cache for files just written."""
    monkeypatch.setattr(casstore.snapshot.builder, "RACY_WINDOW_NS", 0)


def _source(root, dirs: int = 40, files: int = 3):
    for d in range(dirs):
        for f in range(files):
            write(root / f"g{d % 4}" / f"d{d:02}" / f"f{f}.json", det_bytes(200 + f * 300, f"{d}-{f}"))
    age_tree(root)
    return root


def _cache_file(repo, source) -> str:
    return filescache.cache_path(repo.settings.cache_dir, repo.config.id, str(source))


def test_trees_are_written_as_directories_complete_and_few_wait(tmp_path, monkeypatch):
    source = _source(tmp_path / "data")
    monkeypatch.setattr(casstore.snapshot.builder, "MAX_WAITING_DIRS", 4)
    events: list[str] = []
    held: list[int] = []
    real_stat, real_add, real_ready = SnapshotBuilder._stat_entries, BlobStore.add, SnapshotBuilder._write_ready

    def listing(self, *args):
        events.append("list")
        return real_stat(self, *args)

    def add(self, kind, data):
        if kind == KIND_TREE:
            events.append("tree")
        return real_add(self, kind, data)

    def ready(self):
        real_ready(self)
        held.append(max(len(self._listing), len(self._leaving)))

    monkeypatch.setattr(SnapshotBuilder, "_stat_entries", listing)
    monkeypatch.setattr(BlobStore, "add", add)
    monkeypatch.setattr(SnapshotBuilder, "_write_ready", ready)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert events.count("list") == 45 and events.count("tree") == 45
    assert events.index("tree") < len(events) - 1 - events[::-1].index("list")   # a tree before the last listing
    assert max(held) <= 4
    restored = tmp_path / "out"
    assert repo.restore(result.id, str(restored)).ok
    assert file_contents(restored) == file_contents(source)


def test_files_cache_follows_directories_that_come_and_go(tmp_path):
    source = _source(tmp_path / "data")
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    for name in os.listdir(source / "g1" / "d05"):
        os.unlink(source / "g1" / "d05" / name)
    os.rmdir(source / "g1" / "d05")                                  # a directory gone
    write(source / "g1" / "d05b" / "new.json", b'{"new": 1}')        # one new, between two old
    write(source / "g2" / "d06" / "f0.json", b'{"changed": true}')   # one file changed
    write(source / "g0" / "a.json", b"[]")                           # a file beside subdirectories
    second = repo.snapshot(str(source))
    assert second.summary.files_new == 2 and second.summary.files_changed == 1
    assert second.summary.files_unchanged == 40 * 3 - 3 - 1
    assert second.summary.bytes_read == len(b'{"new": 1}') + len(b'{"changed": true}') + 2
    third = repo.snapshot(str(source))
    assert third.summary.bytes_read == 0 and third.summary.files_unchanged == third.summary.files_total
    snap = open_repo(repo.local_dir).get(third.id)
    assert snap.read_bytes("g1/d05b/new.json") == b'{"new": 1}'


def test_a_snapshot_of_an_unchanged_source_does_not_rewrite_the_cache(tmp_path):
    source = _source(tmp_path / "data", dirs=8)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    cache = _cache_file(repo, source)
    before = os.stat(cache)
    assert repo.snapshot(str(source)).summary.bytes_read == 0
    after = os.stat(cache)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not [n for n in os.listdir(os.path.dirname(cache)) if n.endswith(".tmp")]


def test_a_version_1_cache_is_trusted_once_then_replaced(tmp_path):
    source = _source(tmp_path / "data", dirs=6)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    cache = _cache_file(repo, source)
    with open(cache, "rb") as fh:
        unpacker = msgpack.Unpacker(fh)
        assert next(unpacker) == {"v": 2}
        legacy = {rel + name: entry for rel, entries in unpacker for name, entry in entries.items()}
    with open(cache, "wb") as fh:
        fh.write(msgpack.packb(legacy))
    second = repo.snapshot(str(source))
    assert second.summary.bytes_read == 0 and second.summary.files_unchanged == 18
    with open(cache, "rb") as fh:
        assert next(msgpack.Unpacker(fh)) == {"v": 2}


def test_a_damaged_cache_costs_a_read_never_a_wrong_snapshot(tmp_path):
    source = _source(tmp_path / "data", dirs=6)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    cache = _cache_file(repo, source)
    with open(cache, "r+b") as fh:
        fh.seek(os.path.getsize(cache) // 2)
        fh.write(b"\xc1\xc1\xc1\xc1")          # 0xc1: never valid msgpack
    write(source / "g0" / "d00" / "f0.json", b"changed")
    result = repo.snapshot(str(source))
    assert open_repo(repo.local_dir).get(result.id).read_bytes("g0/d00/f0.json") == b"changed"
    assert repo.snapshot(str(source)).summary.bytes_read == 0     # rewritten whole


def test_small_files_are_read_in_batches_on_the_workers(tmp_path, monkeypatch):
    source = _source(tmp_path / "data", dirs=4, files=10)
    threads: set[str] = set()
    real = smallfiles.read_batch

    def recording(*args):
        threads.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(smallfiles, "read_batch", recording)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert threads and all(name.startswith("casstore-chunk") for name in threads)
    assert result.summary.files_new == 40 and result.summary.bytes_read == result.summary.bytes_total
    restored = tmp_path / "out"
    assert repo.restore(result.id, str(restored)).ok
    assert file_contents(restored) == file_contents(source)


def _after_listing(monkeypatch, rel: bytes, action) -> None:
    real = SnapshotBuilder._stat_entries

    def listing(self, *args):
        items = real(self, *args)
        if args[-1] == rel:
            action()
        return items

    monkeypatch.setattr(SnapshotBuilder, "_stat_entries", listing)


def test_a_small_file_that_grew_past_one_chunk_is_cut_and_stored_whole(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / "grows.json", b"{}")
    write(source / "stays.json", b"[1]")
    grown = det_bytes(300 * KiB, "grown")
    _after_listing(monkeypatch, b"", lambda: (source / "grows.json").write_bytes(grown))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert not result.summary.errors
    snap = open_repo(repo.local_dir).get(result.id)
    assert snap.read_bytes("grows.json") == grown and snap.read_bytes("stays.json") == b"[1]"
    assert result.summary.blobs_added > 3          # cut into chunks, not stored as one


def test_a_small_file_swapped_for_a_fifo_is_skipped_not_waited_for(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / "a.json", b"{}")
    write(source / "b.json", b"[]")

    def swap() -> None:
        os.unlink(source / "a.json")
        os.mkfifo(source / "a.json")

    _after_listing(monkeypatch, b"", swap)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert result.incomplete and result.summary.changed_during_read == 1
    assert any(e.startswith("a.json: changed during the snapshot") for e in result.summary.errors)
    assert [e.path for e in open_repo(repo.local_dir).get(result.id).walk()] == ["b.json"]


def _open_descriptors() -> dict[str, str]:
    return {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open descriptors through /proc")
def test_a_snapshot_that_fails_with_batches_waiting_for_a_thread_leaves_no_descriptor_open(tmp_path, monkeypatch):
    """A failure while batches of small files wait for a thread (the first batch does not survive
    its encoding, the next ones take a while) ends the snapshot: the waiting batches are never read,
    and none of their directories stays open in the process (a server runs snapshot after snapshot)."""
    from casstore.errors import IntegrityError
    from casstore.snapshot.pipeline import ChunkPipeline

    source = _source(tmp_path / "data", dirs=16, files=3)
    repo = init_repo(tmp_path / "repo")
    real, calls = ChunkPipeline.prepare_many, []

    def first_fails_the_rest_are_slow(self, datas):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("injected: a batch does not survive its encoding")
        threading.Event().wait(0.3)
        return real(self, datas)

    monkeypatch.setattr(ChunkPipeline, "prepare_many", first_fails_the_rest_are_slow)
    before = _open_descriptors()
    with pytest.raises(IntegrityError):
        repo.snapshot(str(source))
    assert len(calls) < 16           # batches were still waiting when it failed
    assert {fd: path for fd, path in _open_descriptors().items() if fd not in before} == {}


def test_restore_in_batches_respects_existing_files(tmp_path):
    source = _source(tmp_path / "data", dirs=2, files=40)
    repo = init_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(source)).id
    target = tmp_path / "out"
    for f in range(0, 40, 8):
        write(target / "g0" / "d00" / f"f{f}.json", b"mine")
    kept = repo.restore(snapshot_id, str(target))
    assert kept.existing == 5 and kept.files == 80 - 5 and not kept.errors
    assert (target / "g0" / "d00" / "f0.json").read_bytes() == b"mine"
    replaced = repo.restore(snapshot_id, str(target), overwrite="always")
    assert replaced.ok and replaced.files == 80
    assert file_contents(target) == file_contents(source)


def test_an_encrypted_repository_s_cache_is_sealed_record_by_record_and_still_trusted(tmp_path):
    from tests.test_encryption import encrypted_repo

    source = _source(tmp_path / "data", dirs=6)
    with encrypted_repo(tmp_path / "repo") as repo:
        repo.snapshot(str(source))
        cache = _cache_file(repo, source)
        with open(cache, "rb") as fh:
            records = list(msgpack.Unpacker(fh))
        assert records[0] == {"v": 2} and all(isinstance(r, bytes) for r in records[1:])   # sealed
        assert repo.snapshot(str(source)).summary.bytes_read == 0
        with open(cache, "wb") as fh:      # a plain record planted in an encrypted repository's cache
            fh.write(msgpack.packb({"v": 2}) + msgpack.packb([b"g0/d00/", {b"f0.json": [1, 2, 3, 4, []]}]))
        planted = repo.snapshot(str(source))
        assert planted.summary.bytes_read == planted.summary.bytes_total
