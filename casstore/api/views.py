"""The JSON documents of GET /api/cloud/status and GET /api/cloud/backups (the seed's shapes, extended)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlparse

from casstore.compat import backup_meta
from casstore.service.status import service_status
from casstore.settings import Settings

PROVIDERS = {"s3": "aws", "gs": "gcp", "az": "azure", "file": "directory", "memory": "memory"}


def provider_name(remote: str | None) -> str:
    """The seed's CLOUD_PROVIDER names: local (no off-site copy), aws, gcp, azure; or directory."""
    if not remote:
        return "local"
    return PROVIDERS.get(urlparse(remote).scheme, urlparse(remote).scheme or "directory")


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp).astimezone().isoformat()


def backup_rows(snapshots: list) -> list[dict]:
    """Newest first, each with its sizes and the repository's stored size once it was taken: as the
    snapshot recorded it (`repository_bytes`), else (older snapshots) the last recorded size plus
    what the snapshots since added, so the history never drops when older snapshots are forgotten."""
    rows, stored = [], 0
    for info in reversed(snapshots):
        summary = info.manifest.summary
        recorded = summary.get("repository_bytes")
        stored = int(recorded) if recorded else stored + int(summary.get("bytes_added_stored", 0))
        rows.append({**backup_meta(info), "bytes_total": int(summary.get("bytes_total", 0)),
                     "bytes_added": int(summary.get("bytes_added", 0)),
                     "bytes_added_stored": int(summary.get("bytes_added_stored", 0)),
                     "stored_bytes_cumulative": stored, "duration_ms": summary.get("duration_ms")})
    return rows[::-1]


def backups_view(snapshots: list, limit: int) -> dict:
    rows = backup_rows(snapshots)
    return {"success": True, "total": len(rows), "count": min(limit, len(rows)), "backups": rows[:limit]}


def status_view(settings: Settings, snapshots: list, stored_bytes: int, *, running_job: dict | None) -> dict:
    status = service_status(settings, snapshots, stored_bytes=stored_bytes)
    schedule, sync = status["schedule"], status["sync"]
    latest = status["last_snapshot"]
    return {
        "success": True,
        "statistics": {
            "total_backups": len(snapshots),
            "total_size_mb": round(stored_bytes / 1e6, 3),
            "stored_bytes": stored_bytes,
            "logical_size_mb": round((latest["bytes_total"] if latest else 0) / 1e6, 3),
            "cloud_synced": sync.get("snapshots_synced", 0),
            "provider": provider_name(settings.remote),
            "remote": sync["remote"],
        },
        "recent_backups": backup_rows(snapshots)[:5],
        "last_snapshot": latest,
        "last_good_snapshot": status["last_good_snapshot"],
        "last_scheduled_run": schedule["last_run"],
        "next_run": iso(schedule["next_run"]),
        "schedule": schedule,
        "last_sync": sync,
        "last_run": status["last_run"],
        "running_job": running_job,
        "cost_estimate": status["cost_estimate"],
        "repository": status["repository"],
        "source": settings.source,
    }
