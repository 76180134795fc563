"""Trees shared across snapshots: each distinct tree id is read once, whatever snapshot asks.

Snapshots of a folder that changed a little share almost every tree id, so the questions that
span many snapshots (history, find) go through one TreeCache and pay per distinct tree, not per
snapshot. `reads` counts tree blobs fetched, so tests can check that claim.
"""

from __future__ import annotations

import posixpath

from casstore.format.pack import KIND_TREE
from casstore.format.tree import Entry, EntryType
from casstore.format.walk import load_tree_chain
from casstore.repo.core import BlobReader


class TreeCache:
    def __init__(self, repo: BlobReader) -> None:
        self._repo = repo
        self._trees: dict[bytes, list[Entry]] = {}
        self._found: dict[tuple[bytes, tuple[bytes, ...]], Entry | None] = {}
        self.reads = 0

    def tree(self, tree_id: bytes) -> list[Entry]:
        """A directory's entries (a split directory's chain followed), read at most once."""
        if tree_id not in self._trees:
            self._trees[tree_id] = load_tree_chain(self._read, tree_id)
        return self._trees[tree_id]

    def _read(self, tree_id: bytes) -> bytes:
        self.reads += 1
        return self._repo.read_blob(KIND_TREE, tree_id)

    def entry_at(self, root: bytes, parts: tuple[bytes, ...]) -> Entry | None:
        """The entry at `parts` below tree `root`, or None; memoized per (tree id, rest of path)
        so an unchanged subtree is looked into once across all snapshots."""
        if not parts:
            return None
        key = (root, parts)
        if key not in self._found:
            self._found[key] = self._lookup(root, parts)
        return self._found[key]

    def _lookup(self, root: bytes, parts: tuple[bytes, ...]) -> Entry | None:
        child = next((e for e in self.tree(root) if e.name == parts[0]), None)
        if child is None or len(parts) == 1:
            return child
        if child.type is not EntryType.DIR:
            return None
        return self.entry_at(child.subtree, parts[1:])


def path_parts(path: str) -> tuple[bytes, ...]:
    """'a/b/c.json' (or '/a//b/./c.json') -> (b'a', b'b', b'c.json'); '..' never climbs out."""
    clean = posixpath.normpath("/" + path.strip()).strip("/")
    return tuple(p.encode("utf-8", "surrogateescape") for p in clean.split("/") if p and p != ".")
