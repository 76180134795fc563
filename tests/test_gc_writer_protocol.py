"""Issue 11's single items: the repository's grace, no snapshot straight into a remote, checkpoints
that protect the whole session, the requests of an unchanged daily sync, file:// compare-and-swap."""

from __future__ import annotations

import threading

import pytest

from casstore import _testing as testhooks
from casstore.errors import ConfigError, ObjectExists
from casstore.format.config import DEFAULT_GRACE_SECONDS, RepoConfig
from casstore.gc.run import GraceTooShort
from casstore.remotes.local import LocalRemote
from casstore.remotes.wrappers import CountingRemote, RemoteWrapper
from tests.gc_helpers import GRACE, FakeClock, Writer, assert_restorable, gc, new_memory_remote, remote_repo


@pytest.fixture
def clock():
    return FakeClock()


def test_grace_is_the_repositorys_and_a_shorter_one_is_refused(tmp_path, clock):
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    assert repo.config.grace_seconds == GRACE          # copied from the writer's config at the first sync
    with pytest.raises(GraceTooShort):
        gc(repo, clock, grace=60)
    short_host = repo.settings.with_overrides(grace_seconds=60.0)   # CASSTORE_GRACE=60s on the gc host
    repo.settings = short_host
    clock.advance(600)   # ten minutes: far inside the repository's grace, past the host's setting
    assert gc(repo, clock).packs_condemned == 0
    assert gc(repo, clock, exclusive=True).mode == "exclusive"   # the user's word that no writer runs


def test_a_config_without_a_grace_period_reads_as_the_default():
    import msgpack

    doc = msgpack.unpackb(RepoConfig.new().encode())
    del doc["grace_seconds"]
    assert RepoConfig.decode(msgpack.packb(doc)).grace_seconds == DEFAULT_GRACE_SECONDS


def test_snapshot_on_a_remote_repository_is_refused(tmp_path, clock):
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    with pytest.raises(ConfigError, match="casstore sync"):
        remote_repo(remote, tmp_path).snapshot(str(writer.source))
    assert len(list(remote.list("snapshots/"))) == 1


def test_checkpoints_protect_every_pack_of_a_long_session(tmp_path, clock):
    """An upload lasting over two grace periods, gc marking at every checkpoint: nothing of the live
    session is condemned and nothing is uploaded twice (before, early packs were condemned)."""
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=2)
    writer.snapshot()
    reports = []

    def ticking() -> float:   # every reading of the writer's boot clock is a slow upload step
        clock.advance(GRACE / 40)
        return clock.now

    def hook(name: str) -> None:
        if name == "before-index-put" and threading.current_thread() is threading.main_thread():
            reports.append(gc(remote_repo(remote, tmp_path), clock))

    testhooks.set_pause_hook(hook)
    try:
        from casstore.sync.transfer import sync_to_remote

        report = sync_to_remote(writer.repo, remote, clock=ticking)
    finally:
        testhooks.set_pause_hook(None)
    assert len(reports) >= 4, "the upload must span several checkpoints"
    assert sum(r.packs_condemned for r in reports) == 0
    assert report.reuploaded_blobs == 0


def test_daily_sync_of_an_unchanged_folder_makes_five_requests_and_lists_no_data(tmp_path, clock):
    """get config, list index/ gc/ snapshots/, put the snapshot: nothing else, whatever the size."""
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    writer.sync(remote)
    for i in range(10_000):   # a large repository: a listing of data/ would show
        remote.put(f"data/{i % 256:02x}/{i:064x}", b"p")
    counting, listed = _recording_lists(remote)
    clock.advance(86400)
    writer.snapshot()   # the same folder the next day: a new manifest, no new blob
    report = writer.sync(counting)
    assert len(report.snapshots) == 1 and report.packs_uploaded == 0
    assert "data/" not in listed
    print(f"requests by kind: {counting.counts}, listings: {listed}")
    assert counting.counts["put"] == 1
    assert counting.total() <= 5, counting.counts


