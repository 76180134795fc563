"""gc under faults: it stops, deleting nothing, rather than trust a listing or object it could not
verify (design 5.6); SIGKILLed at any write or delete, it leaves every snapshot restorable."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casstore._testing import CRASH_AT as CRASH_ENV
from casstore.client import Repository
from casstore.errors import RemoteError
from casstore.format.config import RepoConfig
from casstore.format.layout import LEASE_KEY, pack_key
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.plan import list_plan_keys
from casstore.gc.retention import apply_retention
from casstore.gc.run import GcAborted, GcError, collect_garbage
from casstore.remotes.base import ObjectInfo
from casstore.remotes.local import LocalRemote
from casstore.remotes.wrappers import RemoteWrapper, RetryingRemote
from casstore.settings import load_settings
from tests.faults import FaultyRemote
from tests.gc_helpers import (
    GRACE,
    FakeClock,
    Writer,
    assert_restorable,
    gc,
    gc_to_completion,
    new_memory_remote,
    remote_repo,
)
from tests.helpers import KiB, MiB, run


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def remote(clock):
    return new_memory_remote(clock)


def _due_sweep_and_dead_packs(tmp_path, clock, remote) -> Writer:
    """A plan a grace period old and more dead packs: a gc run now would delete plenty."""
    writer = Writer(tmp_path / "a", "testhost", clock)
    for seed in range(3):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
        if seed == 1:
            repo = remote_repo(remote, tmp_path)
            apply_retention(repo, {"keep_last": 1})
            clock.advance(GRACE + 1)
            assert gc(repo, clock).plan
    apply_retention(remote_repo(remote, tmp_path), {"keep_last": 1})
    clock.advance(GRACE + 1)
    return writer


class BadListing(RemoteWrapper):
    """Listings of one prefix fail half-way (`cut`) or silently stop half-way (`truncate`)."""

    def __init__(self, inner, prefix: str, mode: str) -> None:
        super().__init__(inner)
        self.prefix, self.mode = prefix, mode

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        items = sorted(self.inner.list(prefix), key=lambda i: i.key)
        if prefix != self.prefix:
            yield from items
            return
        yield from items[: len(items) // 2]
        if self.mode == "cut":
            raise RemoteError("injected: connection reset while listing")


def _objects(remote) -> dict[str, str | None]:
    return {info.key: info.etag for info in remote.list("") if info.key != LEASE_KEY}


@pytest.mark.parametrize(("prefix", "mode"), [("gc/", "cut"), ("snapshots/", "cut"), ("index/", "cut"),
                                              ("data/", "cut"), ("data/", "truncate")])
def test_a_failed_or_short_listing_stops_gc_before_it_deletes(tmp_path, clock, remote, prefix, mode):
    writer = _due_sweep_and_dead_packs(tmp_path, clock, remote)
    before = _objects(remote)
    faulty = remote_repo(BadListing(remote, prefix, mode), tmp_path)
    with pytest.raises(GcAborted) as raised:
        gc(faulty, clock)
    print(raised.value)
    if mode == "truncate":
        assert "missing from the pack listing" in str(raised.value)
    assert _objects(remote) == before and not remote.exists(LEASE_KEY)
    reports = gc_to_completion(remote_repo(remote, tmp_path), clock)
    assert sum(r.packs_deleted for r in reports) > 0, "the same gc without the fault does delete"
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


def _corrupt(remote, key: str) -> None:
    body = bytearray(remote.get(key))
    body[len(body) // 2] ^= 0x01
    remote.put(key, bytes(body))


def test_an_unreadable_index_stops_gc(tmp_path, clock, remote):
    _due_sweep_and_dead_packs(tmp_path, clock, remote)
    _corrupt(remote, sorted(i.key for i in remote.list("index/"))[0])
    before = _objects(remote)
    with pytest.raises(GcAborted, match="index"):
        gc(remote_repo(remote, tmp_path / "fresh-cache"), clock)
    assert _objects(remote) == before


def test_an_unreadable_tree_stops_gc(tmp_path, clock, remote):
    _due_sweep_and_dead_packs(tmp_path, clock, remote)
    repo = remote_repo(remote, tmp_path / "fresh-cache")
    root = repo.manifest(repo.snapshot_ids()[0]).tree
    (location,) = repo.load_index().locations(KIND_TREE, root)
    _corrupt(remote, pack_key(location.pack_id))
    before = _objects(remote)
    with pytest.raises(GcAborted, match="tree"):
        gc(repo, clock)
    assert _objects(remote) == before


def test_an_indexed_pack_missing_from_the_listing_stops_gc(tmp_path, clock, remote):
    _due_sweep_and_dead_packs(tmp_path, clock, remote)
    repo = remote_repo(remote, tmp_path)
    repo.load_index()
    repo.load_plans()
    remote.delete(pack_key(min(repo.index.all_pack_ids() - repo.index.condemned)))
    before = _objects(remote)
    with pytest.raises(GcAborted, match="missing from the pack listing"):
        gc(repo, clock)
    assert _objects(remote) == before


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_gc_under_random_remote_faults_finishes_or_stops_cleanly(tmp_path, clock, remote, seed):
    print(f"fault seed {seed}")
    writer = _due_sweep_and_dead_packs(tmp_path, clock, remote)
    faulty = FaultyRemote(remote, seed=seed, failure_rate=0.08, cut_listing_rate=0.1)
    repo = remote_repo(RetryingRemote(faulty, attempts=3, sleep=lambda s: None), tmp_path)
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(gc(repo, clock).objects_deleted)
        except (GcError, RemoteError) as exc:
            outcomes.append(type(exc).__name__)
        clock.advance(3600 + 1)            # past any lease a failed run left behind
        assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")
    print(f"{faulty.injected} faults injected; runs: {outcomes}")
    gc_to_completion(remote_repo(remote, tmp_path), clock)
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


# -- SIGKILL at the nth write or delete -------------------------------------------------------

def _age(root: Path, seconds: float) -> None:
    """Move every object's storage time (a directory remote's mtime) `seconds` into the past."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def _directory_repo(path: Path, cache: Path, wrapper=None) -> Repository:
    remote = LocalRemote(str(path))
    settings = load_settings({"grace_seconds": GRACE, "cache_dir": str(cache)})
    return Repository.open_remote(wrapper(remote) if wrapper else remote, settings)


