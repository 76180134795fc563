"""Sweep (phase 2 of gc on a shared remote, design 9): delete what plans condemned a grace period ago.

For every plan at least one grace period old (by storage time): recompute the live blobs from
the snapshots listed now; keep (drop from the plan) any condemned pack holding a live blob that
has no copy outside the packs being deleted (packs condemned by any plan count as being deleted);
write the consolidated index (origin "gc", `supersedes` every index listed) from every index
listed now, without the deleted packs; delete every index that lists a pack being deleted, then
the packs, then the plans. A crash at any point leaves no index naming a missing pack.

**Choice.** The consolidation also deletes the indexes that protect nothing (gc's own, and writer
or checkpoint indexes older than the grace period) once there are two or more of them: their
entries are all in the consolidated index, so the index count stays small. Young writer and
checkpoint indexes stay, because they protect their packs.
"""

from __future__ import annotations

from casstore._testing import pause_point
from casstore.format import layout
from casstore.format.index import IndexObject, decode_index
from casstore.format.layout import pack_key
from casstore.gc.context import GcContext
from casstore.gc.listing import PROTECTING_ORIGINS, RepoView, delete_retracted


def due_plans(ctx: GcContext, view: RepoView, now: float) -> list[str]:
    return sorted(key for key, (_, info) in view.plans.items() if info.mtime <= now - ctx.grace)


def still_needed(view: RepoView, deleting: set[str]) -> set[str]:
    """Packs being deleted that hold a live blob with no copy outside every condemned pack."""
    condemned = view.condemned() | deleting
    kept: set[str] = set()
    for key in view.live:
        locations = view.index.locations(*key)
        if not any(loc.pack_id not in condemned for loc in locations):
            kept |= {loc.pack_id for loc in locations if loc.pack_id in deleting}
    return kept


def doomed_indexes(ctx: GcContext, view: RepoView, deleting: set[str], now: float) -> set[str]:
    listing_deleted = {i for i, (index, _) in view.indexes.items() if set(index.packs) & deleting}
    idle = {i for i, (index, info) in view.indexes.items()
            if index.origin.get("kind") not in PROTECTING_ORIGINS or info.mtime <= now - ctx.grace}
    merged = listing_deleted | idle
    return merged if len(merged) >= 2 else listing_deleted


def sweep(ctx: GcContext, view: RepoView) -> bool:
    """Sweep every due plan; True when there was one."""
    due = due_plans(ctx, view, ctx.storage_now())
    if not due:
        return False
    pause_point("sweep-after-list")
    if ctx.lease is not None:
        ctx.lease.renew()   # stop here if another gc took the lease while we were listing
    now = ctx.storage_now()
    deleting = {pack for key in due for pack in view.plans[key][0].condemned_packs if pack in view.packs}
    kept = still_needed(view, deleting)
    deleting -= kept
    indexes = doomed_indexes(ctx, view, deleting, now)
    report = ctx.report
    report.plans_swept += len(due)
    report.packs_kept += len(kept)
    if ctx.dry_run:
        report.would_free += sum(view.packs[p].size for p in deleting)
        return True
    if indexes:
        write_consolidated(ctx, view, deleting)
    delete_retracted(ctx, view)
    # each kind in batches, and strictly one kind after another (indexes, packs, plans)
    ctx.delete_all([(layout.index_key(i), view.indexes[i][1].size) for i in sorted(indexes)], "indexes_deleted")
    pause_point("sweep-before-packs")
    ctx.delete_all([(pack_key(p), view.packs[p].size) for p in sorted(deleting)], "packs_deleted")
    pause_point("sweep-before-plans")
    ctx.delete_all([(key, view.plans[key][1].size) for key in due], "plans_deleted")
    return True


def write_consolidated(ctx: GcContext, view: RepoView, deleting: set[str], extra: dict | None = None) -> str | None:
    """One index of every pack the listed indexes name, minus `deleting`, plus `extra` packs."""
    packs = {**view.without(deleting), **(extra or {})}
    if not packs:
        return None
    index = IndexObject(origin=ctx.origin(), packs=packs, supersedes=sorted(view.indexes))
    sealer = ctx.repo.config.sealer
    index_id, body = index.encode(sealer)
    decode_index(index_id, body, ctx.repo.config.max_blob_size, sealer)   # read back before it leaves (design 5.5)
    ctx.put(layout.index_key(index_id), body)
    return index_id
