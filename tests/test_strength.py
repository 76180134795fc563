"""Behaviours that mutation testing found unchecked (issue 19): each test names one rule that a
one-token change to the code would break without any other test noticing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casstore.errors import AccessDenied
from casstore.format.crypto import SCHEME
from casstore.format.pack import KIND_DATA
from casstore.remotes.wrappers import RemoteWrapper
from casstore.repo.blobstore import BlobStore
from casstore.sync.state import SyncState
from casstore.sync.transfer import sync_to_remote
from tests.gc_helpers import GRACE, FakeClock, Writer, gc, gc_to_completion, new_memory_remote, remote_repo
from tests.sync_helpers import local_repo, make_source, tree_digest

# -- restore --verify --------------------------------------------------------------------------


def test_restore_verify_keeps_every_correct_file(tmp_path: Path) -> None:
    source = make_source(tmp_path / "data", n_json=6, big_mib=1)
    repo = local_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(source)).id
    result = repo.restore(snapshot_id, str(tmp_path / "out"), verify=True)
    assert result.ok, result.errors
    assert not result.errors
    assert tree_digest(tmp_path / "out") == tree_digest(source)


# -- sync bookkeeping: only a snapshot that reached the remote is recorded as synced -------------

class NoSnapshotWrites(RemoteWrapper):
    """Packs and indexes land; every snapshot write is refused."""

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None):  # type: ignore[no-untyped-def]
        if key.startswith("snapshots/"):
            raise AccessDenied(f"refused: {key}")
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)


def test_a_pending_snapshot_that_never_reached_the_remote_is_not_recorded_as_synced(tmp_path: Path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(make_source(tmp_path / "data", n_json=6, big_mib=1))).id
    state = SyncState(repo.local_dir, remote.url)
    state.pending.add(snapshot_id)        # an interrupted sync was about to write it
    state.save()
    with pytest.raises(AccessDenied):
        sync_to_remote(repo, NoSnapshotWrites(remote), clock=clock)
    after = SyncState(repo.local_dir, remote.url)
    assert snapshot_id not in after.synced
    assert not remote.exists(f"snapshots/{snapshot_id}")
    sync_to_remote(repo, remote, clock=clock)
    assert snapshot_id in SyncState(repo.local_dir, remote.url).synced


def test_a_dry_run_sync_records_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(make_source(tmp_path / "data", n_json=6, big_mib=1))).id
    report = sync_to_remote(repo, remote, dry_run=True, clock=clock)
    assert report.snapshots == [snapshot_id] and report.blobs_missing > 0
    assert snapshot_id not in SyncState(repo.local_dir, remote.url).synced
    assert not list(remote.list("snapshots/")) and not list(remote.list("data/"))


# -- the sync plan: uploads exactly the reachable blobs the remote lacks -------------------------

def _blob_keys(remote_repository) -> set[tuple[int, bytes]]:
    return {key for key, _ in remote_repository.load_index().blobs()}


def test_sync_uploads_exactly_the_reachable_blobs_the_remote_lacks(tmp_path: Path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    present = _blob_keys(remote_repo(remote, tmp_path / "r1"))
    writer.edit(7)
    writer.snapshot()
    report = writer.sync(remote)
    after = _blob_keys(remote_repo(remote, tmp_path / "r2"))
    local = writer.repo
    local.load_index()
    reachable: set[tuple[int, bytes]] = set()
    for snapshot_id in local.snapshot_ids():
        reachable |= _reachable(local, snapshot_id)
    assert after == present | reachable
    assert report.blobs_missing == len(reachable - present)


def _reachable(repo, snapshot_id: str) -> set[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    from casstore.format.pack import KIND_TREE
    from casstore.format.tree import EntryType, decode_tree

    found: set[tuple[int, bytes]] = set()
    todo = [repo.manifest(snapshot_id).tree]
    while todo:
        tree_id = todo.pop()
        found.add((KIND_TREE, tree_id))
        entries, next_id = decode_tree(repo.read_blob(KIND_TREE, tree_id))
        todo += [next_id] if next_id else []
        for e in entries:
            if e.type is EntryType.DIR:
                todo.append(e.subtree)
            found |= {(KIND_DATA, c) for c in e.chunks}
    return found


# -- gc's grace period at its edge ---------------------------------------------------------------

def test_an_orphan_pack_is_condemned_at_exactly_the_grace_period_not_a_second_before(tmp_path: Path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    gc_to_completion(repo, clock)
    store = BlobStore(remote, repo.config, repo.load_index(), origin={"kind": "writer", "host": "h", "session": "s"})
    store.add(KIND_DATA, b"uploaded by a sync that crashed before its index" * 100)
    store.wait_uploads()
    store.close()
    clock.advance(GRACE - 1)
    assert gc(repo, clock).packs_condemned == 0, "one second short of the grace period"
    clock.advance(1)
    report = gc(repo, clock)
    assert report.packs_condemned == 1, "exactly the grace period old"
    clock.advance(GRACE - 1)
    early = gc(repo, clock)
    assert early.plans_swept == 0 and early.packs_deleted == 0, "the plan is one second short of the grace period"
    clock.advance(1)
    assert gc(repo, clock).packs_deleted == 1


# -- gc stops, deleting nothing, when it cannot trust what it would keep ---------------------------

def _objects(remote) -> set[str]:  # type: ignore[no-untyped-def]
    from casstore.format.layout import LEASE_KEY

    return {info.key for info in remote.list("") if info.key != LEASE_KEY}


def test_gc_stops_when_a_pack_it_must_repack_is_corrupt(tmp_path: Path) -> None:
    from casstore.format.pack import parse_header
    from casstore.gc.retention import apply_retention
    from casstore.gc.run import GcAborted

    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    for seed in (1, 2):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
    repo = remote_repo(remote, tmp_path)
    apply_retention(repo, {"keep_last": 1}, all_hosts=True)
    for info in remote.list("data/"):
        pack = bytearray(remote.get(info.key))
        first = parse_header(bytes(pack), 1 << 24)[0]
        if first.kind == KIND_DATA:
            pack[first.offset + first.length - 1] ^= 0x01     # the pack no longer matches its name
            remote.put(info.key, bytes(pack))
    before = _objects(remote)
    clock.advance(GRACE + 1)
    with pytest.raises(GcAborted, match="cannot be repacked"):
        gc(repo, clock)
    assert _objects(remote) == before, "nothing deleted, no plan written"


def test_gc_stops_when_a_snapshot_needs_a_blob_no_index_lists(tmp_path: Path) -> None:
    from casstore.format.tree import Entry, EntryType
    from casstore.gc.run import GcAborted
    from tests.helpers import file_entry, write_snapshot

    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock)
    writer.snapshot()
    writer.sync(remote)
    repo = remote_repo(remote, tmp_path)

    def build(store):  # type: ignore[no-untyped-def]
        lost = Entry(b"lost.bin", EntryType.FILE, 0o644, 0, 0, 0, 10, 0, [b"\x42" * 32])   # a chunk no pack holds
        return [lost, file_entry(store, b"ok.txt", b"fine\n")]

    write_snapshot(repo, build)
    before = _objects(remote)
    clock.advance(GRACE + 1)
    with pytest.raises(GcAborted, match="in no index"):
        gc(repo, clock)
    assert _objects(remote) == before


# -- sync state keeps what it knew ---------------------------------------------------------------

def test_every_sync_and_pull_keeps_the_earlier_synced_records(tmp_path: Path) -> None:
    from casstore.sync.transfer import pull_from_remote

    clock = FakeClock()
    remote = new_memory_remote(clock)
    a = Writer(tmp_path / "a", "host-a", clock)
    first = a.snapshot()
    a.sync(remote)
    a.edit(3)
    second = a.snapshot()
    a.sync(remote)
    assert {first, second} <= SyncState(a.repo.local_dir, remote.url).synced
    b = Writer(tmp_path / "b", "host-b", clock, config=a.repo.config)
    other = b.snapshot()
    b.sync(remote)
    pull_from_remote(a.repo, remote, snapshot=other)
    assert {first, second} <= SyncState(a.repo.local_dir, remote.url).synced


def test_a_dry_run_report_says_it_was_a_dry_run(tmp_path: Path) -> None:
    clock = FakeClock()
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=3, big_mib=1)))
    assert sync_to_remote(repo, new_memory_remote(clock), dry_run=True, clock=clock).dry_run is True


def test_an_incomplete_snapshot_as_old_as_the_newest_complete_one_is_not_kept_for_being_newer() -> None:
    from casstore.format.snapshot import SnapshotManifest
    from casstore.gc.retention import RetentionPolicy, decide
    from casstore.repo.core import SnapshotInfo

    def info(i: int, incomplete: bool) -> SnapshotInfo:
        return SnapshotInfo(f"{i:064x}", SnapshotManifest(time_ns=10**18, host="h", source="/s", tree=b"\0" * 32,
                                                          incomplete=incomplete))

    (group,) = decide([info(1, False), info(2, True)], RetentionPolicy(last=1))
    assert [d.snapshot.id for d in group.keep] == [f"{1:064x}"]


def test_a_dry_run_plans_exactly_the_objects_the_sync_then_writes(tmp_path: Path) -> None:
    """The dry run's request estimate is the packs, index and manifests the real sync then puts,
    both with new data (two snapshots) and with none (a manifest only)."""
    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    source = make_source(tmp_path / "data", n_json=4, big_mib=1)
    repo.snapshot(str(source))
    (source / "new.txt").write_text("more")
    repo.snapshot(str(source))

    def objects() -> int:
        return sum(len(list(remote.list(prefix))) for prefix in ("data/", "index/", "snapshots/"))

    for expected_snapshots in (2, 1):
        before = objects()
        plan = sync_to_remote(repo, remote, dry_run=True, clock=clock)
        assert len(plan.snapshots) == expected_snapshots
        sync_to_remote(repo, remote, clock=clock)
        assert objects() - before == plan.requests_planned
        repo.snapshot(str(source))      # the same data again: nothing to send but its manifest


def test_a_pull_reports_where_it_copied_from_and_to(tmp_path: Path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0)))
    sync_to_remote(repo, remote, clock=clock)
    report = repo.pull(remote)
    assert (report.source, report.destination, report.snapshots) == (remote.url, repo.location, [])


# -- gc plans as writers read them ---------------------------------------------------------------

def test_writers_see_every_gc_plan_and_only_plans(tmp_path: Path) -> None:
    """The lease lives under gc/ too and is not a plan; every plan is read with what it condemns
    and who wrote it; a plan swept between the listing and the read condemns nothing."""
    from casstore.format.layout import LEASE_KEY, plan_key
    from casstore.format.plan import GcPlan, condemned_packs, list_plan_keys, load_plans

    remote = new_memory_remote(FakeClock())
    first, second = plan_key(1000.0), plan_key(2000.0)
    remote.put(first, GcPlan(["aa" * 32, "bb" * 32], ["cc" * 32], host="one").encode())
    remote.put(second, GcPlan(["dd" * 32], [], host="two").encode())
    remote.put(LEASE_KEY, b"lease")
    assert list_plan_keys(remote) == [first, second]
    plans = load_plans(remote)
    assert {key: (plan.host, plan.superseded_indexes) for key, plan in plans.items()} == \
        {first: ("one", ["cc" * 32]), second: ("two", [])}
    assert condemned_packs(plans) == {"aa" * 32, "bb" * 32, "dd" * 32}
    assert list(load_plans(remote, [second])) == [second]         # the keys asked for, no others
    remote.delete(first)
    assert list(load_plans(remote, [first, second])) == [second]


def test_writers_of_an_encrypted_repository_read_its_gc_plans_with_its_key(tmp_path: Path) -> None:
    from casstore.format.crypto import MasterKey
    from casstore.format.layout import plan_key
    from casstore.format.plan import GcPlan, encode_plan_verified, load_plans

    sealer = MasterKey.generate().sealer
    remote = new_memory_remote(FakeClock())
    key = plan_key(1000.0)
    remote.put(key, encode_plan_verified(GcPlan(["aa" * 32], [], host="one"), key, sealer))
    assert remote.get(key).find(b"aa" * 8) == -1               # stored sealed: no pack name in the clear
    (plan,) = load_plans(remote, sealer=sealer).values()
    assert (plan.condemned_packs, plan.host) == (["aa" * 32], "one")


def test_a_gc_plan_that_cannot_be_read_stops_the_writer(tmp_path: Path) -> None:
    from casstore.errors import FormatError
    from casstore.format.layout import plan_key
    from casstore.format.plan import load_plans

    remote = new_memory_remote(FakeClock())
    remote.put(plan_key(1000.0), b"\x81\xa7version\x02")       # a plan of a version this writer does not know
    with pytest.raises(FormatError):
        load_plans(remote)


# -- repository config ---------------------------------------------------------------------------

def test_a_new_config_with_chunk_sizes_out_of_order_is_refused_at_creation() -> None:
    from casstore.errors import FormatError
    from casstore.format.config import RepoConfig

    with pytest.raises(FormatError, match="min_size <= avg_size <= max_size"):
        RepoConfig.new(min_size=64 * 1024, avg_size=128 * 1024, max_size=96 * 1024)
    assert RepoConfig.new(min_size=64 * 1024, avg_size=64 * 1024, max_size=64 * 1024).chunker["max_size"] == 65536


@pytest.mark.parametrize(("avg", "low", "high"), [
    (None, 256 * 1024, 8 * 1024 * 1024), (64 * 1024, 16 * 1024, 512 * 1024), (256, 64, 2048),
    (255 * 4, 255, 8160), (4 * 1024 * 1024, 1024 * 1024, 16 * 1024 * 1024),
], ids=["default", "avg 64K", "avg 256: min floor 64", "avg 1020", "avg 4M: max capped at 16M"])
def test_a_new_config_derives_min_and_max_from_the_average_chunk_size(avg, low, high) -> None:
    """Only --chunk-avg given: min is a quarter of it (at least 64), max eight times (at most 16 MiB)."""
    from casstore.format.config import RepoConfig

    chunker = RepoConfig.new(avg_size=avg).chunker
    assert (chunker["min_size"], chunker["avg_size"], chunker["max_size"]) == (low, avg or 1024 * 1024, high)


@pytest.mark.parametrize("chain", [None, 0, 1, 64])
def test_a_new_plain_repository_writes_deltas_up_to_its_chain_bound_and_it_reads_back(chain) -> None:
    from casstore.format.config import DEFAULT_DELTA_CHAIN, RepoConfig

    config = RepoConfig.new() if chain is None else RepoConfig.new(delta_chain=chain)
    expected = DEFAULT_DELTA_CHAIN if chain is None else chain
    assert config.delta_chain == expected
    assert RepoConfig.decode(config.encode()).delta_chain == expected


def test_a_new_repository_takes_a_grace_period_down_to_the_minimum_and_not_below() -> None:
    from casstore.errors import ConfigError
    from casstore.format.config import MIN_GRACE_SECONDS, RepoConfig

    assert RepoConfig.new(grace_seconds=MIN_GRACE_SECONDS).grace_seconds == MIN_GRACE_SECONDS
    with pytest.raises(ConfigError, match="not safe for writers"):
        RepoConfig.new(grace_seconds=MIN_GRACE_SECONDS - 0.5)


def test_a_repository_config_with_the_fixed_chunker_reads_back() -> None:
    from dataclasses import replace

    from casstore.chunker import FixedChunker
    from casstore.format.config import RepoConfig

    config = replace(RepoConfig.new(), chunker=FixedChunker(64 * 1024).params())
    back = RepoConfig.decode(config.encode())
    assert back.chunker == {"algorithm": "fixed", "size": 65536}
    assert isinstance(back.make_chunker(), FixedChunker)


def _stored_config(change) -> bytes:  # type: ignore[no-untyped-def]
    """A new plain config's stored bytes with one field changed by `change(doc)`."""
    import msgpack

    from casstore.format.config import RepoConfig

    doc = msgpack.unpackb(RepoConfig.new().encode())
    change(doc)
    return msgpack.packb(doc)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda doc: doc.update(version=99), "unsupported repository format version 99"),
    (lambda doc: doc.update(id="abc"), "bad repository id in config"),
    (lambda doc: doc.update(chunker=[1, 2]), "unknown chunker in repository config"),
    (lambda doc: doc.update(chunker={"algorithm": "rabin", "size": 65536}), "unknown chunker in repository config"),
    (lambda doc: doc["chunker"].update(seed=0), "bad chunker sizes in repository config"),
    (lambda doc: doc.update(chunker={"algorithm": "fixed", "size": 1 << 40}),
     "chunker size 1099511627776 is outside the format's range"),
    (lambda doc: doc["compression"].update(level=23), "compression level 23 is outside zstd's range"),
    (lambda doc: doc["compression"].update(level=-(1 << 17) - 1), "compression level -131073 is outside zstd's range"),
    (lambda doc: doc.update(compression={"algorithm": "lz4", "level": 3}), "unknown compression in repository config"),
    (lambda doc: doc.update(encryption="yes"), "bad encryption field in repository config"),
    (lambda doc: doc.update(encryption={"scheme": "rot13", "domain": "0" * 32}),
     "unknown encryption scheme in repository config: 'rot13'"),
    (lambda doc: doc.update(encryption={"scheme": SCHEME, "domain": "zz"}),
     "bad encryption domain in repository config"),
    (lambda doc: doc["compression"].update(delta=65), "delta chain bound 65 is outside the format's range (0 to 64)"),
    (lambda doc: doc.update(pack_size=1024), "pack_size 1024 is outside the format's range (4096 to 1073741824 bytes)"),
    (lambda doc: doc.update(grace_seconds=9), "bad grace period in repository config: 9"),
], ids=["version", "id", "chunker not a map", "unknown chunker", "seed 0", "fixed size too large",
        "level above zstd's", "level below zstd's", "unknown compression", "encryption not a map",
        "unknown encryption scheme", "bad encryption domain", "delta chain too long", "pack size too small",
        "grace period below the minimum"])
