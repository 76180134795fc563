"""diff: what changed between two snapshots (added, removed, modified, metadata only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from casstore.format.tree import Entry, EntryType

if TYPE_CHECKING:
    from casstore.read.reader import Snapshot


@dataclass(frozen=True)
class Change:
    kind: str          # added | removed | modified | metadata
    path: str
    type: str
    old_size: int | None
    new_size: int | None
    what: tuple[str, ...] = ()     # modified/metadata: which of content, target, size, mode, mtime, owner

    def as_dict(self) -> dict:
        return {"change": self.kind, "path": self.path, "type": self.type,
                "old_size": self.old_size, "new_size": self.new_size, "what": list(self.what)}


def diff_snapshots(old, new) -> list[Change]:
    """Changes from snapshot `old` to `new`; identical subtrees (same tree id) are skipped unread."""
    changes: list[Change] = []
    _diff_tree(old, new, old.manifest.tree, new.manifest.tree, "", changes)
    return changes


def _diff_tree(old, new, old_tree: bytes | None, new_tree: bytes | None, prefix: str, out: list[Change]) -> None:
    if old_tree == new_tree:
        return
    before = {e.name: e for e in old.tree(old_tree)} if old_tree else {}
    after = {e.name: e for e in new.tree(new_tree)} if new_tree else {}
    for name in sorted(before.keys() | after.keys()):
        path = f"{prefix}/{name.decode('utf-8', 'surrogateescape')}" if prefix else name.decode(
            "utf-8", "surrogateescape")
        _diff_entry(old, new, before.get(name), after.get(name), path, out)


def _diff_entry(old, new, a: Entry | None, b: Entry | None, path: str, out: list[Change]) -> None:
    if a is not None and b is not None and a.type is EntryType.DIR and b.type is EntryType.DIR:
        if _meta(a) != _meta(b):
            out.append(Change("metadata", path + "/", "dir", None, None, _what(a, b)))
        _diff_tree(old, new, a.subtree, b.subtree, path, out)
        return
    if a is None or b is None or a.type is not b.type:
        if a is not None:
            _removed_or_added(old, a, path, "removed", out)
        if b is not None:
            _removed_or_added(new, b, path, "added", out)
        return
    if a.content != b.content or a.size != b.size:
        out.append(Change("modified", path, b.type.value, a.size, b.size, _what(a, b)))
    elif _meta(a) != _meta(b):
        out.append(Change("metadata", path, b.type.value, a.size, b.size, _what(a, b)))


def _removed_or_added(snapshot: Snapshot, entry: Entry, path: str, kind: str, out: list[Change]) -> None:
    sizes = (entry.size, None) if kind == "removed" else (None, entry.size)
    out.append(Change(kind, path + ("/" if entry.type is EntryType.DIR else ""), entry.type.value, *sizes))
    if entry.type is EntryType.DIR:
        for child in snapshot.tree(entry.subtree):
            name = child.name.decode("utf-8", "surrogateescape")
            _removed_or_added(snapshot, child, f"{path}/{name}", kind, out)


def _what(a: Entry, b: Entry) -> tuple[str, ...]:
    """The aspects that differ, in a fixed order; a symlink's content is its target."""
    content = "target" if b.type is EntryType.SYMLINK else "content"
    differs = {content: b.type is not EntryType.DIR and a.content != b.content, "size": a.size != b.size,
               "mode": a.mode != b.mode, "mtime": a.mtime_ns != b.mtime_ns, "owner": (a.uid, a.gid) != (b.uid, b.gid)}
    return tuple(name for name, changed in differs.items() if changed)


def _meta(e: Entry) -> tuple:
    return (e.mode, e.uid, e.gid, e.mtime_ns)
