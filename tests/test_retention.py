"""Retention policies (restic's forget rules, per host and source) and `forget`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from casstore.client import Repository, SnapshotInfo
from casstore.errors import ConfigError
from casstore.format.snapshot import SnapshotManifest
from casstore.gc.retention import (
    RetentionPolicy,
    UnsyncedSnapshots,
    apply_retention,
    decide,
    policy_from_settings,
)
from casstore.remotes.memory import MemoryRemote
from casstore.settings import load_settings
from tests.gc_helpers import FakeClock, Writer, cli_json, new_memory_remote
from tests.helpers import invoke, write_snapshot

T0 = datetime(2024, 12, 29, 12, 0, tzinfo=UTC)   # a Sunday; the next day starts ISO week 2025-W01


def snap(when: datetime, *, host: str = "h", source: str = "/data", tags=(), incomplete: bool = False):
    manifest = SnapshotManifest(time_ns=int(when.timestamp() * 1e9), host=host, source=source, tree=b"\0" * 32,
                                tags=list(tags), incomplete=incomplete)
    return SnapshotInfo(uuid.uuid4().hex * 2, manifest)


def kept(snapshots, **policy) -> dict:
    """id -> reasons of every kept snapshot (all groups)."""
    groups = decide(snapshots, RetentionPolicy(**policy))
    return {d.snapshot.id: d.reasons for g in groups for d in g.keep}


def test_keep_last_counts_complete_snapshots_only():
    s = [snap(T0 + timedelta(hours=i), incomplete=i in (1, 4)) for i in range(5)]
    result = kept(s, last=2)
    assert set(result) == {s[4].id, s[3].id, s[2].id}
    assert result[s[4].id] == ["incomplete, newer than the newest complete snapshot"]
    assert result[s[3].id] == ["last"] and result[s[2].id] == ["last"]


def test_old_incomplete_snapshot_goes_unless_a_time_or_tag_rule_keeps_it():
    s = [snap(T0, incomplete=True, tags=["x"]), snap(T0 + timedelta(hours=1), incomplete=True),
         snap(T0 + timedelta(hours=2))]
    assert set(kept(s, last=5)) == {s[2].id}
    assert set(kept(s, last=5, tags=("x",))) == {s[0].id, s[2].id}
    assert set(kept(s, last=5, within=3600)) == {s[1].id, s[2].id}


def test_daily_keeps_the_newest_of_each_of_the_last_days():
    s = [snap(T0 - timedelta(days=d, hours=h)) for d in range(5) for h in (0, 3, 6)]
    result = kept(s, daily=3)
    assert set(result) == {s[0].id, s[3].id, s[6].id}
    assert result[s[3].id] == ["daily 2024-12-28"]


def test_hourly_weekly_monthly_yearly_buckets():
    hours = [snap(T0 + timedelta(minutes=20 * i)) for i in range(7)]        # 12:00 .. 14:00
    assert {r[0] for r in kept(hours, hourly=2).values()} == {"hourly 2024-12-29 14:00", "hourly 2024-12-29 13:00"}
    days = [snap(T0 + timedelta(days=d)) for d in range(3)]                  # Sun, Mon, Tue
    assert sorted(r[0] for r in kept(days, weekly=5).values()) == ["weekly 2024-w52", "weekly 2025-w01"]
    months = [snap(T0 - timedelta(days=10 * i)) for i in range(8)]
    assert len(kept(months, monthly=2)) == 2
    assert sorted(r[0] for r in kept(months, yearly=3).values()) == ["yearly 2024"]


def test_within_is_measured_from_the_newest_snapshot_of_the_group():
    s = [snap(T0 - timedelta(days=d)) for d in range(10)]
    assert set(kept(s, within=3 * 86400)) == {x.id for x in s[:4]}
    assert kept(s, within=3 * 86400)[s[0].id] == ["within 3d"]


def test_every_reason_is_reported_and_groups_are_independent():
    a = [snap(T0 + timedelta(days=d), tags=["release"] if d == 0 else []) for d in range(3)]
    b = [snap(T0 + timedelta(days=d), host="other") for d in range(3)]
    c = [snap(T0 + timedelta(days=d), source="/elsewhere") for d in range(3)]
    result = kept(a + b + c, last=1, daily=2, tags=("release",))
    assert len(result) == 3 * 2 + 1
    assert result[a[2].id] == ["last", "daily 2024-12-31"]
    assert result[a[0].id] == ["tag release"]
    groups = decide(a + b + c, RetentionPolicy(last=1))
    assert [(g.host, g.source) for g in groups] == [("h", "/data"), ("h", "/elsewhere"), ("other", "/data")]


def test_policies_from_mappings_and_settings():
    assert RetentionPolicy.coerce({"keep_last": 30}) == RetentionPolicy(last=30)
    assert RetentionPolicy.coerce({"within": "30d", "keep_tag": "x"}) == RetentionPolicy(within=30 * 86400,
                                                                                      tags=("x",))
    assert RetentionPolicy.coerce({"keep_tag": ["x", "y"]}) == RetentionPolicy(tags=("x", "y"))
    assert RetentionPolicy.coerce({"within": 3600}) == RetentionPolicy(within=3600.0)
    with pytest.raises(ConfigError):
        RetentionPolicy.coerce({"keep_everything": 1})
    assert policy_from_settings(load_settings({"keep_last": 30})) == RetentionPolicy(last=30)
    assert policy_from_settings(load_settings({}, environ={})) == RetentionPolicy(last=30), "the seed kept 30"
    assert policy_from_settings(load_settings(environ={"CASSTORE_KEEP_LAST": "0"})) is None, "0 turns it off"
    assert policy_from_settings(load_settings(environ={"CASSTORE_KEEP_LAST": "7"})) == RetentionPolicy(last=7)


# -- forget on repositories -------------------------------------------------------------------

def _repo_with_hosts(tmp_path) -> Repository:
    from tests.helpers import init_repo

    repo = init_repo(tmp_path / "repo")
    for i in range(3):
        for host in ("testhost", "other"):
            write_snapshot(repo, lambda store: [], host=host, time_ns=int((T0 + timedelta(hours=i)).timestamp() * 1e9))
    return repo


def _hosts(repo) -> list[str]:
    return sorted(s.manifest.host for s in repo.all_snapshots())


def test_forget_acts_on_this_hosts_snapshots_unless_told_otherwise(tmp_path):
    repo = _repo_with_hosts(tmp_path)
    result = apply_retention(repo, {"keep_last": 1})
    assert len(result.removed) == 2 and _hosts(repo) == ["other"] * 3 + ["testhost"]
    apply_retention(repo, RetentionPolicy(last=1), host="other")
    assert _hosts(repo) == ["other", "testhost"]
    repo2 = _repo_with_hosts(tmp_path / "second")
    assert len(apply_retention(repo2, {"keep_last": 1}, all_hosts=True).removed) == 4


def test_dry_run_and_empty_policy_remove_nothing(tmp_path):
    repo = _repo_with_hosts(tmp_path)
    result = apply_retention(repo, {"keep_last": 1}, dry_run=True)
    assert len(result.to_remove) == 2 and not result.removed and len(_hosts(repo)) == 6
    with pytest.raises(ConfigError):
        apply_retention(repo, RetentionPolicy())


def test_forget_on_a_remote_repository(tmp_path):
    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "testhost", clock)
    for seed in range(3):
        writer.edit(seed)
        writer.snapshot()
    writer.sync(remote)
    on_remote = Repository.open_remote(remote, load_settings({"cache_dir": str(tmp_path / "c")}))
    assert len(apply_retention(on_remote, {"keep_last": 1}).removed) == 2
    assert len(on_remote.snapshot_ids()) == 1 and len(writer.repo.snapshot_ids()) == 3


def test_local_forget_keeps_snapshots_never_synced_unless_forced(tmp_path):
    url = f"memory://{uuid.uuid4().hex}"
    writer = Writer(tmp_path / "a", "testhost", FakeClock())
    writer.repo.settings = writer.repo.settings.with_overrides(remote=url)
    first = writer.snapshot()
    writer.repo.sync()
    writer.edit(1)
    second = writer.snapshot()
    assert apply_retention(writer.repo, {"keep_last": 1}).removed == [first], "a synced snapshot may go"
    writer.edit(2)
    writer.snapshot()
    with pytest.raises(UnsyncedSnapshots, match="never synced"):
        apply_retention(writer.repo, {"keep_last": 1})
    assert second in writer.repo.snapshot_ids()
    assert apply_retention(writer.repo, {"keep_last": 1}, force=True).removed == [second]


def test_forget_checks_what_a_cloud_remote_holds_without_opening_it(tmp_path, monkeypatch):
    # the sync state is keyed by the remote's URL: forget works it out offline, with no SDK client,
    # no credentials and no network (opening an Azure remote without its connection string fails)
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"):
        monkeypatch.delenv(name, raising=False)
    writer = Writer(tmp_path / "a", "testhost", FakeClock())
    writer.repo.settings = writer.repo.settings.with_overrides(remote="az://container//backups")
    writer.snapshot()
    writer.edit(1)
    writer.snapshot()
    with pytest.raises(UnsyncedSnapshots, match=r"never synced to az://container/backups/ \("):
        apply_retention(writer.repo, {"keep_last": 1})


def test_cli_forget_prints_which_rule_kept_each_snapshot(tmp_path, monkeypatch):
    repo = _repo_with_hosts(tmp_path)
    out = invoke("forget", "--repo", repo.local_dir, "--keep-last", "1", "--keep-daily", "1", "--dry-run").stdout
    assert "keep   " in out and "(last; daily 2024-12-29)" in out and out.count("  remove ") == 2
    assert "dry run: would forget 2 snapshot(s)" in out
    data = cli_json("forget", "--repo", repo.local_dir, "--keep-within", "1h", "--all-hosts", "--json")
    assert len(data["removed"]) == 2 and data["kept"] == 4
    monkeypatch.setenv("CASSTORE_KEEP_LAST", "0")   # no default policy either
    error = invoke("forget", "--repo", repo.local_dir, expect=2)
    assert "no retention rule" in error.stderr


def test_cli_forget_without_rules_uses_casstore_keep_last(tmp_path, monkeypatch):
    repo = _repo_with_hosts(tmp_path)
    monkeypatch.setenv("CASSTORE_KEEP_LAST", "2")
    data = cli_json("forget", "--repo", repo.local_dir, "--json")
    assert data["policy"]["last"] == 2 and len(data["removed"]) == 1


@pytest.mark.parametrize("seconds, shown", [(7 * 86400, "7d"), (86400, "1d"), (90000, "25h"), (7200, "2h"),
                                            (3600, "1h"), (5400, "90m"), (60, "1m"), (59, "59s"), (1.5, "1.5s")])
def test_the_policy_describes_a_duration_in_its_largest_whole_unit(seconds, shown):
    policy = RetentionPolicy(last=3, within=seconds, tags=("keep",))
    assert policy.describe() == f"keep 3 last, keep within {shown}, keep tag keep"
    assert RetentionPolicy.coerce({"within": shown}).within == seconds    # and it reads back as it was


def test_forget_json_reports_each_decision_with_its_snapshot_and_reasons(tmp_path):
    """The JSON a script reads from `forget --json`: per group, each kept and removed snapshot."""
    repo = _repo_with_hosts(tmp_path)
    data = cli_json("forget", "--repo", repo.local_dir, "--keep-last", "1", "--dry-run", "--json")
    assert set(data) == {"location", "policy", "dry_run", "groups", "removed", "kept", "gc"}
    assert data["dry_run"] is True and data["removed"] == [] and data["kept"] == 1
    assert data["location"] == repo.local_dir and data["gc"] is None, "which repository; no gc ran (no --prune)"
    (group,) = data["groups"]
    assert set(group) == {"host", "source", "keep", "remove"}
    assert (group["host"], len(group["keep"]), len(group["remove"])) == ("testhost", 1, 2)
    newest = group["keep"][0]
    assert set(newest) == {"id", "short_id", "time", "tags", "incomplete", "reasons"}
    assert newest["reasons"] == ["last"] and newest["incomplete"] is False and newest["short_id"] == newest["id"][:8]
    assert datetime.fromisoformat(newest["time"]) == T0 + timedelta(hours=2)
    assert all(d["reasons"] == [] for d in group["remove"])


def test_forget_by_id_reports_where_it_forgot_and_names_an_unknown_id_and_where_it_looked(tmp_path):
    from casstore.errors import SnapshotNotFound
    from casstore.gc.retention import forget_snapshots

    repo = _repo_with_hosts(tmp_path)
    target = sorted(s.id for s in repo.all_snapshots())[0]
    assert forget_snapshots([repo], [target[:12]], dry_run=True) == {target: [repo.location]}
    assert target in {s.id for s in repo.all_snapshots()}            # a dry run forgets nothing
    assert forget_snapshots([repo], [target]) == {target: [repo.location]}
    assert target not in {s.id for s in repo.all_snapshots()}
    with pytest.raises(SnapshotNotFound) as unknown:
        forget_snapshots([repo], ["deadbeef"], dry_run=True)
    assert str(unknown.value) == f"no snapshot with id deadbeef in {repo.location}"


def test_monthly_buckets_tell_the_same_month_of_different_centuries_apart():
    s = [snap(datetime(1926, 1, 5, tzinfo=UTC)), snap(datetime(2026, 1, 5, tzinfo=UTC))]
    assert set(kept(s, monthly=2)) == {s[0].id, s[1].id}


def test_forget_by_id_searches_the_local_repository_and_its_remote_and_refuses_an_id_ambiguous_across_them(tmp_path):
    """`casstore forget ID` acts on the local repository and the configured remote: a snapshot only
    the remote holds is found there, one both hold goes from both, and a prefix that names a
    different snapshot in each is refused before anything is deleted."""
    from casstore.errors import SnapshotNotFound
    from casstore.gc.retention import forget_snapshots

    settings = load_settings({"host": "h"})
    local = Repository.init_local(str(tmp_path / "local"), settings)
    remote = Repository.init_remote(MemoryRemote(name=uuid.uuid4().hex), settings)
    only_remote = write_snapshot(remote, lambda store: [], host="h", time_ns=10**18)
    both = [write_snapshot(r, lambda store: [], host="h", time_ns=2 * 10**18) for r in (local, remote)]
    assert both[0] == both[1]                 # the same manifest: the same id in each
    assert forget_snapshots([local, remote], [only_remote[:10]]) == {only_remote: [remote.location]}
    assert forget_snapshots([local, remote], [both[0]]) == {both[0]: [local.location, remote.location]}
    assert local.all_snapshots() == [] and remote.all_snapshots() == []

    by_prefix: dict[str, int] = {}          # two manifests whose ids share their first 4 hex digits
    for n in range(1, 100_000):
        snapshot_id, _ = SnapshotManifest(time_ns=n, host="h", source="/s", tree=b"\0" * 32).encode(None)
        if snapshot_id[:4] in by_prefix:
            first, second = by_prefix[snapshot_id[:4]], n
            break
        by_prefix[snapshot_id[:4]] = n
    ids = [local.write_snapshot(SnapshotManifest(time_ns=first, host="h", source="/s", tree=b"\0" * 32))[0],
           remote.write_snapshot(SnapshotManifest(time_ns=second, host="h", source="/s", tree=b"\0" * 32))[0]]
    with pytest.raises(SnapshotNotFound, match=f"snapshot id {ids[0][:4]} is ambiguous"):
        forget_snapshots([local, remote], [ids[0][:4]])
    assert [s.id for s in local.all_snapshots()] == [ids[0]] and [s.id for s in remote.all_snapshots()] == [ids[1]]
    with pytest.raises(SnapshotNotFound) as unknown:
        forget_snapshots([local, remote], ["deadbeef"])
    assert str(unknown.value) == f"no snapshot with id deadbeef in {local.location} or {remote.location}"
    local.write_snapshot(SnapshotManifest(time_ns=second, host="h", source="/s", tree=b"\0" * 32))
    with pytest.raises(SnapshotNotFound, match=r"is ambiguous \(2 match\)"):     # within one repository
        forget_snapshots([local, remote], [ids[0][:4]])
    assert len(local.all_snapshots()) == 2 and len(remote.all_snapshots()) == 1



def _snap_ns(time_ns: int):
    return SnapshotInfo(uuid.uuid4().hex * 2, SnapshotManifest(time_ns=time_ns, host="h", source="/data",
                                                               tree=b"\0" * 32))


def test_within_keeps_a_snapshot_exactly_that_old_and_not_a_nanosecond_older():
    newest_ns, day_ns = int(T0.timestamp()) * 10**9, 86400 * 10**9
    newest, edge, past = _snap_ns(newest_ns), _snap_ns(newest_ns - day_ns), _snap_ns(newest_ns - day_ns - 1)
    assert set(kept([newest, edge, past], within=86400)) == {newest.id, edge.id}


def test_a_policy_from_a_mapping_takes_each_rule_in_its_own_type():
    """What the API and the settings pass: a duration in seconds or as text, one tag or several."""
    assert RetentionPolicy.coerce({"keep_within": 86400}).within == 86400.0
    assert RetentionPolicy.coerce({"within": 1e16}).within == 1e16, "a number is seconds, in any notation"
    assert RetentionPolicy.coerce({"within": "2h"}).within == 7200.0
    assert RetentionPolicy.coerce({"keep_tag": "release"}).tags == ("release",)
    assert RetentionPolicy.coerce({"tags": ["a", "b"]}).tags == ("a", "b")
    with pytest.raises(ConfigError, match="unknown retention rule 'keep_forever'"):
        RetentionPolicy.coerce({"keep_forever": 1})
    assert RetentionPolicy().describe() == "no rule"


def test_monthly_buckets_are_named_by_their_month():
    months = [snap(T0 - timedelta(days=10 * i)) for i in range(8)]
    assert sorted(r[0] for r in kept(months, monthly=2).values()) == ["monthly 2024-11", "monthly 2024-12"]


def test_buckets_are_utc_days_whatever_the_machines_timezone(monkeypatch):
    """01:00 UTC on 1 January is still 31 December in New York: the bucket is the UTC day."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        s = [snap(datetime(2024, 1, 1, 1, 0, tzinfo=UTC)), snap(datetime(2023, 12, 31, 20, 0, tzinfo=UTC))]
        assert sorted(r[0] for r in kept(s, daily=5).values()) == ["daily 2023-12-31", "daily 2024-01-01"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_forget_reports_the_repository_it_acted_on_and_no_gc_when_not_asked(tmp_path):
    path = str(tmp_path / "repo")
    repo = Repository.init_local(path, load_settings({"host": "h", "repository": path}))
    write_snapshot(repo, lambda store: [], host="h")
    doc = apply_retention(repo, {"keep_last": 1}, dry_run=True).as_dict()
    assert (doc["location"], doc["gc"]) == (repo.location, None)