def test_a_stored_config_outside_the_format_is_refused_with_a_line_that_says_why(change, reason) -> None:
    from casstore.errors import FormatError
    from casstore.format.config import RepoConfig

    with pytest.raises(FormatError) as refused:
        RepoConfig.decode(_stored_config(change))
    assert reason in str(refused.value)


def test_a_stored_config_at_the_edges_of_the_format_reads_back() -> None:
    """The smallest seed, zstd's highest and lowest levels, the shortest grace period."""
    from casstore.format.config import MIN_GRACE_SECONDS, RepoConfig

    def edges(doc) -> None:  # type: ignore[no-untyped-def]
        doc["chunker"]["seed"] = 1
        doc["compression"]["level"] = 22
        doc["grace_seconds"] = MIN_GRACE_SECONDS

    high = RepoConfig.decode(_stored_config(edges))
    assert (high.chunker["seed"], high.grace_seconds) == (1, MIN_GRACE_SECONDS)
    low = RepoConfig.decode(_stored_config(lambda doc: doc["compression"].update(level=-(1 << 17))))
    assert low.compression["level"] == -(1 << 17)


def test_a_new_config_with_a_compression_level_outside_zstds_range_is_refused() -> None:
    from casstore.errors import FormatError
    from casstore.format.config import RepoConfig

    assert RepoConfig.new(compression_level=22).compression["level"] == 22
    with pytest.raises(FormatError, match="compression level 23 is outside zstd's range"):
        RepoConfig.new(compression_level=23)


