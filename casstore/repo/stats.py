"""stats: what the repository holds, what deduplication and compression saved (its monthly cost
is added by the caller: the estimate needs the sync record, sync/estimate.py)."""

from __future__ import annotations

from typing import Any

from casstore.format import layout
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget, load_tree_chain, walk_tree
from casstore.repo.core import RepoCore, SnapshotInfo


def repository_stats(repo: RepoCore) -> dict[str, Any]:
    snapshots = repo.all_snapshots()
    index = repo.load_index()
    stored = repo.stored_bytes([layout.DATA_PREFIX])
    metadata = repo.stored_bytes([layout.INDEX_PREFIX, layout.SNAPSHOTS_PREFIX])
    unique_raw = sum(locs[0].raw_length for _, locs in index.blobs())
    unique_encoded = sum(locs[0].length for _, locs in index.blobs())
    logical = sum(int(s.manifest.summary.get("bytes_total", 0)) for s in snapshots)
    latest = snapshots[0] if snapshots else None
    return {
        "repository": repo.location,
        "snapshots": len(snapshots),
        "logical_bytes_all_snapshots": logical,
        "logical_bytes_latest": int(latest.manifest.summary.get("bytes_total", 0)) if latest else 0,
        "unique_bytes": unique_raw,
        "stored_bytes": stored + metadata,
        "pack_bytes": stored,
        "metadata_bytes": metadata,
        "blobs": len(index),
        "dedup_ratio": round(logical / unique_raw, 2) if unique_raw else None,
        "compression_ratio": round(unique_raw / unique_encoded, 2) if unique_encoded else None,
        "total_ratio": round(logical / (stored + metadata), 2) if stored else None,
        "per_source": per_top_level(repo, latest) if latest else {},
    }


def per_top_level(repo: RepoCore, info: SnapshotInfo) -> dict[str, dict[str, int]]:
    """Logical and stored bytes of each top-level entry of the latest snapshot.

    A chunk shared by several top-level entries is counted as stored under the first one met.
    """
    counted: set[bytes] = set()
    result: dict[str, dict] = {}
    budget = VisitBudget(info.manifest.summary)
    budget.check_walk(lambda tree_id: _tree(repo, tree_id), info.manifest.tree)
    for path, entry in walk_tree(lambda tree_id: budget.spend(_tree(repo, tree_id)), info.manifest.tree):
        if entry.type is not EntryType.FILE:
            continue
        top = path.split("/", 1)[0] if "/" in path else "(top level files)"
        row = result.setdefault(top, {"files": 0, "logical_bytes": 0, "stored_bytes": 0})
        row["files"] += 1
        row["logical_bytes"] += entry.size
        for chunk_id in entry.chunks:
            if chunk_id not in counted:
                counted.add(chunk_id)
                locations = repo.index.locations(KIND_DATA, chunk_id)
                row["stored_bytes"] += locations[0].length if locations else 0
    return dict(sorted(result.items()))


def _tree(repo: RepoCore, tree_id: bytes) -> list[Entry]:
    return load_tree_chain(lambda blob_id: repo.read_blob(KIND_TREE, blob_id), tree_id)
