"""gc racing writers (design 9): one test per dangerous interleaving, then a multi-process soak.

The interleavings run in one process, deterministically: a writer's pause point
(casstore.sync.copier.pause_point) or gc's (casstore.gc.sweep.pause_point) is replaced by a callback
that runs gc, or another writer, at exactly that moment, on a MemoryRemote whose storage clock
the test moves (a grace period of an hour passes in a microsecond). The soak test at the end runs
real processes against an S3 server (moto), stopping writers with SIGSTOP past the grace period.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from casstore.format.layout import LEASE_KEY
from casstore.format.plan import condemned_packs, list_plan_keys, load_plans
from casstore.gc import sweep as sweep_module
from casstore.gc.retention import apply_retention
from casstore.gc.run import GcAborted, LeaseHeld, LeaseLost
from casstore.sync import copier as sync_module
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
from tests.gc_soak import (
    Pauser,
    kill_all,
    release_until_exit,
    remote_config,
    soak_env,
    spawn,
    start_writer,
    verify_soak,
)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def remote(clock):
    return new_memory_remote(clock)


def _at(monkeypatch, module, point: str, action, times: tuple[int, ...] = (1,)) -> list[str]:
    """Run `action` when `module.pause_point(point)` is reached for the nth time (n in `times`).

    A writer's snapshot write is also checked at once (pause point "after-snapshot-put"): every
    blob the committed snapshot needs must be stored and indexed right then, not repaired later.
    """
    seen: list[str] = []

    def pause_point(name: str) -> None:
        seen.append(name)
        if name == point and seen.count(point) in times:
            action()
        if name == "after-snapshot-put" and module is sync_module:
            _assert_committed_snapshots_complete()

    monkeypatch.setattr(module, "pause_point", pause_point)
    return seen


_REMOTES: list = []


def _assert_committed_snapshots_complete() -> None:
    for remote, root in _REMOTES:
        report = remote_repo(remote, root, host="checker").check()
        assert report.ok, f"a snapshot was committed with blobs missing: {report.as_dict()}"


@pytest.fixture(autouse=True)
def _checked_remote(remote, tmp_path):
    _REMOTES.append((remote, tmp_path))
    yield
    _REMOTES.clear()


def _old_data_dead_on_remote(tmp_path, clock, remote) -> tuple[Writer, object]:
    """A writer synced snapshot 1, which the remote then forgot; its packs are older than the grace
    period and dead. The writer's next snapshot has the same data, so it can rely on those packs."""
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    assert apply_retention(repo, {"keep_tag": "none-has-it"}, all_hosts=True).removed
    clock.advance(GRACE + 60)
    writer.snapshot()
    return writer, repo


def _writer_snapshots(remote_repo_, writer: Writer) -> dict[str, dict]:
    return {i: writer.expected[i] for i in remote_repo_.snapshot_ids()}


# -- writer paused after its re-check ---------------------------------------------------------

@pytest.mark.parametrize("gc_runs", ["mark", "mark-and-sweep"])
def test_writer_paused_after_recheck_while_gc_marks_and_sweeps(tmp_path, clock, remote, monkeypatch, gc_runs):
    writer, repo = _old_data_dead_on_remote(tmp_path, clock, remote)
    done = []

    def gc_while_paused():
        done.append(gc(repo, clock))                  # condemns the packs the writer relies on
        if gc_runs == "mark-and-sweep":
            clock.advance(GRACE + 1)                  # the writer stays paused past the grace period
            done.append(gc(repo, clock))              # ... and the sweep deletes them

    _at(monkeypatch, sync_module, "after-recheck", gc_while_paused)
    report = writer.sync(remote)
    assert done[0].packs_condemned > 0
    if gc_runs == "mark-and-sweep":
        assert done[1].packs_deleted > 0
        assert report.reuploaded_blobs > 0, "the writer must upload again what gc deleted under it"
    else:
        # committed on time after its re-check: the plan's sweep, a grace period on, lists the
        # snapshot and keeps the condemned packs it needs, so the writer need not upload them again
        assert report.reuploaded_blobs == 0
        assert gc_to_completion(repo, clock)[0].packs_kept > 0
    gc_to_completion(repo, clock)
    assert_restorable(repo, writer.expected, tmp_path / "out")


