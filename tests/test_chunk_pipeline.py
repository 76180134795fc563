"""The snapshot writer's chunk pipeline (snapshot/pipeline.py): what it holds in flight, where
changed chunks go, how many run at once, and what a failure leaves running.

- the window: at most `window` tasks and `window_bytes` bytes wait to be applied; one more and the
  oldest is applied first, in submission order; a chunk known to be stored holds no bytes;
- a changed file's chunks are stored as deltas against the chunks they replace, made on two
  threads at most (each holds its base and zstd's tables), whatever the number of cores, while new
  chunks are compressed on as many threads as there are cores;
- a snapshot that fails stops: the chunks still waiting for a thread are never compressed, and
  every one a thread had started has ended before the snapshot returns.

Real repositories on disk and real snapshots; the window tests drive the pipeline itself over an
in-memory store, as the writer does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import casstore.snapshot.builder
from casstore.errors import IntegrityError
from casstore.format import codec
from casstore.format.config import RepoConfig
from casstore.format.index import MasterIndex
from casstore.remotes.memory import MemoryRemote
from casstore.repo.blobstore import BlobStore
from casstore.snapshot.pipeline import ChunkPipeline
from tests.helpers import KiB, MiB, age_tree, det_bytes, init_repo, open_repo, write

# -- the window ------------------------------------------------------------------------------------


def _pipeline(window: int = 8, window_bytes: int = 100) -> ChunkPipeline:
    store = BlobStore(MemoryRemote(), RepoConfig.new(), MasterIndex(), origin={})
    return ChunkPipeline(store, workers=1, window=window, window_bytes=window_bytes)


def test_queued_tasks_hold_their_size_in_the_byte_window_until_each_is_applied() -> None:
    """The byte window counts what is queued and not yet applied: a task that would take it past
    `window_bytes` first waits for the oldest, and only as many as make room; exactly the bound
    waits for nothing."""
    pipeline, applied = _pipeline(), []
    steps = [("a", 60, []), ("b", 30, []),          # 90 in flight
             ("c", 20, ["a"]),                      # 110: a applied first, 50 left
             ("d", 40, ["a"]),                      # 90
             ("e", 11, ["a", "b"]),                 # 101: b applied first (only b), 71 left
             ("f", 29, ["a", "b"])]                 # exactly 100: nothing waits
    try:
        for name, size, expected in steps:
            pipeline.submit_task(lambda name=name: name, applied.append, size)
            assert applied == expected, f"after queuing {name} ({size} bytes)"
        pipeline.drain()
        assert applied == ["a", "b", "c", "d", "e", "f"]
    finally:
        pipeline.close()


def test_at_most_window_tasks_wait_to_be_applied() -> None:
    pipeline, applied = _pipeline(window=3, window_bytes=MiB), []
    try:
        for name in "abc":
            pipeline.submit_task(lambda name=name: name, applied.append, 0)
        assert applied == []                 # exactly `window` in flight
        pipeline.submit_task(lambda: "d", applied.append, 0)
        assert applied == ["a"]              # one more: the oldest first, and only it
        pipeline.drain()
        assert applied == ["a", "b", "c", "d"]
    finally:
        pipeline.close()


def test_a_chunk_known_to_be_stored_takes_no_room_in_the_byte_window() -> None:
    """A zero chunk repeated through a hole is queued by id (`submit_known`): it holds no data, so
    with the byte window exactly full it waits for nothing, and it is delivered in order."""
    pipeline, delivered = _pipeline(), []
    zeros = codec.blob_id(bytes(4096))
    try:
        pipeline.submit_task(lambda: "a", delivered.append, 60)
        pipeline.submit_task(lambda: "b", delivered.append, 40)
        for _ in range(2):
            pipeline.submit_known(zeros, 4096, lambda *args: delivered.append(args))
        assert delivered == []
        pipeline.drain()
        assert delivered == ["a", "b", (zeros, 4096, 0), (zeros, 4096, 0)]
    finally:
        pipeline.close()


# -- changed chunks, threads -----------------------------------------------------------------------

SIZE = 1 * MiB


def _version(n: int) -> bytes:
    """Incompressible content; version 2 changes one byte every 32 KiB, so every chunk changes."""
    data = bytearray(det_bytes(SIZE, "v1"))
    if n == 2:
        for at in range(1000, SIZE, 32 * KiB):
            data[at] ^= 0xFF
    return bytes(data)


@pytest.fixture
def changed(tmp_path, monkeypatch):
    """A repository with a snapshot of version 1 of a file, and the source now at version 2."""
    monkeypatch.setattr(casstore.snapshot.builder, "RACY_WINDOW_NS", 0)
    source = tmp_path / "data"
    write(source / "table.bin", _version(1))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    write(source / "table.bin", _version(2))
    return repo, source


def test_a_changed_file_stores_its_changed_chunks_as_deltas_against_the_chunks_they_replace(changed, tmp_path):
    repo, source = changed
    result = repo.snapshot(str(source))
    summary = result.summary
    assert summary.files_changed == 1 and summary.bytes_added >= SIZE // 2
    assert summary.bytes_added_stored < summary.bytes_added / 8, "incompressible chunks, so only deltas are this small"
    assert open_repo(repo.local_dir).get(result.id).read_bytes("table.bin") == _version(2)


class _Overlap:
    """Wraps `codec.encode_verified` to see how many of the writer's encodings run at once."""

    def __init__(self, monkeypatch, counted, wait_for: int, first: int, timeout: float) -> None:
        self.real, self.counted = codec.encode_verified, counted
        self.wait_for, self.first, self.timeout = wait_for, first, timeout
        self.active = self.peak = self.calls = 0
        self.cond = threading.Condition()
        monkeypatch.setattr(codec, "encode_verified", self)

    def __call__(self, *args, **kwargs):
        if not self.counted(kwargs):
            return self.real(*args, **kwargs)
        with self.cond:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            if self.calls <= self.first:   # the first few wait a while for company
                self.cond.wait_for(lambda: self.peak >= self.wait_for, timeout=self.timeout)
        try:
            return self.real(*args, **kwargs)
        finally:
            with self.cond:
                self.active -= 1


