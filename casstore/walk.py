"""Walking a snapshot's trees: every (path, entry) below a tree, and the blobs they reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from casstore.manifest.tree import Entry, EntryType

TreeLoader = Callable[[bytes], list[Entry]]


def walk_tree(load: TreeLoader, tree_id: bytes, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Yield (path, entry) for everything below `tree_id`, depth first."""
    for entry in load(tree_id):
        name = entry.name.decode("utf-8", "surrogateescape")
        path = f"{prefix}/{name}" if prefix else name
        yield path, entry
        if entry.type is EntryType.DIR:
            yield from walk_tree(load, entry.subtree, path)
