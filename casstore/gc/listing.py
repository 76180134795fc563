"""What gc sees: one strict listing of the repository and the blobs its snapshots need.

Listed in the order writers write in reverse (design 4, 5.1): plans, snapshots, then indexes,
then packs, so every pack an index listed is already in the pack listing and every index a
listed snapshot needs is already in the index listing. Unlike readers, gc trusts nothing it
could not verify (design 5.6): a listing error, an index or snapshot or tree that cannot be
fetched and verified, an indexed pack missing from the pack listing, or a needed blob no index
lists stops it (GcAborted) before it deletes anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from casstore.errors import CasstoreError, ObjectNotFound
from casstore.format import layout
from casstore.format.blobset import BlobSet
from casstore.format.index import (
    IndexObject,
    Location,
    MasterIndex,
    add_delta_bases,
    decode_index,
    without_retracted,
)
from casstore.format.pack import KIND_TREE, BlobEntry
from casstore.format.plan import GcPlan, decode_plan
from casstore.format.snapshot import SnapshotManifest, decode_snapshot
from casstore.format.walk import add_reachable
from casstore.gc.context import GcAborted, GcContext
from casstore.remotes.base import ObjectInfo
from casstore.repo.blobstore import BlobStore
from casstore.repo.objectcache import BlobCache, verified_object

BlobKey = tuple[int, bytes]
PROTECTING_ORIGINS = ("writer", "checkpoint")


@dataclass
class RepoView:
    plans: dict[str, tuple[GcPlan, ObjectInfo]] = field(default_factory=dict)
    snapshots: dict[str, SnapshotManifest] = field(default_factory=dict)
    indexes: dict[str, tuple[IndexObject, ObjectInfo]] = field(default_factory=dict)
    retracted: dict[str, ObjectInfo] = field(default_factory=dict)   # withdrawn by their writer: ignored
    packs: dict[str, ObjectInfo] = field(default_factory=dict)
    index: MasterIndex = field(default_factory=MasterIndex)
    live: BlobSet = field(default_factory=BlobSet)

    def condemned(self) -> set[str]:
        """Packs condemned by any plan listed."""
        return {pack for plan, _ in self.plans.values() for pack in plan.condemned_packs}

    def indexed_packs(self) -> set[str]:
        return {pack for index, _ in self.indexes.values() for pack in index.packs}

    def pack_entries(self) -> dict[str, Collection[BlobEntry]]:
        """pack id -> its blob entries, as the indexes list them (first listing wins)."""
        entries: dict[str, Collection[BlobEntry]] = {}
        for index, _ in self.indexes.values():
            for pack_id, blobs in index.packs.items():
                entries.setdefault(pack_id, blobs)
        return entries

    def protected(self, now: float, grace: float) -> set[str]:
        """Packs listed in writer or checkpoint indexes younger than the grace period (design 9)."""
        return {pack for index, info in self.indexes.values()
                if index.origin.get("kind") in PROTECTING_ORIGINS and info.mtime > now - grace
                for pack in index.packs}

    def without(self, doomed: set[str]) -> dict[str, Collection[BlobEntry]]:
        return {pack: blobs for pack, blobs in self.pack_entries().items() if pack not in doomed}


def delete_retracted(ctx: GcContext, view: RepoView) -> None:
    """Delete indexes their writers withdrew, before anything that could delete the withdrawing index."""
    ctx.delete_all([(layout.index_key(i), info.size) for i, info in sorted(view.retracted.items())],
                   "indexes_deleted")


def load_view(ctx: GcContext, *, walk: bool = True) -> RepoView:
    view = RepoView()
    try:
        _list_plans(ctx, view)
        _list_snapshots(ctx, view)
        _list_indexes(ctx, view)
        view.packs = {layout.name_of(info.key): info for info in ctx.remote.list(layout.DATA_PREFIX)}
    except GcAborted:
        raise
    except CasstoreError as exc:
        raise GcAborted(f"gc stopped, nothing deleted: {exc}") from exc
    missing = view.indexed_packs() - set(view.packs)
    if missing:
        raise GcAborted(f"{len(missing)} indexed pack(s) missing from the pack listing (e.g. {min(missing)[:16]}): "
                        "the listing is incomplete or the repository is damaged; run `casstore check`")
    if walk:
        view.live = live_blobs(ctx, view)
    return view


def _list_plans(ctx: GcContext, view: RepoView) -> None:
    listed = {info.key: info for info in ctx.remote.list(layout.GC_PREFIX) if layout.is_plan_key(info.key)}
    for key in sorted(listed):
        view.plans[key] = (decode_plan(ctx.remote.get(key), key, ctx.repo.config.sealer), listed[key])


def _list_snapshots(ctx: GcContext, view: RepoView) -> None:
    for info in ctx.remote.list(layout.SNAPSHOTS_PREFIX):
        ctx.keep_lease()
        snapshot_id = info.key.split("/", 1)[1]
        try:
            view.snapshots[snapshot_id] = decode_snapshot(snapshot_id, verified_object(
                ctx.remote, None, layout.SNAPSHOTS, snapshot_id, ctx.repo.read_policy),   # re-read on mismatch
                ctx.repo.config.sealer)
        except ObjectNotFound:
            continue  # forgotten since the listing: it needs nothing any more


def _list_indexes(ctx: GcContext, view: RepoView) -> None:
    for info in ctx.remote.list(layout.INDEX_PREFIX):
        ctx.keep_lease()
        index_id = info.key.split("/", 1)[1]
        view.indexes[index_id] = (_fetch_index(ctx, info.key, index_id), info)
    # an index its writer retracted names packs that are gone: it is neither trusted nor kept
    active = without_retracted({index_id: index for index_id, (index, _) in view.indexes.items()})
    view.retracted = {index_id: info for index_id, (_, info) in view.indexes.items() if index_id not in active}
    view.indexes = {index_id: entry for index_id, entry in view.indexes.items() if index_id in active}
    for index_id, (index, _) in view.indexes.items():
        view.index.add_object(index_id, index)


def _fetch_index(ctx: GcContext, key: str, index_id: str) -> IndexObject:
    """An index object, verified by its name; a remote repository's local copy is used when sound."""
    body = verified_object(ctx.remote, ctx.repo.cache, layout.INDEX, index_id, ctx.repo.read_policy)
    return decode_index(index_id, body, ctx.repo.config.max_blob_size, ctx.repo.config.sealer)


