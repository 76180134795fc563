"""The two-phase gc on a shared remote (design 9): what mark condemns, when sweep deletes, the lease.

Every test runs on a MemoryRemote whose storage clock the test moves, so a grace period of an hour
passes at once; gc and the writers take the same clock.
"""

from __future__ import annotations

import os

import msgpack
import pytest

from casstore.errors import ObjectExists, TransientError
from casstore.format.config import RepoConfig
from casstore.format.index import IndexObject, decode_index
from casstore.format.layout import DATA_PREFIX, LEASE_KEY, index_key, pack_key, plan_key
from casstore.format.pack import KIND_DATA, PackBuilder, parse_header
from casstore.format.plan import GcPlan, encode_plan_verified, list_plan_keys, load_plans
from casstore.gc.retention import apply_retention
from casstore.gc.run import ClockSkew, LeaseHeld, NoConditionalWrites
from casstore.remotes.wrappers import RemoteWrapper
from casstore.repo import keys
from casstore.repo.blobstore import BlobStore
from casstore.settings import load_settings
from tests.gc_helpers import (
    GRACE,
    SMALL,
    FakeClock,
    Writer,
    assert_restorable,
    cli_json,
    gc,
    gc_to_completion,
    new_memory_remote,
    remote_repo,
    stored_bytes,
)
from tests.helpers import invoke


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def remote(clock):
    return new_memory_remote(clock)


def _two_snapshots_older_forgotten(tmp_path, clock, remote, config=None):
    writer = Writer(tmp_path / "a", "host-a", clock, config=config)
    for seed in (1, 2):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    assert len(apply_retention(repo, {"keep_last": 1}, all_hosts=True).removed) == 1
    return writer, repo


def _keys(remote, prefix: str = "") -> set[str]:
    return {info.key for info in remote.list(prefix)}


def _pack_ids(remote) -> set[str]:
    return {key.rsplit("/", 1)[1] for key in _keys(remote, "data/")}