def _swap(remote: LocalRemote, barrier: threading.Barrier, etag: str, n: int, wins: list[int]) -> None:
    barrier.wait()
    try:
        remote.put("gc/lease", f"taker {n}".encode(), if_match=etag)
        wins.append(n)
    except ObjectExists:
        pass


def test_file_remote_compare_and_swap_has_one_winner(tmp_path):
    remote = LocalRemote(str(tmp_path / "nas"))
    for round_ in range(20):
        etag = remote.put("gc/lease", f"round {round_}".encode()).etag
        barrier, wins = threading.Barrier(4), []
        threads = [threading.Thread(target=_swap, args=(remote, barrier, etag, n, wins)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, f"round {round_}: {len(wins)} threads won the same compare-and-swap"


def test_blob_reads_hold_the_shared_lock_python_api_and_http_alike(tmp_path):
    """A local gc (exclusive, not waiting) is refused while a read is inside a blob read (design 5.8)."""
    from casstore.errors import LockError
    from casstore.read.reader import Snapshot
    from casstore.repo.lock import repository_lock

    writer = Writer(tmp_path / "a", "host-a", FakeClock(), big_mib=0)
    snapshot_id = writer.snapshot()
    repo = writer.repo
    store = repo.read_blob_ready()
    refused: list[bool] = []
    original = store.read

    def read(kind, blob_id):
        try:
            with repository_lock(repo.local_dir, exclusive=True, wait=False):
                refused.append(False)
        except LockError:
            refused.append(True)
        return original(kind, blob_id)

    store.read = read
    Snapshot(repo, repo.resolve(snapshot_id)).read_json("ai_hub/collective_intelligence.json")
    assert refused and all(refused)


def test_a_killed_soak_run_leaves_no_stopped_process(tmp_path):
    """The soak's processes die with the test process, even while they are SIGSTOPped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from casstore.client import Repository
    from casstore.settings import load_settings
    from tests.servers import PROJECT_ROOT

    Repository.init_remote(LocalRemote(str(tmp_path / "nas")), load_settings({}), RepoConfig.new())
    script = ("import subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-m', 'tests.gc_soak_driver', 'gc', 'file://{tmp_path}/nas', "
              f"'1', '{tmp_path}/gc.log', '{tmp_path}/stop'])\n"
              "print(p.pid, flush=True)\ntime.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "CASSTORE_CACHE_DIR": str(tmp_path / "cache")}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, cwd=PROJECT_ROOT)
    child = int(parent.stdout.readline())
    while not (tmp_path / "gc.log").exists():   # the driver is running its loop
        time.sleep(0.05)
    os.kill(child, signal.SIGSTOP)
    parent.kill()
    parent.wait()
    for _ in range(200):
        try:
            with open(f"/proc/{child}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError(f"the soak driver {child} outlived its parent (state {state})")


class PackThief(RemoteWrapper):
    """Each index lands late (half a grace period after it was sent, as after a suspension), and as
    it lands one pack of the session is gone: gc swept it meanwhile."""

    def __init__(self, inner, clock: FakeClock) -> None:
        super().__init__(inner)
        self.clock, self.packs, self.indexes = clock, [], 0

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None, cold: bool):
        if key.startswith("data/"):
            self.packs.append(key)
        if not key.startswith("index/"):
            return super()._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
        self.clock.advance(GRACE / 2)
        self.indexes += 1
        if self.packs:
            self.inner.delete(self.packs.pop(0))
        return super()._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=cold)


def test_a_writer_whose_freshly_indexed_packs_keep_vanishing_gives_up_loudly(tmp_path, clock):
    """`Copier._check_index_landed` withdraws a late index whose packs are gone and writes one
    without them; when that keeps happening MAX_RECHECKS times it stops the sync ("keeps changing")
    rather than return quietly with an index naming a deleted pack for the snapshot to rely on."""
    from casstore.errors import CasstoreError
    from casstore.sync.copier import MAX_RECHECKS

    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=1)
    writer.snapshot()
    thief = PackThief(remote, clock)
    with pytest.raises(CasstoreError, match="keeps changing") as raised:
        writer.sync(thief)
    assert any(entry.name == "_check_index_landed" for entry in raised.traceback), "it gave up elsewhere"
    assert thief.indexes == MAX_RECHECKS + 1   # the late index, then one withdrawal a round
    assert len(thief.packs) > 0, "the session must have had packs left to lose"
    assert not list(remote.list("snapshots/"))


def test_indexes_that_withdraw_late_ones_are_the_writers_own_so_gc_protects_their_packs(tmp_path, clock):
    """Two late indexes in a row lose a pack each: the writer withdraws the first, then the second
    (the withdrawal's own index), uploads what was lost and commits. Every index it wrote names it
    as a writer (origin kind "writer" or "checkpoint"), the kinds gc treats as protecting a live
    session's packs (gc/listing.py PROTECTING_ORIGINS); the snapshot restores."""
    from casstore.format import layout
    from casstore.format.index import decode_index

    class TwoThefts(PackThief):
        def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None, cold: bool):
            if key.startswith("index/") and self.indexes >= 2:
                return RemoteWrapper._put_hinted(self, key, data, if_absent=if_absent, if_match=if_match, cold=cold)
            return super()._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=cold)

    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=1)
    writer.snapshot()
    thief = TwoThefts(remote, clock)
    writer.sync(thief)
    assert thief.indexes == 2 and len(list(remote.list("snapshots/"))) == 1
    repo = remote_repo(remote, tmp_path)
    kinds = [decode_index(layout.name_of(i.key), remote.get(i.key), repo.config.max_blob_size).origin["kind"]
             for i in remote.list(layout.INDEX_PREFIX)]
    assert len(kinds) >= 3 and set(kinds) <= {"writer", "checkpoint"}, kinds
    assert_restorable(repo, writer.expected, tmp_path / "out")


