"""Walking a snapshot's trees: every (path, entry) below a tree, and the blobs they reference.

Readers, check, sync and gc all walk trees; they share the pieces here so that a split
directory's chain, a loop in it, or a DAG of shared subtrees is handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from casstore.errors import IntegrityError
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.tree import Entry, EntryType, decode_tree

TreeLoader = Callable[[bytes], list[Entry]]
TreeReader = Callable[[bytes], bytes]      # tree id -> the tree blob's verified plaintext


def load_tree_chain(read_tree: TreeReader, tree_id: bytes) -> list[Entry]:
    """A directory's entries, following a split directory's chain of tree blobs (a loop is corrupt)."""
    entries: list[Entry] = []
    next_id: bytes | None = tree_id
    seen: set[bytes] = set()
    while next_id is not None:
        if next_id in seen:
            raise IntegrityError("tree chain loops")
        seen.add(next_id)
        page, next_id = decode_tree(read_tree(next_id))
        entries += page
    return entries


def add_reachable(read_tree: TreeReader, root: bytes, reached: dict[tuple[int, bytes], None],
                  on_tree: Callable[[], None] | None = None) -> None:
    """Add every tree blob and chunk reachable from `root` to `reached`, keyed (kind, id).

    A tree already in `reached` is not read again, so shared subtrees (and hostile DAGs) cost one
    read each; `reached` keeps insertion order, trees before the chunks below them.
    """
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if (KIND_TREE, tree_id) in reached:
            continue
        if on_tree is not None:
            on_tree()
        reached[(KIND_TREE, tree_id)] = None
        entries, next_id = decode_tree(read_tree(tree_id))
        if next_id is not None:
            stack.append(next_id)
        for entry in entries:
            if entry.type is EntryType.DIR:
                stack.append(entry.subtree)
            elif entry.type is EntryType.FILE:
                for chunk_id in entry.chunks:
                    reached.setdefault((KIND_DATA, chunk_id), None)


class VisitBudget:
    """How many entries one walk of a snapshot may visit.

    Trees are a DAG: an identical directory is stored once and referenced from every place it
    appears, which is what makes dedup work. A hostile repository can use that to make a tree that
    references one subtree twice at each of 60 levels, so a walk would never end. A snapshot's own
    summary says how many files and directories it holds; a walk that visits far more than that is
    refused as corrupt.
    """

    def __init__(self, summary: Mapping[str, Any]) -> None:
        recorded = 0
        for key in ("files_total", "dirs_total"):
            value = summary.get(key, 0) if isinstance(summary, dict) else 0
            recorded += value if isinstance(value, int) and value > 0 else 0
        self.left = 4 * recorded + 100_000

    def spend(self, entries: list[Entry]) -> list[Entry]:
        self.left -= len(entries)
        if self.left < 0:
            raise IntegrityError("the snapshot's trees hold far more entries than it records (corrupt or hostile)")
        return entries


def walk_tree(load: TreeLoader, tree_id: bytes, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Yield (path, entry) for everything below `tree_id`, depth first."""
    for entry in load(tree_id):
        name = entry.name.decode("utf-8", "surrogateescape")
        path = f"{prefix}/{name}" if prefix else name
        yield path, entry
        if entry.type is EntryType.DIR:
            yield from walk_tree(load, entry.subtree, path)
