"""Retention: which snapshots a policy keeps, which rule kept each, and `forget` (design 9).

The rules are restic's `forget` rules, applied per (host, source) group, newest first:

- `last N`: the N newest complete snapshots;
- `hourly/daily/weekly/monthly/yearly N`: the newest snapshot of each of the last N hours, days,
  ISO weeks, months, years that have one (buckets in UTC, so every host agrees);
- `within D`: every snapshot taken at most D before the group's newest snapshot;
- `tags`: every snapshot carrying one of the tags.

A snapshot is kept when any rule keeps it; every reason is reported.

**Choice (incomplete snapshots).** `latest` and `--keep-last` count only complete snapshots
(design 4), so an incomplete snapshot fills no slot of a counting rule (last, hourly ... yearly).
It is kept while it is newer than the group's newest complete snapshot (it holds the newest data
of the files it could read, as kopia keeps incomplete snapshots until a complete one follows), or
when `within` or a tag keeps it; otherwise it goes.

`apply_retention(repo, policy)` deletes the snapshot objects of the local repository (under its
shared lock) or of a remote repository. Data goes only when gc runs. With a remote configured,
a local snapshot never synced there is not dropped unless `force=True` (design 8.0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

from casstore.errors import CasstoreError, ConfigError, ObjectNotFound, SnapshotNotFound
from casstore.remotes.registry import normalized_remote_url
from casstore.repo.core import RepoCore, SnapshotInfo, check_ref
from casstore.settings import parse_duration
from casstore.sync.state import SyncState

log = logging.getLogger(__name__)

BUCKETS = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0              # seconds before the group's newest snapshot
    tags: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.last or any(getattr(self, b) for b in BUCKETS) or self.within or self.tags)

    @classmethod
    def coerce(cls, policy: RetentionPolicy | Mapping) -> RetentionPolicy:
        """A policy, or a mapping such as {"keep_last": 30} or {"last": 30, "within": "30d"}."""
        if isinstance(policy, RetentionPolicy):
            return policy

        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in policy.items():
            name = key.removeprefix("keep_")
            name = "tags" if name == "tag" else name
            if name not in known:
                raise ConfigError(f"unknown retention rule {key!r}")
            if value is None:
                continue
            if name == "within":
                value = parse_duration(value) if isinstance(value, str) else float(value)
            elif name == "tags":
                value = (value,) if isinstance(value, str) else tuple(value)
            values[name] = value
        return cls(**values)

    def describe(self) -> str:
        parts = [f"keep {getattr(self, n)} {n}" for n in ("last", *BUCKETS) if getattr(self, n)]
        if self.within:
            parts.append(f"keep within {_duration(self.within)}")
        parts += [f"keep tag {t}" for t in self.tags]
        return ", ".join(parts) or "no rule"


def policy_from_settings(settings) -> RetentionPolicy | None:
    """The scheduled runs' policy: CASSTORE_KEEP_LAST (the seed keeps 30); None when unset."""
    keep_last = getattr(settings, "keep_last", None)
    return RetentionPolicy(last=keep_last) if keep_last else None


# -- deciding --------------------------------------------------------------------------------

@dataclass
class Decision:
    snapshot: SnapshotInfo
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict:
        m = self.snapshot.manifest
        return {"id": self.snapshot.id, "short_id": self.snapshot.id[:8], "time": m.time.isoformat(),
                "tags": list(m.tags), "incomplete": m.incomplete, "reasons": self.reasons}