def test_an_encrypted_config_says_which_key_it_needs() -> None:
    """Without a key, with another repository's key, a field outside the sealed part, no sealed
    part, a sealed part missing a field: each is refused with its own line. Two repositories with
    different keys refuse to exchange blobs and say how to share one."""
    import msgpack

    from casstore.errors import EncryptionError, FormatError, IncompatibleRepository, MissingKey
    from casstore.format.config import KIND_CONFIG, RepoConfig
    from casstore.format.crypto import MasterKey

    key = MasterKey.generate()
    config = RepoConfig.new(keys=key)
    body = config.encode()
    with pytest.raises(MissingKey, match="this repository is encrypted: its key is needed to read its config"):
        RepoConfig.decode(body)
    with pytest.raises(EncryptionError, match="the key given belongs to another encrypted repository"):
        RepoConfig.decode(body, MasterKey.generate())
    doc = msgpack.unpackb(body)
    public = {**doc, "pack_size": 1 << 20}
    unsealed = {**doc, "encryption": {k: v for k, v in doc["encryption"].items() if k != "sealed"}}
    short = {**doc, "encryption": {**doc["encryption"], "sealed": key.sealer.seal(
        KIND_CONFIG, config.id.encode(), msgpack.packb({"pack_size": 1 << 20}))}}
    for changed, reason in [(public, "an encrypted config has fields outside its sealed part"),
                            (unsealed, "missing sealed part"), (short, "bad sealed part")]:
        with pytest.raises(FormatError, match=reason):
            RepoConfig.decode(msgpack.packb(changed), key)
    with pytest.raises(IncompatibleRepository) as refused:
        config.check_compatible(RepoConfig.new(keys=MasterKey.generate()), "s3://other")
    assert "s3://other is encrypted with another key than this repository" in str(refused.value)
    assert "casstore init --from s3://other" in str(refused.value)