def test_mark_condemns_only_after_the_grace_period_and_deletes_nothing(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    young = gc(repo, clock)
    assert young.packs_condemned == 0 and young.plan is None, "packs younger than the grace period stay"
    clock.advance(GRACE + 1)
    before = _keys(remote)
    mark = gc(repo, clock)
    assert mark.plan and mark.packs_condemned > 0 and mark.objects_deleted == 0
    assert before <= _keys(remote), "mark deletes nothing"
    plan = load_plans(remote)[mark.plan]
    assert set(plan.condemned_packs) <= _pack_ids(remote)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_sweep_waits_one_grace_period_after_the_plan(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    plan_key = gc(repo, clock).plan
    condemned = set(load_plans(remote)[plan_key].condemned_packs)
    clock.advance(GRACE / 2)
    early = gc(repo, clock)
    assert early.plans_swept == 0 and early.objects_deleted == 0
    clock.advance(GRACE / 2 + 1)
    sweep = gc(repo, clock)
    assert sweep.plans_swept == 1 and sweep.packs_deleted == len(condemned)
    assert sweep.bytes_deleted > 0 and sweep.objects_deleted == sweep.packs_deleted + sweep.indexes_deleted + 1
    assert not condemned & _pack_ids(remote) and plan_key not in _keys(remote, "gc/")
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_sweep_consolidates_indexes_and_no_index_names_a_deleted_pack(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    indexes_before = {k.split("/", 1)[1] for k in _keys(remote, "index/")}
    gc_to_completion(repo, clock)
    remaining = {k.split("/", 1)[1]: decode_index(k.split("/", 1)[1], remote.get(k), 1 << 24)
                 for k in _keys(remote, "index/")}
    assert len(remaining) == 1
    (index,) = remaining.values()
    assert index.origin["kind"] == "gc" and set(index.supersedes) >= indexes_before
    assert set(index.packs) == _pack_ids(remote)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_sweep_consolidates_as_few_as_two_indexes_that_protect_nothing(tmp_path, clock, remote):
    from casstore.format.config import RepoConfig
    from tests.gc_helpers import SMALL

    config = RepoConfig.new(**SMALL)      # two hosts sharing the remote: one config
    gone, kept = (Writer(tmp_path / h, f"host-{h}", clock, seed=n, config=config) for n, h in ((1, "a"), (2, "b")))
    forgotten = gone.snapshot()
    gone.sync(remote)
    kept.snapshot()
    kept.sync(remote)
    repo = remote_repo(remote, tmp_path)
    repo.delete_snapshot(forgotten)
    assert len(_keys(remote, "index/")) == 2, "one index per sync: the boundary this test is about"
    reports = gc_to_completion(repo, clock)
    assert sum(r.plans_swept for r in reports) == 1 and sum(r.packs_repacked for r in reports) == 0
    (key,) = _keys(remote, "index/")      # both old writer indexes merged into gc's one
    index = decode_index(key.split("/", 1)[1], remote.get(key), 1 << 24)
    assert index.origin["kind"] == "gc" and set(index.packs) == _pack_ids(remote)
    assert_restorable(repo, kept.expected, tmp_path / "out")


def test_young_writer_index_protects_old_packs_but_gc_index_does_not(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    gc_to_completion(repo, clock)
    store = BlobStore(remote, repo.config, repo.load_index(), origin={"kind": "checkpoint", "host": "h",
                                                                        "session": "s"})
    store.add(KIND_DATA, b"uploaded by a long sync, no snapshot yet" * 100)
    store.wait_uploads()
    clock.advance(GRACE + 1)             # the pack is old now, but its checkpoint index is written now
    store.write_index("checkpoint")
    store.close()
    assert gc(repo, clock).packs_condemned == 0, "a young checkpoint index protects its packs"
    clock.advance(GRACE + 1)
    assert gc(repo, clock).packs_condemned == 1, "once the index is old, the dead pack goes"
    apply_retention(repo, {"keep_tag": "nothing"}, all_hosts=True)
    reports = gc_to_completion(repo, clock)
    assert sum(r.packs_deleted for r in reports) > 0, "the consolidated (gc) index protects nothing"
    assert not _pack_ids(remote)


def test_a_sweep_leaves_a_young_checkpoint_index_so_its_packs_stay_protected(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    assert gc(repo, clock).packs_condemned > 0          # a plan, due one grace period later
    store = BlobStore(remote, repo.config, repo.load_index(), origin={"kind": "checkpoint", "host": "h",
                                                                        "session": "s"})
    store.add(KIND_DATA, b"uploaded by a long sync, no snapshot yet" * 100)
    store.wait_uploads()
    clock.advance(GRACE + 1)             # the plan is due and the pack old; its checkpoint index is written now
    store.write_index("checkpoint")
    store.close()
    swept = gc(repo, clock)              # sweeps the plan, merging the old indexes, then marks again
    assert swept.plans_swept == 1, "the sweep this test is about"
    assert swept.packs_condemned == gc(repo, clock).packs_condemned == 0, \
        "the checkpoint index, still young, still protects its pack after the sweep"


def test_a_dry_run_promises_to_free_what_the_real_run_frees_and_no_more(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    dry = gc(repo, clock, dry_run=True)
    real = gc(repo, clock)
    assert dry.packs_repacked == real.packs_repacked > 0, "mostly dead packs: the case this test is about"
    freed = real.bytes_condemned - real.bytes_written          # condemned packs, less their live blobs' copies
    assert 0 < dry.would_free <= real.bytes_condemned
    assert abs(dry.would_free - freed) <= 0.1 * freed, "only pack headers and compression differ"


def test_orphan_pack_is_condemned_only_after_the_grace_period(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    gc_to_completion(repo, clock)
    store = BlobStore(remote, repo.config, repo.load_index(), origin={"kind": "writer", "host": "h", "session": "s"})
    store.add(KIND_DATA, b"from a sync that crashed before its index" * 100)
    store.wait_uploads()
    (orphan,) = store.unindexed()
    store.close()
    assert gc(repo, clock).packs_condemned == 0
    clock.advance(GRACE + 1)
    assert gc(repo, clock).packs_condemned == 1
    clock.advance(GRACE + 1)
    assert gc(repo, clock).packs_deleted == 1 and orphan not in _pack_ids(remote)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_size_after_forgetting_all_but_the_newest_is_near_a_fresh_repository(tmp_path, clock, remote):
    writer = Writer(tmp_path / "a", "host-a", clock)
    for seed in range(5):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
        clock.advance(600)
    repo = remote_repo(remote, tmp_path)
    apply_retention(repo, {"keep_last": 1}, all_hosts=True)
    gc_to_completion(repo, clock)
    fresh_remote = new_memory_remote(clock)
    fresh = Writer(tmp_path / "fresh", "host-a", clock, config=writer.repo.config)
    fresh.source = writer.source
    fresh.snapshot()
    fresh.sync(fresh_remote)
    size, fresh_size = stored_bytes(remote), stored_bytes(fresh_remote)
    print(f"after gc {size} bytes, fresh repository {fresh_size} bytes ({size / fresh_size:.3f}x)")
    assert size <= 1.2 * fresh_size
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_dry_run_writes_and_deletes_nothing_and_reports_what_would_go(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    before = {info.key: info.etag for info in remote.list("")}
    report = gc(repo, clock, dry_run=True)
    assert report.would_free > 0 and report.packs_condemned > 0
    assert {info.key: info.etag for info in remote.list("")} == before
    gc(repo, clock)
    clock.advance(GRACE + 1)
    before = {info.key: info.etag for info in remote.list("")}
    report = gc(repo, clock, dry_run=True)
    assert report.plans_swept == 1 and report.would_free > 0
    assert {info.key: info.etag for info in remote.list("")} == before


# -- time and the lease -----------------------------------------------------------------------

def test_gc_refuses_when_local_and_storage_clocks_disagree(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    with pytest.raises(ClockSkew):
        gc(repo, clock, local_clock=lambda: clock() + 600)
    assert not list_plan_keys(remote) and not remote.exists(LEASE_KEY)


def test_a_held_lease_refuses_gc_until_it_expires(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    holder = msgpack.packb({"version": 1, "host": "elsewhere", "pid": 1, "boot_id": "x",
                            "expires": clock() + 600})
    remote.put(LEASE_KEY, holder, if_absent=True)
    with pytest.raises(LeaseHeld, match="elsewhere"):
        gc(repo, clock)
    assert remote.get(LEASE_KEY) == holder
    clock.advance(3600)                  # expired, by more than the allowed clock skew
    assert gc(repo, clock).plan
    assert not remote.exists(LEASE_KEY), "released when done"


@pytest.mark.parametrize("expires", [True, "soon", None], ids=["true", "text", "nil"])
def test_a_lease_without_a_readable_expiry_is_held_for_its_time_to_live_from_its_write(tmp_path, clock, remote,
                                                                                      expires):
    """A lease whose expiry is not a number (msgpack's `true` among them, which Python's bool would
    pass as 1, long past) is judged by the storage's write time plus the lease's time to live."""
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    holder = _held_lease(remote, expires=expires)
    with pytest.raises(LeaseHeld, match="elsewhere"):
        gc(repo, clock)
    assert remote.get(LEASE_KEY) == holder
    clock.advance(3600)
    assert gc(repo, clock).plan


def _held_lease(remote, expires: float) -> bytes:
    holder = msgpack.packb({"version": 1, "host": "elsewhere", "pid": 1, "boot_id": "x", "expires": expires})
    remote.put(LEASE_KEY, holder, if_absent=True)
    return holder


def test_a_host_whose_clock_runs_ahead_leaves_a_live_lease_alone(tmp_path, clock, remote):
    """Issue 11 (a): staleness is judged by the storage's clock, after the skew check. A host an
    hour ahead used to judge a live lease stale by its own clock, take it over (stopping the holder's
    gc at its next renewal), and only then fail the skew check."""
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    holder = _held_lease(remote, expires=clock() + 600)
    etag = remote.stat(LEASE_KEY).etag
    with pytest.raises(ClockSkew):
        gc(repo, clock, local_clock=lambda: clock() + 3600)
    assert remote.get(LEASE_KEY) == holder and remote.stat(LEASE_KEY).etag == etag, "the live lease was touched"
    assert not list_plan_keys(remote)


def test_lease_staleness_is_judged_by_the_storage_clock(tmp_path, clock, remote):
    """A lease expired 400 s ago by the storage's clock is stale (past the 300 s skew margin), even
    for a host whose clock runs 4 minutes behind (within the allowed skew): by that host's clock it
    expired only 160 s ago, and gc used to refuse."""
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    _held_lease(remote, expires=clock() - 400)
    report = gc(repo, clock, local_clock=lambda: clock() - 240)
    assert report.plan, "the stale lease was not taken over"
    assert not remote.exists(LEASE_KEY), "released when done"
    clock.advance(3600)
    _held_lease(remote, expires=clock() - 200)   # 200 s past its expiry: within the margin, still held
    with pytest.raises(LeaseHeld, match="elsewhere"):
        gc(repo, clock, local_clock=lambda: clock() + 240)


class IgnoresConditionalWrites(RemoteWrapper):
    """A store that overwrites even when asked to create only if absent."""

    def _put(self, key, data, *, if_absent, if_match):
        return self.inner.put(key, data)


def test_store_ignoring_conditional_create_gets_gc_only_with_exclusive(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    careless = remote_repo(IgnoresConditionalWrites(remote), tmp_path)
    with pytest.raises(NoConditionalWrites):
        gc(careless, clock)
    assert not list_plan_keys(remote) and not remote.exists(LEASE_KEY)
    report = gc(careless, clock, exclusive=True)
    assert report.mode == "exclusive" and report.packs_deleted > 0 and not list_plan_keys(remote)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_exclusive_gc_deletes_at_once_without_grace(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    report = gc(repo, clock, exclusive=True)
    assert report.packs_deleted > 0 and report.plan is None
    assert gc(repo, clock, exclusive=True).packs_deleted == 0
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_lease_renewal_is_compare_and_swap(tmp_path, clock, remote):
    from casstore.gc.lease import Lease

    lease = Lease(remote, host="h", ttl=60, clock=clock, local_clock=clock).acquire()
    remote.put(LEASE_KEY, b"someone else", if_match=lease.etag)     # another gc took it over
    from casstore.gc.run import LeaseLost

    with pytest.raises(LeaseLost):
        lease.renew()
    with pytest.raises(ObjectExists):
        remote.put(LEASE_KEY, b"x", if_absent=True)


# -- after gc, writers' view of the remote stays correct --------------------------------------

def test_sync_after_gc_uploads_again_what_gc_removed(tmp_path, clock, remote):
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    apply_retention(repo, {"keep_tag": "nothing"}, all_hosts=True)
    gc_to_completion(repo, clock)
    assert not _pack_ids(remote)
    writer.snapshot()                     # the same data; the writer's index cache still lists it
    report = writer.sync(remote)
    assert report.blobs_missing > 0 and report.packs_uploaded > 0
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_cli_gc_on_a_directory_remote_uses_the_two_phase_protocol(tmp_path, clock):
    writer = Writer(tmp_path / "a", "testhost", clock)
    writer.snapshot()
    url = f"file://{tmp_path / 'nas'}"
    writer.sync(url)
    forget = cli_json("forget", "--remote", url, "--keep-tag", "nothing", "--json")
    assert len(forget["removed"]) == 1
    refused = invoke("gc", "--remote", url, "--grace", "0s", expect=None)
    assert refused.exit_code != 0 and "shorter than the repository's grace period" in refused.stderr
    _age(tmp_path / "nas", 2 * GRACE)   # the repository's grace (fixed at init) has passed
    report = cli_json("gc", "--remote", url, "--json")
    assert report["mode"] == "remote" and report["plan"] and report["objects_deleted"] == 0
    _age(tmp_path / "nas" / "gc", 2 * GRACE)
    report = cli_json("gc", "--remote", url, "--json")
    assert report["plans_swept"] == 1 and report["packs_deleted"] > 0 and report["bytes_deleted"] > 0
    assert not [p for p in (tmp_path / "nas" / "gc").iterdir() if not p.name.startswith(".")]   # a lock file stays


def _age(root, seconds: float) -> None:
    """Make every object below `root` `seconds` older (a directory remote's storage time is the mtime)."""
    for path in root.rglob("*"):
        if path.is_file():
            stamp = path.stat().st_mtime - seconds
            os.utime(path, (stamp, stamp))


class SlowStorage(RemoteWrapper):
    """Every read takes 150 s of (fake) time; lease writes are counted."""

    def __init__(self, inner, clock) -> None:
        super().__init__(inner)
        self.clock, self.lease_writes = clock, 0

    def _get(self, key, offset, length, *, large):
        self.clock.advance(150)
        return super()._get(key, offset, length, large=large)

    def _put(self, key, data, *, if_absent, if_match):
        self.lease_writes += key == LEASE_KEY
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)


def test_a_long_gc_keeps_renewing_its_lease(tmp_path, clock, remote):
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    clock.advance(GRACE + 1)
    slow = SlowStorage(remote, clock)
    started = clock()
    report = gc(remote_repo(slow, tmp_path / "cold-cache"), clock)
    elapsed = clock() - started
    assert report.plan and elapsed > 1200
    assert slow.lease_writes >= 3 + elapsed // 600, "renewed at least once per lease period (600 s)"


class SlowLink(RemoteWrapper):
    """A link on which a whole pack takes longer to arrive than a small answer may stall: a pack read
    without the `large` hint (which scales the read timeout to a pack's size) times out, as a cloud
    backend's would; everything else arrives in time."""

    def _get(self, key, offset, length, *, large):
        if key.startswith(DATA_PREFIX) and length is None and not large:
            raise TransientError(f"read timed out: {key} asked for as a small object")
        return super()._get(key, offset, length, large=large)


def test_gc_repacks_over_a_link_too_slow_for_a_pack_read_as_a_small_object(tmp_path, clock, remote):
    writer, _ = _two_snapshots_older_forgotten(tmp_path, clock, remote)
    repo = remote_repo(SlowLink(remote), tmp_path)
    clock.advance(GRACE + 1)
    report = gc(repo, clock)
    assert report.packs_repacked > 0, "mostly dead packs are copied: whole-pack reads"
    assert 0 < report.bytes_written < report.bytes_repacked, "what is kept of mostly dead packs is less than them"
    assert 0 < report.packs_written <= report.packs_repacked
    assert gc_to_completion(repo, clock)[-1].packs_condemned == 0
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_a_pack_is_repacked_from_exactly_the_dead_fraction_and_not_below_it():
    from casstore.gc.context import REPACK_DEAD_FRACTION
    from casstore.gc.repack import mostly_dead

    total = 1_000_000
    at = total - round(REPACK_DEAD_FRACTION * total)          # live bytes when exactly the fraction is dead
    usage = {"at": (at, total), "below": (at + 1, total), "mostly live": (total - 10, total),
             "all live": (total, total)}
    assert mostly_dead(usage, set(usage)) == {"at"}


# -- what a sweep keeps, what a run with nothing due still does, the plan of an encrypted remote ---

def _copy_packs(remote, pack_ids) -> list[str]:
    """Upload a second copy of each pack's blobs in a new pack, listed by a writer index of its own
    (what two hosts racing to upload the same data leave behind)."""
    copies = {}
    for pack_id in sorted(pack_ids):
        data = remote.get(pack_key(pack_id))
        entries = parse_header(data, 1 << 24)
        builder = PackBuilder(entries[0].kind)       # data and tree blobs are in packs of their own
        for entry in entries:
            builder.add(entry.id, data[entry.offset:entry.offset + entry.length], entry.raw_length)
        copy_id, body = builder.finish()
        remote.put(pack_key(copy_id), bytes(body))
        copies[copy_id] = builder.entries
    index_id, body = IndexObject({"kind": "writer", "host": "host-b", "session": "copies"}, copies).encode()
    remote.put(index_key(index_id), body)
    return sorted(copies)


def _put_plan(remote, clock, condemned) -> str:
    key = plan_key(clock())
    remote.put(key, encode_plan_verified(GcPlan(condemned_packs=sorted(condemned), host="host-gc"), key))
    return key


def test_a_sweep_keeps_a_needed_pack_whose_only_other_copy_a_younger_plan_condemns(tmp_path, clock, remote):
    """Design 9 (c): a pack is kept while it holds a blob a snapshot needs with no copy outside
    condemned packs. A copy in a pack that a plan not yet due condemns does not count: that plan
    may sweep it, and every writer already treats it as gone."""
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    originals = _pack_ids(remote)
    copies = _copy_packs(remote, originals)
    clock.advance(GRACE + 1)
    _put_plan(remote, clock, originals)            # due first
    clock.advance(GRACE / 2)
    _put_plan(remote, clock, copies)               # due half a grace period later
    clock.advance(GRACE / 2 + 1)
    repo = remote_repo(remote, tmp_path)
    report = gc(repo, clock)
    assert report.plans_swept == 1
    assert (report.packs_kept, report.packs_deleted) == (len(originals), 0)
    assert originals <= _pack_ids(remote)
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_a_gc_run_with_no_plan_due_deletes_the_indexes_their_writers_withdrew(tmp_path, clock, remote):
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    [late] = [name.rsplit("/", 1)[1] for name in _keys(remote, "index/")]
    index = decode_index(late, remote.get(index_key(late)), 1 << 24)
    # its writer withdraws it (writers cannot delete): a new index of the same packs that retracts it
    withdrawing, body = IndexObject(dict(index.origin), dict(index.packs), retracts=[late]).encode()
    remote.put(index_key(withdrawing), body)
    repo = remote_repo(remote, tmp_path)
    report = gc(repo, clock)
    assert report.plans_swept == 0 and report.plan is None, "nothing due, nothing to condemn"
    assert report.indexes_deleted == 1
    assert _keys(remote, "index/") == {index_key(withdrawing)}
    assert_restorable(repo, writer.expected, tmp_path / "out")


def test_the_plan_gc_writes_on_an_encrypted_remote_is_sealed_and_every_host_reads_it(tmp_path, clock, remote,
                                                                                     monkeypatch):
    monkeypatch.setenv("CASSTORE_PASSWORD", "gc plan password")
    config = RepoConfig.new(**SMALL, keys=keys.new_key(load_settings({"password": "gc plan password"}), "host-a"))
    writer, repo = _two_snapshots_older_forgotten(tmp_path, clock, remote, config)
    clock.advance(GRACE + 1)
    marked = gc(repo, clock)
    assert marked.plan and marked.packs_condemned > 0
    stored = remote.get(marked.plan)
    for pack in load_plans(repo.remote, [marked.plan], repo.config.sealer)[marked.plan].condemned_packs:
        assert pack.encode() not in stored and bytes.fromhex(pack) not in stored, "a condemned pack id in the clear"
    writer.edit(3)                                   # a writer reads the plan before it reuses any blob
    writer.snapshot()
    writer.sync(remote)
    runs = gc_to_completion(remote_repo(remote, tmp_path), clock)
    assert sum(r.packs_deleted for r in runs) > 0
    assert_restorable(remote_repo(remote, tmp_path), writer.expected, tmp_path / "out")
