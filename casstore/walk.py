"""Walking a snapshot's trees: every (path, entry) below a tree, and the blobs they reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from casstore.errors import IntegrityError
from casstore.manifest.tree import Entry, EntryType

TreeLoader = Callable[[bytes], list[Entry]]


class VisitBudget:
    """How many entries one walk of a snapshot may visit.

    Trees are a DAG: an identical directory is stored once and referenced from every place it
    appears, which is what makes dedup work. A hostile repository can use that to make a tree that
    references one subtree twice at each of 60 levels, so a walk would never end. A snapshot's own
    summary says how many files and directories it holds; a walk that visits far more than that is
    refused as corrupt.
    """

    def __init__(self, summary: dict) -> None:
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