# -- the blobs the snapshots need ------------------------------------------------------------

def reader(ctx: GcContext, index: MasterIndex) -> BlobStore:
    """A strict blob reader over gc's own index: every location is tried, the index never reloaded."""
    cache = BlobCache(ctx.repo.cache) if ctx.repo.cache else None
    return BlobStore(ctx.remote, ctx.repo.config, index, origin=ctx.origin(), reload_index=None, blob_cache=cache,
                     read_policy=ctx.repo.read_policy)


def live_blobs(ctx: GcContext, view: RepoView) -> BlobSet:
    """Every tree and chunk reachable from the listed snapshots (each tree read and verified once),
    and the delta bases of those chunks, and theirs."""
    store = reader(ctx, view.index)
    live = BlobSet()
    try:
        for manifest in view.snapshots.values():
            # each tree is read and verified once; a long walk renews the lease as it goes
            add_reachable(lambda i: store.read(KIND_TREE, i), manifest.tree, live, on_tree=ctx.keep_lease)
    except CasstoreError as exc:
        raise GcAborted(f"gc stopped, nothing deleted: a tree cannot be read ({exc})") from exc
    finally:
        store.close()
    add_delta_bases(view.index, live)     # a delta is readable only with its chain
    unindexed = sum(1 for kind, blob_id in live if not view.index.locations(kind, blob_id))
    if unindexed:
        example = next(blob_id for kind, blob_id in live if not view.index.locations(kind, blob_id))
        raise GcAborted(f"{unindexed} blob(s) that snapshots need are in no index (e.g. "
                        f"{example.hex()[:16]}); run `casstore check`")
    return live


@dataclass(frozen=True)
class Keep:
    """Which copy of each live blob gc keeps: never one in `excluded` packs, one in `preferred_last`
    packs only when there is no other; ties go to the lowest pack id (deterministic across runs).
    Chosen again on each pass over the live set rather than stored: a dict of a Location per live
    blob would cost ~250 bytes a blob (issue 14)."""

    preferred_last: set[str]
    excluded: set[str]

    def choose(self, view: RepoView, key: BlobKey) -> Location | None:
        candidates = [loc for loc in view.index.locations(*key) if loc.pack_id not in self.excluded]
        if not candidates:
            return None
        return min(candidates, key=lambda loc: (loc.pack_id in self.preferred_last, loc.pack_id))

    def in_packs(self, view: RepoView, packs: set[str]) -> dict[BlobKey, Location]:
        """The kept copies that lie in `packs` (the ones a repack of them must copy)."""
        found: dict[BlobKey, Location] = {}
        for key in view.live:
            location = self.choose(view, key)
            if location is not None and location.pack_id in packs:
                found[key] = location
        return found


def pack_usage(view: RepoView, keep: Keep) -> dict[str, tuple[int, int]]:
    """pack id -> (bytes of blobs to keep there, bytes of all its blobs)."""
    usage: dict[str, list[int]] = {}
    for pack_id, entries in view.pack_entries().items():
        usage[pack_id] = [0, sum(e.length for e in entries)]
    for key in view.live:
        location = keep.choose(view, key)
        if location is not None:
            usage[location.pack_id][0] += location.length
    return {pack: (kept, total) for pack, (kept, total) in usage.items()}
