"""gc that deletes at once: the local repository under its exclusive lock, or a remote with --exclusive.

No other process writes meanwhile (the lock, or the user's word), so there is no grace period
and no plan: every pack no snapshot needs is deleted now, orphans from crashed runs included.
The order is still the sweep's (design 9): repacked blobs' new packs, then the consolidated
index, then the old indexes, then the packs, then any plans an earlier two-phase gc left.
"""

from __future__ import annotations

import logging

from casstore.format import layout
from casstore.format.layout import pack_key
from casstore.gc.context import GcContext
from casstore.gc.listing import Keep, RepoView, delete_retracted, load_view, pack_usage
from casstore.gc.repack import dead_bytes, mostly_dead, repack
from casstore.gc.sweep import write_consolidated
from casstore.remotes.local import remove_leftovers

log = logging.getLogger(__name__)


def collect_at_once(ctx: GcContext) -> None:
    view = load_view(ctx)
    ctx.report.snapshots, ctx.report.live_blobs = len(view.snapshots), len(view.live)
    keep = Keep(preferred_last=set(), excluded=set())
    usage = pack_usage(view, keep)
    indexed = view.indexed_packs()
    dead = {pack for pack in view.packs if pack not in indexed or usage[pack][0] == 0}
    sparse = mostly_dead(usage, set(view.packs) - dead)
    report = ctx.report
    report.packs_condemned += len(dead | sparse)
    report.bytes_condemned += sum(view.packs[p].size for p in dead | sparse)
    if ctx.dry_run:
        report.would_free += sum(view.packs[p].size for p in dead) + dead_bytes(usage, sparse)
        report.packs_repacked += len(sparse)
        return
    new_packs = repack(ctx, view, sparse, keep.in_packs(view, sparse), index_kind=None) if sparse else {}
    _replace(ctx, view, dead | sparse, new_packs)


def _replace(ctx: GcContext, view: RepoView, doomed: set[str], new_packs: dict) -> None:
    """Leftovers and packs no index names first, then the new index, old indexes, packs, plans.

    On a full disk the index cannot be written until something is deleted: temp files of killed
    runs and packs no index names (what a snapshot that failed on a full disk leaves) are
    unreachable by every reader, so they go first and make the room (issue 13, case 11).
    """
    files, size = remove_leftovers(ctx.remote)
    ctx.report.bytes_deleted += size
    if files:
        log.info("removed %d leftover temp files (%d bytes)", files, size)
    indexed = view.indexed_packs()
    ctx.delete_all([(pack_key(p), view.packs[p].size) for p in sorted(doomed - indexed)], "packs_deleted")
    doomed = {p for p in doomed if p in indexed}
    delete_retracted(ctx, view)
    if doomed or new_packs or len(view.indexes) > 1:
        write_consolidated(ctx, view, doomed, new_packs)
        ctx.delete_all([(layout.index_key(i), info.size) for i, (_, info) in sorted(view.indexes.items())],
                       "indexes_deleted")
    ctx.delete_all([(pack_key(p), view.packs[p].size) for p in sorted(doomed)], "packs_deleted")
    ctx.delete_all([(key, info.size) for key, (_, info) in sorted(view.plans.items())], "plans_deleted")
    ctx.report.plans_swept += len(view.plans)