# -- writer paused after uploading a pack no index lists yet ---------------------------------

def test_writer_paused_after_pack_upload_past_grace_while_gc_marks_and_sweeps(tmp_path, clock, remote,
                                                                             monkeypatch):
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    swept = []

    def gc_while_paused():
        repo = remote_repo(remote, tmp_path)
        clock.advance(GRACE + 1)            # the uploaded packs are orphans older than the grace period
        assert gc(repo, clock).packs_condemned > 0
        clock.advance(GRACE + 1)
        swept.append(gc(repo, clock))       # ... and are deleted before the writer indexes them

    _at(monkeypatch, sync_module, "after-pack-upload", gc_while_paused)
    report = writer.sync(remote)
    assert swept[0].packs_deleted > 0
    assert report.reuploaded_blobs > 0
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


def test_writer_paused_before_its_index_lands_past_two_grace_periods_withdraws_it(tmp_path, clock, remote,
                                                                                 monkeypatch):
    """The pause falls after the writer confirmed its packs and before its index lands: gc condemns
    and sweeps the (orphan) packs meanwhile. The late index names deleted packs; the writer retracts
    it, uploads the blobs again, and gc neither trusts nor keeps the retracted index."""
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    swept = []

    def gc_while_paused():
        repo = remote_repo(remote, tmp_path)
        clock.advance(GRACE + 1)
        assert gc(repo, clock).packs_condemned > 0
        clock.advance(GRACE + 1)
        swept.append(gc(repo, clock))

    _at(monkeypatch, sync_module, "before-index-put", gc_while_paused)
    report = writer.sync(remote)
    assert swept[0].packs_deleted > 0
    assert report.reuploaded_blobs > 0
    repo = remote_repo(remote, tmp_path)
    assert repo.check().ok, "the retracted index must not make the repository look damaged"
    assert_restorable(repo, writer.expected, tmp_path / "out")
    runs = gc_to_completion(repo, clock)     # gc does not abort on the withdrawn index, and deletes it
    assert sum(r.indexes_deleted for r in runs) >= 1
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out2")


def test_writer_paused_after_pack_upload_within_grace_keeps_its_packs(tmp_path, clock, remote, monkeypatch):
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    reports = []
    _at(monkeypatch, sync_module, "after-pack-upload",
        lambda: reports.append(gc(remote_repo(remote, tmp_path), clock)))
    report = writer.sync(remote)
    assert reports[0].packs_condemned == 0, "young orphans are not condemned"
    assert report.reuploaded_blobs == 0
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


# -- a writer that needs a blob from a condemned pack ----------------------------------------

def test_writer_needing_a_blob_from_a_condemned_pack_uploads_it_again(tmp_path, clock, remote):
    writer, repo = _old_data_dead_on_remote(tmp_path, clock, remote)
    mark = gc(repo, clock)
    assert mark.packs_condemned > 0 and mark.plan
    before = {i.key for i in remote.list("data/")}
    report = writer.sync(remote)
    assert report.blobs_missing > 0 and report.packs_uploaded > 0, "condemned copies do not count"
    assert {i.key for i in remote.list("data/")} - before
    clock.advance(GRACE + 1)
    sweep = gc(repo, clock)
    assert sweep.packs_deleted == mark.packs_condemned, "the fresh copies let every condemned pack go"
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_plan_appearing_during_upload_makes_the_writer_recheck_and_reupload(tmp_path, clock, remote, monkeypatch):
    writer, repo = _old_data_dead_on_remote(tmp_path, clock, remote)
    writer.edit(5)
    writer.snapshot()   # new data to upload, old data to rely on
    marks = []
    _at(monkeypatch, sync_module, "after-pack-upload", lambda: marks.append(gc(repo, clock)))
    report = writer.sync(remote)
    assert marks[0].packs_condemned > 0
    assert report.rechecks >= 2 and report.reuploaded_blobs > 0
    gc_to_completion(repo, clock)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_snapshot_committed_before_the_sweep_keeps_its_condemned_packs(tmp_path, clock, remote, monkeypatch):
    """The writer commits relying on packs a plan condemns right after its re-check; it does not
    re-upload (it was not late and saw no change before the commit), so the sweep must keep them."""
    writer, repo = _old_data_dead_on_remote(tmp_path, clock, remote)
    monkeypatch.setattr(sync_module.Copier, "post_commit", lambda self, t, blobs: None)  # no repair
    marks = []
    _at(monkeypatch, sync_module, "after-recheck", lambda: marks.append(gc(repo, clock)))
    writer.sync(remote)
    assert marks[0].packs_condemned > 0
    clock.advance(GRACE + 1)
    sweep = gc(repo, clock)
    assert sweep.packs_kept > 0 and sweep.packs_deleted == 0
    assert_restorable(repo, writer.expected, tmp_path / "out")