@dataclass
class GroupDecision:
    host: str
    source: str
    decisions: list[Decision]

    @property
    def keep(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def as_dict(self) -> dict:
        return {"host": self.host, "source": self.source, "keep": [d.as_dict() for d in self.keep],
                "remove": [d.as_dict() for d in self.remove]}


def decide(snapshots: list, policy: RetentionPolicy) -> list[GroupDecision]:
    """Group `snapshots` (SnapshotInfo) by (host, source) and apply `policy` to each group."""
    groups: dict[tuple[str, str], list] = {}
    for info in snapshots:
        groups.setdefault((info.manifest.host, info.manifest.source), []).append(info)
    return [GroupDecision(host, source, _decide_group(members, policy))
            for (host, source), members in sorted(groups.items())]


def _decide_group(members: list, policy: RetentionPolicy) -> list[Decision]:
    ordered = sorted(members, key=lambda s: (s.manifest.time_ns, s.id), reverse=True)
    complete = [s.manifest.time_ns for s in ordered if not s.manifest.incomplete]
    newest_complete = complete[0] if complete else None
    horizon = ordered[0].manifest.time_ns - int(policy.within * 1e9) if ordered else 0
    counters = {name: getattr(policy, name) for name in ("last", *BUCKETS)}
    last_bucket: dict[str, str | None] = dict.fromkeys(BUCKETS)
    decisions = []
    for info in ordered:
        m = info.manifest
        reasons = [f"tag {t}" for t in policy.tags if t in m.tags]
        if policy.within and m.time_ns >= horizon:
            reasons.append(f"within {_duration(policy.within)}")
        if m.incomplete:
            if newest_complete is None or m.time_ns > newest_complete:
                reasons.append("incomplete, newer than the newest complete snapshot")
        else:
            reasons += _counting_reasons(m.time, counters, last_bucket)
        decisions.append(Decision(info, reasons))
    return decisions


def _counting_reasons(when: datetime, counters: dict[str, int], last_bucket: dict) -> list[str]:
    reasons = []
    if counters["last"] > 0:
        counters["last"] -= 1
        reasons.append("last")
    for name in BUCKETS:
        if counters[name] > 0:
            bucket = _bucket(when, name)
            if bucket != last_bucket[name]:
                last_bucket[name] = bucket
                counters[name] -= 1
                reasons.append(f"{name} {bucket}")
    return reasons


def _bucket(when: datetime, name: str) -> str:
    when = when.astimezone(UTC)
    if name == "weekly":
        year, week, _ = when.isocalendar()
        return f"{year}-w{week:02d}"
    return when.strftime({"hourly": "%Y-%m-%d %H:00", "daily": "%Y-%m-%d", "monthly": "%Y-%m", "yearly": "%Y"}[name])


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- forgetting ------------------------------------------------------------------------------

@dataclass
class RetentionResult:
    location: str
    policy: RetentionPolicy
    groups: list[GroupDecision]
    dry_run: bool = False
    removed: list[str] = field(default_factory=list)
    gc: dict | None = None

    @property
    def to_remove(self) -> list[str]:
        return [d.snapshot.id for g in self.groups for d in g.remove]

    def as_dict(self) -> dict:
        return {"location": self.location, "policy": asdict(self.policy), "dry_run": self.dry_run,
                "groups": [g.as_dict() for g in self.groups], "removed": self.removed,
                "kept": sum(len(g.keep) for g in self.groups), "gc": self.gc}


class UnsyncedSnapshots(CasstoreError):
    """forget would drop local snapshots the configured remote does not have yet."""


def apply_retention(repo: RepoCore, policy: RetentionPolicy | Mapping, dry_run: bool = False, *,
                    host: str | None = None, all_hosts: bool = False, force: bool = False) -> RetentionResult:
    """Apply `policy` to the snapshots of `repo` (the current host's unless `host`/`all_hosts`)."""
    policy = RetentionPolicy.coerce(policy)
    if policy.empty:
        raise ConfigError("no retention rule given (e.g. --keep-last 30); forget removes nothing without one")
    with repo.locked():
        groups = decide(repo.snapshots(host=host, all_hosts=all_hosts), policy)
        result = RetentionResult(repo.location, policy, groups, dry_run)
        if not force:
            _refuse_unsynced(repo, result.to_remove)
        if not dry_run:
            for snapshot_id in result.to_remove:
                _forget(repo, snapshot_id)
                result.removed.append(snapshot_id)
    return result


def forget_snapshots(repos: Sequence[RepoCore], refs: list[str], dry_run: bool = False) -> dict[str, list[str]]:
    """Forget the named snapshots (ids or unique prefixes) from every repository in `repos` that holds
    them (`casstore forget ID...`: the local repository and the configured remote, so a read that
    falls through cannot bring them back). Every ref is resolved before anything is deleted; one
    that no repository holds is SnapshotNotFound. Returns {snapshot id: [locations]}."""
    found: dict[str, list[RepoCore]] = {}
    for ref in refs:
        ids = set()
        for repo in repos:
            try:
                snapshot_id = repo.resolve(check_ref(ref)).id
            except SnapshotNotFound as exc:
                if "ambiguous" in str(exc):
                    raise
                continue
            ids.add(snapshot_id)
            holders = found.setdefault(snapshot_id, [])
            if repo not in holders:
                holders.append(repo)
        if not ids:
            raise SnapshotNotFound(f"no snapshot with id {ref} in " + " or ".join(r.location for r in repos))
        if len(ids) > 1:
            raise SnapshotNotFound(f"snapshot id {ref} is ambiguous; give more digits")
    done: dict[str, list[str]] = {}
    for snapshot_id, holders in found.items():
        for repo in holders:
            if not dry_run:
                with repo.locked():
                    _forget(repo, snapshot_id)
            done.setdefault(snapshot_id, []).append(repo.location)
    return done


def _forget(repo: RepoCore, snapshot_id: str) -> None:
    try:
        repo.delete_snapshot(snapshot_id)
    except ObjectNotFound:
        pass
    log.info("forgot snapshot %s", snapshot_id[:8])


def _refuse_unsynced(repo: RepoCore, snapshot_ids: list[str]) -> None:
    """With a remote configured, a local snapshot never synced there is kept (design 8.0)."""
    if repo.local_dir is None or not repo.settings.remote or not snapshot_ids:
        return

    url = normalized_remote_url(repo.settings.remote)    # no client opened: forget works offline
    state = SyncState(repo.local_dir, url)
    unsynced = [i for i in snapshot_ids if i not in state.synced and i not in state.pulled()]
    if unsynced:
        shown = ", ".join(i[:8] for i in unsynced[:5]) + (" ..." if len(unsynced) > 5 else "")
        raise UnsyncedSnapshots(f"{len(unsynced)} snapshot(s) to forget were never synced to {url} ({shown}); "
                                "run `casstore sync` first, or pass --force to drop them anyway")


__all__ = ["Decision", "GroupDecision", "RetentionPolicy", "RetentionResult", "UnsyncedSnapshots",
           "apply_retention", "decide", "forget_snapshots", "policy_from_settings"]
