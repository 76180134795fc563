"""Mark (phase 1 of gc on a shared remote, design 9): condemn, never delete.

A pack is condemned when it is older than the grace period, not protected, not already
condemned, and either an orphan (in no index) or holding no blob a snapshot needs. A pack whose
dead blobs reach the repack threshold has its needed blobs copied into new packs (plus an index
of origin "gc") first, and is then condemned too. Protected: every pack listed in a writer or
checkpoint index younger than the grace period. Ages compare the storage's timestamps with the
storage's notion of now. The result is a plan `gc/<time>-<id>`; the sweep of a later run, at
least one grace period on, deletes.

**Choice.** "None of its blobs is live" is applied per copy: a live blob with copies in several
packs keeps one of them (in a pack that is young or protected if there is one, else the lowest
pack id), so duplicate copies uploaded by racing hosts are reclaimed too.
"""

from __future__ import annotations

from casstore._testing import pause_point
from casstore.format.layout import plan_key
from casstore.format.plan import GcPlan, encode_plan_verified
from casstore.gc.context import GcContext
from casstore.gc.listing import Keep, RepoView, pack_usage
from casstore.gc.repack import dead_bytes, mostly_dead, repack


def collectable(ctx: GcContext, view: RepoView, now: float) -> set[str]:
    """Packs older than the grace period, neither protected nor condemned by any plan."""
    old = {pack for pack, info in view.packs.items() if info.mtime <= now - ctx.grace}
    return old - view.protected(now, ctx.grace) - view.condemned()


def mark(ctx: GcContext, view: RepoView) -> None:
    now = ctx.storage_now()
    eligible = collectable(ctx, view, now)
    keep = Keep(preferred_last=eligible, excluded=view.condemned())
    usage = pack_usage(view, keep)
    indexed = view.indexed_packs()
    dead = {pack for pack in eligible if pack not in indexed or usage[pack][0] == 0}
    sparse = mostly_dead(usage, eligible - dead)
    report = ctx.report
    if ctx.dry_run:
        report.would_free += sum(view.packs[p].size for p in dead) + dead_bytes(usage, sparse)
        report.packs_condemned += len(dead | sparse)
        report.packs_repacked += len(sparse)
        return
    if sparse:
        repack(ctx, view, sparse, keep.in_packs(view, sparse), index_kind="gc")
    condemned = dead | sparse
    pause_point("mark-before-plan")
    if condemned:
        write_plan(ctx, view, condemned)


def write_plan(ctx: GcContext, view: RepoView, condemned: set[str]) -> str:
    superseded = {index_id for index_id, (index, _) in view.indexes.items() if set(index.packs) & condemned}
    plan = GcPlan(condemned_packs=sorted(condemned), superseded_indexes=sorted(superseded), host=ctx.host)
    key = plan_key(ctx.storage_now())
    ctx.put(key, encode_plan_verified(plan, key, ctx.repo.config.sealer))
    ctx.report.plan = key
    ctx.report.packs_condemned += len(condemned)
    ctx.report.bytes_condemned += sum(view.packs[p].size for p in condemned)
    return key
