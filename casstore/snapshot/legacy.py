"""`casstore import-legacy`: each old unified backup becomes a snapshot with its original time and
a tag naming its old id, so history, diff and `get_backup("unified_backup_…")` reach back before
the switch.

data_sources is mapped back to files by an inverse of to_dict(): each top-level source that is an
object becomes a directory, and each of its keys a `key.json` file holding that value (any other
top-level value becomes `source.json`). to_dict() of the snapshot then gives back exactly the old
data_sources. A backup is read and checked whole before anything is written, and the manifest is
written last, so a corrupt or partial file is reported and skipped, never half-imported; a
backup whose tag is already in the repository is skipped, so importing twice adds nothing.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

from casstore.errors import CasstoreError
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain
from casstore.repo.blobstore import BlobStore
from casstore.repo.core import RepoCore
from casstore.snapshot.legacy_files import CorruptBackup, LegacySource, OldBackup
from casstore.snapshot.summary import SnapshotSummary

MAX_NAME = 250     # bytes; a file name is at most 255 with ".json"


@dataclass
class ImportReport:
    imported: list[dict] = field(default_factory=list)     # {"backup_id", "snapshot_id", "time"}
    already: list[str] = field(default_factory=list)       # old ids whose snapshot exists
    skipped: list[dict] = field(default_factory=list)      # {"backup_id", "error"}
    missing: list[str] = field(default_factory=list)       # listed in the index, no file

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.missing

    def as_dict(self) -> dict:
        return {"imported": self.imported, "already_imported": self.already, "skipped": self.skipped,
                "missing": self.missing}


def import_legacy(repo: RepoCore, where: str) -> ImportReport:
    source = LegacySource(where, repo.settings)
    report = ImportReport()
    try:
        backups, report.missing = source.backups()
        done = {tag for info in repo.all_snapshots() for tag in info.manifest.tags}
        for backup in backups:
            if backup.backup_id in done:
                report.already.append(backup.backup_id)
                continue
            try:
                report.imported.append(_import_one(repo, source, backup))
            except CorruptBackup as exc:
                report.skipped.append({"backup_id": backup.backup_id, "error": str(exc)})
    finally:
        source.close()
    return report


def _import_one(repo: RepoCore, source: LegacySource, backup: OldBackup) -> dict:
    data_sources, when = source.read(backup)
    files = files_of(backup.backup_id, data_sources)       # checked whole before any write
    repo.load_index()
    repo.load_plans()   # blobs only in packs a gc plan condemns count as missing (design 5.4)
    time_ns = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    writer = _TreeWriter(repo, repo.blob_store(), time_ns)
    try:
        root = writer.directory(files)
        writer.store.flush()
    finally:
        writer.store.close()
    manifest = SnapshotManifest(time_ns=time_ns, host=repo.settings.host, source=os.path.abspath(repo.settings.source),
                                tree=root, tags=[backup.backup_id], summary=writer.summary.as_dict())
    snapshot_id, _ = repo.write_snapshot(manifest)
    return {"backup_id": backup.backup_id, "snapshot_id": snapshot_id, "time": manifest.time.isoformat()}


def files_of(backup_id: str, data_sources: dict) -> dict:
    """{name: bytes or {name: bytes}}: the inverse of to_dict() described above."""
    tree: dict[str, object] = {}
    for key, value in data_sources.items():
        _check_name(backup_id, key)
        if isinstance(value, dict):
            for child, inner in value.items():
                _check_name(backup_id, child)
                tree.setdefault(key, {})[child + ".json"] = _json(inner)  # type: ignore[index]
            tree.setdefault(key, {})
        else:
            tree[key + ".json"] = _json(value)
    return tree


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1).encode()


def _check_name(backup_id: str, name: object) -> None:
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name
            or len(name.encode("utf-8", "surrogateescape")) > MAX_NAME):
        raise CorruptBackup(f"{backup_id}: {str(name)[:80]!r} cannot be a file name")


class _TreeWriter:
    """Stores files and directories held in memory as blobs, as the snapshot builder would."""

    def __init__(self, repo: RepoCore, store: BlobStore, time_ns: int) -> None:
        self.store, self.time_ns = store, time_ns
        self.chunker = repo.config.make_chunker()
        self.summary = SnapshotSummary()
        self.ids = (os.getuid(), os.getgid())

    def directory(self, items: dict) -> bytes:
        entries = []
        for name, value in items.items():
            raw = name.encode("utf-8", "surrogateescape")
            if isinstance(value, dict):
                self.summary.dirs_total += 1
                entries.append(Entry(raw, EntryType.DIR, 0o755, *self.ids, self.time_ns, 0, 0, self.directory(value)))
            else:
                entries.append(Entry(raw, EntryType.FILE, 0o644, *self.ids, self.time_ns, len(value), 0,
                                     self.file(value)))
        return encode_tree_chain(entries, lambda body: self.store.add(KIND_TREE, body)[0])

    def file(self, data: bytes) -> list[bytes]:
        chunk_ids = []
        for piece in self.chunker.chunks(io.BytesIO(data)):
            blob_id, added = self.store.add(KIND_DATA, piece)
            chunk_ids.append(blob_id)
            self.summary.bytes_added_stored += added
            self.summary.blobs_added += added > 0
        self.summary.files_total += 1
        self.summary.files_new += 1
        self.summary.bytes_total += len(data)
        return chunk_ids


__all__ = ["CasstoreError", "ImportReport", "files_of", "import_legacy"]
