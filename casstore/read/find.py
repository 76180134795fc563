"""find: which snapshots hold a file or directory whose name matches a glob (as restic's find).

A pattern without '/' is matched against each entry's name, one with '/' against its whole path
(relative to the snapshot's root). The matches below a directory depend only on its tree id and
its path, so they are computed once per (tree id, path) and reused by every snapshot where that
directory is unchanged: the walk costs the distinct trees, not the snapshots.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime

from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget
from casstore.read.trees import TreeCache
from casstore.read.values import BadQuery
from casstore.repo.core import RepoCore, SnapshotInfo

Matches = list[tuple[str, Entry]]


@dataclass(frozen=True)
class Found:
    snapshot_id: str
    time: datetime
    path: str
    type: str
    size: int
    mtime: datetime

    def as_dict(self) -> dict:
        return {"snapshot_id": self.snapshot_id, "short_id": self.snapshot_id[:8], "time": self.time.isoformat(),
                "path": self.path, "type": self.type, "size": self.size, "mtime": self.mtime.isoformat()}


class Finder:
    def __init__(self, repo: RepoCore, pattern: str, trees: TreeCache | None = None) -> None:
        if not pattern.strip("/"):
            raise BadQuery("give a pattern to match, e.g. '*.json' or 'market/*.jsonl'")
        self.by_path = "/" in pattern.strip("/")
        self.pattern = pattern.strip("/")
        self.trees = trees or TreeCache(repo)
        self._memo: dict[tuple[bytes, str], Matches] = {}

    def matches(self, info: SnapshotInfo) -> Matches:
        """Every matching entry of one snapshot, in path order."""
        budget = VisitBudget(info.manifest.summary)
        root = (info.manifest.tree, "")
        stack = [(root, False)]
        while stack:   # post-order without recursion: a directory's matches need its children's first
            (tree_id, prefix), expanded = stack.pop()
            if (tree_id, prefix) in self._memo:
                continue
            entries = self.trees.tree(tree_id)
            if expanded:
                self._memo[(tree_id, prefix)] = self._collect(entries, prefix)
                continue
            budget.spend(entries)
            stack.append(((tree_id, prefix), True))
            stack.extend(((e.subtree, _join(prefix, e)), False) for e in entries if e.type is EntryType.DIR)
        return self._memo[root]

    def _collect(self, entries: list[Entry], prefix: str) -> Matches:
        found: Matches = []
        for e in entries:
            path = _join(prefix, e)
            if fnmatch.fnmatchcase(path if self.by_path else path.rsplit("/", 1)[-1], self.pattern):
                found.append((path, e))
            if e.type is EntryType.DIR:
                found.extend(self._memo[(e.subtree, path)])
        return found


def find(repo: RepoCore, pattern: str, *, host: str | None = None, all_hosts: bool = False,
         trees: TreeCache | None = None) -> list[Found]:
    """Matches in every snapshot of the group, newest snapshot first."""
    finder = Finder(repo, pattern, trees)
    out = []
    for info in repo.snapshots(host=host, all_hosts=all_hosts):
        for path, e in finder.matches(info):
            out.append(Found(info.id, info.manifest.time, path, e.type.value, e.size,
                             datetime.fromtimestamp(e.mtime_ns / 1e9, tz=UTC)))
    return out


def _join(prefix: str, entry: Entry) -> str:
    name = entry.name.decode("utf-8", "surrogateescape")
    return f"{prefix}/{name}" if prefix else name