@pytest.mark.parametrize(("stall", "expired"), [(GRACE / 4, False), (GRACE / 4 + 1, True)],
                         ids=["exactly half a grace apart", "a second more"])
def test_a_sync_whose_checkpoints_land_more_than_half_a_grace_period_apart_stops(tmp_path, clock, stall, expired):
    """A checkpoint's index protects the session's packs for a grace period; gc may condemn a pack
    a grace period after its last protection, so two checkpoints more than half a grace period apart
    (by the storage's clock) end the session with SessionExpired, before anything relies on it.
    Half a period apart exactly is still within the protocol. Either way a sync afterwards completes."""
    from casstore.sync.copier import SessionExpired
    from casstore.sync.transfer import sync_to_remote

    clock.now = float(int(clock.now))   # whole seconds: the storage times below add up exactly
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=2)
    writer.snapshot()
    puts: list[float] = []

    def hook(name: str) -> None:
        if name == "before-index-put" and threading.current_thread() is threading.main_thread():
            puts.append(clock.now)
            if len(puts) == 3:    # the third checkpoint stalls: it lands `stall` later than it would
                clock.advance(stall)

    testhooks.set_pause_hook(hook)
    try:
        # each blob copied takes an eighth of the grace period: a checkpoint every two blobs
        def run():
            return sync_to_remote(writer.repo, remote, clock=clock, progress=lambda n: clock.advance(GRACE / 8))
        if expired:
            with pytest.raises(SessionExpired):
                run()
        else:
            run()
    finally:
        testhooks.set_pause_hook(None)
    assert len(puts) >= 3 + (not expired), "the upload must span several checkpoints"
    assert len(list(remote.list("snapshots/"))) == (0 if expired else 1)
    writer.sync(remote)
    assert len(list(remote.list("snapshots/"))) == 1
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


def _synced_once(tmp_path, clock):
    """A writer that synced one snapshot, and its boot clock: a FakeClock apart from the storage's."""
    from casstore.sync.transfer import sync_to_remote

    boot = FakeClock()
    boot.now = 1000.0
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    sync_to_remote(writer.repo, remote, clock=boot)
    return boot, remote, writer


