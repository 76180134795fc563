"""Issue 11, item 8: read-back of plans and config, failed file:// listings, pull re-listing the
index on a missing pack, the directory fsync after a local delete, a damaged sync record."""

from __future__ import annotations

import errno
import os

import pytest

from casstore.errors import IntegrityError, RemoteError
from casstore.format.config import RepoConfig
from casstore.format.layout import CLOCK_KEY, LEASE_KEY, pack_key
from casstore.format.plan import GcPlan, list_plan_keys
from casstore.fsio.durable import FileSystem
from casstore.gc.retention import apply_retention
from casstore.gc.run import GcAborted
from casstore.remotes.base import ObjectInfo
from casstore.remotes.local import LocalRemote
from casstore.remotes.wrappers import RemoteWrapper
from casstore.sync.state import StateError, SyncState
from tests.gc_helpers import GRACE, FakeClock, Writer, gc, new_memory_remote, remote_repo
from tests.sync_helpers import local_repo, tree_digest


@pytest.fixture
def clock():
    return FakeClock()


def _forgotten_and_old(tmp_path, clock):
    """A remote whose only snapshot was forgotten a grace period ago: the next gc writes a plan."""
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    apply_retention(repo, {"keep_tag": "none-has-it"}, all_hosts=True)
    clock.advance(GRACE + 1)
    return remote, repo


def test_a_plan_that_does_not_decode_to_itself_is_never_written(tmp_path, clock, monkeypatch):
    remote, repo = _forgotten_and_old(tmp_path, clock)
    real = GcPlan.encode
    monkeypatch.setattr(GcPlan, "encode", lambda self: real(GcPlan(self.condemned_packs[1:], [], self.host)))
    with pytest.raises(IntegrityError):
        gc(repo, clock)
    assert not list_plan_keys(remote)


def test_a_config_that_does_not_decode_to_itself_is_never_written(tmp_path, monkeypatch):
    from dataclasses import asdict

    import msgpack

    def lossy(self):
        doc = asdict(self)
        del doc["grace_seconds"]   # an encoder that drops a field: read back, it is the default
        return msgpack.packb(doc)

    monkeypatch.setattr(RepoConfig, "encode", lossy)
    with pytest.raises(IntegrityError):
        local_repo(tmp_path / "repo", config=RepoConfig.new(grace_seconds=GRACE))
    assert not (tmp_path / "repo" / "config").exists()


def test_a_file_listing_whose_directory_cannot_be_statted_is_an_error(tmp_path, monkeypatch):
    remote = LocalRemote(str(tmp_path / "nas"))
    remote.put("data/ab/" + "ab" * 32, b"pack")
    failing = str(tmp_path / "nas" / "data")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path) == failing:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(RemoteError, match="Stale"):
        list(remote.list("data/"))


def test_gc_on_a_nas_whose_pack_folder_fails_to_list_deletes_nothing(tmp_path, clock, monkeypatch):
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    url = f"file://{tmp_path / 'nas'}"
    writer.sync(url)
    from casstore.client import Repository
    from casstore.settings import load_settings

    repo = Repository.open_remote(LocalRemote(str(tmp_path / "nas")),
                                  load_settings({"cache_dir": str(tmp_path / "cache")}))
    failing = str(tmp_path / "nas" / "data")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
                        if str(p) == failing else real_stat(p, *a, **k))
    with pytest.raises(GcAborted):
        gc(repo, clock, exclusive=True)


def test_pull_relists_the_index_once_when_a_pack_went_missing(tmp_path, clock, monkeypatch):
    """gc on the remote repacks between the pull's index load and its copy: the copy finds the
    blob in its new pack instead of failing."""
    from casstore.sync import copier as copier_module
    from casstore.sync.transfer import pull_from_remote

    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    first = writer.snapshot()
    writer.edit(1)
    second = writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    apply_retention(repo, {"keep_tag": "none-has-it", "keep_last": 1}, all_hosts=True)
    assert repo.snapshot_ids() == [second] and first not in repo.snapshot_ids()
    reports = []
    real_upload = copier_module.Copier.upload

    def upload(self, blobs):
        if not reports:
            reports.append(gc(remote_repo(remote, tmp_path, host="gc-host"), clock, exclusive=True))
        return real_upload(self, blobs)

    monkeypatch.setattr(copier_module.Copier, "upload", upload)
    fresh = local_repo(tmp_path / "fresh", config=writer.repo.config, cache_dir=str(tmp_path / "fresh-cache"))
    pull_from_remote(fresh, remote, snapshot=second)
    assert reports[0].packs_repacked > 0 and reports[0].packs_deleted > 0
    out = tmp_path / "out"
    assert fresh.restore(second, str(out)).ok
    assert tree_digest(out) == writer.expected[second]


