"""Changed large files read on the side thread: two at once, stored exactly, counted once; a
snapshot that fails while a side read runs stops it and commits nothing."""

from __future__ import annotations

import threading
import time

import pytest

import casstore.snapshot.builder
from casstore.errors import IntegrityError
from casstore.snapshot.builder import SnapshotBuilder
from tests.helpers import KiB, MiB, age_tree, det_bytes, file_contents, init_repo, objects, open_repo, write


@pytest.fixture
def changed_pair(tmp_path, monkeypatch):
    """A source whose two large files (in two directories) changed since the first snapshot."""
    monkeypatch.setattr(casstore.snapshot.builder, "SIDE_READ_MIN", 256 * KiB)
    monkeypatch.setattr(casstore.snapshot.builder, "RACY_WINDOW_NS", 0)
    source = tmp_path / "data"
    write(source / "a" / "big.jsonl", det_bytes(3 * MiB, "a"))
    write(source / "b" / "big.json", det_bytes(3 * MiB, "b"))
    for i in range(30):
        write(source / "a" / f"small{i:02}.json", det_bytes(2 * KiB, i))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    write(source / "a" / "big.jsonl", det_bytes(3 * MiB, "a") + b"appended\n")
    write(source / "b" / "big.json", b"{" + det_bytes(3 * MiB, "b"))
    return source, repo


def test_changed_large_files_are_read_two_at_once_and_stored_exactly(changed_pair, monkeypatch):
    source, repo = changed_pair
    threads: list[str] = []
    real = SnapshotBuilder._read_file

    def recording(self, path, rel, job):
        threads.append(threading.current_thread().name)
        return real(self, path, rel, job)

    monkeypatch.setattr(SnapshotBuilder, "_read_file", recording)
    result = repo.snapshot(str(source))
    assert any(name.startswith("casstore-read") for name in threads)      # one on the side
    assert any(not name.startswith("casstore-read") for name in threads)  # one on the walk
    summary = result.summary
    assert summary.files_changed == 2 and summary.files_unchanged == 30 and summary.files_new == 0
    assert summary.bytes_read == 6 * MiB + len(b"appended\n") + 1
    snap = open_repo(repo.local_dir).get(result.id)
    assert snap.read_bytes("a/big.jsonl") == (source / "a" / "big.jsonl").read_bytes()
    assert snap.read_bytes("b/big.json") == (source / "b" / "big.json").read_bytes()
    restored = source.parent / "restored"
    assert repo.restore(result.id, str(restored)).ok
    assert file_contents(restored) == file_contents(source)


def _slow_side_reads(monkeypatch) -> None:
    """Each side read starts half a second late: it still runs when the walk fails or ends."""
    real_side = SnapshotBuilder._read_on_side

    def slow_side(self, *args):
        time.sleep(0.5)
        return real_side(self, *args)

    monkeypatch.setattr(SnapshotBuilder, "_read_on_side", slow_side)


def test_a_large_file_still_read_on_the_side_when_the_walk_ends_is_waited_for_and_stored(changed_pair,
                                                                                          monkeypatch):
    source, repo = changed_pair
    _slow_side_reads(monkeypatch)
    result = repo.snapshot(str(source))
    assert result.summary.files_changed == 2 and not result.summary.errors
    snap = open_repo(repo.local_dir).get(result.id)
    assert snap.read_bytes("a/big.jsonl") == (source / "a" / "big.jsonl").read_bytes()


def test_a_failure_while_a_side_read_runs_commits_nothing_and_stops_it(changed_pair, monkeypatch):
    source, repo = changed_pair
    before = objects(repo.local_dir, "snapshots")
    from casstore.snapshot.pipeline import ChunkPipeline

    real = ChunkPipeline._prepare
    calls = []

    def failing(self, data, *rest):
        calls.append(1)
        if len(calls) == 3:
            raise IntegrityError("injected: a chunk does not survive its encoding")
        return real(self, data, *rest)

    monkeypatch.setattr(ChunkPipeline, "_prepare", failing)
    _slow_side_reads(monkeypatch)
    with pytest.raises(IntegrityError):
        repo.snapshot(str(source))
    assert objects(repo.local_dir, "snapshots") == before
    assert not [t for t in threading.enumerate() if t.name.startswith(("casstore-read", "casstore-chunk"))]


def test_a_directory_whose_small_files_changed_before_its_large_one_is_stored_whole(tmp_path, monkeypatch):
    """Small changed files listed before a changed large file: they wait in a batch while the large
    one is read on the side; the directory is written once all of them are read, holding every one."""
    monkeypatch.setattr(casstore.snapshot.builder, "SIDE_READ_MIN", 256 * KiB)
    monkeypatch.setattr(casstore.snapshot.builder, "RACY_WINDOW_NS", 0)
    source = tmp_path / "data"
    for i in range(30):
        write(source / "a" / f"0small{i:02}.json", det_bytes(2 * KiB, i))
    write(source / "a" / "big.jsonl", det_bytes(3 * MiB, "a"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    for i in range(30):
        write(source / "a" / f"0small{i:02}.json", det_bytes(2 * KiB, i + 100))
    write(source / "a" / "big.jsonl", det_bytes(3 * MiB, "a") + b"appended\n")
    result = repo.snapshot(str(source))
    assert (result.summary.files_changed, result.summary.files_total) == (31, 31)
    restored = tmp_path / "restored"
    assert repo.restore(result.id, str(restored)).ok
    assert file_contents(restored) == file_contents(source)
