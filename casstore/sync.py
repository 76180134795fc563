"""sync and pull: copy snapshots between repositories, sending only the blobs the destination lacks.

The writer's side of the lock-free gc protocol (design sections 8 and 9) lives here:
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

from casstore.blobs.pack import KIND_DATA, KIND_TREE
from casstore.errors import CasstoreError, ConfigError, ObjectNotFound, RemoteError
from casstore.gcplan import list_plan_keys
from casstore.manifest.tree import EntryType, decode_tree
from casstore.syncstate import SyncState
from casstore.testhooks import pause_point

log = logging.getLogger(__name__)

MAX_RECHECKS = 5


def boottime() -> float:
    """Seconds on a clock that keeps counting through suspend (design 9; restic #2715)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class SessionExpired(RemoteError):
    """Checkpoints drifted more than half a grace period apart: gc may have taken our packs."""


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


class Copier:
    """Copies blobs and snapshots from `src` into `dst` (both open Repositories)."""

    def __init__(self, src, dst, *, concurrency: int, grace: float, state: SyncState | None,
                 progress: Callable[[int], None] | None = None, clock: Callable[[], float] = boottime) -> None:
        self.src, self.dst, self.state = src, dst, state
        self.grace, self.clock = grace, clock
        self.progress = progress or (lambda n: None)
        self.protocol = dst.local_dir is None     # a remote: the lock-free protocol of design 9
        self.src_store = src.blob_store()
        self.store = dst.blob_store(upload_threads=concurrency)
        if state is not None:
            self.store.on_pack_uploaded = lambda pack_id, entries, size: state.journal_append(pack_id, entries)
        self.known_plans: list[str] = []
        self.relied_indexes: set[str] = set()
        self.recheck_clock = 0.0
        self.recheck_storage = 0.0
        self.last_write: tuple[float, float] | None = None   # (storage time, clock) of our last write
        self.checkpoint_clock = clock()
        self.checkpoint_storage: float | None = None
        self.reuploaded = 0
        self.rechecks = 0

    # -- planning ----------------------------------------------------------------------------

    def load_destination(self) -> None:
        self.dst.load_index()
        if self.protocol:
            self.known_plans = self.dst.load_plans()
        self.relied_indexes = set(self.dst.index.index_packs)

    def reachable(self, snapshot_ids: list[str]) -> list[tuple[int, bytes]]:
        """Every blob the snapshots need, trees before the chunks below them, each once."""
        seen: dict[tuple[int, bytes], None] = {}
        for snapshot_id in snapshot_ids:
            self._walk(self.src.manifest(snapshot_id).tree, seen)
        return list(seen)

    def _walk(self, tree_id: bytes, seen: dict) -> None:
        next_id: bytes | None = tree_id
        while next_id is not None and (KIND_TREE, next_id) not in seen:
            seen[(KIND_TREE, next_id)] = None
            entries, next_id = decode_tree(self.src.read_blob(KIND_TREE, next_id))
            for entry in entries:
                if entry.type is EntryType.DIR:
                    self._walk(entry.subtree, seen)
                elif entry.type is EntryType.FILE:
                    for chunk_id in entry.chunks:
                        seen.setdefault((KIND_DATA, chunk_id), None)

    def missing(self, blobs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        return [key for key in blobs if not self.store.has(*key)]

    def sizes(self, blobs: list[tuple[int, bytes]]) -> tuple[int, int]:
        raw = stored = 0
        for kind, blob_id in blobs:
            location = self.src.index.locations(kind, blob_id)[0]
            raw += location.raw_length
            stored += location.length
        return raw, stored

    # -- uploading ---------------------------------------------------------------------------

    def resume_journal(self) -> None:
        """Adopt packs an interrupted sync uploaded, once confirmed to still exist."""
        if self.state is None:
            return
        for pack_id, entries in self.state.journal().items():
            if self.dst.remote.exists(f"data/{pack_id[:2]}/{pack_id}") and pack_id not in self.dst.index.condemned:
                self.store.adopt_uploaded(pack_id, entries)

    def upload(self, blobs: list[tuple[int, bytes]]) -> None:
        for kind, blob_id in blobs:
            if self.store.has(kind, blob_id):
                continue
            encoded, raw_length = self.src_store.read_encoded(kind, blob_id)
            self.store.add_encoded(kind, blob_id, encoded, raw_length)
            self.progress(raw_length)
            if self.protocol and self.clock() - self.checkpoint_clock >= self.grace / 4:
                self.checkpoint()
        self.store.wait_uploads()
        pause_point("after-pack-upload")

    def checkpoint(self) -> None:
        """Index what is uploaded so far, so gc protects those packs while this session lives."""
        self.store.wait_uploads()
        self._confirm_unindexed()
        written = self.store.write_index("checkpoint")
        self.checkpoint_clock = self.clock()
        if written is None:
            return
        index_id, info = written
        self.relied_indexes.add(index_id)
        self._note_write(info.mtime)
        if self.checkpoint_storage is not None and info.mtime - self.checkpoint_storage > self.grace / 2:
            raise SessionExpired("checkpoints more than half the grace period apart; restarting the sync")
        self.checkpoint_storage = info.mtime

    def _confirm_unindexed(self) -> None:
        """Packs uploaded over a quarter grace period ago and not yet indexed: confirm they exist."""
        if not self.protocol or self.clock() - self.checkpoint_clock < self.grace / 4:
            return
        gone = {p for p in self.store.unindexed() if not self.dst.remote.exists(f"data/{p[:2]}/{p}")}
        if gone:
            log.warning("%d uploaded pack(s) vanished before they were indexed; uploading again", len(gone))
            self.store.forget_unindexed(gone)

    def flush(self) -> None:
        self.store.wait_uploads()
        self._confirm_unindexed()
        written = self.store.write_index("writer")
        if written is not None:
            index_id, info = written
            self.relied_indexes.add(index_id)
            self._note_write(info.mtime)

    def _note_write(self, storage_time: float) -> None:
        self.last_write = (storage_time, self.clock())

    # -- committing --------------------------------------------------------------------------

    def recheck(self, blobs: list[tuple[int, bytes]]) -> None:
        """Re-list gc/ and index/ right before committing; repair until nothing changed."""
        if not self.protocol:
            return
        for _ in range(MAX_RECHECKS):
            self.rechecks += 1
            plans = list_plan_keys(self.dst.remote)
            listed = {info.key.split("/", 1)[1] for info in self.dst.remote.list("index/")}
            # missing(): packs found gone before they were indexed must be uploaded before the commit
            if plans == self.known_plans and self.relied_indexes <= listed and not self.missing(blobs):
                self._mark_recheck()
                pause_point("after-recheck")
                return
            self.load_destination()
            again = self.missing(blobs)
            self.reuploaded += len(again)
            self.upload(again)
            self.flush()
        raise CasstoreError("the remote keeps changing under this sync (gc running?); run sync again")

    def _mark_recheck(self) -> None:
        now = self.clock()
        self.recheck_clock = now
        if self.last_write is None:
            self.recheck_storage = 0.0
        else:
            storage, at = self.last_write
            self.recheck_storage = storage + (now - at)   # the storage's clock, estimated forward

    def commit(self, snapshot_id: str, blobs: list[tuple[int, bytes]]) -> None:
        if self.protocol and self.clock() - self.recheck_clock > self.grace / 2:
            self.recheck(blobs)
        body = self.src.remote.get(f"snapshots/{snapshot_id}")
        self.src.manifest(snapshot_id)  # verified before it is copied
        if self.state is not None:
            self.state.pending.add(snapshot_id)
            self.state.save()
        info = self.dst.remote.put(f"snapshots/{snapshot_id}", body)
        self._note_write(info.mtime)
        pause_point("after-snapshot-put")
        self.post_commit(info.mtime, blobs)
        if self.state is not None:
            self.state.pending.discard(snapshot_id)
            self.state.synced.add(snapshot_id)
            self.state.save()

    def post_commit(self, snapshot_time: float | None, blobs: list[tuple[int, bytes]]) -> None:
        """After the snapshot landed: if gc may have acted meanwhile, confirm every pack still exists."""
        if not self.protocol:
            return
        late = snapshot_time is None or snapshot_time - self.recheck_storage > self.grace / 4
        plans = list_plan_keys(self.dst.remote)
        listed = {info.key.split("/", 1)[1] for info in self.dst.remote.list("index/")}
        if not late and plans == self.known_plans and self.relied_indexes <= listed:
            return
        self.confirm_packs(blobs)

    def confirm_packs(self, blobs: list[tuple[int, bytes]]) -> None:
        self.load_destination()   # indexes and plans first, then packs: a sweep in between shows
        existing = {info.key.rsplit("/", 1)[1] for info in self.dst.remote.list("data/")}
        self.dst.index.drop_packs(self.dst.index.all_pack_ids() - existing)
        gone = self.missing(blobs)
        if gone:
            log.warning("%d blob(s) vanished from the remote after the commit; uploading them again", len(gone))
            self.reuploaded += len(gone)
            self.upload(gone)
            self.flush()

    def close(self) -> None:
        self.store.close()
        self.src_store.close()


# -- entry points ----------------------------------------------------------------------------

def open_destination(url_or_remote, src, settings):
    """Open (creating from `src`'s config if empty) the remote repository, wrapped for retries and counting."""
    import secrets
    from dataclasses import replace

    from casstore.errors import ObjectExists
    from casstore.remotes import open_remote
    from casstore.remotes.base import Remote
    from casstore.remotes.wrappers import CountingRemote, RetryingRemote
    from casstore.repository import Repository, read_config

    if url_or_remote is None:
        url_or_remote = settings.remote
    if url_or_remote is None:
        raise ConfigError("no remote configured: set CASSTORE_REMOTE or CLOUD_PROVIDER (or pass --remote URL)")
    raw = url_or_remote if isinstance(url_or_remote, Remote) else open_remote(url_or_remote,
                                                                             **settings.remote_options())
    remote = CountingRemote(RetryingRemote(raw))
    try:
        config = read_config(remote)
    except CasstoreError as exc:
        if src is None or "no casstore repository" not in str(exc):
            raise
        config = replace(src.config, id=secrets.token_hex(16))
        try:
            remote.put("config", config.encode(), if_absent=True)
        except ObjectExists:
            config = read_config(remote)
    if src is not None:
        src.config.check_compatible(config, remote.url)
    return Repository(remote, config, settings), remote


def sync_to_remote(repo, remote=None, *, dry_run: bool = False, progress=None, clock=boottime) -> SyncReport:
    """Copy this repository's new snapshots to the remote (design section 8)."""
    started = time.monotonic()
    if repo.local_dir is None:
        raise ConfigError("sync runs from a local repository")
    dst, counting = open_destination(remote, repo, repo.settings)
    state = SyncState(repo.local_dir, dst.remote.url)
    report = SyncReport(repo.location, dst.remote.url, dry_run)
    candidates = sorted(set(repo.snapshot_ids()) - state.synced - state.pulled(),
                        key=lambda i: repo.manifest(i).time_ns)
    if not candidates and not state.pending:
        return _finish(report, counting, started, state.last_sync.get("stored_bytes", 0))
    copier = Copier(repo, dst, concurrency=repo.settings.upload_concurrency, grace=repo.settings.grace_seconds,
                    state=None if dry_run else state, progress=progress, clock=clock)
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
        if not dry_run:
            _copy(copier, todo, blobs, missing)
            state.journal_clear()
            state.last_sync = {"time": time.time(), "snapshots": len(todo), "ok": True,
                               "stored_bytes": _stored_bytes(dst)}
            state.save()
        report.packs_uploaded = copier.store.packs_written
        report.bytes_uploaded = copier.store.bytes_written
        report.rechecks, report.reuploaded_blobs = copier.rechecks, copier.reuploaded
    finally:
        copier.close()
    return _finish(report, counting, started, _stored_bytes(dst) + report.bytes_missing_stored * dry_run)


def _planned_puts(report: SyncReport, pack_size: int) -> int:
    packs = -(-report.bytes_missing_stored // pack_size) + (1 if report.blobs_missing else 0)  # + a tree pack
    return packs + (1 if report.blobs_missing else 0) + len(report.snapshots)


def _stored_bytes(dst) -> int:
    """Encoded bytes of every blob the remote's indexes list (pack overhead aside)."""
    return sum(locations[0].length for _, locations in dst.index.blobs())


def _copy(copier: Copier, todo: list[str], blobs, missing) -> None:
    copier.upload(missing)
    copier.flush()
    copier.recheck(blobs)
    for snapshot_id in todo:
        copier.commit(snapshot_id, copier.reachable([snapshot_id]))


def _finish_pending(copier: Copier, state: SyncState, on_remote: set[str], dry_run: bool) -> None:
    """A snapshot written by an interrupted sync: run its post-commit check before trusting it."""
    for snapshot_id in sorted(state.pending):
        if snapshot_id in on_remote and not dry_run:
            copier.confirm_packs(copier.reachable([snapshot_id]))
            state.synced.add(snapshot_id)
        state.pending.discard(snapshot_id)
    if not dry_run:
        state.save()


def _finish(report: SyncReport, counting, started: float, stored_bytes: int) -> SyncReport:
    from casstore.pricing import monthly_storage_cost

    report.requests = counting.total()
    report.seconds = round(time.monotonic() - started, 3)
    report.monthly_cost_after = monthly_storage_cost(stored_bytes)
    return report


def pull_from_remote(repo, remote=None, *, snapshot: str | None = None, host: str | None = None,
                     all_hosts: bool = True, progress=None) -> SyncReport:
    """Copy snapshots from the remote into this local repository."""
    started = time.monotonic()
    src, counting = open_destination(remote, None, repo.settings)
    repo.config.check_compatible(src.config, src.remote.url)
    report = SyncReport(src.remote.url, repo.location)
    if snapshot:
        wanted = [src.resolve(snapshot, host=host, all_hosts=all_hosts).id]
    else:
        wanted = [s.id for s in src.snapshots(host=host, all_hosts=all_hosts and host is None)]
    todo = sorted(set(wanted) - set(repo.snapshot_ids()), key=lambda i: src.manifest(i).time_ns)
    copier = Copier(src, repo, concurrency=1, grace=repo.settings.grace_seconds, state=None, progress=progress)
    try:
        src.load_index()
        repo.load_index()
        blobs = copier.reachable(todo)
        missing = copier.missing(blobs)
        report.snapshots, report.blobs_missing = todo, len(missing)
        report.bytes_missing, report.bytes_missing_stored = copier.sizes(missing)
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


__all__ = ["ObjectNotFound", "SyncReport", "pull_from_remote", "sync_to_remote"]