def _recording_lists(remote):
    """`remote` counted, and the prefixes it is asked to list, in order."""
    counting = CountingRemote(remote)
    listed: list[str] = []
    original = counting._list
    counting._list = lambda prefix: (listed.append(prefix), original(prefix))[1]
    return counting, listed


def _sync_paused(writer: Writer, remote, boot: FakeClock, hook):
    """Sync the writer with `hook` called at every pause point, on its boot clock."""
    from casstore.sync.transfer import sync_to_remote

    testhooks.set_pause_hook(hook)
    try:
        return sync_to_remote(writer.repo, remote, clock=boot)
    finally:
        testhooks.set_pause_hook(None)


@pytest.mark.parametrize("new_data", [False, True], ids=["nothing new", "new data"])
@pytest.mark.parametrize(("delay", "confirms"), [(GRACE / 4, False), (GRACE / 4 + 1, True)],
                         ids=["a quarter grace late", "a second more"])
def test_a_snapshot_landing_over_a_quarter_grace_after_the_recheck_confirms_its_packs(tmp_path, clock, new_data,
                                                                                      delay, confirms):
    """After the re-check a writer commits at once; a snapshot that lands more than a quarter grace
    period after it (a paused writer) may rely on packs gc condemned meanwhile, so the writer lists
    data/ and confirms every pack; on time it lists nothing (design 8.4). Late is measured on the
    storage's clock when the re-check knows the storage's time (it wrote an index: new data), else
    on the writer's boot clock: here only the clock that decides moves."""

    clock.now = float(int(clock.now))
    boot, remote, writer = _synced_once(tmp_path, clock)
    if new_data:
        writer.edit(seed=3)
    writer.snapshot()
    counting, listed = _recording_lists(remote)
    late_clock = clock if new_data else boot

    def hook(name: str) -> None:
        if name == "after-recheck":
            late_clock.advance(delay)

    report = _sync_paused(writer, counting, boot, hook)
    assert len(report.snapshots) == 1 and (report.packs_uploaded > 0) == new_data
    assert ("data/" in listed) == confirms, listed
    assert report.rechecks == (1 if new_data else 0)
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


@pytest.mark.parametrize("slow", ["between-listings", "gc/"], ids=["after listing", "listing answer"])
@pytest.mark.parametrize(("age", "relists"), [(GRACE / 4 - 1, False), (GRACE / 4, True)],
                         ids=["a second under a quarter grace", "a quarter grace"])
def test_a_first_listing_younger_than_a_quarter_grace_is_the_recheck_and_an_older_one_is_redone(tmp_path, clock,
                                                                                               slow, age, relists):
    """A sync with nothing to upload commits on the listing of gc/ and index/ it started with, if
    that is younger than a quarter grace period (design 8.4: a few requests); an older listing is
    made again before the snapshot is committed. A listing's age counts from when it was sent, so
    a slow answer counts too."""

    boot, remote, writer = _synced_once(tmp_path, clock)
    writer.snapshot()   # the same folder again: a new snapshot, no new blob
    seen: list[str] = []

    def hook(name: str) -> None:
        seen.append(name)
        if name == slow and seen.count(name) == 1:
            boot.advance(age)    # the writer (or the storage's answer) is slow before the commit

    original = remote._list

    def listing(prefix: str):
        hook(prefix)
        return original(prefix)

    remote._list = listing
    report = _sync_paused(writer, remote, boot, hook)
    assert len(report.snapshots) == 1 and report.packs_uploaded == 0
    assert report.rechecks == (1 if relists else 0)


