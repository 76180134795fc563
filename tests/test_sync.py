"""sync and pull (design section 8) against every remote backend."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from casstore.client import Repository
from casstore.errors import ConfigError, IncompatibleRepository
from casstore.format.pack import KIND_DATA
from casstore.remotes.wrappers import CountingRemote, RemoteWrapper
from casstore.settings import load_settings
from tests.remote_backends import REMOTE_BACKENDS
from tests.sync_helpers import day_of_edits, local_repo, make_source, tree_digest


@pytest.fixture(params=REMOTE_BACKENDS)
def any_remote(request):
    return request.getfixturevalue(request.param)


def test_sync_then_restore_on_a_fresh_machine(any_remote, tmp_path):
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    day_of_edits(source)
    second = repo.snapshot(str(source))
    report = repo.sync(any_remote)
    assert sorted(report.snapshots) == sorted([first.id, second.id])
    expected = tree_digest(source)
    shutil.rmtree(tmp_path / "repo")

    fresh = Repository.open_remote(any_remote, load_settings({"cache_dir": str(tmp_path / "fresh-cache")}))
    result = fresh.restore("latest", str(tmp_path / "restored"))
    assert result.ok
    assert tree_digest(tmp_path / "restored") == expected
    assert fresh.check(read_data=True).ok


@pytest.mark.parametrize("backend", ["memory_remote", "moto_remote"])   # ids name the server: `-k "not moto"`
def test_no_change_sync_costs_a_handful_of_requests(backend, request, tmp_path):
    remote = request.getfixturevalue(backend)
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    repo.sync(remote)
    counting = CountingRemote(remote)
    report = repo.sync(counting)
    assert report.snapshots == []
    assert counting.total() <= 5
    assert counting.bytes_up == 0


def test_incremental_sync_uploads_about_what_the_snapshot_added(moto_remote, tmp_path):
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    repo.sync(moto_remote)
    day_of_edits(source)
    added = repo.snapshot(str(source)).summary.bytes_added_stored
    report = repo.sync(moto_remote)
    assert report.bytes_uploaded > 0
    assert report.bytes_uploaded <= 1.5 * added + 4096  # pack headers and the index for tiny deltas


def test_two_hosts_store_shared_data_once(memory_remote, tmp_path):
    shared = make_source(tmp_path / "shared", seed=7, n_json=30, big_mib=4)
    a = local_repo(tmp_path / "repo-a", host="host-a")
    a.snapshot(str(shared))
    a.sync(memory_remote)
    stored_after_a = sum(i.size for i in memory_remote.list("data/"))

    adopted = Repository.open_remote(memory_remote, load_settings({})).config
    b_config = type(adopted)(**{**adopted.__dict__, "id": "b" * 32})
    b = local_repo(tmp_path / "repo-b", host="host-b", config=b_config)
    other = make_source(tmp_path / "other", seed=7, n_json=30, big_mib=4)
    (other / "host_b_only.json").write_text('{"only": "b"}' * 2000)  # ~10% of the JSON is b's own
    b.snapshot(str(other))
    report = b.sync(memory_remote)
    stored_after_b = sum(i.size for i in memory_remote.list("data/"))
    assert report.bytes_uploaded < 0.2 * stored_after_a
    assert stored_after_b < 1.2 * stored_after_a
    remote_repo = Repository.open_remote(memory_remote, load_settings({"cache_dir": str(tmp_path / "c")}))
    assert {s.manifest.host for s in remote_repo.snapshots(all_hosts=True)} == {"host-a", "host-b"}


def test_different_chunker_seed_refuses_to_sync(memory_remote, tmp_path):
    a = local_repo(tmp_path / "a")
    a.snapshot(str(make_source(tmp_path / "data")))
    a.sync(memory_remote)
    b = local_repo(tmp_path / "b")
    b.snapshot(str(tmp_path / "data"))
    url = re.escape(memory_remote.url)     # the one error line names the remote, twice
    with pytest.raises(IncompatibleRepository, match=f"^{url} uses different chunker.*init --from {url}`"):
        b.sync(memory_remote)
    with pytest.raises(IncompatibleRepository, match=f"^{url} uses different chunker.*init --from {url}`"):
        b.pull(memory_remote)
    with pytest.raises(ConfigError, match="no remote configured: set CASSTORE_REMOTE or CLOUD_PROVIDER"):
        b.sync()


def test_pull_into_a_new_local_repository(memory_remote, tmp_path):
    source = make_source(tmp_path / "data")
    a = local_repo(tmp_path / "a")
    snap = a.snapshot(str(source))
    a.sync(memory_remote)
    remote_config = Repository.open_remote(memory_remote, load_settings({})).config
    b = local_repo(tmp_path / "b", config=type(remote_config)(**{**remote_config.__dict__, "id": "c" * 32}))
    report = b.pull(memory_remote)
    assert report.snapshots == [snap.id]
    assert b.check(read_data=True).ok
    assert b.get("latest").read_json("ai_hub/collective_intelligence.json") == {"collective_iq": 101}
    # pulled snapshots are not sent back
    assert b.sync(memory_remote).snapshots == []


def test_remote_reads_fetch_only_needed_blobs_and_cache_them(memory_remote, tmp_path):
    source = make_source(tmp_path / "data", big_mib=4)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    repo.sync(memory_remote)
    counting = CountingRemote(memory_remote)
    remote_repo = Repository.open_remote(counting, load_settings({"cache_dir": str(tmp_path / "cache")}))
    data = remote_repo.get("latest").to_dict()
    assert data["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"] == 101
    assert counting.bytes_down < 200 * 1024  # the 4 MiB file was not fetched
    again = Repository.open_remote(counting, load_settings({"cache_dir": str(tmp_path / "cache")}))
    before = counting.counts["get"]
    again.get("latest").read_json("ai_hub/collective_intelligence.json")
    assert counting.counts["get"] - before <= 1  # config only: index, manifest and blobs come from the cache


def test_dry_run_uploads_nothing_and_reports_the_plan(memory_remote, tmp_path):
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(source))
    report = repo.sync(memory_remote, dry_run=True)
    assert report.snapshots == [snap.id]
    assert report.blobs_missing > 0 and report.bytes_missing >= snap.summary.bytes_total
    assert list(memory_remote.list("data/")) == [] and list(memory_remote.list("snapshots/")) == []
    assert report.monthly_cost_after["aws"]["usd_per_month"] >= 0


def test_blob_only_in_a_condemned_pack_is_uploaded_again(memory_remote, tmp_path):
    from casstore.format.layout import plan_key
    from casstore.format.plan import GcPlan

    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    repo.sync(memory_remote)
    condemned = [i.key.rsplit("/", 1)[1] for i in memory_remote.list("data/")]
    memory_remote.put(plan_key(), GcPlan(condemned_packs=condemned).encode())
    (source / "extra.json").write_text("{}")
    repo.snapshot(str(source))
    report = repo.sync(memory_remote)
    remote_repo = Repository.open_remote(memory_remote, load_settings({"cache_dir": str(tmp_path / "c")}))
    remote_repo.load_index()
    remote_repo.load_plans()
    # every blob of the new snapshot has a copy outside the condemned packs
    snap = remote_repo.get("latest")
    for info in snap.walk():
        if info.type == "file":
            for chunk in snap._file(info.path).chunks:
                assert remote_repo.index.has(KIND_DATA, chunk)
    assert report.blobs_missing > 0


def test_changing_provider_uploads_everything_the_new_remote_lacks(memory_remote, local_remote, tmp_path):
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    repo.sync(memory_remote)
    day_of_edits(source)
    second = repo.snapshot(str(source))
    repo.sync(memory_remote)
    report = repo.sync(local_remote)   # the user switched CLOUD_PROVIDER: the new remote gets everything
    assert sorted(report.snapshots) == sorted([first.id, second.id])
    fresh = Repository.open_remote(local_remote, load_settings({"cache_dir": str(tmp_path / "c")}))
    assert fresh.check(read_data=True).ok
    assert repo.sync(memory_remote).snapshots == [] and repo.sync(local_remote).snapshots == []


def test_init_from_a_remote_shares_its_chunker_so_hosts_dedup(tmp_path, monkeypatch):
    import subprocess
    import sys

    remote_dir = tmp_path / "bucket"
    shared = make_source(tmp_path / "shared", seed=3, big_mib=4)

    def casstore(*args, host):
        env = {**os.environ, "CASSTORE_HOST": host}
        result = subprocess.run([sys.executable, "-m", "casstore.cli.main", *map(str, args)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    casstore("--repo", tmp_path / "a", "snapshot", shared, host="a")
    casstore("--repo", tmp_path / "a", "sync", "--remote", f"file://{remote_dir}", host="a")
    after_a = sum(f.stat().st_size for f in (remote_dir / "data").rglob("*") if f.is_file())
    casstore("--repo", tmp_path / "b", "init", "--from", f"file://{remote_dir}", host="b")
    casstore("--repo", tmp_path / "b", "snapshot", shared, host="b")
    casstore("--repo", tmp_path / "b", "sync", "--remote", f"file://{remote_dir}", host="b")
    after_b = sum(f.stat().st_size for f in (remote_dir / "data").rglob("*") if f.is_file())
    assert after_b < after_a * 1.05   # b's identical data was not stored again (only b's own trees)
    listed = casstore("--repo", tmp_path / "b", "list", "--all-hosts", "--remote", f"file://{remote_dir}", "--json",
                      host="b")
    assert {s["host"] for s in json.loads(listed.stdout)} == {"a", "b"}


class _Bar:
    """A progress callback as the CLI's bar is: told the total first (set_total), then each step."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.steps: list[int] = []

    def set_total(self, total: int) -> None:
        self.total = total

    def __call__(self, step: int) -> None:
        self.steps.append(step)


