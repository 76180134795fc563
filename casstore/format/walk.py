"""Walking a snapshot's trees: every (path, entry) below a tree, and the blobs they reference.

Readers, check, sync and gc all walk trees; they share the pieces here so that a split
directory's chain, a loop in it, or a DAG of shared subtrees is handled the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from casstore.errors import IntegrityError
from casstore.format.blobset import BlobSet
from casstore.format.fields import is_int
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


def add_reachable(read_tree: TreeReader, root: bytes, reached: BlobSet,
                  on_tree: Callable[[], None] | None = None) -> None:
    """Add every tree blob and chunk reachable from `root` to `reached`.

    A tree already in `reached` is not read again, so shared subtrees, trees shared with snapshots
    walked before into the same set (and hostile DAGs) cost one read each.
    """
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if (KIND_TREE, tree_id) in reached:
            continue
        if on_tree is not None:
            on_tree()
        reached.add(KIND_TREE, tree_id)
        entries, next_id = decode_tree(read_tree(tree_id))
        if next_id is not None:
            stack.append(next_id)
        for entry in entries:
            if entry.type is EntryType.DIR:
                stack.append(entry.subtree)
            elif entry.type is EntryType.FILE:
                for chunk_id in entry.chunks:
                    reached.add(KIND_DATA, chunk_id)


MAX_VISIT = 50_000_000        # entries any one walk visits, whatever a summary claims
MAX_READ_BYTES = 1 << 40     # bytes any one reader returns, whatever a summary claims


class VisitBudget:
    """How many entries (and file bytes) one walk of a snapshot may visit.

    Trees are a DAG: an identical directory is stored once and referenced from every place it
    appears, which is what makes dedup work. A hostile repository can use that to make a tree that
    references one subtree twice at each of 60 levels, so a walk would never end; or a file that
    names one 8 MiB chunk a thousand times. A snapshot's own summary says how many files and
    directories (and bytes) it holds; a walk that visits far more than that is refused as corrupt,
    and a hard limit holds when the summary itself lies.
    """

    def __init__(self, summary: Mapping[str, Any]) -> None:
        self.left = min(4 * (_declared(summary, "files_total") + _declared(summary, "dirs_total")) + 100_000,
                        MAX_VISIT)
        self.bytes_left = min(4 * _declared(summary, "bytes_total") + (1 << 30), MAX_READ_BYTES)

    def spend(self, entries: list[Entry]) -> list[Entry]:
        self.left -= len(entries)
        if self.left < 0:
            raise IntegrityError("the snapshot's trees hold far more entries than it records (corrupt or hostile)")
        return entries

    def check_walk(self, load: TreeLoader, root: bytes) -> None:
        """Refuse, before anything is written or sent, a walk of `root` that would exceed the budget
        (one read per distinct tree, so a DAG of 2**60 paths costs 60 reads here)."""
        walked = tree_sizes(load, root)[root]
        if walked > self.left:
            raise IntegrityError(f"the snapshot's trees hold far more entries than it records ({walked} to walk; "
                                 "corrupt or hostile)")

    def spend_bytes(self, size: int) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise IntegrityError("the snapshot's files hold far more bytes than it records (corrupt or hostile)")


def _declared(summary: Mapping[str, Any], key: str) -> int:
    value = summary.get(key, 0) if isinstance(summary, dict) else 0
    return value if is_int(value) and value > 0 else 0


def walk_tree(load: TreeLoader, tree_id: bytes, prefix: str = "") -> Iterator[tuple[str, Entry]]:
    """Yield (path, entry) for everything below `tree_id`, depth first (iterative: any depth)."""
    stack: list[tuple[str, Iterator[Entry]]] = [(prefix, iter(load(tree_id)))]
    while stack:
        base, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name.decode("utf-8", "surrogateescape")
        path = f"{base}/{name}" if base else name
        yield path, entry
        if entry.type is EntryType.DIR:
            stack.append((path, iter(load(entry.subtree))))


def tree_sizes(load: TreeLoader, root: bytes) -> dict[bytes, int]:
    """For every tree below `root`, the number of entries a full walk of it visits (shared
    subtrees counted each time they appear), computed once per distinct tree: linear in the
    repository's size even for a DAG whose walk would never end."""
    sizes: dict[bytes, int] = {}
    stack: list[tuple[bytes, list[Entry] | None]] = [(root, None)]
    while stack:
        tree_id, entries = stack.pop()
        if tree_id in sizes:
            continue
        if entries is None:
            entries = load(tree_id)
            stack.append((tree_id, entries))
            stack.extend((e.subtree, None) for e in entries if e.type is EntryType.DIR and e.subtree not in sizes)
            continue
        sizes[tree_id] = len(entries) + sum(sizes.get(e.subtree, 0) for e in entries if e.type is EntryType.DIR)
    return sizes
