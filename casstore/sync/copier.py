"""The Copier: copies blobs and snapshots from one repository into another, keeping the writer's
side of the lock-free gc protocol (design sections 8 and 9); see casstore.sync.transfer for the steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from casstore._testing import pause_point
from casstore.errors import CasstoreError, RemoteError
from casstore.format import layout
from casstore.format.blobset import BlobSet
from casstore.format.index import add_delta_bases
from casstore.format.pack import KIND_TREE
from casstore.format.plan import list_plan_keys
from casstore.format.walk import add_reachable
from casstore.repo.core import RepoCore
from casstore.sync.state import SyncState

log = logging.getLogger(__name__)
Blobs = Collection[tuple[int, bytes]]     # a BlobSet, or a list of (kind, id)

MAX_RECHECKS = 5


def boottime() -> float:
    """Seconds on a clock that keeps counting through suspend (design 9; restic #2715)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def _keeps_changing() -> CasstoreError:
    """What a sync says when gc keeps taking what it relies on past its bounded repairs."""
    return CasstoreError("the remote keeps changing under this sync (gc running?); run sync again")


class SessionExpired(RemoteError):
    """Checkpoints drifted more than half a grace period apart: gc may have taken our packs."""


class Copier:
    """Copies blobs and snapshots from `src` into `dst` (both open Repositories)."""

    def __init__(self, src: RepoCore, dst: RepoCore, *, concurrency: int, grace: float, state: SyncState | None,
                 progress: Callable[[int], None] | None = None, clock: Callable[[], float] = boottime,
                 listed_since: float | None = None) -> None:
        self.src, self.dst, self.state = src, dst, state
        # when the first listings were issued ahead (casstore.sync.ahead): the clock before they began
        self.listed_since = listed_since
        self.grace, self.clock = grace, clock
        self.progress = progress or (lambda n: None)
        self.protocol = dst.local_dir is None     # a remote: the lock-free protocol of design 9
        self.src_store = src.blob_store()
        self.store = dst.blob_store(upload_threads=concurrency)
        if state is not None:
            self.store.on_pack_uploaded = self._pack_uploaded
        cache = dst.cache
        if cache is not None:   # our own index is not fetched back by the next sync
            self.store.on_index_written = lambda index_id, body: cache.put("index", index_id, body)
        self.known_plans: list[str] = []
        self.relied_indexes: set[str] = set()
        self.recheck_clock = 0.0
        self.recheck_storage: float | None = None
        self.load_clock = 0.0
        self.fresh_load = False     # nothing written since load_destination listed gc/ and index/
        self.last_write: tuple[float, float] | None = None   # (storage time, clock) of our last write
        self.checkpoint_clock = clock()
        self.checkpoint_storage: float | None = None
        self.reuploaded = 0
        self.rechecks = 0

    # -- planning ----------------------------------------------------------------------------

    def load_destination(self) -> None:
        """Read the destination's gc plans, then its indexes: strictly in that order.

        A sweep deletes the indexes naming its packs, then the packs, then the plan. Listed
        indexes first, a whole sweep could finish before the `gc/` listing: the writer would trust
        an index naming swept packs and see no plan condemning them. Plans first (listed and read),
        a plan the writer missed was either swept before the `index/` listing, which then no longer
        shows its indexes, or written after the plans were listed, so its sweep comes a grace
        period later at the earliest (DESIGN.md "Sync").
        """
        # the listing counts from when it was sent, not answered: earlier is the safe side
        since, self.listed_since = self.listed_since, None
        self.load_clock = self.clock() if since is None else since
        if self.protocol:
            self.known_plans = self.dst.load_plans()
        pause_point("between-listings")
        self.dst.load_index()
        self.relied_indexes = set(self.dst.index.index_packs)
        self.fresh_load = True

    def reachable(self, snapshot_ids: list[str]) -> BlobSet:
        """Every blob the snapshots need, each once (a tree shared by several snapshots is read once),
        in walk order: trees before the chunks below them, so packs keep neighbouring files together;
        then the delta bases of those chunks (a delta copied without its chain could not be read)."""
        seen = BlobSet(ordered=True)
        for snapshot_id in snapshot_ids:
            add_reachable(lambda i: self.src.read_blob(KIND_TREE, i), self.src.manifest(snapshot_id).tree, seen)
        add_delta_bases(self.src.index, seen)
        return seen

    def missing(self, blobs: Blobs) -> list[tuple[int, bytes]]:
        """The blobs the destination lacks, in the order `blobs` gives them."""
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
        journal = self.state.journal()
        gone = self.gone(set(journal)) if journal else set()
        for pack_id, entries in journal.items():
            if pack_id not in gone:
                self.store.adopt_uploaded(pack_id, entries)

    def upload(self, blobs: list[tuple[int, bytes]]) -> None:
        for kind, blob_id in blobs:
            if self.store.has(kind, blob_id):
                continue
            self.fresh_load = False
            encoded, raw_length = self.src_store.read_encoded(kind, blob_id)
            self.store.add_encoded(kind, blob_id, encoded, raw_length)
            self.progress(raw_length)
            if self.protocol and self.clock() - self.checkpoint_clock >= self.grace / 4:
                self.checkpoint()
        self.store.wait_uploads()
        pause_point("after-pack-upload")

    def _pack_uploaded(self, pack_id: str, entries, size: int, info) -> None:
        if self.state is not None:
            self.state.journal_append(pack_id, entries)
        self._note_write(info.mtime)

    def checkpoint(self) -> None:
        """Index every pack of the session so far, so gc protects them while this session lives."""
        written = self._write_index("checkpoint")
        if written is None:
            return
        _, info = written
        if self.checkpoint_storage is not None and info.mtime - self.checkpoint_storage > self.grace / 2:
            raise SessionExpired("checkpoints more than half the grace period apart; restarting the sync")
        self.checkpoint_storage = info.mtime

    def gone(self, packs: set[str]) -> set[str]:
        """Which of our `packs` gc has taken or is taking: condemned by a plan listed now, or missing.

        The plans are read first, then the packs statted: a sweep deletes a plan's packs before
        the plan itself, so a pack still there is either condemned by a plan this reads (a sweep
        may be deleting it right now) or safe for at least a grace period from the plan listing.
        """
        if not self.protocol or not packs:
            return set()
        self.dst.load_plans()
        condemned = packs & self.dst.index.condemned
        return condemned | {p for p in packs - condemned if not self.dst.remote.exists(layout.pack_key(p))}

    def _confirm_session(self) -> None:
        """Before an index names the session's packs: drop those gc has taken or is taking.

        Within a quarter grace period of the session's last index (or confirmation) no pack of it
        can have been condemned since: they were protected, or too young. Past that, every pack is
        confirmed, plans first. Packs a known plan condemns are dropped in any case."""
        if not self.protocol:
            return
        session = self.store.session_packs()
        if self.clock() - self.checkpoint_clock >= self.grace / 4:
            started = self.clock()
            gone = self.gone(session)
            self.checkpoint_clock = started
        else:
            gone = session & self.dst.index.condemned
        if gone:
            log.warning("%d uploaded pack(s) vanished before they were indexed; uploading again", len(gone))
            self.store.forget_unindexed(gone)

    def flush(self) -> None:
        self._write_index("writer")

    def _write_index(self, kind: str):
        """Index the uploaded packs; if the index landed late, make sure its packs still exist."""
        self.store.wait_uploads()
        reference = self._storage_now()   # before the confirmation: a pause anywhere after it shows
        self._confirm_session()
        pause_point("before-index-put")
        before_put = self.clock()   # the index protects from when it lands, which is after this
        # on a shared remote every index of the session lists all its packs, so the youngest
        # (a checkpoint, then the final index) protects them all while the session lives (design 9)
        written = self.store.write_session_index(kind) if self.protocol else self.store.write_index(kind)
        if written is not None:
            self.fresh_load = False
            self.checkpoint_clock = before_put
            index_id, info = written
            self._check_index_landed(index_id, info, reference, kind)
        return written

    def _check_index_landed(self, index_id: str, info, reference: float | None, kind: str, depth: int = 0) -> None:
        """A writer paused between confirming its packs and indexing them (past two grace periods)
        may have indexed packs gc has since deleted. It cannot delete its index (writers only put),
        so it writes one without the lost packs that retracts it; the lost blobs then count as
        missing and the re-check uploads them again before any snapshot relies on them."""
        self.relied_indexes.add(index_id)
        self._note_write(info.mtime)
        if not self.protocol or (reference is not None and info.mtime - reference <= self.grace / 4):
            return
        packs = self.store.session_indexes[index_id]
        gone = self.gone(set(packs))
        if not gone:
            return
        if depth >= MAX_RECHECKS:
            # giving up quietly would leave an index naming deleted packs for the snapshot to rely on
            raise _keeps_changing()
        log.warning("%d pack(s) were deleted before their index landed; withdrawing that index", len(gone))
        self.store.forget_unindexed(gone)
        reference = self._storage_now()
        kept = {p: entries for p, entries in packs.items() if p not in gone}
        new_id, new_info = self.store.put_index(kept, kind, retracts=(index_id,))
        self.relied_indexes.discard(index_id)
        self._check_index_landed(new_id, new_info, reference, kind, depth + 1)

    def _note_write(self, storage_time: float) -> None:
        self.last_write = (storage_time, self.clock())

    def _storage_now(self) -> float | None:
        """The storage's clock now, estimated from our last write plus the boot-time elapsed since."""
        if self.last_write is None:
            return None
        storage, at = self.last_write
        return storage + (self.clock() - at)

    # -- committing --------------------------------------------------------------------------

    def recheck(self, blobs: Blobs) -> None:
        """Re-list gc/ and index/ right before committing; repair until nothing changed."""
        if not self.protocol:
            return
        if self.fresh_load and self.clock() - self.load_clock < self.grace / 4 and not self.missing(blobs):
            # nothing was written since load_destination listed gc/ and index/, just now: that
            # listing is the re-check (design 8.4: an unchanged folder's sync costs a few requests)
            self.fresh_load = False
            self.recheck_clock, self.recheck_storage = self.load_clock, None
            pause_point("after-recheck")
            return
        for _ in range(MAX_RECHECKS):
            self.rechecks += 1
            plans = list_plan_keys(self.dst.remote)
            listed = {layout.name_of(info.key) for info in self.dst.remote.list(layout.INDEX_PREFIX)}
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
        raise _keeps_changing()

    def _mark_recheck(self) -> None:
        self.recheck_clock = self.clock()
        self.recheck_storage = self._storage_now()

    def commit(self, snapshot_id: str, blobs: Blobs) -> None:
        if self.protocol and self.clock() - self.recheck_clock > self.grace / 2:
            self.recheck(blobs)
        body = self.src._cached_get(layout.SNAPSHOTS, snapshot_id)  # verified (re-fetched on mismatch) before copied
        self.src.manifest(snapshot_id)
        if self.state is not None:
            self.state.pending.add(snapshot_id)
            self.state.save()
        info = self.dst.remote.put(layout.snapshot_key(snapshot_id), body)
        self._note_write(info.mtime)
        pause_point("after-snapshot-put")
        self.post_commit(info.mtime, blobs)
        if self.state is not None:
            self.state.pending.discard(snapshot_id)
            self.state.synced.add(snapshot_id)
            self.state.save()

    def post_commit(self, snapshot_time: float | None, blobs: Blobs) -> None:
        """After the snapshot landed late, gc may have acted meanwhile: confirm every pack, re-upload.

        Late means more than a quarter grace period after the re-check: by storage timestamps when
        the re-check's storage time is known, else (nothing was written before it) by the boot
        time elapsed since it. On time, nothing it relies on can go: a plan the re-check did not
        see was written after it, so its sweep comes a grace period later at the earliest, lists
        this snapshot and keeps what it needs; an index that vanished was consolidated into gc's
        (its packs stay indexed) or listed only packs of plans the re-check saw. So no listing is
        made then (design 8.4: a sync of an unchanged folder costs a handful of requests).
        """
        if not self.protocol:
            return
        if self.recheck_storage is not None and snapshot_time is not None:
            late = snapshot_time - self.recheck_storage > self.grace / 4
        else:
            late = self.clock() - self.recheck_clock > self.grace / 4
        if late:
            self.confirm_packs(blobs)

    def confirm_packs(self, blobs: Blobs) -> None:
        """Until every blob is in a pack that exists and no plan condemns: upload what is gone.

        A repair's own index may land late and be withdrawn (its packs swept meanwhile), so
        this repeats until a round finds nothing missing."""
        for _ in range(MAX_RECHECKS):
            self.load_destination()   # indexes and plans first, then packs: a sweep in between shows
            existing = {layout.name_of(info.key) for info in self.dst.remote.list(layout.DATA_PREFIX)}
            self.dst.index.drop_packs(self.dst.index.all_pack_ids() - existing)
            gone = self.missing(blobs)
            if not gone:
                return
            log.warning("%d blob(s) vanished from the remote after the commit; uploading them again", len(gone))
            self.reuploaded += len(gone)
            self.upload(gone)
            self.flush()
        raise _keeps_changing()

    def close(self) -> None:
        self.store.close()
        self.src_store.close()
