"""forget and gc."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import click

from casstore.cli.common import emit, human, json_option, printable, repo_option, settings
from casstore.gc.retention import RetentionPolicy, apply_retention, forget_snapshots, policy_from_settings
from casstore.gc.run import collect_garbage
from casstore.settings import parse_duration

if TYPE_CHECKING:
    from casstore.client import Repository

remote_option = click.option("--remote", "remote", metavar="URL",
                             help="Act on this remote repository instead of the local one.")


def open_target(ctx: click.Context, repository: str | None, remote: str | None, **overrides: Any) -> Repository:
    """The remote repository when --remote is given (or no local one exists but a remote is
    configured), else the local repository."""
    from casstore.client import open_repository  # lazy: the operations are not needed for --help

    return open_repository(settings(ctx, repository, **overrides), remote=remote)


@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[ID]...")
@repo_option
@click.option("--keep-last", type=int, metavar="N", help="Keep the N newest complete snapshots.")
@click.option("--keep-hourly", type=int, metavar="N", help="Keep the newest snapshot of each of the last N hours.")
@click.option("--keep-daily", type=int, metavar="N", help="... of each of the last N days.")
@click.option("--keep-weekly", type=int, metavar="N", help="... of each of the last N ISO weeks.")
@click.option("--keep-monthly", type=int, metavar="N", help="... of each of the last N months.")
@click.option("--keep-yearly", type=int, metavar="N", help="... of each of the last N years.")
@click.option("--keep-within", metavar="DURATION", help="Keep every snapshot this close to the newest (e.g. 30d).")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG", help="Keep snapshots with this tag.")
@click.option("--host", help="Act on this host's snapshots (default: CASSTORE_HOST).")
@click.option("--all-hosts", is_flag=True, help="Act on every host's snapshots, each group on its own.")
@click.option("--dry-run", is_flag=True, help="Show what would be forgotten; delete nothing.")
@click.option("--prune", is_flag=True, help="Run gc afterwards.")
@click.option("--force", is_flag=True, help="Also forget local snapshots never synced to the remote.")
@remote_option
@json_option
@click.pass_context
def forget(ctx, snapshot_ids, repository, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
           keep_yearly, keep_within, keep_tags, host, all_hosts, dry_run, prune, force, remote, as_json):
    """Remove the snapshots ID... , or those a retention policy drops; `--prune` then deletes the data
    they alone needed.

    Given IDs are forgotten from the local repository and from the configured remote, wherever they
    are (with --remote URL: from that remote only). With no ID and no --keep-* option the policy is
    CASSTORE_KEEP_LAST (default 30). An incomplete snapshot fills no slot of a counting rule and is
    kept only while newer than the newest complete one (or by --keep-within or --keep-tag)."""
    policy = RetentionPolicy.coerce({"last": keep_last, "hourly": keep_hourly, "daily": keep_daily,
                                     "weekly": keep_weekly, "monthly": keep_monthly, "yearly": keep_yearly,
                                     "within": keep_within, "tags": keep_tags or None})
    if snapshot_ids:
        if not policy.empty or host or all_hosts:
            raise click.UsageError("give snapshot IDs or --keep-*/--host options, not both")
        _forget_ids(ctx, repository, remote, list(snapshot_ids), dry_run, prune, as_json)
        return
    if policy.empty:   # no rule given: the scheduled runs' policy (CASSTORE_KEEP_LAST), if any
        policy = policy_from_settings(settings(ctx, repository)) or policy
    with open_target(ctx, repository, remote) as repo:
        result = apply_retention(repo, policy, dry_run, host=host, all_hosts=all_hosts, force=force)
        if prune:
            result.gc = collect_garbage(repo, dry_run=dry_run).as_dict()
    emit(as_json, result.as_dict(), lambda: _print_forget(result))


def _forget_ids(ctx: click.Context, repository: str | None, remote: str | None, refs: list[str], dry_run: bool,
                prune: bool, as_json: bool) -> None:
    with ExitStack() as stack:
        repo = stack.enter_context(open_target(ctx, repository, remote))
        view = repo.remote_view() if remote is None else None   # the configured remote, beside a local one
        repos = [repo] + ([view] if view is not None else [])
        done = forget_snapshots(repos, refs, dry_run)
        gc = [collect_garbage(r, dry_run=dry_run).as_dict() for r in repos] if prune else []
    payload = {"dry_run": dry_run, "forgotten": [{"id": i, "locations": where} for i, where in done.items()],
               "gc": gc}

    def text() -> None:
        verb = "would forget" if dry_run else "forgot"
        for snapshot_id, where in done.items():
            click.echo(f"{verb} {snapshot_id[:8]} from {', '.join(where)}")
        for report in gc:
            _print_gc_dict(report)

    emit(as_json, payload, text)


def _print_forget(result) -> None:
    click.echo(f"policy: {result.policy.describe()}")
    for group in result.groups:
        click.echo(f"{printable(group.host)}:{printable(group.source)}: keep {len(group.keep)}, "
                   f"remove {len(group.remove)}")
        for d in group.decisions:
            m = d.snapshot.manifest
            verdict = "keep  " if d.keep else "remove"
            flags = (" [incomplete]" if m.incomplete else "") + (f" [{', '.join(m.tags)}]" if m.tags else "")
            why = f"  ({'; '.join(d.reasons)})" if d.reasons else ""    # tags are stored names: escaped
            click.echo(f"  {verdict} {d.snapshot.id[:8]}  {m.time.strftime('%Y-%m-%d %H:%M:%S')}"
                       + printable(flags + why))
    if result.dry_run:
        click.echo(f"dry run: would forget {len(result.to_remove)} snapshot(s)")
    else:
        click.echo(f"forgot {len(result.removed)} snapshot(s)")
    if result.gc:
        _print_gc_dict(result.gc)


@click.command()
@repo_option
@remote_option
@click.option("--dry-run", is_flag=True, help="Show what would be freed; delete and write nothing.")
@click.option("--grace", metavar="DURATION",
              help="Grace period on a remote: the repository's (fixed at init) unless longer; "
                   "a shorter one needs --exclusive.")
@click.option("--exclusive", is_flag=True,
              help="On a remote: delete at once, without the lease; only when no writer can run.")
@json_option
@click.pass_context
def gc(ctx, repository, remote, dry_run, grace, exclusive, as_json):
    """Delete data no snapshot needs (lock-free and two-phase on a shared remote)."""
    grace_seconds = parse_duration(grace, what="--grace") if grace else None
    with open_target(ctx, repository, remote) as repo:
        report = collect_garbage(repo, dry_run=dry_run, grace=grace_seconds, exclusive=exclusive)
    emit(as_json, report.as_dict(), lambda: _print_gc_dict(report.as_dict()))


def _print_gc_dict(r: dict) -> None:
    click.echo(f"gc ({r['mode']}) on {r['location']}: {r['snapshots']} snapshots, {r['live_blobs']} live blobs")
    if r["plans_swept"]:
        click.echo(f"  swept {r['plans_swept']} plan(s); {r['packs_kept']} condemned pack(s) kept (still needed)")
    if r["dry_run"]:
        click.echo(f"  dry run: would free {human(r['would_free'])} ({r['packs_condemned']} pack(s) to condemn, "
                   f"{r['packs_repacked']} to repack)")
        return
    if r["packs_repacked"]:
        click.echo(f"  repacked {r['packs_repacked']} pack(s) ({human(r['bytes_repacked'])}) into "
                   f"{r['packs_written']} new pack(s) ({human(r['bytes_written'])})")
    if r["plan"]:
        click.echo(f"  condemned {r['packs_condemned']} pack(s) ({human(r['bytes_condemned'])}) in {r['plan']}; "
                   "a gc at least one grace period from now deletes them")
    click.echo(f"  deleted {r['objects_deleted']} object(s): {r['packs_deleted']} packs, {r['indexes_deleted']} "
               f"indexes, {r['plans_deleted']} plans; {human(r['bytes_deleted'])} freed "
               f"({r['requests']} requests, {r['seconds']:.2f} s)")