class Recording(FileSystem):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def unlink(self, path: str) -> None:
        self.calls.append(("unlink", path))
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self.calls.append(("fsync_dir", path))
        super().fsync_dir(path)


def test_a_local_delete_is_made_durable_by_a_directory_fsync(tmp_path):
    fs = Recording()
    remote = LocalRemote(str(tmp_path / "repo"), fs)
    key = "data/ab/" + "ab" * 32
    remote.put(key, b"pack")
    fs.calls.clear()
    remote.delete(key)
    path = str(tmp_path / "repo" / "data" / "ab" / ("ab" * 32))
    assert fs.calls == [("unlink", path), ("fsync_dir", os.path.dirname(path))]


def test_a_damaged_sync_record_is_an_error_not_nothing_synced(tmp_path):
    state = SyncState(str(tmp_path), "memory://x")
    state.synced = {"ab" * 32}
    state.save()
    with open(state._path, "r+b") as fh:
        fh.write(b"\xc1\xc1\xc1")   # bytes msgpack never produces
    with pytest.raises(StateError, match="damaged"):
        SyncState(str(tmp_path), "memory://x")


def test_a_listing_error_from_the_directory_walk_is_an_error(tmp_path, monkeypatch):
    remote = LocalRemote(str(tmp_path / "nas"))
    remote.put("index/" + "cd" * 32, b"index")
    real_stat = os.stat
    target = str(tmp_path / "nas" / "index" / ("cd" * 32))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
                        if str(p) == target else real_stat(p, *a, **k))
    with pytest.raises(RemoteError):
        list(remote.list("index/"))


class Backdated(RemoteWrapper):
    """A real store whose objects all look `seconds` older than they are, except the lease (whose
    timestamp is gc's "now"): grace periods pass without waiting for them."""

    def __init__(self, inner, seconds: float) -> None:
        super().__init__(inner)
        self.seconds = seconds

    def _aged(self, info: ObjectInfo) -> ObjectInfo:
        if info.key in (LEASE_KEY, CLOCK_KEY):
            return info
        return ObjectInfo(info.key, info.size, info.mtime - self.seconds, info.etag)

    def _stat(self, key):
        return self._aged(self.inner.stat(key))

    def _list(self, prefix):
        return (self._aged(info) for info in self.inner.list(prefix))


def test_a_sweep_of_n_packs_on_s3_makes_one_delete_request_per_1000(moto_remote, tmp_path):
    """Item 8: gc deletes through DeleteObjects, 1,000 keys a request (counted at the S3 API, on moto)."""
    from concurrent.futures import ThreadPoolExecutor

    from casstore.client import Repository
    from casstore.gc.run import collect_garbage
    from casstore.settings import load_settings

    n = 1500
    Repository.init_remote(moto_remote, load_settings({}), RepoConfig.new(grace_seconds=GRACE))
    with ThreadPoolExecutor(8) as pool:   # orphan packs: no index names them
        list(pool.map(lambda i: moto_remote.put(pack_key(f"{i:064x}"[::-1]), b"orphan"), range(n)))
    calls: list[str] = []
    moto_remote._client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    repo = remote_repo(Backdated(moto_remote, 3 * GRACE), tmp_path)
    marked = collect_garbage(repo)
    assert marked.packs_condemned == n and marked.plan
    calls.clear()
    swept = collect_garbage(repo)
    print(f"S3 requests of the sweep by operation: { {op: calls.count(op) for op in sorted(set(calls))} }")
    assert swept.packs_deleted == n and not list(moto_remote.list("data/"))
    # the packs in ceil(n / 1000) requests, the plan in one more; the lease's release is a DeleteObject
    assert calls.count("DeleteObjects") == -(-n // 1000) + 1
    assert calls.count("DeleteObject") == 1