def test_sync_and_pull_refuse_what_they_cannot_do_with_one_clear_error(tmp_path: Path) -> None:
    """A pull into a remote repository, a sync from one, and either with no remote configured."""
    from casstore.errors import ConfigError
    from casstore.sync.transfer import pull_from_remote

    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0)))
    sync_to_remote(repo, remote, clock=clock)
    shared = remote_repo(remote, tmp_path)
    with pytest.raises(ConfigError, match="pull copies into a local repository"):
        pull_from_remote(shared, new_memory_remote(clock))
    with pytest.raises(ConfigError, match="sync runs from a local repository"):
        sync_to_remote(shared, new_memory_remote(clock))
    with pytest.raises(ConfigError, match="no remote configured"):
        sync_to_remote(repo, None)
    with pytest.raises(ConfigError, match="no remote configured"):
        pull_from_remote(repo, None)


def test_a_pull_for_one_host_takes_only_that_hosts_snapshots(tmp_path: Path) -> None:
    from dataclasses import replace

    from tests.helpers import write_snapshot

    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    ours = write_snapshot(repo, lambda store: [], host="a")
    write_snapshot(repo, lambda store: [], host="b")
    sync_to_remote(repo, remote, clock=clock)
    other = local_repo(tmp_path / "other", config=replace(repo.config, id="c" * 32))
    assert other.pull(remote, host="a").snapshots == [ours]
    assert other.snapshot_ids() == [ours]


def test_a_sync_with_nothing_to_send_reports_the_same_cost_and_labels(tmp_path: Path) -> None:
    """A second sync finds nothing new: it still names what it synced where, and estimates the
    remote's monthly cost from what the last sync left there, not from nothing."""
    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=4, big_mib=8)))     # enough to cost 0.0001 $
    first = sync_to_remote(repo, remote, clock=clock)
    again = sync_to_remote(repo, remote, clock=clock)
    assert again.snapshots == [] and (again.source, again.destination) == (repo.location, remote.url)
    for provider, row in first.monthly_cost_after.items():     # the same storage; this sync's requests added
        after = again.monthly_cost_after[provider]
        assert (after["label"], after["stored_bytes"]) == (row["label"], row["stored_bytes"])
        assert after["storage_usd_per_month"] == row["storage_usd_per_month"]
        requests = after["put_requests_per_month"] + after["get_requests_per_month"]
        assert requests == row["put_requests_per_month"] + row["get_requests_per_month"] + again.requests
    assert first.monthly_cost_after["aws"]["storage_usd_per_month"] > 0


