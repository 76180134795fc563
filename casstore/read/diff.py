"""diff: what changed between two snapshots (added, removed, modified, metadata only)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget

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


def diff_snapshots(old: Snapshot, new: Snapshot) -> list[Change]:
    """Changes from snapshot `old` to `new`; identical subtrees (same tree id) are skipped unread.
    Iterative (a stack of generators: any depth) and bounded by each snapshot's declared totals."""
    budgets = (VisitBudget(old.manifest.summary), VisitBudget(new.manifest.summary))
    budgets[0].check_walk(old.tree, old.manifest.tree)
    budgets[1].check_walk(new.tree, new.manifest.tree)

    def actions(old_tree: bytes | None, new_tree: bytes | None, prefix: str) -> Iterator[Change | tuple]:
        if old_tree == new_tree:
            return
        before = {e.name: e for e in budgets[0].spend(old.tree(old_tree))} if old_tree else {}
        after = {e.name: e for e in budgets[1].spend(new.tree(new_tree))} if new_tree else {}
        for name in sorted(before.keys() | after.keys()):
            text = name.decode("utf-8", "surrogateescape")
            yield from _entry_actions(before.get(name), after.get(name), f"{prefix}/{text}" if prefix else text)

    changes: list[Change] = []
    stack = [actions(old.manifest.tree, new.manifest.tree, "")]
    while stack:
        action = next(stack[-1], None)
        if action is None:
            stack.pop()
        elif isinstance(action, Change):
            changes.append(action)
        else:
            stack.append(actions(*action))       # descend: (old subtree, new subtree, path)
    return changes


def _entry_actions(a: Entry | None, b: Entry | None, path: str) -> Iterator[Change | tuple]:
    """The changes for one name, and the subtree pairs to descend into, in output order."""
    if a is not None and b is not None and a.type is EntryType.DIR and b.type is EntryType.DIR:
        if _meta(a) != _meta(b):
            yield Change("metadata", path + "/", "dir", None, None, _what(a, b))
        yield (a.subtree, b.subtree, path)
        return
    if a is None or b is None or a.type is not b.type:
        if a is not None:
            yield from _one_side(a, path, "removed")
        if b is not None:
            yield from _one_side(b, path, "added")
        return
    if a.content != b.content or a.size != b.size:
        yield Change("modified", path, b.type.value, a.size, b.size, _what(a, b))
    elif _meta(a) != _meta(b):
        yield Change("metadata", path, b.type.value, a.size, b.size, _what(a, b))


def _one_side(entry: Entry, path: str, kind: str) -> Iterator[Change | tuple]:
    sizes = (entry.size, None) if kind == "removed" else (None, entry.size)
    is_dir = entry.type is EntryType.DIR
    yield Change(kind, path + ("/" if is_dir else ""), entry.type.value, *sizes)
    if is_dir:
        yield (entry.subtree, None, path) if kind == "removed" else (None, entry.subtree, path)


def _what(a: Entry, b: Entry) -> tuple[str, ...]:
    """The aspects that differ, in a fixed order; a symlink's content is its target."""
    content = "target" if b.type is EntryType.SYMLINK else "content"
    differs = {content: b.type is not EntryType.DIR and a.content != b.content, "size": a.size != b.size,
               "mode": a.mode != b.mode, "mtime": a.mtime_ns != b.mtime_ns, "owner": (a.uid, a.gid) != (b.uid, b.gid)}
    return tuple(name for name, changed in differs.items() if changed)


def _meta(e: Entry) -> tuple:
    return (e.mode, e.uid, e.gid, e.mtime_ns)
