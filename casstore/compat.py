"""The seed's own names, kept as a thin facade over the Python API.

    from casstore import cloud_storage
    for meta in cloud_storage.list_backups(limit=5):
        data = cloud_storage.get_backup(meta["backup_id"])
        data["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"]
"""

from __future__ import annotations

from typing import Any

from casstore.client import Repository, SnapshotInfo, open_repository
from casstore.repo.open import settings_for


class CloudStorage:
    """Each call opens the configured repository afresh, so it sees snapshots taken meanwhile."""

    def _repo(self, create: bool = False) -> Repository:
        return open_repository(settings_for(), create=create)

    def list_backups(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first: dicts with backup_id, timestamp, size_mb, files, host, tags."""
        with self._repo() as repo:
            return [backup_meta(info) for info in repo.snapshots(limit=limit)]

    def get_backup(self, backup_id: str) -> Any:
        """The snapshot as the seed's dict: {'snapshot_id', 'timestamp', 'data_sources': {...}}."""
        from casstore.snapshot.legacy_files import legacy_ref  # lazy: start-up time (old ids, once imported)

        repo = self._repo()
        return repo.get(legacy_ref(repo, backup_id)).to_dict()

    def create_backup(self) -> dict[str, Any]:
        with self._repo(create=True) as repo:
            result = repo.snapshot()
            return {"success": not result.incomplete, "backup_id": result.id,
                    "timestamp": result.manifest.time.isoformat(), **result.summary.as_dict()}


def backup_meta(info: SnapshotInfo) -> dict[str, Any]:
    summary = info.manifest.summary
    return {
        "backup_id": info.id,
        "short_id": info.short_id,
        "timestamp": info.manifest.time.isoformat(),
        "host": info.manifest.host,
        "tags": list(info.manifest.tags),
        "files": summary.get("files_total", 0),
        "size_mb": round(summary.get("bytes_total", 0) / 1e6, 3),
        "added_mb": round(summary.get("bytes_added_stored", 0) / 1e6, 3),
        "incomplete": info.manifest.incomplete,
    }


cloud_storage = CloudStorage()