# -- restore -------------------------------------------------------------------------------------

def _small_tree(source: Path) -> Path:
    for folder in ("a/b", "c"):
        (source / folder).mkdir(parents=True)
    for name in ("a/one.txt", "a/b/two.txt", "c/three.json", "top.txt"):
        (source / name).write_text(name)
    (source / "link").symlink_to("top.txt")
    return source


def test_a_restore_counts_what_it_restored_and_a_dry_run_writes_nothing(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(_small_tree(tmp_path / "data")))
    dry = repo.restore(snap.id, str(tmp_path / "dry"), dry_run=True)
    assert dry.ok and (dry.files, dry.symlinks) == (4, 1) and not (tmp_path / "dry").exists()
    real = repo.restore(snap.id, str(tmp_path / "out"))
    restored_dirs = [p for p in (tmp_path / "out").rglob("*") if p.is_dir() and not p.is_symlink()]
    assert real.ok and (real.files, real.dirs, real.symlinks) == (4, len(restored_dirs), 1) == (4, dry.dirs, 1)


def test_a_restore_leaves_out_what_it_is_told_to_exclude(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(_small_tree(tmp_path / "data")))
    assert repo.restore(snap.id, str(tmp_path / "out"), exclude=("*.txt", "c/")).ok
    left = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert left == ["a", "a/b", "link"]