# -- two gc runs at once ----------------------------------------------------------------------

def _due_plan(tmp_path, clock, remote):
    """Two snapshots synced, the older forgotten, a plan condemning its data a grace period old."""
    writer = Writer(tmp_path / "a", "host-a", clock)
    for seed in (1, 2):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    assert apply_retention(repo, {"keep_last": 1}, all_hosts=True).removed
    clock.advance(GRACE + 1)
    assert gc(repo, clock).plan
    clock.advance(GRACE + 1)
    return writer, repo


def test_two_gc_runs_at_once_the_second_is_refused(tmp_path, clock, remote, monkeypatch):
    writer, repo = _due_plan(tmp_path, clock, remote)
    second = remote_repo(remote, tmp_path, host="host-b")
    refused = []

    def second_gc():
        with pytest.raises(LeaseHeld):
            gc(second, clock)
        refused.append(True)

    _at(monkeypatch, sweep_module, "sweep-after-list", second_gc)
    first = gc(repo, clock)
    assert refused and first.packs_deleted > 0
    assert not remote.exists(LEASE_KEY)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_sweep_paused_past_its_lease_stops_and_the_taker_finishes(tmp_path, clock, remote, monkeypatch):
    """A sweep paused after its listing loses the lease to another gc (which sweeps and consolidates
    the indexes); resumed, it fails to renew and deletes nothing."""
    writer, repo = _due_plan(tmp_path, clock, remote)
    taker = remote_repo(remote, tmp_path, host="host-b")
    taken = []

    def lease_expires_and_another_gc_sweeps():
        monkeypatch.setattr(sweep_module, "pause_point", lambda name: None)
        clock.advance(3600)                  # far past the lease's expiry
        taken.append(gc(taker, clock))
        taken.append({i.key for i in remote.list("")})

    _at(monkeypatch, sweep_module, "sweep-after-list", lease_expires_and_another_gc_sweeps)
    with pytest.raises(LeaseLost):
        gc(repo, clock)
    assert taken[0].packs_deleted > 0 and taken[0].indexes_deleted > 0
    assert {i.key for i in remote.list("")} == taken[1], "the resumed gc wrote or deleted something"
    assert_restorable(repo, writer.expected, tmp_path / "out")


# -- a sweep racing an index consolidation ----------------------------------------------------

def test_index_written_during_the_sweep_survives_the_consolidation(tmp_path, clock, remote, monkeypatch):
    writer, repo = _due_plan(tmp_path, clock, remote)
    other = Writer(tmp_path / "b", "host-b", clock, seed=9, config=writer.repo.config)
    other.snapshot()
    written: set[str] = set()

    def other_writer_syncs():
        before = _index_keys(remote)
        assert other.sync(remote).snapshots
        written.update(_index_keys(remote) - before)

    _at(monkeypatch, sweep_module, "sweep-after-list", other_writer_syncs)
    sweep = gc(repo, clock)
    assert written and sweep.indexes_deleted > 0
    assert written <= _index_keys(remote), "an index written after the sweep listed must not be deleted"
    assert_restorable(repo, {**writer.expected, **other.expected}, tmp_path / "out")


def _index_keys(remote) -> set[str]:
    return {info.key for info in remote.list("index/")}


