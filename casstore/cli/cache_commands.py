"""cache info | verify | clear: the local copies of remote index objects, manifests and blobs.

Every repository read from a remote keeps its own folder under CASSTORE_CACHE_DIR (named by the
repository id). Entries are verified whenever they are used, so the cache never needs clearing for
correctness; these commands show it, check it ahead of time, and free its space.
"""

from __future__ import annotations

import os
from collections import Counter

import click

from casstore.cli.common import emit, human, json_option, settings
from casstore.repo.indexcache import clear_tables
from casstore.repo.objectcache import LocalCache, cache_roots, verify_cache


@click.group()
def cache() -> None:
    """Show, verify or clear the local cache of remote objects."""


def _caches(ctx: click.Context):
    s = settings(ctx)
    return s, [LocalCache(root, s.cache_max_bytes) for root in cache_roots(s.cache_dir)]


@cache.command()
@json_option
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Where the cache is, its size limit, and entries and bytes per repository."""
    s, caches = _caches(ctx)
    repos = []
    for c in caches:
        entries = list(c.entries())
        repos.append({"repository_id": os.path.basename(c.root), "path": c.root, "entries": len(entries),
                      "bytes": sum(e.size for e in entries), "by_kind": dict(Counter(e.kind for e in entries))})
    payload = {"location": s.cache_dir, "max_bytes": s.cache_max_bytes, "repositories": repos,
               "entries": sum(r["entries"] for r in repos), "bytes": sum(r["bytes"] for r in repos)}

    def text() -> None:
        limit = human(s.cache_max_bytes) if s.cache_max_bytes else "none (set CASSTORE_CACHE_MAX)"
        click.echo(f"location: {s.cache_dir}\nsize: {human(payload['bytes'])} in {payload['entries']} entries"
                   f"\nlimit: {limit}")
        for r in repos:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["by_kind"].items()))
            click.echo(f"  {r['repository_id'][:8]}  {human(r['bytes']):>10}  {r['entries']} entries ({kinds})")

    emit(as_json, payload, text)


@cache.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check every entry against its id; evict those that fail (they are downloaded again when needed)."""
    _, caches = _caches(ctx)
    checked, evicted = 0, []
    for c in caches:
        n, bad = verify_cache(c)
        checked += n
        evicted += [{"kind": e.kind, "name": e.name, "reason": why} for e, why in bad]
    payload = {"checked": checked, "evicted": evicted}

    def text() -> None:
        for e in evicted:
            click.echo(f"evicted {e['kind']}/{e['name'][:24]}: {e['reason']}")
        click.echo(f"{checked} entries checked, {len(evicted)} evicted")

    emit(as_json, payload, text)


@cache.command()
@json_option
@click.pass_context
def clear(ctx: click.Context, as_json: bool) -> None:
    """Delete every cached object and saved index table (the snapshot files-cache that speeds up
    change detection stays)."""
    s, caches = _caches(ctx)
    before = sum(c.size() for c in caches)
    removed = sum(c.clear() for c in caches)
    tables, table_bytes = clear_tables(s.cache_dir)
    emit(as_json, {"removed": removed, "bytes": before, "index_tables": tables, "index_table_bytes": table_bytes},
         lambda: click.echo(f"removed {removed} entries ({human(before)}) and {tables} index table(s) "
                            f"({human(table_bytes)}) from {s.cache_dir}"))