def test_sync_and_pull_progress_announce_a_total_and_count_every_byte_of_it(memory_remote, tmp_path):
    """The progress callback (the CLI's bar) is told the total, the raw bytes of the missing blobs,
    then each blob's size as it goes: they add up to it. The report's stored size of those blobs
    is what the packs hold of them (the packs add their headers)."""
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    bar = _Bar()
    before = time.monotonic()
    report = repo.sync(memory_remote, progress=bar)
    assert 0 <= report.seconds <= time.monotonic() - before + 0.001, "the time the sync took, no more"
    assert report.bytes_missing > 0 and bar.total == sum(bar.steps) == report.bytes_missing
    assert 0.9 * report.bytes_uploaded < report.bytes_missing_stored <= report.bytes_uploaded
    remote_config = Repository.open_remote(memory_remote, load_settings({})).config
    other = local_repo(tmp_path / "other", config=type(remote_config)(**{**remote_config.__dict__, "id": "d" * 32}))
    pulled = _Bar()
    report = other.pull(memory_remote, progress=pulled)
    assert report.bytes_missing > 0 and pulled.total == sum(pulled.steps) == report.bytes_missing
    assert report.dry_run is False and report.snapshots, "a pull is never a dry run"
    assert 0 <= report.seconds <= time.monotonic() - before and report.requests > 0
    assert report.monthly_cost_after == {}, "a pull prices no remote storage"


