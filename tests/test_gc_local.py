"""gc on the local repository: exclusive lock, delete at once, in the sweep's order (design 9)."""

from __future__ import annotations

import pytest

from casstore.errors import LockError
from casstore.format.config import RepoConfig
from casstore.format.pack import KIND_DATA
from casstore.gc.retention import apply_retention
from casstore.gc.run import collect_garbage
from casstore.remotes.wrappers import RemoteWrapper
from casstore.repo.lock import repository_lock
from casstore.snapshot import builder
from tests.gc_helpers import FakeClock, Writer, assert_restorable, cli_json, stored_bytes
from tests.helpers import open_repo
from tests.sync_helpers import KiB


def _writer(tmp_path, n: int = 3, **config) -> Writer:
    writer = Writer(tmp_path / "w", "testhost", FakeClock(),
                    config=RepoConfig.new(**{"avg_size": 16 * KiB, "pack_size": 128 * KiB, **config}))
    for seed in range(n):
        writer.edit(seed)
        writer.snapshot()
    return writer


def _pack_keys(repo) -> set[str]:
    return {info.key for info in repo.remote.list("data/")}


def test_local_gc_deletes_what_no_snapshot_needs_at_once(tmp_path):
    writer = _writer(tmp_path)
    repo = writer.repo
    assert len(apply_retention(repo, {"keep_last": 1}).removed) == 2
    before = _pack_keys(repo)
    report = collect_garbage(repo)
    assert report.mode == "local" and report.plan is None and report.packs_deleted > 0
    assert report.bytes_deleted > 0 and report.objects_deleted >= report.packs_deleted
    assert len(_pack_keys(repo)) < len(before) and not list(repo.remote.list("gc/"))
    assert len(list(repo.remote.list("index/"))) == 1
    assert_restorable(repo, writer.expected, tmp_path / "out")
    again = collect_garbage(repo)
    assert again.objects_deleted == 0 and again.idle


class Recording(RemoteWrapper):
    calls: list[tuple[str, str]] = []

    def _put(self, key, data, *, if_absent, if_match):
        Recording.calls.append(("put", key))
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _delete(self, key):
        Recording.calls.append(("delete", key))
        super()._delete(key)


def test_local_gc_writes_the_new_index_then_deletes_old_indexes_then_packs(tmp_path):
    writer = _writer(tmp_path)
    apply_retention(writer.repo, {"keep_last": 1})
    Recording.calls = []
    collect_garbage(open_repo(writer.repo.local_dir, Recording))
    kinds = [(op, key.split("/", 1)[0]) for op, key in Recording.calls]
    new_index = kinds.index(("put", "index"))
    index_deletes = [i for i, k in enumerate(kinds) if k == ("delete", "index")]
    pack_deletes = [i for i, k in enumerate(kinds) if k == ("delete", "data")]
    pack_puts = [i for i, k in enumerate(kinds) if k == ("put", "data")]
    assert index_deletes and pack_deletes
    assert all(i < new_index for i in pack_puts), "repacked packs before the index that lists them"
    assert new_index < min(index_deletes) and max(index_deletes) < min(pack_deletes)


def test_local_gc_repacks_mostly_dead_packs(tmp_path):
    writer = _writer(tmp_path, pack_size=4 * 1024 * KiB)   # one big pack holds every version
    apply_retention(writer.repo, {"keep_last": 1})
    size_before = stored_bytes(writer.repo.remote)
    report = collect_garbage(writer.repo)
    assert report.packs_repacked > 0 and report.packs_written > 0
    assert stored_bytes(writer.repo.remote) < size_before
    assert_restorable(writer.repo, writer.expected, tmp_path / "out")


def test_size_after_forgetting_all_but_the_newest_is_near_a_fresh_repository(tmp_path):
    writer = _writer(tmp_path, n=5)
    apply_retention(writer.repo, {"keep_last": 1})
    collect_garbage(writer.repo)
    fresh = Writer(tmp_path / "fresh", "testhost", FakeClock(), config=writer.repo.config)
    fresh.source = writer.source
    fresh.snapshot()
    size, fresh_size = stored_bytes(writer.repo.remote), stored_bytes(fresh.repo.remote)
    print(f"after gc {size} bytes, fresh repository {fresh_size} bytes ({size / fresh_size:.3f}x)")
    assert size <= 1.2 * fresh_size


def test_files_cache_never_skips_a_chunk_gc_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "RACY_WINDOW_NS", 0)     # trust the files cache at once
    writer = _writer(tmp_path, n=1)
    repo = writer.repo
    control = repo.snapshot(str(writer.source))
    assert control.summary.bytes_read == 0, "unchanged files come from the files cache"
    writer.expected[control.id] = next(iter(writer.expected.values()))
    apply_retention(repo, {"keep_tag": "nothing"})
    assert collect_garbage(repo).packs_deleted > 0 and not _pack_keys(repo)
    writer.snapshot()
    latest = repo.get("latest")
    assert latest.summary["bytes_read"] == latest.summary["bytes_total"] > 0, "every file read again"
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_orphan_packs_of_a_crashed_snapshot_go_at_once(tmp_path):
    writer = _writer(tmp_path, n=1)
    store = writer.repo.blob_store()
    store.add(KIND_DATA, b"a snapshot that crashed before its index" * 1000)
    store.wait_uploads()
    store.close()
    assert collect_garbage(writer.repo).packs_deleted == 1
    assert_restorable(writer.repo, writer.expected, tmp_path / "out")


def test_local_gc_refuses_while_another_operation_holds_the_lock(tmp_path):
    writer = _writer(tmp_path, n=1)
    with repository_lock(writer.repo.local_dir), pytest.raises(LockError):
        collect_garbage(writer.repo)


def test_dry_run_deletes_nothing(tmp_path):
    writer = _writer(tmp_path)
    apply_retention(writer.repo, {"keep_last": 1})
    before = {info.key for info in writer.repo.remote.list("")}
    report = collect_garbage(writer.repo, dry_run=True)
    assert report.would_free > 0 and report.objects_deleted == 0
    assert {info.key for info in writer.repo.remote.list("")} == before


def test_cli_forget_with_prune_and_gc(tmp_path):
    writer = _writer(tmp_path)
    repo_dir = writer.repo.local_dir
    plan = cli_json("forget", "--repo", repo_dir, "--keep-last", "1", "--dry-run", "--json")
    assert len(plan["groups"][0]["remove"]) == 2 and not plan["removed"]
    done = cli_json("forget", "--repo", repo_dir, "--keep-last", "1", "--prune", "--json")
    assert len(done["removed"]) == 2 and done["gc"]["packs_deleted"] > 0
    assert cli_json("gc", "--repo", repo_dir, "--json")["objects_deleted"] == 0
    assert_restorable(writer.repo, writer.expected, tmp_path / "out")