def test_post_commit_confirmation_racing_a_sweep(tmp_path, clock, remote, monkeypatch):
    """The writer stays paused after its re-check, so it re-checks again before the commit; the plan
    appears right after that second re-check, the writer stays paused past the grace period, and a
    sweep lists just before the snapshot write and deletes while the writer's post-commit check
    runs (between its index and plan listings). The check must still find the lost packs."""
    writer, repo = _old_data_dead_on_remote(tmp_path, clock, remote)
    listed, resume = threading.Event(), threading.Event()
    sweeps, condemned = [], set()

    def sweeper():
        def pause(name):
            if name == "sweep-after-list":
                listed.set()
                resume.wait(10)
        monkeypatch.setattr(sweep_module, "pause_point", pause)
        try:
            sweeps.append(gc(repo, clock))
        except GcAborted as exc:    # its mark, right after the sweep, may see the snapshot before the repair
            sweeps.append(exc)

    thread = threading.Thread(target=sweeper)

    def after_recheck(name):
        if name != "after-recheck":
            return
        if not listed.is_set() and clock.now < writer_started + GRACE / 2:
            clock.advance(GRACE / 2 + 1)        # paused: commit() will re-check once more
            return
        if not thread.is_alive() and not sweeps:
            assert gc(repo, clock).packs_condemned > 0   # the plan appears right after that re-check
            condemned.update(condemned_packs(load_plans(remote)))
            clock.advance(GRACE + 1)            # ... and the writer stays paused past the grace period
            thread.start()
            assert listed.wait(10)              # the sweep has listed: the snapshot is not in it

    monkeypatch.setattr(sync_module, "pause_point", after_recheck)
    _sweep_between_index_and_plan_listings(monkeypatch, resume, thread)
    writer_started = clock.now
    writer.sync(remote)
    thread.join(10)
    assert sweeps and not list_plan_keys(remote), "the sweep finished"
    assert condemned and not condemned & {i.key.rsplit("/", 1)[1] for i in remote.list("data/")}
    assert_restorable(repo, writer.expected, tmp_path / "out")


def _sweep_between_index_and_plan_listings(monkeypatch, resume: threading.Event, thread: threading.Thread) -> None:
    """The first time the writer reloads the remote while the sweep waits, let the sweep delete
    right after the writer listed the indexes and before it lists the plans."""
    original = sync_module.Copier.load_destination

    def load_destination(self):
        if not (thread.is_alive() and not resume.is_set()):
            return original(self)
        self.dst.load_index()
        resume.set()
        thread.join(10)
        self.known_plans = self.dst.load_plans()
        self.relied_indexes = set(self.dst.index.index_packs)

    monkeypatch.setattr(sync_module.Copier, "load_destination", load_destination)


# -- many hosts syncing into one S3 bucket while gc runs, some writers stopped past the grace ---
# (orchestration in tests/gc_soak.py, the processes in tests/gc_soak_driver.py)

@pytest.mark.timeout(600)   # a soak: minutes by design (the suite default is 120 s)
def test_soak_writers_and_gc_on_seaweedfs_with_sigstop_across_sweeps(seaweed_server, tmp_path):
    """Three writer processes and gc every 1-3 s on SeaweedFS (S3) with a repository grace of 20 s;
    writers held stopped more than two grace periods (at pause points, and by SIGSTOP at a random
    moment) across marks and sweeps. Bounded to 80 s of soak; every process ends with the test."""
    seed = int(os.environ.get("CASSTORE_SOAK_SEED") or random.randrange(1 << 30))
    print(f"soak seed {seed} (rerun with CASSTORE_SOAK_SEED={seed})")
    rng = random.Random(seed)
    server = seaweed_server
    url = f"s3://{server.new_bucket()}/casstore"
    config = remote_config(server, url)
    stop = tmp_path / "stop"
    procs: list = []
    try:
        writers = []
        for i in range(3):
            writers.append(start_writer(server, url, config, tmp_path / f"host{i}", i, seed + i, stop))
            procs.append(writers[-1][0])
        gc_log = tmp_path / "gc.log"
        procs.append(spawn(["gc", url, str(seed), str(gc_log), str(stop)], soak_env(server, url, tmp_path / "gc")))
        pauses = Pauser(rng, writers).run()
        stop.touch()
        release_until_exit(procs)
    finally:
        kill_all(procs)
    verify_soak(server, url, tmp_path, [w[1] for w in writers], gc_log, pauses)