def test_status_reports_the_last_sync_and_a_sync_with_nothing_to_send_reports_nothing_sent(tmp_path):
    from casstore.remotes.local import LocalRemote
    from casstore.service.status import sync_summary
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo", remote=str(tmp_path / "remote"))
    repo.snapshot(str(source))
    first = repo.sync()
    assert first.snapshots and first.monthly_cost_after == {}, "a directory has no cloud price"
    status = sync_summary(repo.settings, [], repo.all_snapshots())
    assert status["snapshots_unsynced"] == 0
    assert {k: status["last_success_detail"][k] for k in ("ok", "snapshots")} == {"ok": True, "snapshots": 1}
    assert status["last_success"] is not None
    remote = CountingRemote(LocalRemote(str(tmp_path / "remote"), create=False))
    again = repo.sync(remote)
    assert remote.counts["list"] == 0, "nothing to send: nothing is listed, only the config read"
    assert again.snapshots == []
    assert (again.blobs_missing, again.bytes_missing, again.bytes_missing_stored, again.requests_planned,
            again.packs_uploaded, again.bytes_uploaded, again.reuploaded_blobs, again.rechecks) == (0,) * 8


class _Stopped(Exception):
    pass


def _sync_stopped_at(repo, remote, point: str) -> None:
    """Sync, stopped (as by a crash) at the pause point named `point`."""
    from casstore import _testing as testhooks

    def stop(name: str) -> None:
        if name == point:
            raise _Stopped

    testhooks.set_pause_hook(stop)
    try:
        with pytest.raises(_Stopped):
            repo.sync(remote)
    finally:
        testhooks.set_pause_hook(None)


