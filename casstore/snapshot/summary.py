"""The counters a snapshot records in its summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from casstore.format.snapshot import manifest_text


@dataclass
class SnapshotSummary:
    files_total: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs_total: int = 0
    bytes_total: int = 0          # logical size of every file in the snapshot
    bytes_read: int = 0           # bytes read from the source (files not in the files cache)
    bytes_added: int = 0          # new chunk bytes before compression
    bytes_added_stored: int = 0   # the same after compression, as stored
    blobs_added: int = 0
    excluded: int = 0
    changed_during_read: int = 0
    errors: list[str] = field(default_factory=list)
    duration_ms: int = 0
    # the repository's stored bytes (packs, indexes, manifests) once this snapshot's data was written:
    # the dashboard's size history, which must not shrink when retention forgets older snapshots
    repository_bytes: int = 0

    def as_dict(self) -> dict:
        doc = asdict(self)
        doc["errors"] = [manifest_text(e) for e in self.errors[:100]]  # the manifest stays small; the run reports all
        return doc