def test_deltas_are_made_at_most_two_at_a_time_whatever_the_cores(changed, monkeypatch):
    """Each delta holds its base's plaintext and zstd's tables (issue 17): on 4 cores, changed
    chunks still run two at a time, although several wait for a thread at once."""
    repo, source = changed
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    overlap = _Overlap(monkeypatch, lambda kwargs: kwargs.get("base") is not None, wait_for=3, first=3, timeout=0.5)
    result = repo.snapshot(str(source))
    assert overlap.calls >= 8, "every changed chunk is encoded against the chunk it replaces"
    assert overlap.peak <= 2
    assert open_repo(repo.local_dir).get(result.id).read_bytes("table.bin") == _version(2)


def test_new_chunks_are_compressed_on_as_many_threads_as_there_are_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    source = tmp_path / "data"
    write(source / "table.bin", _version(1))
    repo = init_repo(tmp_path / "repo")

    def new_chunk(kwargs) -> bool:
        return threading.current_thread() is not threading.main_thread()

    overlap = _Overlap(monkeypatch, new_chunk, wait_for=4, first=4, timeout=10)
    result = repo.snapshot(str(source))
    assert overlap.peak == 4, "4 cores, and chunks waiting: 4 compressed at once"
    assert open_repo(repo.local_dir).get(result.id).read_bytes("table.bin") == _version(1)


# -- failure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2], ids=["new chunks", "changed chunks"])
def test_a_failed_snapshot_compresses_no_waiting_chunk_and_leaves_nothing_running(version, tmp_path, monkeypatch):
    """The file's first chunk does not survive its encoding; every other takes a second. When the
    failure reaches the snapshot, two threads are busy and the other chunks queued behind them
    (the window holds 8) wait: those are never compressed, and the two busy ones have ended by the
    time the snapshot raises. Version 2 is a changed file: its chunks go to the delta threads."""
    monkeypatch.setattr(casstore.snapshot.builder, "RACY_WINDOW_NS", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    source: Path = tmp_path / "data"
    write(source / "table.bin", _version(1))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    if version == 2:
        repo.snapshot(str(source))
        write(source / "table.bin", _version(2))
    first = _version(version)[:64]
    real, lock = codec.encode_verified, threading.Lock()
    started, ended = [], []

    def first_fails_the_rest_are_slow(data, *args, **kwargs):
        with lock:
            started.append(1)
        try:
            if bytes(data[:64]) == first:
                raise IntegrityError("injected: a chunk does not survive its encoding")
            threading.Event().wait(1.0)
            return real(data, *args, **kwargs)
        finally:
            with lock:
                ended.append(1)

    monkeypatch.setattr(codec, "encode_verified", first_fails_the_rest_are_slow)
    with pytest.raises(IntegrityError):
        repo.snapshot(str(source))
    with lock:
        assert len(ended) == len(started), "a chunk was still being compressed after the snapshot returned"
        assert len(started) <= 4, f"{len(started)} chunks compressed: the ones waiting for a thread were not dropped"
