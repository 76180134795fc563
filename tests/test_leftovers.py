"""Full disks and leftovers (issue 13, case 11).

A snapshot killed mid-write leaves temp files: `check` reports them, and gc and the next snapshot
remove those old enough to belong to a dead writer. gc on a full disk deletes what no reader can
reach (leftovers, packs no index names) before it writes its index. The files cache is best
effort: a full cache directory never fails a snapshot that committed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from casstore.errors import RemoteError
from casstore.fsio.durable import FileSystem
from casstore.gc.run import collect_garbage
from casstore.remotes.wrappers import RemoteWrapper
from casstore.snapshot import filescache
from tests.helpers import det_bytes, init_repo, invoke, objects, open_repo, run, write


def _temp_files(repo_dir: Path) -> list[Path]:
    return sorted(p for p in repo_dir.rglob(".*.tmp") if p.is_file())


def _age(paths: list[Path], seconds: float) -> None:
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past))


def test_temp_files_of_a_killed_snapshot_are_reported_then_removed(tmp_path):
    source = tmp_path / "data"
    write(source / "big.bin", det_bytes(600_000, "big"))
    init_repo(tmp_path / "repo")
    for n in range(1, 10):   # killed at the Nth durability call, until one dies with a temp file written
        proc = run("snapshot", source, "--repo", tmp_path / "repo", env={"CASSTORE_TEST_CRASH_AT_IO": str(n)},
                   expect=None)
        assert proc.returncode != 0
        left = _temp_files(tmp_path / "repo")
        if left:
            break
    assert left, "the killed run left no temp file to test with"

    report = json.loads(run("check", "--json", "--repo", tmp_path / "repo").stdout)
    assert report["leftover_temp_files"] == len(left) and report["leftover_bytes"] > 0
    text = run("check", "--repo", tmp_path / "repo").stdout.decode()
    assert f"{len(left)} leftover temp files" in text

    run("gc", "--repo", tmp_path / "repo")
    assert _temp_files(tmp_path / "repo") == left            # young: maybe a live writer's; kept
    _age(left, 2 * 3600)
    run("gc", "--repo", tmp_path / "repo")
    assert _temp_files(tmp_path / "repo") == []
    assert json.loads(run("check", "--json", "--repo", tmp_path / "repo").stdout)["leftover_temp_files"] == 0


def test_the_next_snapshot_removes_old_leftovers(tmp_path):
    source = tmp_path / "data"
    write(source / "a.txt", b"one")
    repo = init_repo(tmp_path / "repo")
    stale = write(tmp_path / "repo" / "data" / "ab" / f".{'ab' * 32}.{'0' * 12}.tmp", b"half a pack")
    fresh = write(tmp_path / "repo" / "index" / f".{'cd' * 32}.{'1' * 12}.tmp", b"a live writer's")
    _age([stale], 2 * 3600)
    repo.snapshot(str(source))
    assert not stale.exists() and fresh.exists()


class _FullDisk(RemoteWrapper):
    """A disk with no space left until something is deleted."""

    full = True

    def _put(self, key, data, *, if_absent, if_match):
        if _FullDisk.full:
            raise RemoteError(f"{key}: no space left on device")
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _delete(self, key):
        super()._delete(key)
        _FullDisk.full = False


def test_gc_on_a_full_disk_deletes_unreachable_packs_before_it_writes(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / "a.bin", det_bytes(300_000, "a"))
    init_repo(tmp_path / "repo").snapshot(str(source))
    pack = objects(tmp_path / "repo", "data")[0]
    orphan = pack.parent / (pack.name[:-8] + "00000000")     # a pack no index names: a failed run's
    shutil.copy(pack, orphan)
    monkeypatch.setattr(_FullDisk, "full", True)
    report = collect_garbage(open_repo(tmp_path / "repo", remote_wrapper=_FullDisk))
    assert report.packs_deleted == 1 and not orphan.exists()
    assert open_repo(tmp_path / "repo").check().ok


@pytest.mark.parametrize("failing", ["write_new", "fsync", "rename"])
def test_a_full_cache_never_fails_a_committed_snapshot(tmp_path, monkeypatch, failing):
    """The files cache is streamed while the snapshot runs and published after its commit: a full
    disk at any of those steps leaves no temp file and fails nothing."""
    write(tmp_path / "data" / "a.txt", b"one")
    invoke("init")

    class Full(FileSystem):
        pass

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Full, failing, full)
    monkeypatch.setattr(filescache, "FileSystem", Full)
    result = invoke("snapshot", "--json")
    snapshot_id = json.loads(result.stdout)["id"]
    assert invoke("cat", snapshot_id[:8], "a.txt").stdout == "one"
    cache_dir = Path(os.environ["CASSTORE_CACHE_DIR"])
    assert not [p for p in cache_dir.rglob("*.tmp")]
