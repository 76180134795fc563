"""A snapshot's small files read by worker processes (issue 14, snapshot/builder.py, fsio/workers.py).

Once the walk has listed WORKER_MIN_FILES small files to read before it needed a thread, their
batches go to forked worker processes instead of the pipeline's threads. What must hold: the
snapshot is the same (same tree ids) as the threads' one; unreadable, vanished and grown files are
reported and stored as on threads; excludes, encryption and the files cache work as before; a
worker that dies is one error line and a failed snapshot; an interrupted or killed snapshot leaves
no process behind and a repository that checks clean and takes the next snapshot.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from casstore.client import Repository
from casstore.snapshot import builder
from tests.helpers import (
    KiB,
    age_tree,
    assert_one_line_error,
    det_bytes,
    file_contents,
    init_repo,
    open_repo,
    run,
    write,
)
from tests.test_restore_workers import (
    assert_all_end,
    paused_with_workers,
    signal_paused,
    small_source,
)
from tests.test_streaming_snapshot import _after_listing

FEW = 120      # the workers' threshold in these tests: a source of a few hundred files uses them


class _ThreadsSinceNow:
    """`threading` as the builder sees it, counting only the threads started since the test began.

    The builder forks workers only while its process has one thread (a lock another thread held
    would stay held in the child). In the whole suite pytest's process keeps threads earlier tests
    left idle (in-process servers, pools), so every in-process snapshot here would take the
    threads' path; the threads the snapshot itself starts still count."""

    def __init__(self) -> None:
        self._before = threading.active_count()

    def active_count(self) -> int:
        return threading.active_count() - self._before + 1

    def __getattr__(self, name: str):
        return getattr(threading, name)


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    """Worker pools started, by how many processes: the threshold lowered to FEW."""
    started: list[int] = []
    real = builder.WorkerPool

    def recording(handle, count, **kwargs):
        started.append(count)
        return real(handle, count, **kwargs)

    monkeypatch.setattr(builder, "WORKER_MIN_FILES", FEW)
    monkeypatch.setattr(builder, "WorkerPool", recording)
    monkeypatch.setattr(builder, "threading", _ThreadsSinceNow())
    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)     # files written just now may be cached
    return started


def _source(root: Path) -> Path:
    """Small files of many sizes (an empty one too) in nested directories, a symlink, a big file
    listed after enough small ones for the workers to start."""
    for i in range(400):
        write(root / f"g{i % 3}" / f"d{i % 7}" / f"f{i:03}.json", det_bytes(i * 37 % 5000, i))
    write(root / "g0" / "empty.json", b"")
    write(root / "z" / "big.bin", det_bytes(400 * KiB, "big"))
    os.symlink("g0/d0/f000.json", root / "link")
    age_tree(root)
    return root


def _snapshot(repo_dir: Path, source: Path, monkeypatch, *, workers: bool, **kwargs):
    """A snapshot on the workers' path or the threads' one, with a files cache of its own."""
    with monkeypatch.context() as patch:
        if not workers:
            patch.setattr(builder, "WORKER_MIN_FILES", 10**9)
        patch.setenv("CASSTORE_CACHE_DIR", str(repo_dir / f"cache-{workers}"))
        return open_repo(repo_dir).snapshot(str(source), **kwargs)


def test_workers_store_the_same_snapshot_as_threads(tmp_path, forks, monkeypatch):
    source = _source(tmp_path / "data")
    init_repo(tmp_path / "repo")      # one repository: its chunker's parameters are its own
    on_workers = _snapshot(tmp_path / "repo", source, monkeypatch, workers=True)
    assert forks == [builder.SNAPSHOT_WORKERS]
    on_threads = _snapshot(tmp_path / "repo", source, monkeypatch, workers=False)   # a files cache of its own
    assert forks == [builder.SNAPSHOT_WORKERS]
    assert on_workers.manifest.tree == on_threads.manifest.tree
    assert on_workers.summary.files_new == on_threads.summary.files_new == 402
    assert on_workers.summary.bytes_read == on_threads.summary.bytes_read > 0
    assert not on_workers.summary.errors
    restored = tmp_path / "out"
    assert open_repo(tmp_path / "repo").restore(on_workers.id, str(restored)).ok
    assert file_contents(restored) == file_contents(source)


def test_a_source_of_few_files_starts_no_worker(tmp_path, forks):
    for i in range(FEW - 1):
        write(tmp_path / "data" / f"f{i}.json", b"{}")
    init_repo(tmp_path / "repo").snapshot(str(tmp_path / "data"))
    assert forks == []


def test_a_second_snapshot_without_change_reads_nothing(tmp_path, forks, monkeypatch):
    source = _source(tmp_path / "data")
    init_repo(tmp_path / "repo")
    first = _snapshot(tmp_path / "repo", source, monkeypatch, workers=True)
    second = _snapshot(tmp_path / "repo", source, monkeypatch, workers=True)
    assert forks == [builder.SNAPSHOT_WORKERS]       # the second listed nothing to read
    assert second.summary.bytes_read == 0 and second.summary.files_unchanged == 402
    assert second.manifest.tree == first.manifest.tree
    write(source / "g1" / "d3" / "f010.json", b"changed")
    third = _snapshot(tmp_path / "repo", source, monkeypatch, workers=True)
    assert third.summary.files_changed == 1 and third.summary.bytes_read == len(b"changed")