def test_a_dry_run_after_an_interrupted_sync_records_nothing(memory_remote, tmp_path):
    """Stopped right after its snapshot's put, a sync leaves that snapshot pending its post-commit
    check; a dry run then changes none of the repository's sync state (it records nothing), and the
    next real sync runs that check (lists data/ to confirm the snapshot's packs)."""
    from pathlib import Path

    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    _sync_stopped_at(repo, memory_remote, "after-snapshot-put")

    def state() -> dict:
        return {p.name: p.read_bytes() for p in sorted(Path(repo.local_dir, "state").rglob("*")) if p.is_file()}

    before = state()
    assert before and repo.sync(memory_remote, dry_run=True).dry_run
    assert state() == before
    listed: list[str] = []

    class Listed(RemoteWrapper):
        def _list(self, prefix: str):
            listed.append(prefix)
            return super()._list(prefix)

    assert repo.sync(Listed(memory_remote)).snapshots == []
    assert "data/" in listed, "the post-commit check that never ran: its packs confirmed"


def test_a_sync_stopped_after_its_uploads_sends_none_of_those_packs_again(memory_remote, tmp_path):
    """The journal: packs an interrupted sync uploaded are adopted by the next one, not sent again."""
    source = make_source(tmp_path / "data")
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(source))
    _sync_stopped_at(repo, memory_remote, "after-pack-upload")
    packs = {i.key for i in memory_remote.list("data/")}
    assert packs, "the case this test is about: packs uploaded, no index yet"
    report = repo.sync(memory_remote)
    assert report.snapshots == [snap.id] and report.packs_uploaded == 0
    assert {i.key for i in memory_remote.list("data/")} == packs


def test_pulling_latest_takes_the_newest_snapshot_of_every_host(memory_remote, tmp_path):
    """`pull --snapshot latest` reads every host's snapshots by default (a new machine restoring a
    bucket): another host's newer snapshot wins over this host's own; with a host named, that
    host's newest."""
    from dataclasses import replace

    source = make_source(tmp_path / "data")
    a = local_repo(tmp_path / "repo-a", host="host-a")
    oldest = a.snapshot(str(source))
    a.sync(memory_remote)
    adopted = Repository.open_remote(memory_remote, load_settings({})).config
    b = local_repo(tmp_path / "repo-b", host="host-b", config=replace(adopted, id="b" * 32))
    newest = b.snapshot(str(source))
    b.sync(memory_remote)
    again = local_repo(tmp_path / "repo-a2", host="host-a", config=replace(adopted, id="c" * 32))
    assert again.pull(memory_remote, snapshot="latest").snapshots == [newest.id]
    # `pull --host host-a --snapshot latest` (the CLI passes the host, all_hosts left at its default)
    third = local_repo(tmp_path / "repo-c", host="host-c", config=replace(adopted, id="e" * 32))
    assert third.pull(memory_remote, snapshot="latest", host="host-a").snapshots == [oldest.id]
    assert third.pull(memory_remote).snapshots == [newest.id], "then every host's, by default"


def test_sync_and_pull_send_snapshots_oldest_first(memory_remote, tmp_path):
    """Snapshots go out in the order they were taken (an interrupted sync leaves the older ones
    sent), whatever order their ids sort in."""
    from dataclasses import replace

    from tests.helpers import write_snapshot
    repo = local_repo(tmp_path / "repo")
    taken: list[str] = []
    while len(taken) < 3 or sorted(taken) == taken:     # ids in an order other than time's
        taken.append(write_snapshot(repo, lambda store: [], time_ns=(len(taken) + 1) * 10**18))
    assert repo.sync(memory_remote).snapshots == taken
    adopted = Repository.open_remote(memory_remote, load_settings({})).config
    other = local_repo(tmp_path / "other", config=replace(adopted, id="f" * 32))
    assert other.pull(memory_remote).snapshots == taken