def test_a_restore_drops_setuid_and_setgid_bits_unless_privileged(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (source / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(source / "tool", 0o6755)
    if os.stat(source / "tool").st_mode & 0o6000 != 0o6000:
        pytest.skip("this file system or user cannot set setuid/setgid bits")
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(source))
    assert repo.restore(snap.id, str(tmp_path / "plain")).ok
    assert os.stat(tmp_path / "plain" / "tool").st_mode & 0o7777 == 0o755
    assert repo.restore(snap.id, str(tmp_path / "privileged"), privileged=True).ok
    assert os.stat(tmp_path / "privileged" / "tool").st_mode & 0o7777 == 0o6755


def _delete_data_packs(repo_dir: Path) -> None:
    """Every pack of file data goes; the tree packs stay, so the walk starts and fails part way."""
    from casstore.format.pack import parse_header

    for pack in (repo_dir / "data").rglob("*"):
        if pack.is_file() and parse_header(pack.read_bytes(), 1 << 24)[0].kind == KIND_DATA:
            pack.unlink()


@pytest.mark.parametrize("path", ["", "a"])
def test_a_restore_whose_walk_fails_reports_the_original_error(tmp_path: Path, path: str) -> None:
    import shutil
    import subprocess

    from casstore.errors import IntegrityError
    from casstore.restore.restorer import SMALL_FILE_MAX

    source = tmp_path / "data"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "big").write_bytes(os.urandom(2 * SMALL_FILE_MAX))   # read on the walk
    repo = local_repo(tmp_path / "repo")
    snap = repo.snapshot(str(source))
    _delete_data_packs(tmp_path / "repo")
    with pytest.raises(IntegrityError, match="cannot be read"):   # not EBADF from closing a descriptor twice
        repo.restore(snap.id, str(tmp_path / "out"), path=path)
    cli = subprocess.run([shutil.which("casstore") or "casstore", "--repo", str(tmp_path / "repo"), "restore", snap.id,
                          str(tmp_path / "cli-out"), *(["--path", path] if path else [])],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0
    assert "cannot be read" in cli.stderr and "Bad file descriptor" not in cli.stderr, cli.stderr


def test_reads_for_one_host_see_only_that_hosts_snapshots_even_when_another_host_is_newer(tmp_path: Path) -> None:
    from tests.helpers import write_snapshot

    repo = local_repo(tmp_path / "repo")       # this machine has no snapshot of its own: reads see every host's
    ours = write_snapshot(repo, lambda store: [], host="a", time_ns=10**18)
    newer = write_snapshot(repo, lambda store: [], host="b", time_ns=2 * 10**18)
    assert repo.resolve("latest").id == newer
    assert repo.resolve("latest", host="a").id == ours
    assert [s.id for s in repo.readable(host="a")] == [ours]
    assert {s.id for s in repo.readable(all_hosts=True)} == {ours, newer}


# -- the snapshot writer ---------------------------------------------------------------------------

def test_a_file_that_fails_while_it_is_read_is_skipped_with_an_error_that_names_it(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A read error (a bad disk sector: EIO) in one large file skips that file, names it in the
    snapshot's errors, and stores the rest."""
    import errno

    from tests.helpers import det_bytes, init_repo, write

    source = tmp_path / "data"
    write(source / "good.bin", det_bytes(512 * 1024, "good"))
    write(source / "sub" / "bad.bin", det_bytes(512 * 1024, "bad"))
    real_readv = os.readv

    def readv(fd: int, buffers):  # type: ignore[no-untyped-def]
        if os.readlink(f"/proc/self/fd/{fd}").endswith("bad.bin"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert result.summary.errors == [f"sub/bad.bin: {os.strerror(errno.EIO)}"]
    snap = repo.get(result.id)
    assert snap.read_bytes("good.bin") == det_bytes(512 * 1024, "good")
    assert "sub/bad.bin" not in {info.path for info in snap.walk()}


def test_the_chunk_window_holds_exactly_its_byte_bound_before_it_waits_for_the_oldest() -> None:
    """Tasks started elsewhere (a small-file batch in a worker process) count toward the window:
    up to `window_bytes` in flight the caller goes on without waiting; one byte past the bound
    and the oldest task is waited for and applied, in submission order."""
    from casstore.format.config import RepoConfig
    from casstore.format.index import MasterIndex
    from casstore.remotes.memory import MemoryRemote
    from casstore.snapshot.pipeline import ChunkPipeline

    class Ticket:
        def __init__(self, name: str) -> None:
            self.name = name

        def result(self) -> str:
            return self.name

    pipeline = ChunkPipeline(BlobStore(MemoryRemote(), RepoConfig.new(), MasterIndex(), origin={}),
                             workers=1, window=8, window_bytes=100)
    applied: list[str] = []
    try:
        pipeline.add_started(Ticket("a"), applied.append, 60)
        pipeline.add_started(Ticket("b"), applied.append, 40)
        assert applied == []                 # exactly the bound: nothing waited for
        pipeline.add_started(Ticket("c"), applied.append, 1)
        assert applied == ["a"]              # one byte past it: the oldest, and only it
        pipeline.drain()
        assert applied == ["a", "b", "c"]
    finally:
        pipeline.close()


# -- the repository core: hosts, forgetting, opening -------------------------------------------------

def test_reads_of_a_host_with_snapshots_see_its_own_and_every_host_only_when_asked(tmp_path: Path) -> None:
    """This machine ("testhost") has an older snapshot, another host a newer one: reads, listings
    and `latest` see this machine's; `all_hosts` sees both and its `latest` is the other host's."""
    from casstore.repo.core import for_reads
    from tests.helpers import write_snapshot

    repo = local_repo(tmp_path / "repo")
    ours = write_snapshot(repo, lambda store: [], host="testhost", time_ns=10**18)
    newer = write_snapshot(repo, lambda store: [], host="b", time_ns=2 * 10**18)
    assert repo.resolve("latest").id == ours
    assert repo.resolve("latest", all_hosts=True).id == newer
    assert [s.id for s in repo.readable()] == [ours]
    assert [s.id for s in repo.readable(all_hosts=True)] == [newer, ours]
    assert [s.id for s in repo.snapshots()] == [ours]
    assert [s.id for s in for_reads(repo.all_snapshots(), "testhost")] == [ours]


def test_forgetting_a_snapshot_this_process_never_read_removes_it(tmp_path: Path) -> None:
    from casstore.repo.core import RepoCore
    from tests.helpers import write_snapshot

    repo = local_repo(tmp_path / "repo")
    snapshot_id = write_snapshot(repo, lambda store: [])
    fresh = RepoCore.open_local(str(tmp_path / "repo"), repo.settings)
    fresh.delete_snapshot(snapshot_id)
    assert fresh.snapshot_ids() == []


def test_a_new_repository_takes_its_grace_period_from_the_settings(tmp_path: Path) -> None:
    from dataclasses import replace

    from casstore.client import Repository
    from casstore.remotes.local import LocalRemote
    from casstore.repo.core import read_config
    from casstore.settings import load_settings

    settings = replace(load_settings({"repository": str(tmp_path / "repo")}), grace_seconds=3600.0)
    Repository.init_local(str(tmp_path / "repo"), settings).close()
    assert read_config(LocalRemote(str(tmp_path / "repo"), create=False)).grace_seconds == 3600


def test_opening_a_place_with_no_repository_says_where_and_what_to_run(tmp_path: Path) -> None:
    from casstore.errors import RepositoryNotFound
    from casstore.remotes.memory import MemoryRemote
    from casstore.repo.core import RepoCore

    remote = MemoryRemote()
    with pytest.raises(RepositoryNotFound) as refused:
        RepoCore.open_remote(remote)
    assert f"no casstore repository at {remote.url} (run `casstore init`)" in str(refused.value)


def test_a_local_repository_keeps_no_copies_in_the_cache_and_a_remote_ones_stay_within_the_limit(
        tmp_path: Path) -> None:
    """The object cache is for remote repositories (objects fetched over the network): a local
    repository's own objects are never copied into it; a remote repository's copies are kept
    within `cache_max_bytes`."""
    from dataclasses import replace

    from casstore.remotes.local import LocalRemote
    from casstore.remotes.wrappers import CountingRemote
    from casstore.repo.core import RepoCore
    from casstore.repo.objectcache import LocalCache

    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=6, big_mib=1)))
    limit = 256 * 1024
    local = RepoCore.open_local(str(tmp_path / "repo"), replace(repo.settings, cache_dir=str(tmp_path / "c1")))
    remote = RepoCore.open_remote(LocalRemote(str(tmp_path / "repo"), create=False),
                                  replace(repo.settings, cache_dir=str(tmp_path / "c2"), cache_max_bytes=limit))
    for opened in (local, remote):
        assert len(opened.all_snapshots()) == 1
        store = opened.read_blob_ready()
        for (kind, blob_id), _ in list(opened.index.blobs()):
            store.read(kind, blob_id)
    assert LocalCache(str(tmp_path / "c1" / repo.config.id)).size() == 0
    assert 0 < LocalCache(str(tmp_path / "c2" / repo.config.id)).size() <= limit
    # without a limit, a remote repository read a second time reads every blob from the cache
    unbounded = replace(repo.settings, cache_dir=str(tmp_path / "c3"))
    for attempt in ("first", "again"):
        counting = CountingRemote(LocalRemote(str(tmp_path / "repo"), create=False))
        opened = RepoCore.open_remote(counting, unbounded)
        store = opened.read_blob_ready()
        for (kind, blob_id), _ in list(opened.index.blobs()):
            store.read(kind, blob_id)
        gets = counting.counts["get"]
        assert (gets > 1) if attempt == "first" else (gets == 1), (attempt, gets)   # again: the config only


