"""What `casstore status` and `GET /api/cloud/status` show: last snapshot, sync, scheduled runs.

No web framework here: the CLI's `status` imports this module too.
"""

from __future__ import annotations

import os
import time

from casstore.gc.retention import policy_from_settings
from casstore.remotes.registry import normalized_remote_url
from casstore.repo.core import SnapshotInfo
from casstore.repo.pricing import NO_PRICE, PRICES_AS_OF, is_directory
from casstore.service.runs import RunLog, RunRecord, SchedulerState, scheduler_lock, state_dir
from casstore.service.scheduler import expected_next_run, human_age
from casstore.sync.estimate import monthly_estimate
from casstore.sync.state import SyncState


def snapshot_brief(info: SnapshotInfo) -> dict:
    m = info.manifest
    return {"id": info.id, "short_id": info.short_id, "time": m.time.isoformat(), "timestamp": m.time_ns / 1e9,
            "host": m.host, "files": m.summary.get("files_total", 0), "bytes_total": m.summary.get("bytes_total", 0),
            "incomplete": m.incomplete}


def sync_summary(settings, runs: list[RunRecord], snapshots) -> dict:
    """The last successful sync (SyncState.last_sync), what is not off-site yet, the last attempt's result."""
    if not settings.remote:
        return {"configured": False, "remote": None, "last_success": None, "last_attempt": None}
    url = normalized_remote_url(settings.remote)
    last_sync, done = {}, set()
    if os.path.isdir(state_dir(settings.repository)):
        state = SyncState(settings.repository, url)
        last_sync, done = state.last_sync, state.synced | state.pulled()
    # a snapshot the remote holds (listings that merge say so) is off-site whoever put it there
    unsynced = [s for s in snapshots if s.id not in done and getattr(s, "where", "local") == "local"]
    attempt = next((r for r in runs if r.sync is not None or r.failed_step == "sync"), None)
    return {"configured": True, "remote": url, "snapshots_synced": len(snapshots) - len(unsynced),
            "snapshots_unsynced": len(unsynced),
            "oldest_unsynced": snapshot_brief(unsynced[-1]) if unsynced else None,
            "last_success": last_sync.get("time"), "last_success_detail": last_sync or None,
            "last_attempt": None if attempt is None else {
                "time": attempt.ended, "ok": attempt.failed_step != "sync",
                "error": attempt.error if attempt.failed_step == "sync" else None, "result": attempt.sync}}


def schedule_summary(settings, runs: list[RunRecord], now: float) -> dict:
    """The running scheduler (if any), its next run, and the last scheduled run."""
    doc = SchedulerState(settings.repository).load()
    running = scheduler_lock(settings.repository).is_locked()
    last = next((r for r in runs if r.scheduled), None)
    next_run = doc.get("next_run") if running else None
    description = doc.get("schedule") if running else None
    if not running and settings.schedule:
        description, next_run = expected_next_run(settings, now)
    return {"running": running, "pid": doc.get("pid") if running else None, "schedule": description,
            "configured": settings.schedule, "next_run": next_run, "retention": retention_summary(settings),
            "last_run": last.as_dict() if last else None}


def retention_summary(settings) -> str:
    """The scheduled runs' retention, as a phrase: 'keep last 30 (this host; local and bucket)' or 'off'."""
    policy = policy_from_settings(settings)
    if policy is None:
        return "off (CASSTORE_KEEP_LAST=0)"
    where = "local repository and bucket" if settings.remote else "local repository"
    return f"{policy.describe()} of this host's snapshots ({where})"


def service_status(settings, snapshots, *, now: float | None = None, stored_bytes: int = 0) -> dict:
    """Everything `status` shows. `snapshots`: the repository's snapshots, newest first;
    `stored_bytes`: the local repository's size (priced until a sync records the remote's)."""
    now = time.time() if now is None else now
    runs = RunLog(settings.repository).records(limit=200)
    good = next((s for s in snapshots if not s.manifest.incomplete), None)
    return {
        "repository": os.path.abspath(settings.repository),
        "now": now,
        "snapshots": len(snapshots),
        "last_snapshot": snapshot_brief(snapshots[0]) if snapshots else None,
        "last_good_snapshot": snapshot_brief(good) if good else None,
        "sync": sync_summary(settings, runs, snapshots),
        "schedule": schedule_summary(settings, runs, now),
        "last_run": runs[0].as_dict() if runs else None,
        "cost_estimate": cost_summary(settings, stored_bytes, now),
    }


def cost_summary(settings, stored_bytes: int, now: float) -> dict:
    """The monthly estimate (storage and the requests of the last 30 days' syncs), dated."""
    rows = monthly_estimate(settings.repository, settings.remote, stored_bytes, now=now)
    priced = next(iter(rows.values()), {})
    return {"prices_as_of": PRICES_AS_OF, "providers": rows, "stored_bytes": priced.get("stored_bytes", stored_bytes),
            "requests_per_month": priced.get("put_requests_per_month", 0) + priced.get("get_requests_per_month", 0),
            "note": NO_PRICE if settings.remote and is_directory(settings.remote) else None}


def stale_reasons(status: dict, max_age: float, now: float) -> list[str]:
    """Why the repository is out of date (for `status --max-age`); empty when it is fresh.

    Stale: the newest complete snapshot is older than `max_age`, or (with a remote) a snapshot
    older than `max_age` is still not synced, i.e. the off-site copy lags by more than `max_age`.
    """
    reasons, limit = [], human_age(max_age)
    good = status["last_good_snapshot"]
    if good is None:
        reasons.append("no complete snapshot yet")
    elif now - good["timestamp"] > max_age:
        reasons.append(f"last good snapshot is {human_age(now - good['timestamp'])} old (max {limit})")
    sync = status["sync"]
    oldest = sync.get("oldest_unsynced")
    if sync["configured"] and oldest and now - oldest["timestamp"] > max_age:
        reasons.append(f"snapshot {oldest['short_id']} ({human_age(now - oldest['timestamp'])} old) is not synced "
                       f"to {sync['remote']} yet (max {limit})")
    return reasons
