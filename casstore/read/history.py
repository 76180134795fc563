"""History: one row per snapshot where a file, or the value at a key path inside it, changed.

Snapshots are visited oldest first. The file's entry is found through a TreeCache (a subtree
unchanged since an earlier snapshot is not looked into again) and its value through a
ValueCache keyed by chunk ids, so the cost grows with the number of distinct versions of the
file, not with the number of snapshots: a file that changed 30 times in 1,000 snapshots is read
and parsed 30 times. Nothing is restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from casstore.errors import ConfigError
from casstore.format.tree import EntryType
from casstore.read.reader import PathNotFound
from casstore.read.trees import TreeCache, path_parts
from casstore.read.values import MISSING, BadQuery, ValueCache, canonical, lookup, parse_key
from casstore.repo.core import RepoCore, SnapshotInfo
from casstore.settings import parse_duration

GONE = "\0gone"     # the signature of "no value"; no canonical JSON text starts with NUL


@dataclass(frozen=True)
class HistoryRow:
    time: datetime
    snapshot_id: str
    change: str          # added | changed | removed
    value: object        # None when removed
    size: int | None     # the file's size in bytes (None when it is not there)

    def as_dict(self) -> dict:
        return {"time": self.time.isoformat(), "snapshot_id": self.snapshot_id, "short_id": self.snapshot_id[:8],
                "change": self.change, "value": self.value, "size": self.size}


def history(repo: RepoCore, path: str, key: str | None = None, *, since: datetime | None = None,
            limit: int | None = None, host: str | None = None, all_hosts: bool = False,
            cache: ValueCache | None = None, trees: TreeCache | None = None) -> list[HistoryRow]:
    """Rows oldest first; `limit` keeps the newest N rows; `since` ignores older snapshots.

    Raises PathNotFound when `path` is a file in none of the snapshots considered."""
    parts, key_parts = path_parts(path), parse_key(key)
    if not parts:
        raise PathNotFound("give the path of a file inside the snapshots")
    infos = _oldest_first(repo.snapshots(host=host, all_hosts=all_hosts), since)
    trees, cache = trees or TreeCache(repo), cache or ValueCache()
    rows: list[HistoryRow] = []
    last, seen_file = GONE, False
    memo: dict[tuple[bytes, bytes], tuple[object, str]] = {}
    value: object
    size: int | None
    for info in infos:
        entry = trees.entry_at(info.manifest.tree, parts)
        if entry is None or entry.type is not EntryType.FILE:
            value, size, signature = MISSING, None, GONE
        else:
            seen_file = True
            ident = (b"".join(entry.chunks), entry.name)
            if ident not in memo:   # the key's value and its signature, once per version
                found = cache.value(repo, entry)
                picked = lookup(found.value, key_parts) if (found.is_json or not key_parts) else MISSING
                memo = {ident: (picked, GONE if picked is MISSING else canonical(picked))}
            value, signature = memo[ident]
            size = entry.size
        if signature != last:
            rows.append(_row(info, value, size, last))
            last = signature
    if not seen_file:
        raise PathNotFound(f"{path} is not a file in any of the {len(infos)} snapshots considered")
    return rows[-limit:] if limit else rows


def _row(info: SnapshotInfo, value: object, size: int | None, previous: str) -> HistoryRow:
    if value is MISSING:
        return HistoryRow(info.manifest.time, info.id, "removed", None, None)
    change = "added" if previous == GONE else "changed"
    return HistoryRow(info.manifest.time, info.id, change, value, size)


def _oldest_first(infos: list[SnapshotInfo], since: datetime | None) -> list[SnapshotInfo]:
    ordered = sorted(infos, key=lambda s: (s.manifest.time_ns, s.id))
    if since is None:
        return ordered
    return [s for s in ordered if s.manifest.time >= since]   # as times are shown, to the microsecond


def parse_since(text: str) -> datetime:
    """'2026-02-07', '2026-02-07T15:12:23', or a duration back from now ('30d', '12h')."""
    try:
        found = datetime.fromisoformat(text.strip())
        return found if found.tzinfo else found.astimezone()
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ConfigError:
        raise BadQuery(f"not a time: {text!r} (use e.g. 2026-02-07, 2026-02-07T15:00 or 30d)") from None
