"""Trees and snapshots: the model and its deterministic msgpack codec."""

from casstore.manifest.snapshot import SnapshotManifest, decode_snapshot
from casstore.manifest.tree import Entry, EntryType, decode_tree, encode_tree_chain

__all__ = ["Entry", "EntryType", "SnapshotManifest", "decode_snapshot", "decode_tree", "encode_tree_chain"]