class FirstReadsOfEachPackDamaged(RemoteWrapper):
    """The first two downloads from each pack come back with one byte flipped (a flaky network)."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.reads: dict[str, int] = {}

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        data = super()._get(key, offset, length, large=large)
        self.reads[key] = self.reads.get(key, 0) + 1
        if key.startswith("data/") and self.reads[key] <= 2 and data:
            return bytes([data[0] ^ 1]) + data[1:]
        return data


@pytest.mark.parametrize("attempts", [1, 3])
def test_a_damaged_download_is_read_again_up_to_the_attempts_the_settings_give(tmp_path: Path, attempts) -> None:
    from dataclasses import replace

    from casstore.errors import IntegrityError
    from casstore.format.pack import KIND_DATA
    from casstore.remotes.local import LocalRemote
    from casstore.repo.core import RepoCore

    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0)))
    settings = replace(repo.settings, cache_dir=str(tmp_path / "cache"), read_attempts=attempts)
    opened = RepoCore.open_remote(FirstReadsOfEachPackDamaged(LocalRemote(str(tmp_path / "repo"), create=False)),
                                  settings)
    opened.read_policy = replace(opened.read_policy, sleep=lambda seconds: None)
    store = opened.read_blob_ready()
    data_blobs = [blob_id for (kind, blob_id), _ in opened.index.blobs() if kind == KIND_DATA]
    if attempts == 1:
        with pytest.raises(IntegrityError):
            store.read(KIND_DATA, data_blobs[0])
    else:
        assert all(store.read(KIND_DATA, blob_id) for blob_id in data_blobs)


def test_the_compression_level_setting_compresses_new_blobs_at_that_level(tmp_path: Path) -> None:
    """CASSTORE_COMPRESSION_LEVEL overrides the repository's level for what this machine writes:
    the same source stored at level 19 takes fewer bytes than at level 1."""
    from dataclasses import replace

    from casstore.client import Repository
    from casstore.format.config import RepoConfig
    from casstore.settings import load_settings

    source = make_source(tmp_path / "data", n_json=6, big_mib=0)
    stored = {}
    for level in (1, 19):
        path = str(tmp_path / f"repo{level}")
        settings = replace(load_settings({"host": "testhost", "repository": path}), compression_level=level)
        with Repository.init_local(path, settings, RepoConfig.new(avg_size=64 * 1024, compression_level=3)) as repo:
            repo.snapshot(str(source))
            stored[level] = repo.stored_bytes(["data/"])
    assert stored[19] < stored[1]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_writer_of_a_repository_reads_its_gc_plans_and_stops_counting_condemned_packs(tmp_path: Path,
                                                                                       encrypted) -> None:
    from casstore.format.config import RepoConfig
    from casstore.format.crypto import MasterKey
    from casstore.format.layout import plan_key
    from casstore.format.plan import GcPlan, encode_plan_verified
    from casstore.repo.core import RepoCore
    from casstore.settings import load_settings

    config = RepoConfig.new(keys=MasterKey.generate() if encrypted else None)
    remote = new_memory_remote(FakeClock())
    key = plan_key(1000.0)
    remote.put(key, encode_plan_verified(GcPlan(["aa" * 32], [], host="one"), key, config.sealer))
    repo = RepoCore(remote, config, load_settings({"host": "testhost"}))
    assert repo.load_plans() == [key]
    assert repo.index.condemned == {"aa" * 32}


def test_an_exclusive_hold_of_the_local_repository_shuts_out_readers(tmp_path: Path) -> None:
    """gc holds the repository exclusively (design 5.8): a read that does not wait is refused."""
    from casstore.errors import LockError
    from casstore.repo.lock import repository_lock

    repo = local_repo(tmp_path / "repo")

    def read_without_waiting() -> None:
        with repository_lock(str(tmp_path / "repo"), wait=False):
            pass

    with repo.locked(exclusive=True), pytest.raises(LockError, match="locked exclusively"):
        read_without_waiting()
    with repo.locked():
        read_without_waiting()          # shared with shared: both go on


def test_a_remote_repository_with_a_damaged_index_object_skips_it_and_reads_the_rest(tmp_path: Path) -> None:
    """design 5.6: readers skip an index object that cannot be read, with a warning."""
    from dataclasses import replace

    from casstore.remotes.local import LocalRemote
    from casstore.repo.core import RepoCore

    repo = local_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0))).id
    remote = LocalRemote(str(tmp_path / "repo"), create=False)
    remote.put("index/" + "ab" * 32, b"not an index")
    opened = RepoCore.open_remote(remote, replace(repo.settings, cache_dir=str(tmp_path / "cache"), read_attempts=1))
    opened.load_index()
    assert "ab" * 32 not in opened.index.index_packs
    store = opened.read_blob_ready()
    assert all(store.read(kind, blob_id) for (kind, blob_id), _ in list(opened.index.blobs()))
    assert [s.id for s in opened.all_snapshots()] == [snapshot_id]


def test_a_writer_that_reloads_the_index_mid_session_keeps_the_packs_it_has_not_indexed_yet(tmp_path: Path) -> None:
    """A writer whose index came from the local table cache uploads packs (no index lists them
    yet), then misses a blob and reloads: its own packs stay known and readable, so it neither
    stores their blobs again nor fails to read them."""
    from casstore.format.config import RepoConfig
    from casstore.repo.core import RepoCore

    repo = local_repo(tmp_path / "repo", config=RepoConfig.new(avg_size=64 * 1024, pack_size=4096))
    repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0)))
    RepoCore.open_local(str(tmp_path / "repo"), repo.settings).load_index()      # the table cache is saved
    writer = RepoCore.open_local(str(tmp_path / "repo"), repo.settings)
    writer.load_index()                                                          # ... and restored
    store = writer.blob_store()
    blobs = {store.add(KIND_DATA, data)[0]: data for data in (os.urandom(5000) for _ in range(3))}
    store.wait_uploads()
    writer.reload_index()
    assert all(store.has(KIND_DATA, blob_id) for blob_id in blobs)
    assert all(store.read(KIND_DATA, blob_id) == data for blob_id, data in blobs.items())
    store.close()


def test_an_encrypted_repository_reads_back_on_a_machine_with_no_caches(tmp_path: Path, monkeypatch) -> None:
    """Another machine (an empty cache folder: no index table) decodes the sealed index objects
    themselves, and a second encrypted init where one exists leaves its key slots as they were."""
    from dataclasses import replace

    from casstore.client import Repository
    from casstore.errors import RepositoryExists
    from casstore.format import layout
    from casstore.remotes.local import LocalRemote
    from casstore.repo import keys
    from casstore.settings import load_settings

    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.setenv("CASSTORE_PASSWORD", "correct horse battery staple 15")
    keys.forget_unlocked()
    try:
        settings = load_settings({"repository": str(tmp_path / "repo")})
        config = _encrypted_config(settings)
        source = make_source(tmp_path / "data", n_json=2, big_mib=0)
        with Repository.init_local(str(tmp_path / "repo"), settings, config) as repo:
            snapshot_id = repo.snapshot(str(source)).id
        remote = LocalRemote(str(tmp_path / "repo"), create=False)
        slots = sorted(info.key for info in remote.list(layout.KEYS_PREFIX))
        with pytest.raises(RepositoryExists):
            Repository.init_local(str(tmp_path / "repo"), settings, _encrypted_config(settings))
        assert sorted(info.key for info in remote.list(layout.KEYS_PREFIX)) == slots
        keys.forget_unlocked()
        elsewhere = replace(settings, cache_dir=str(tmp_path / "other-machine-cache"))
        with Repository.open_local(str(tmp_path / "repo"), elsewhere) as repo:
            repo.restore(snapshot_id, str(tmp_path / "out"))
        assert tree_digest(tmp_path / "out") == tree_digest(source)
    finally:
        keys.forget_unlocked()


def _encrypted_config(settings):  # type: ignore[no-untyped-def]
    from casstore.format.config import RepoConfig
    from casstore.repo import keys

    return RepoConfig.new(min_size=4096, avg_size=16384, max_size=65536, keys=keys.new_key(settings, "testhost"))


# -- the sync's re-check before its commit ----------------------------------------------------------

@pytest.mark.parametrize(("past_half", "rechecks"), [(0.0, 1), (1.0, 2)], ids=["exactly half", "a second more"])
def test_a_commit_lists_again_only_when_more_than_half_a_grace_period_passed_since_the_recheck(
        tmp_path: Path, monkeypatch, past_half, rechecks) -> None:
    """design 9: the re-check protects the commit for half a grace period; exactly half is still
    inside it (no new listing), a second more is not (the commit re-checks first)."""
    from casstore.sync import copier

    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0)))
    seen: list[str] = []

    def pause(name: str) -> None:
        if name == "after-recheck":
            if not seen:
                clock.advance(repo.config.grace_seconds / 2 + past_half)
            seen.append(name)

    monkeypatch.setattr(copier, "pause_point", pause)
    report = sync_to_remote(repo, remote, clock=clock)
    assert len(report.snapshots) == 1
    assert len(seen) == rechecks


def test_a_sync_reports_its_progress_in_bytes_and_estimates_the_stored_bytes_it_uploads(tmp_path: Path) -> None:
    """The progress callback receives every blob's raw length (they add up to the announced
    total), and the estimate of the stored bytes to upload is what the packs then hold, give or
    take their headers."""
    clock = FakeClock()
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data", n_json=6, big_mib=1)))
    dry = sync_to_remote(repo, new_memory_remote(clock), dry_run=True, clock=clock)
    progress: list[int] = []
    real = sync_to_remote(repo, new_memory_remote(clock), progress=progress.append, clock=clock)
    assert sum(progress) == real.bytes_missing > 0
    assert dry.bytes_missing_stored == real.bytes_missing_stored
    assert 0.9 * real.bytes_uploaded < real.bytes_missing_stored <= real.bytes_uploaded


def test_a_sync_interrupted_after_its_snapshot_landed_leaves_it_pending_and_the_next_sync_confirms_it(
        tmp_path: Path, monkeypatch) -> None:
    """A crash between the snapshot's put and its post-commit check: the snapshot is recorded as
    pending (not synced), and the next sync runs the check and only then records it synced."""
    from casstore.sync import copier

    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    snapshot_id = repo.snapshot(str(make_source(tmp_path / "data", n_json=2, big_mib=0))).id

    class Crash(Exception):
        pass

    def pause(name: str) -> None:
        if name == "after-snapshot-put":
            raise Crash(name)

    monkeypatch.setattr(copier, "pause_point", pause)
    with pytest.raises(Crash):
        sync_to_remote(repo, remote, clock=clock)
    state = SyncState(repo.local_dir, remote.url)
    assert snapshot_id in state.pending and snapshot_id not in state.synced
    monkeypatch.undo()
    sync_to_remote(repo, remote, clock=clock)
    after = SyncState(repo.local_dir, remote.url)
    assert snapshot_id in after.synced and not after.pending


def test_a_sync_of_several_snapshots_rechecks_before_a_commit_that_comes_late(tmp_path: Path, monkeypatch) -> None:
    """Two snapshots in one sync, the second adding nothing new, and more than half a grace
    period passing after the first commit: the second commit re-checks first, and both land."""
    from casstore.sync import copier

    clock = FakeClock()
    remote = new_memory_remote(clock)
    repo = local_repo(tmp_path / "repo")
    source = make_source(tmp_path / "data", n_json=2, big_mib=0)
    ids = [repo.snapshot(str(source)).id for _ in range(2)]
    seen: list[str] = []

    def pause(name: str) -> None:
        seen.append(name)
        if name == "after-snapshot-put" and seen.count(name) == 1:
            clock.advance(0.6 * repo.config.grace_seconds)

    monkeypatch.setattr(copier, "pause_point", pause)
    report = sync_to_remote(repo, remote, clock=clock)
    assert sorted(report.snapshots) == sorted(ids)
    assert {info.key.removeprefix("snapshots/") for info in remote.list("snapshots/")} == set(ids)
    assert seen.count("after-recheck") == 2
