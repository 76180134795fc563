"""One run (snapshot, sync, retention), its record, and the locks that keep runs from overlapping.

Everything lives in `<repository>/state/` (local bookkeeping, not the repository format):

- `runs.jsonl`: one JSON line per run (scheduled, caught up, `--once`, or asked for through the
  API): start, end, snapshot, sync result, retention result, the bucket's retention and gc, error.
  Appended and fsynced; the oldest lines are dropped once there are more than `MAX_RECORDS * 2`.
- `scheduler.json`: the running scheduler's schedule, pid, the last slot it served and its next run.
- `run.lock`: held (fcntl) for the whole of each run, in every process: two runs never overlap.
- `scheduler.lock`: held by the one scheduler loop of this repository.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from casstore.errors import CasstoreError, LockError
from casstore.fsio.durable import FileSystem, write_durably
from casstore.fsio.private import make_dirs, open_private
from casstore.gc.retention import apply_retention, policy_from_settings
from casstore.repo.core import RepoCore
from casstore.repo.open import open_as
from casstore.settings import Settings
from casstore.snapshot.source import require_source

log = logging.getLogger(__name__)
NOTIFY_TIMEOUT = 60.0

MAX_RECORDS = 1000
SCHEDULED_TRIGGERS = ("schedule", "catch-up", "once")


def state_dir(repository: str, *, create: bool = False) -> str:
    path = os.path.join(repository, "state")
    if create:
        make_dirs(path)
    return path


@dataclass
class RunRecord:
    """One run: what it did and how it ended. Times are epoch seconds."""

    id: str
    trigger: str                      # schedule | catch-up | once | api
    started: float
    due: float | None = None          # the schedule slot this run serves
    ended: float | None = None
    ok: bool = False
    snapshot: dict | None = None
    sync: dict | None = None
    retention: dict | None = None
    bucket: dict | None = None        # retention and gc on the configured remote (scheduled runs)
    error: str | None = None
    failed_step: str | None = None    # snapshot | sync | retention | bucket | repository
    abandoned: str | None = None      # why the rest of the run was skipped (SIGTERM, shutdown)
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def begin(cls, trigger: str, started: float, due: float | None = None) -> RunRecord:
        return cls(id=secrets.token_hex(6), trigger=trigger, started=started, due=due)

    @property
    def scheduled(self) -> bool:
        return self.trigger in SCHEDULED_TRIGGERS

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> RunRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in doc.items() if k in known})


class RunLog:
    """The append-only record of runs in `state/runs.jsonl`."""

    def __init__(self, repository: str) -> None:
        self.path = os.path.join(state_dir(repository), "runs.jsonl")
        self._lock = threading.Lock()

    def append(self, record: RunRecord) -> None:
        line = (json.dumps(record.as_dict(), default=str) + "\n").encode()
        with self._lock:
            make_dirs(os.path.dirname(self.path))
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._trim()

    def records(self, limit: int | None = None) -> list[RunRecord]:
        """Newest first; a torn or foreign line is skipped."""
        found = []
        for line in reversed(self._lines()):
            try:
                found.append(RunRecord.from_dict(json.loads(line)))
            except (ValueError, TypeError):
                continue
            if limit and len(found) >= limit:
                break
        return found

    def last(self, predicate: Callable[[RunRecord], bool] = lambda r: True) -> RunRecord | None:
        return next((r for r in self.records() if predicate(r)), None)

    def _lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as fh:
                return [line for line in fh.read().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def _trim(self) -> None:
        lines = self._lines()
        if len(lines) > MAX_RECORDS * 2:
            write_durably(FileSystem(), self.path, b"\n".join(lines[-MAX_RECORDS:]) + b"\n")


class SchedulerState:
    """`state/scheduler.json`: which schedule runs, the last slot served, the next run."""

    def __init__(self, repository: str) -> None:
        self.path = os.path.join(state_dir(repository), "scheduler.json")

    def load(self) -> dict:
        try:
            with open(self.path, "rb") as fh:
                doc = json.loads(fh.read())
            return doc if isinstance(doc, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def update(self, **values: object) -> dict:
        doc = {**self.load(), **values, "updated": time.time()}
        make_dirs(os.path.dirname(self.path))
        write_durably(FileSystem(), self.path, json.dumps(doc, default=str).encode())
        return doc


class StateLock:
    """An exclusive fcntl lock on a file in `state/`; the kernel drops it when the process dies.

    flock locks belong to the open file description, so two StateLocks on the same file conflict
    within one process too (the API thread and the scheduler thread of `serve --schedule`).
    """

    def __init__(self, repository: str, name: str) -> None:
        self.path = os.path.join(state_dir(repository), name)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        make_dirs(os.path.dirname(self.path))
        fd = open_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self, *, wait: bool, poll: float = 0.5, cancelled: Callable[[], bool] = lambda: False,
                sleep: Callable[[float], object] = time.sleep) -> bool:
        """Take the lock; with `wait`, poll until it is free or `cancelled()` says to give up."""
        while not self.try_acquire():
            if not wait or cancelled():
                return False
            sleep(poll)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """The pid written by whoever holds (or last held) the lock, for messages."""
        try:
            with open(self.path) as fh:
                return fh.read().strip() or "?"
        except OSError:
            return "?"

    def is_locked(self) -> bool:
        """Whether someone else holds the lock right now."""
        if self.held:
            return True
        if not os.path.exists(self.path):
            return False
        if self.try_acquire():
            self.release()
            return False
        return True


def run_lock(repository: str) -> StateLock:
    return StateLock(repository, "run.lock")


def scheduler_lock(repository: str) -> StateLock:
    return StateLock(repository, "scheduler.lock")


class RunBusy(LockError):
    """Another run (scheduled or asked for) is in progress on this repository."""


# -- one run -----------------------------------------------------------------------------------


def snapshot_step(repo: RepoCore, settings: Settings) -> dict:
    require_source(settings.source, allow_empty=settings.allow_empty, hint="set CASSTORE_SOURCE")
    from casstore.snapshot.builder import take_snapshot  # lazy: start-up time of `casstore status`

    with repo.locked():
        result = take_snapshot(repo, settings.source)
    s = result.summary
    return {"id": result.id, "short_id": result.short_id, "files": s.files_total, "bytes_total": s.bytes_total,
            "bytes_added": s.bytes_added, "bytes_added_stored": s.bytes_added_stored,
            "incomplete": result.incomplete, "errors": s.errors[:5], "duration_ms": s.duration_ms}


def sync_step(repo: RepoCore, settings: Settings) -> dict | None:
    """Sync to the configured remote; None when there is none (CLOUD_PROVIDER=local)."""
    if not settings.remote:
        return None
    from casstore.sync.transfer import sync_to_remote  # lazy: start-up time of `casstore status`

    with repo.locked():
        report = sync_to_remote(repo)
    return {"ok": True, "destination": report.destination, "snapshots": len(report.snapshots),
            "bytes_uploaded": report.bytes_uploaded, "packs_uploaded": report.packs_uploaded,
            "requests": report.requests, "seconds": report.seconds}


def retention_step(repo: RepoCore, settings: Settings) -> dict | None:
    """Apply the retention policy (CASSTORE_KEEP_LAST) when one is set.

    Only snapshot objects are forgotten here; the space comes back when gc runs.
    """
    policy = policy_from_settings(settings)
    if policy is None:
        return None
    return _compact(apply_retention(repo, policy), policy.describe())


def bucket_step(repo: RepoCore, settings: Settings) -> dict | None:
    """On the configured remote: forget this host's snapshots the policy drops, then one gc run.

    The policy is the local one (CASSTORE_KEEP_LAST), applied to the bucket's snapshots of this
    host only: a host never decides for another (a replaced host's snapshots stay until someone
    forgets them). gc is the shared bucket's two-phase gc with the repository's grace: this run
    condemns, a run at least one grace period later deletes. None without a remote or a policy.
    """
    policy = policy_from_settings(settings)
    if policy is None or not settings.remote:
        return None
    from casstore.gc.run import LeaseHeld, collect_garbage  # lazy: start-up time of `casstore status`

    with open_as(RepoCore, settings, remote=settings.remote) as bucket:
        forgotten = _compact(apply_retention(bucket, policy), policy.describe())
        try:
            report = collect_garbage(bucket).as_dict()
        except LeaseHeld as exc:   # another host's gc is running: it does the work this time
            report = {"skipped": str(exc)}
    gc = {k: report[k] for k in ("plan", "plans_swept", "packs_condemned", "packs_deleted", "bytes_deleted",
                                 "skipped") if k in report}
    return {"location": settings.remote, **forgotten, "gc": gc}


def _compact(result: object, asked: str) -> dict[str, Any]:
    """The run record keeps what was removed and how many were kept, not every decision."""
    doc = result if isinstance(result, dict) else getattr(result, "as_dict", lambda: {"result": str(result)})()
    if "removed" not in doc or "kept" not in doc:
        return doc
    policy: Any = getattr(result, "policy", None)
    described = policy.describe() if hasattr(policy, "describe") else asked
    return {"policy": described, "removed": list(doc["removed"]), "kept": doc["kept"]}


STEPS: tuple[tuple[str, Callable], ...] = (("snapshot", snapshot_step), ("sync", sync_step),
                                          ("retention", retention_step), ("bucket", bucket_step))


def open_for_run(settings: Settings) -> RepoCore:
    """The local repository (created on the first run)."""
    return open_as(RepoCore, settings, create=True)


def perform_run(settings: Settings, *, trigger: str, due: float | None = None, clock: Callable[[], float] = time.time,
                steps=STEPS, should_stop: Callable[[], bool] = lambda: False, wait: bool = True,
                sleep: Callable[[float], object] = time.sleep) -> RunRecord:
    """One run under the run lock: the steps in order, recorded, notified on failure.

    With `wait=False`, raise RunBusy when another run holds the lock; otherwise wait for it
    (returning an abandoned record if `should_stop()` turns true while waiting).
    """
    lock = run_lock(settings.repository)
    if not lock.acquire(wait=wait, cancelled=should_stop, sleep=sleep):
        if not wait:
            raise RunBusy(f"a run is already in progress on {settings.repository} (pid {lock.holder()})")
        record = RunRecord.begin(trigger, clock(), due)
        record.abandoned, record.ended = "stopped while waiting for another run to finish", clock()
        return record
    try:
        return run_locked(settings, RunRecord.begin(trigger, clock(), due), clock=clock, steps=steps,
                          should_stop=should_stop)
    finally:
        lock.release()


def run_locked(settings: Settings, record: RunRecord, *, clock: Callable[[], float], steps=STEPS,
               should_stop: Callable[[], bool] = lambda: False) -> RunRecord:
    """The steps of a run whose lock the caller holds; records it and notifies on failure."""
    try:
        _run_steps(settings, record, steps, should_stop)
    except BaseException:  # a second SIGINT/SIGTERM: abort now, but leave the record
        record.abandoned = record.abandoned or "interrupted"
        raise
    finally:
        record.ended = clock()
        record.ok = record.error is None and record.abandoned is None
        RunLog(settings.repository).append(record)
    if record.ok:
        log.info("%s", describe_run(record))
    elif record.abandoned and not record.error:
        log.warning("%s", describe_run(record))
    if record.error:
        notify_failure(settings, record)
    return record


def describe_run(record: RunRecord) -> str:
    """One line: 'run 1a2b3c (schedule) ok: snapshot 1f2e3d4c (120 files, +1.2 MB stored); synced 1 snapshot'."""
    parts = []
    if record.snapshot:
        snap = record.snapshot
        parts.append(f"snapshot {snap['short_id']} ({snap['files']} files, "
                     f"+{snap['bytes_added_stored'] / 1e6:.1f} MB stored)")
    if record.sync:
        parts.append(f"synced {record.sync['snapshots']} snapshot(s), {record.sync['bytes_uploaded'] / 1e6:.1f} MB")
    if record.retention and isinstance(record.retention.get("removed"), list):
        parts.append(f"retention forgot {len(record.retention['removed'])}, kept {record.retention['kept']}")
    if record.bucket and isinstance(record.bucket.get("removed"), list):
        parts.append(f"bucket forgot {len(record.bucket['removed'])}, kept {record.bucket['kept']}")
    outcome = "ok" if record.ok else f"FAILED ({record.error})" if record.error else f"abandoned ({record.abandoned})"
    return f"run {record.id} ({record.trigger}) {outcome}" + (": " + "; ".join(parts) if parts else "")


def _run_steps(settings: Settings, record: RunRecord, steps, should_stop: Callable[[], bool]) -> None:
    repo, current = None, "repository"
    try:
        if any(name == "snapshot" for name, _ in steps):   # refused before the repository is created
            current = "snapshot"
            require_source(settings.source, allow_empty=settings.allow_empty, hint="set CASSTORE_SOURCE")
            current = "repository"
        repo = open_for_run(settings)
        for current, step in steps:
            if should_stop():
                record.abandoned = f"stopped before {current}"
                return
            setattr(record, current, step(repo, settings))
            if current == "snapshot" and record.snapshot and record.snapshot.get("incomplete"):
                record.error = f"snapshot {record.snapshot['short_id']} is incomplete: " + \
                               "; ".join(record.snapshot.get("errors", []))
                record.failed_step = "snapshot"
    except Exception as exc:  # a failed run never kills the loop; its cause is recorded and logged
        record.error = f"{current}: {describe_error(exc)}"
        record.failed_step = current
        if isinstance(exc, CasstoreError | OSError):
            log.error("run %s failed: %s", record.id, record.error)
        else:
            log.exception("run %s failed: %s", record.id, record.error)
    finally:
        if repo is not None:
            repo.close()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, CasstoreError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def notify_failure(settings: Settings, record: RunRecord) -> None:
    """Run CASSTORE_NOTIFY_CMD (the user's own command line) with the failure in its environment."""
    if not settings.notify_cmd:
        return
    env = {**os.environ, "CASSTORE_ERROR": record.error or "", "CASSTORE_RUN_ID": record.id,
           "CASSTORE_RUN_TRIGGER": record.trigger, "CASSTORE_REPOSITORY": os.path.abspath(settings.repository),
           "CASSTORE_RUN_STARTED": datetime.fromtimestamp(record.started).astimezone().isoformat()}
    env.pop("CASSTORE_API_TOKEN", None)
    try:
        done = subprocess.run(settings.notify_cmd, shell=True, env=env, timeout=NOTIFY_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            log.warning("CASSTORE_NOTIFY_CMD exited with code %s", done.returncode)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("CASSTORE_NOTIFY_CMD could not run: %s", exc)
