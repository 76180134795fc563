"""sync and pull: copy snapshots between repositories, sending only the blobs the destination lacks.

The writer's side of the lock-free gc protocol (design sections 8 and 9), kept by casstore.sync.copier:
- blobs whose only copies lie in packs a gc plan condemns count as missing and are uploaded
  again into fresh packs;
- packs first (in parallel, journaled), checkpoint indexes at least every quarter of the grace
  period, then the final index;
- right before the snapshots, re-list `gc/` and `index/`; if a plan appeared or an index we relied
  on vanished, reload and upload what is now missing, and re-check;
- after each snapshot write, if it landed long after the re-check (the process was paused) or
  `gc/` / `index/` changed meanwhile, confirm every pack it relies on still exists and re-upload
  what is gone; only then is the snapshot recorded as committed.
Elapsed time uses CLOCK_BOOTTIME, which keeps counting while the machine is suspended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from casstore.errors import ConfigError
from casstore.format import layout
from casstore.remotes.base import Remote
from casstore.remotes.wrappers import CountingRemote
from casstore.repo.core import RepoCore
from casstore.repo.open import connect, open_as
from casstore.repo.pricing import request_classes
from casstore.settings import Settings
from casstore.sync.ahead import ListingsAhead
from casstore.sync.copier import Copier, boottime
from casstore.sync.estimate import priced_with_history
from casstore.sync.state import SyncState

log = logging.getLogger(__name__)

# what a sync with work to do lists first; none depends on another's answer (casstore.sync.ahead).
# Not `index/`: it is listed only after the gc plans were listed and read (Copier.load_destination)
FIRST_LISTINGS = (layout.GC_PREFIX, layout.SNAPSHOTS_PREFIX)


@dataclass
class SyncReport:
    source: str
    destination: str
    dry_run: bool = False
    snapshots: list[str] = field(default_factory=list)
    blobs_missing: int = 0
    bytes_missing: int = 0          # raw bytes of the missing blobs
    bytes_missing_stored: int = 0   # their encoded size, what is uploaded (plus pack headers)
    requests_planned: int = 0       # PUTs the upload needs: packs, the index, the snapshots
    packs_uploaded: int = 0
    bytes_uploaded: int = 0
    requests: int = 0
    rechecks: int = 0
    reuploaded_blobs: int = 0
    seconds: float = 0.0
    monthly_cost_after: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# -- entry points ----------------------------------------------------------------------------

def open_destination(url_or_remote: str | Remote | None, src: RepoCore | None,
                     settings: Settings) -> tuple[RepoCore, CountingRemote]:
    """Open (creating from `src`'s config if empty) the remote repository, wrapped for retries and counting."""
    counting = connect_counting(url_or_remote, settings)
    return open_counted(counting, src, settings), counting


def connect_counting(url_or_remote: str | Remote | None, settings: Settings) -> CountingRemote:
    """The remote (the configured one by default), wrapped for retries and counting; no request yet."""
    if url_or_remote is None:
        url_or_remote = settings.remote
    if url_or_remote is None:
        raise ConfigError("no remote configured: set CASSTORE_REMOTE or CLOUD_PROVIDER (or pass --remote URL)")
    return CountingRemote(connect(url_or_remote, settings))


def open_counted(counting: CountingRemote, src: RepoCore | None, settings: Settings,
                 list_ahead: tuple[str, ...] = ()) -> RepoCore:
    """Read (or create) the repository at `counting`; the `list_ahead` listings run meanwhile."""
    remote = ListingsAhead(counting, list_ahead)
    try:
        dst = open_as(RepoCore, settings, remote=remote, create=src is not None, like=src.config if src else None)
        if src is not None:
            src.config.check_compatible(dst.config, counting.url)
    except BaseException:
        remote.settle()
        raise
    return dst


def sync_to_remote(repo: RepoCore, remote: str | Remote | None = None, *, dry_run: bool = False,
                   progress: Callable[[int], None] | None = None, clock: Callable[[], float] = boottime) -> SyncReport:
    """Copy this repository's new snapshots to the remote (design section 8)."""
    started = time.monotonic()
    if repo.local_dir is None:
        raise ConfigError("sync runs from a local repository")
    counting = connect_counting(remote, repo.settings)
    state = SyncState(repo.local_dir, counting.url)
    candidates = sorted(set(repo.snapshot_ids()) - state.synced - state.pulled(),
                        key=lambda i: repo.manifest(i).time_ns)
    work = bool(candidates or state.pending)
    # with work to do, the listings it needs go out with the config read, not after it (issue 20)
    listed_since = clock()
    dst = open_counted(counting, repo, repo.settings, list_ahead=FIRST_LISTINGS if work else ())
    report = SyncReport(repo.location, dst.remote.url, dry_run)
    if not work:
        return _finish(report, counting, started, state.last_sync.get("stored_bytes", 0), state)
    copier = Copier(repo, dst, concurrency=repo.settings.upload_concurrency, grace=float(dst.config.grace_seconds),
                    state=None if dry_run else state, progress=progress, clock=clock, listed_since=listed_since)
    stored = 0
    try:
        repo.load_index()
        copier.load_destination()
        on_remote = set(dst.snapshot_ids())
        _finish_pending(copier, state, on_remote, dry_run)
        todo = [i for i in candidates if i not in on_remote]
        state.synced |= set(candidates) - set(todo)
        blobs = copier.reachable(todo)
        if not dry_run:
            copier.resume_journal()
        missing = copier.missing(blobs)
        report.snapshots = todo
        report.blobs_missing = len(missing)
        report.bytes_missing, report.bytes_missing_stored = copier.sizes(missing)
        report.requests_planned = _planned_puts(report, repo.config.pack_size)
        announce_total(progress, report.bytes_missing)
        if not dry_run:
            _copy(copier, todo, blobs, missing)
            state.journal_clear()
            stored = _stored_bytes(dst)   # a walk of the whole index: once, for the state and the report
            state.last_sync = {"time": time.time(), "snapshots": len(todo), "ok": True, "stored_bytes": stored}
        report.packs_uploaded = copier.store.packs_written
        report.bytes_uploaded = copier.store.bytes_written
        report.rechecks, report.reuploaded_blobs = copier.rechecks, copier.reuploaded
    finally:
        copier.close()
    if dry_run:
        stored = _stored_bytes(dst) + report.bytes_missing_stored
    return _finish(report, counting, started, stored, state)


def announce_total(progress: Callable[[int], None] | None, total: int) -> None:
    """Tell a progress callback that has `set_total` (the CLI's bar) how many bytes will come."""
    set_total = getattr(progress, "set_total", None)
    if set_total is not None:
        set_total(total)


def _planned_puts(report: SyncReport, pack_size: int) -> int:
    packs = -(-report.bytes_missing_stored // pack_size) + (1 if report.blobs_missing else 0)  # + a tree pack
    return packs + (1 if report.blobs_missing else 0) + len(report.snapshots)


def _stored_bytes(dst: RepoCore) -> int:
    """Encoded bytes of every blob the remote's indexes list (pack overhead aside)."""
    return sum(locations[0].length for _, locations in dst.index.blobs())


def _copy(copier: Copier, todo: list[str], blobs, missing) -> None:
    copier.upload(missing)
    copier.flush()
    copier.recheck(blobs)
    for snapshot_id in todo:
        # what every snapshot of this sync needs covers what this one needs: each tree was read
        # once, for all of them (re-walking each snapshot cost snapshots x trees, issue 14)
        copier.commit(snapshot_id, blobs)


def _finish_pending(copier: Copier, state: SyncState, on_remote: set[str], dry_run: bool) -> None:
    """A snapshot written by an interrupted sync: run its post-commit check before trusting it."""
    for snapshot_id in sorted(state.pending):
        if snapshot_id in on_remote and not dry_run:
            copier.confirm_packs(copier.reachable([snapshot_id]))
            state.synced.add(snapshot_id)
        state.pending.discard(snapshot_id)
    if not dry_run:
        state.save()


def _finish(report: SyncReport, counting, started: float, stored_bytes: int, state: SyncState) -> SyncReport:
    """Count the requests; the estimate prices the storage after the sync and the requests this
    host's syncs made over the last 30 days (this one included; a dry run records nothing)."""
    report.requests = counting.total()
    report.seconds = round(time.monotonic() - started, 3)
    now = time.time()
    if not report.dry_run:
        state.record_requests(now, *request_classes(counting.counts))
        state.save()
    report.monthly_cost_after = priced_with_history(stored_bytes, report.destination, state, now)
    return report


def pull_from_remote(repo: RepoCore, remote: str | Remote | None = None, *, snapshot: str | None = None,
                     host: str | None = None, all_hosts: bool = True,
                     progress: Callable[[int], None] | None = None) -> SyncReport:
    """Copy snapshots from the remote into this local repository."""
    started = time.monotonic()
    if repo.local_dir is None:
        raise ConfigError("pull copies into a local repository")
    src, counting = open_destination(remote, None, repo.settings)
    repo.config.check_compatible(src.config, src.remote.url)
    report = SyncReport(src.remote.url, repo.location)
    every_host = all_hosts and host is None     # a named host narrows pull's every-host default
    if snapshot:
        wanted = [src.resolve(snapshot, host=host, all_hosts=every_host).id]
    else:
        wanted = [s.id for s in src.snapshots(host=host, all_hosts=every_host)]
    todo = sorted(set(wanted) - set(repo.snapshot_ids()), key=lambda i: src.manifest(i).time_ns)
    copier = Copier(src, repo, concurrency=1, grace=float(src.config.grace_seconds), state=None, progress=progress)
    try:
        src.load_index()
        repo.load_index()
        blobs = copier.reachable(todo)
        missing = copier.missing(blobs)
        report.snapshots, report.blobs_missing = todo, len(missing)
        report.bytes_missing, report.bytes_missing_stored = copier.sizes(missing)
        announce_total(progress, report.bytes_missing)
        copier.upload(missing)
        copier.flush()
        for snapshot_id in todo:
            copier.commit(snapshot_id, [])
        report.packs_uploaded, report.bytes_uploaded = copier.store.packs_written, copier.store.bytes_written
    finally:
        copier.close()
    state = SyncState(repo.local_dir, src.remote.url)
    state.add_pulled(set(todo))
    state.synced |= set(todo)
    state.save()
    report.requests = counting.total()
    report.seconds = round(time.monotonic() - started, 3)
    return report


__all__ = ["SyncReport", "open_destination", "pull_from_remote", "sync_to_remote"]
