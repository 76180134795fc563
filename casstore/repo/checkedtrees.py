"""What check learned about each distinct tree, so a tree shared by many snapshots is read once.

Snapshots of a folder that changed a little share almost every tree id; check used to re-read and
re-check every tree of every snapshot (a 301-snapshot repository cost 301 walks). Here each
distinct tree is checked once, bottom-up, and remembered as its walk size (the entries a full walk
below it visits) and whether anything at or below it has a problem. A snapshot's problems are then
collected by descending only into trees that have one, under that snapshot's paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from casstore.errors import CasstoreError
from casstore.format.tree import Entry, EntryType

# tree id -> (its entries, the problems of its own entries as (name, why))
CheckTree = Callable[[bytes], tuple[list[Entry], list[tuple[str, str]]]]


@dataclass(slots=True)
class _Dirty:
    """A tree with a problem at or below it: what is needed to name the problems' paths."""

    size: int
    problems: list[tuple[str, str]]          # (name of its own entry, or "" for itself; why)
    children: list[tuple[str, bytes]]        # (name, subtree id) of its directories


class CheckedTrees:
    def __init__(self) -> None:
        self._clean: dict[bytes, int] = {}      # tree id -> walk size: nothing wrong at or below it
        self._dirty: dict[bytes, _Dirty] = {}

    def known(self, tree_id: bytes) -> bool:
        return tree_id in self._clean or tree_id in self._dirty

    def walk_size(self, tree_id: bytes) -> int:
        dirty = self._dirty.get(tree_id)
        return dirty.size if dirty is not None else self._clean.get(tree_id, 0)

    def check_below(self, root: bytes, check: CheckTree) -> None:
        """Check every tree below `root` not checked before (post-order, iterative: any depth)."""
        pending: dict[bytes, tuple[list[tuple[str, bytes]], list[tuple[str, str]], int]] = {}
        stack = [(root, False)]
        while stack:
            tree_id, expanded = stack.pop()
            if self.known(tree_id):
                continue
            if expanded:
                self._finish(tree_id, *pending.pop(tree_id))
                continue
            if tree_id in pending:      # its own ancestor: impossible for content-addressed trees
                continue
            try:
                entries, problems = check(tree_id)
            except CasstoreError as exc:
                self._dirty[tree_id] = _Dirty(0, [("", f"directory unreadable: {exc}")], [])
                continue
            children = [(e.name.decode("utf-8", "surrogateescape"), e.subtree)
                        for e in entries if e.type is EntryType.DIR]
            pending[tree_id] = (children, problems, len(entries))
            stack.append((tree_id, True))
            stack.extend((subtree, False) for _, subtree in children if not self.known(subtree))

    def _finish(self, tree_id: bytes, children: list[tuple[str, bytes]], problems: list[tuple[str, str]],
                entries: int) -> None:
        size = entries + sum(self.walk_size(subtree) for _, subtree in children)
        if problems or any(subtree in self._dirty for _, subtree in children):
            self._dirty[tree_id] = _Dirty(size, problems, children)
        else:
            self._clean[tree_id] = size

    def problems(self, root: bytes) -> list[tuple[str, str]]:
        """(path, why) of every problem below `root`; a subtree that appears at several paths is
        reported where the walk meets it first."""
        found: list[tuple[str, str]] = []
        seen: set[bytes] = set()
        stack = [(root, "")]
        while stack:
            tree_id, prefix = stack.pop()
            dirty = self._dirty.get(tree_id)
            if dirty is None or tree_id in seen:
                continue
            seen.add(tree_id)
            found += [(_join(prefix, name) or "/", why) for name, why in dirty.problems]
            stack.extend((subtree, _join(prefix, name)) for name, subtree in dirty.children)
        return found


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else (name or prefix)