class CountMutations(RemoteWrapper):
    count = 0

    def _put(self, key, data, *, if_absent, if_match):
        CountMutations.count += 1
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _delete(self, key):
        CountMutations.count += 1
        super()._delete(key)


@pytest.fixture(scope="module")
def crash_template(tmp_path_factory) -> tuple[Path, dict]:
    """A directory remote where the next gc sweeps a due plan, then marks and repacks."""
    root = tmp_path_factory.mktemp("gc-crash")
    os.environ.setdefault("CASSTORE_HOST", "testhost")
    remote_dir = root / "remote"
    writer = Writer(root / "w", "testhost", FakeClock(), big_mib=0,
                    config=RepoConfig.new(avg_size=16 * KiB, pack_size=MiB, grace_seconds=GRACE))
    for seed in range(4):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(f"file://{remote_dir}")
    repo = _directory_repo(remote_dir, root / "cache")
    store = repo.blob_store()
    store.add(KIND_DATA, b"a pack from a sync that crashed before its index" * 500)
    store.wait_uploads()
    store.close()
    _age(remote_dir, 2 * GRACE)
    assert collect_garbage(repo).plan                       # condemns the orphan
    apply_retention(repo, {"keep_last": 1}, all_hosts=True)  # the first pack is now a third dead
    _age(remote_dir, 2 * GRACE)
    return remote_dir, writer.expected


def _mutations_of_one_run(template: Path, tmp_path: Path) -> int:
    copy = tmp_path / "count"
    shutil.copytree(template, copy)
    CountMutations.count = 0
    report = collect_garbage(_directory_repo(copy, tmp_path / "count-cache", CountMutations))
    assert report.packs_deleted and report.plan and report.packs_repacked, report.as_dict()
    return CountMutations.count


def test_sigkill_at_every_stage_of_gc_leaves_every_snapshot_restorable(crash_template, tmp_path):
    template, expected = crash_template
    total = _mutations_of_one_run(template, tmp_path)
    points = sorted({round(1 + i * (total - 1) / 15) for i in range(16)})
    print(f"one gc run makes {total} writes and deletes; killing it before each of {points}")
    started = time.monotonic()
    for n in points:
        copy = tmp_path / f"crash-{n}"
        shutil.copytree(template, copy)
        killed = run("gc", "--remote", f"file://{copy}", "--grace", "1h", expect=None, env={CRASH_ENV: str(n)})
        assert killed.returncode == -9, f"crash point {n}: {killed.stderr.decode()}"
        repo = _directory_repo(copy, tmp_path / f"cache-{n}")
        assert_restorable(repo, expected, tmp_path / "out")
        _finish_gc(copy, repo, n)
        assert_restorable(repo, expected, tmp_path / "out")
    print(f"{len(points)} kills in {time.monotonic() - started:.1f} s")


def _finish_gc(copy: Path, repo: Repository, n: int) -> None:
    """Later gc runs (the killed run's lease is stale: same host, dead process) finish the work."""
    for _ in range(6):
        _age(copy, 2 * GRACE)
        if collect_garbage(repo).idle:
            break
    else:
        raise AssertionError(f"crash point {n}: gc did not finish")
    assert not list_plan_keys(repo.remote) and not repo.remote.exists(LEASE_KEY)
