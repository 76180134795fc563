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
from casstore.snapshot.source import require_source


class CloudStorage:
    """Each call opens the configured repository afresh, so it sees snapshots taken meanwhile.

    Reads follow the CLI's rules: the local repository and the configured remote together, this
    host's backups when it has any, else every host's (`host=` / `all_hosts=True` to choose).
    """

    def _repo(self, create: bool = False) -> Repository:
        return open_repository(settings_for(), create=create)

    def list_backups(self, limit: int | None = None, *, host: str | None = None,
                     all_hosts: bool = False) -> list[dict[str, Any]]:
        """Newest first: dicts with backup_id, timestamp, size_mb, files, host, tags."""
        with self._repo() as repo:
            return [backup_meta(info) for info in repo.listing(limit, host=host, all_hosts=all_hosts)]

    def get_backup(self, backup_id: str, *, host: str | None = None, all_hosts: bool = False) -> Any:
        """The snapshot as the seed's dict: {'snapshot_id', 'timestamp', 'data_sources': {...}}
        (lazy: the repository stays open while the dict is in use)."""
        from casstore.snapshot.legacy_files import legacy_ref  # lazy: start-up time (old ids, once imported)

        repo = self._repo()
        return repo.get(legacy_ref(repo, backup_id), host=host, all_hosts=all_hosts).to_dict()

    def create_backup(self, *, sync: bool = True, allow_empty: bool | None = None) -> dict[str, Any]:
        """Snapshot the source, then (with a remote configured, unless `sync=False`) sync it there,
        as the seed's call did. A missing or empty source is refused before anything is created."""
        settings = settings_for()
        require_source(settings.source, allow_empty=settings.allow_empty if allow_empty is None else allow_empty)
        with open_repository(settings, create=True) as repo:
            result = repo.snapshot(allow_empty=True)   # checked above, before the repository existed
            done = {"success": not result.incomplete, "backup_id": result.id,
                    "timestamp": result.manifest.time.isoformat(), **result.summary.as_dict(), "synced": None}
            if sync and settings.remote and not result.incomplete:
                done["synced"] = repo.sync().as_dict()
            return done


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