def _refusing(monkeypatch, victim: Path) -> None:
    """`os.open` of `victim` fails as unreadable, here and in workers forked later."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        named = os.path.join(os.readlink(f"/proc/self/fd/{kwargs['dir_fd']}"), path) if kwargs.get("dir_fd") else path
        if os.fspath(named) == str(victim):
            raise PermissionError(errno.EACCES, "Permission denied", str(victim))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def test_unreadable_vanished_replaced_and_grown_files_are_reported_and_stored_as_on_threads(
        tmp_path, forks, monkeypatch):
    results = {}
    init_repo(tmp_path / "repo")
    for workers in (True, False):
        source = _source(tmp_path / f"data-{workers}")
        grown = det_bytes(300 * KiB, "grown")
        d = source / "g2" / "d4"

        def change(d=d, grown=grown) -> None:
            os.unlink(d / "f011.json")                          # vanished
            (d / "f032.json").write_bytes(grown)                # grew past one chunk
            os.unlink(d / "f053.json")
            os.symlink("f074.json", d / "f053.json")            # replaced by a symlink

        with monkeypatch.context() as patch:
            _after_listing(patch, b"g2/d4/", change)
            _refusing(patch, d / "f095.json")                   # unreadable
            result = _snapshot(tmp_path / "repo", source, patch, workers=workers)
        results[workers] = result
        snap = open_repo(tmp_path / "repo").get(result.id)
        assert snap.read_bytes("g2/d4/f032.json") == grown
        assert {e.path for e in snap.walk()} >= {"g2/d4/f074.json", "g2/d4/f116.json"}
        assert not {"g2/d4/f011.json", "g2/d4/f053.json", "g2/d4/f095.json"} & {e.path for e in snap.walk()}
    assert forks == [builder.SNAPSHOT_WORKERS]
    on_workers, on_threads = results[True], results[False]
    assert on_workers.incomplete and on_workers.summary.errors == on_threads.summary.errors
    assert len(on_workers.summary.errors) == 3
    assert any(e.startswith("g2/d4/f011.json: No such file") for e in on_workers.summary.errors)
    assert "g2/d4/f095.json: Permission denied" in on_workers.summary.errors
    assert on_workers.summary.as_dict()["changed_during_read"] == on_threads.summary.as_dict()["changed_during_read"]


def test_excluded_files_stay_out_on_the_workers_path(tmp_path, forks, monkeypatch):
    source = _source(tmp_path / "data")
    init_repo(tmp_path / "repo")
    result = _snapshot(tmp_path / "repo", source, monkeypatch, workers=True, excludes=("g1", "*5.json"))
    assert forks == [builder.SNAPSHOT_WORKERS]
    paths = {e.path for e in open_repo(tmp_path / "repo").get(result.id).walk()}
    assert paths and not any(p.startswith("g1") or p.endswith("5.json") for p in paths)
    assert "g0/d0/f000.json" in paths


def test_an_encrypted_repository_snapshots_through_the_workers(tmp_path, forks, monkeypatch):
    from casstore.client import open_repository
    from casstore.format.config import RepoConfig
    from casstore.repo import keys
    from casstore.settings import load_settings

    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.setenv("CASSTORE_PASSWORD", "workers and keys")
    keys.forget_unlocked()
    source = _source(tmp_path / "data")
    settings = load_settings({"repository": str(tmp_path / "repo"), "password": "workers and keys"})
    with Repository.init_local(str(tmp_path / "repo"), settings,
                               RepoConfig.new(keys=keys.new_key(settings, "testhost"))) as repo:
        on_workers = repo.snapshot(str(source))
    assert forks == [builder.SNAPSHOT_WORKERS]
    with monkeypatch.context() as patch:
        patch.setattr(builder, "WORKER_MIN_FILES", 10**9)
        other = load_settings({"repository": str(tmp_path / "repo"), "password": "workers and keys",
                               "cache_dir": str(tmp_path / "other-cache")})      # every file read again
        with open_repository(other) as repo:
            on_threads = repo.snapshot(str(source))
            assert on_threads.summary.bytes_read == on_workers.summary.bytes_read > 0
            assert on_threads.manifest.tree == on_workers.manifest.tree
            assert repo.restore(on_workers.id, str(tmp_path / "out")).ok
    keys.forget_unlocked()
    assert file_contents(tmp_path / "out") == file_contents(source)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    return small_source(tmp_path_factory.mktemp("many") / "source", 8000, per_dir=50)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_or_killed_snapshot_leaves_no_process_and_a_sound_repository(tmp_path, many, how):
    init_repo(tmp_path / "repo")
    proc, workers = paused_with_workers(["--repo", str(tmp_path / "repo"), "snapshot", str(many)], "snapshot",
                                        tmp_path / "paused")
    assert len(workers) == builder.SNAPSHOT_WORKERS
    signal_paused(proc, workers, how)
    run("--repo", tmp_path / "repo", "check")
    run("--repo", tmp_path / "repo", "snapshot", many)
    run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "out")
    assert file_contents(tmp_path / "out") == file_contents(many)


def test_a_worker_that_dies_is_one_error_line_and_no_snapshot(tmp_path, many):
    # Caught paused while it waits for a worker's answer, so the answer it waits for can never come:
    # seen running instead, the snapshot could end (and its workers with it) before the kill lands.
    init_repo(tmp_path / "repo")
    proc, workers = paused_with_workers(["--repo", str(tmp_path / "repo"), "snapshot", str(many)], "snapshot",
                                        tmp_path / "paused")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                          "snapshot worker process ended unexpectedly (killed by signal 9)")
    assert_all_end(workers)
    assert json.loads(run("--repo", tmp_path / "repo", "list", "--json").stdout) == []