def test_a_sync_of_two_snapshots_paused_after_its_first_put_relies_on_the_confirmations_listing(tmp_path, clock):
    """Paused over half a grace period right after writing its first snapshot, the writer confirms
    that snapshot's packs with a fresh listing (it landed late). The second snapshot's commit, due a
    re-check, trusts that listing (made just now) instead of listing gc/ and index/ again."""

    boot, remote, writer = _synced_once(tmp_path, clock)
    writer.snapshot()
    writer.snapshot()   # two new snapshots of the same folder: nothing to upload
    seen: list[str] = []

    def hook(name: str) -> None:
        seen.append(name)
        if name == "after-snapshot-put" and seen.count(name) == 1:
            boot.advance(GRACE / 2 + 1)

    counting, listed = _recording_lists(remote)
    report = _sync_paused(writer, counting, boot, hook)
    assert len(report.snapshots) == 2 and report.packs_uploaded == 0
    assert listed.count("data/") == 1 and report.rechecks == 0, listed
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


def test_an_index_that_lands_on_time_is_not_followed_by_a_check_of_its_packs(tmp_path, clock):
    """A writer's index that lands within a quarter grace of the storage time before it was confirmed
    cannot name a pack gc has taken since: the writer stats none of its packs (design 8.4)."""

    boot, remote, writer = _synced_once(tmp_path, clock)
    writer.edit(seed=3)
    writer.snapshot()
    counting = CountingRemote(remote)
    report = _sync_paused(writer, counting, boot, lambda name: None)
    assert report.packs_uploaded > 0, "the case this test is about: an index of new packs"
    assert counting.counts["stat"] == 0, counting.counts
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")


def test_an_index_written_after_the_writer_read_a_plan_names_no_pack_that_plan_condemns(tmp_path, clock):
    """A gc plan condemning the session's fresh packs appears while the writer uploads: its re-check
    reads the plan, uploads the condemned blobs again, and the index it then writes names only the
    new packs, never one the plan condemns (Copier._confirm_session: packs a known plan condemns are
    dropped in any case), so no index written after the plan keeps a doomed pack alive."""
    from casstore.format import layout
    from casstore.format.index import decode_index
    from casstore.format.plan import GcPlan, encode_plan_verified

    boot, remote, writer = _synced_once(tmp_path, clock)
    before = {i.key for i in remote.list(layout.DATA_PREFIX)}
    writer.edit(seed=3)
    writer.snapshot()
    doomed: set[str] = set()
    indexes_then: set[str] = set()

    def hook(name: str) -> None:
        if name == "after-pack-upload" and not doomed:
            doomed.update(layout.name_of(i.key) for i in remote.list(layout.DATA_PREFIX) if i.key not in before)
            indexes_then.update(i.key for i in remote.list(layout.INDEX_PREFIX))
            key = layout.plan_key()
            remote.put(key, encode_plan_verified(GcPlan(sorted(doomed), host="gc-host"), key))

    report = _sync_paused(writer, remote, boot, hook)
    assert doomed and report.rechecks >= 1 and len(report.snapshots) == 1
    repo = remote_repo(remote, tmp_path)
    later = [i.key for i in remote.list(layout.INDEX_PREFIX) if i.key not in indexes_then]
    named = [set(decode_index(layout.name_of(k), remote.get(k), repo.config.max_blob_size).packs) for k in later]
    # the index of the first flush, written before the re-check read the plan, names them; no later one
    assert sum(bool(packs & doomed) for packs in named) == 1 and len(named) >= 2, named
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_a_session_pack_lost_a_quarter_grace_after_the_last_index_is_found_before_an_index_names_it(tmp_path,
                                                                                                     clock):
    """Within a quarter grace period of the session's last index (or its start) no pack of it can have
    been condemned, so the writer trusts the plans it knows; from a quarter on it stats every pack
    before an index names it. A pack lost right at that edge is found and uploaded again: the
    snapshot committed after it restores."""
    boot = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    lost: list[str] = []

    def hook(name: str) -> None:
        if name == "after-pack-upload" and not lost:
            boot.advance(GRACE / 4)
            lost.append(next(iter(remote.list("data/"))).key)
            remote.delete(lost[0])

    report = _sync_paused(writer, remote, boot, hook)
    assert lost and report.reuploaded_blobs > 0
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")
