"""sync under injected faults and after SIGKILL: it completes or fails cleanly, never leaving a
snapshot on the remote that references a missing blob, and a resumed sync re-sends no journaled pack."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from casstore.client import Repository
from casstore.errors import CasstoreError
from casstore.format.config import RepoConfig
from casstore.format.pack import parse_header
from casstore.remotes.local import LocalRemote
from casstore.settings import load_settings
from casstore.sync.state import SyncState
from tests.faults import FaultyRemote
from tests.sync_helpers import day_of_edits, local_repo, make_source, tree_digest


def _remote_is_consistent(remote, cache_dir) -> None:
    repo = Repository.open_remote(remote, load_settings({"cache_dir": str(cache_dir)}))
    report = repo.check()
    assert not report.affected, f"a snapshot on the remote references missing data: {report.affected}"
    assert not report.errors and not report.damaged_packs


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_sync_under_faults_completes_or_fails_cleanly(memory_remote, tmp_path, seed):
    print(f"fault seed {seed}")
    source = make_source(tmp_path / "data", seed=seed)
    # small packs: enough requests (dozens) that the 10% faults surely land; with 16 MiB packs a sync
    # makes about ten (fewer since an on-time commit lists nothing), and as pack names are random,
    # some runs drew no fault at all
    repo = local_repo(tmp_path / "repo", config=RepoConfig.new(avg_size=64 * 1024, pack_size=128 * 1024))
    repo.snapshot(str(source))
    day_of_edits(source)
    repo.snapshot(str(source))
    faulty = FaultyRemote(memory_remote, seed=seed)
    done = False
    for attempt in range(30):
        try:
            repo.sync(faulty)
            done = True
        except CasstoreError as exc:
            print(f"attempt {attempt}: {exc}")
        _remote_is_consistent(memory_remote, tmp_path / f"check-{attempt}")
        if done:
            break
    assert done, "sync never completed under 10% injected faults"
    assert faulty.injected > 0
    fresh = Repository.open_remote(memory_remote, load_settings({"cache_dir": str(tmp_path / "fresh")}))
    assert fresh.restore("latest", str(tmp_path / "out")).ok
    assert tree_digest(tmp_path / "out") == tree_digest(source)


def _run_sync(repo_dir, remote_dir, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    cmd = [sys.executable, "-m", "casstore.cli.main", "--repo", str(repo_dir), "sync", "--remote",
           f"file://{remote_dir}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _pack_blobs(remote: LocalRemote, pack_ids) -> set[bytes]:
    blobs = set()
    for pack_id in pack_ids:
        data = remote.get(f"data/{pack_id[:2]}/{pack_id}")
        blobs |= {e.id for e in parse_header(data, 1 << 24)}
    return blobs


@pytest.mark.parametrize("crash_at", [6, 14, 22, 30, 38])
def test_sigkill_mid_sync_then_rerun_uploads_no_journaled_pack_twice(tmp_path, crash_at):
    print(f"crash at durability call {crash_at}")
    source = make_source(tmp_path / "data", n_json=60, big_mib=3)
    repo_dir, remote_dir = tmp_path / "repo", tmp_path / "remote"
    from casstore.format.config import RepoConfig

    repo = local_repo(repo_dir, config=RepoConfig.new(avg_size=64 * 1024, pack_size=256 * 1024))
    repo.snapshot(str(source))
    # one upload at a time: when the kill lands, at most one uploaded pack is not journaled yet
    killed = _run_sync(repo_dir, remote_dir, {"CASSTORE_TEST_CRASH_AT_IO": str(crash_at),
                                              "CASSTORE_UPLOAD_CONCURRENCY": "1"})
    assert killed.returncode == -9, killed.stderr
    remote = LocalRemote(str(remote_dir))
    journal = SyncState(str(repo_dir), remote.url).journal()
    before = {i.key.rsplit("/", 1)[1] for i in remote.list("data/")}
    assert set(journal) <= before
    assert len(journal) >= len(before) - 1, "packs the killed sync uploaded were not journaled"
    print(f"{len(journal)} journaled packs of {len(before)} present")
    # a journaled pack gone before the rerun (gc took it) is not adopted: its blobs are uploaded again
    lost = sorted(journal)[0] if len(journal) >= 2 else None
    if lost is not None:
        remote.delete(f"data/{lost[:2]}/{lost}")

    finished = _run_sync(repo_dir, remote_dir, {})
    assert finished.returncode == 0, finished.stderr
    new_packs = {i.key.rsplit("/", 1)[1] for i in remote.list("data/")} - before
    journaled_blobs = {e.id for pack_id, entries in journal.items() if pack_id != lost for e in entries}
    uploaded_again = _pack_blobs(remote, new_packs)
    assert not (uploaded_again & journaled_blobs), "a journaled blob was uploaded again"
    if lost is not None:
        assert {e.id for e in journal[lost]} <= uploaded_again, "a lost journaled pack was adopted"
    fresh = Repository.open_remote(remote, load_settings({"cache_dir": str(tmp_path / "fresh")}))
    assert fresh.check(read_data=True).ok
    assert fresh.restore("latest", str(tmp_path / "out")).ok
    assert tree_digest(tmp_path / "out") == tree_digest(source)
