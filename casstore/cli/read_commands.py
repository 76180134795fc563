"""list, show/ls, cat, diff, restore."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from casstore.cli.common import (
    Progress,
    _host_options,
    emit,
    human,
    json_option,
    open_repo,
    printable,
    remote_option,
    repo_option,
)
from casstore.read.diff import diff_snapshots


@click.command("list")
@repo_option
@remote_option
@click.option("--limit", "-n", type=int, help="Show at most N snapshots (newest first).")
@_host_options
@json_option
@click.pass_context
def list_snapshots(ctx, repository, remote, limit, host, all_hosts, as_json):
    """List snapshots, newest first (the local repository's and the configured remote's)."""
    with open_repo(ctx, repository, remote=remote) as repo:
        every = repo.listing(all_hosts=True)
        shown = repo.listing(host=host, all_hosts=all_hosts)
    infos = shown[:limit] if limit else shown
    emit(as_json, [i.as_dict() for i in infos], lambda: _print_list(infos, len(every) - len(shown)))


def _print_list(infos, hidden: int = 0) -> None:
    if hidden:
        click.echo(f"({hidden} snapshot(s) of other hosts not shown: --all-hosts shows them)", err=True)
    if not infos:
        click.echo("no snapshots")
        return
    click.echo(f"{'ID':8}  {'TIME (local)':19}  {'HOST':12}  {'FILES':>7}  {'SIZE':>10}  {'ADDED':>10}  TAGS")
    for info in infos:
        m, s = info.manifest, info.manifest.summary
        flag = " (incomplete)" if m.incomplete else ""
        click.echo(f"{info.short_id}  {m.time.astimezone().strftime('%Y-%m-%d %H:%M:%S')}  "
                   f"{printable(m.host[:12]):12}  {s.get('files_total', 0):>7}  {human(s.get('bytes_total', 0)):>10}  "
                   f"{human(s.get('bytes_added_stored', 0)):>10}  {printable(','.join(m.tags))}{flag}")


@click.command()
@click.argument("snapshot_id", default="latest")
@click.argument("path", default="")
@repo_option
@remote_option
@click.option("--recursive", "-r", is_flag=True, help="List the whole tree below PATH.")
@_host_options
@json_option
@click.pass_context
def show(ctx, snapshot_id, path, repository, remote, recursive, host, all_hosts, as_json):
    """Show a snapshot's summary and list its files (PATH: a directory inside it)."""
    with open_repo(ctx, repository, remote=remote) as repo:
        snap = repo.get(snapshot_id, host=host, all_hosts=all_hosts)
        rows = list(snap.walk(path)) if recursive else snap.children(path)   # one level reads the path's trees only
        payload = {**snap.info.as_dict(), "entries": [_row(r) for r in rows]}
        emit(as_json, payload, lambda: _print_show(snap, rows))


ls = click.Command("ls", callback=show.callback, params=show.params, help="Alias of `show`.",
                   short_help="Alias of `show`.")


def _row(info) -> dict:
    row = {"path": info.path, "type": info.type, "size": info.size, "mode": oct(info.mode),
           "mtime": info.mtime.isoformat()}
    if info.target is not None:
        row["target"] = info.target
    return row


# the first letter of an `ls -l` line, one per entry type (format/tree.py EntryType)
_KIND_LETTERS = {"dir": "d", "file": "-", "symlink": "l", "fifo": "p", "socket": "s", "chardev": "c",
                 "blockdev": "b"}


def _print_show(snap, rows) -> None:
    m, s = snap.manifest, snap.manifest.summary
    click.echo(f"snapshot {snap.short_id}  {m.time.astimezone().isoformat(timespec='seconds')}  "
               f"host {printable(m.host)}")
    click.echo(f"source   {printable(m.source)}")
    if m.tags:
        click.echo(f"tags     {printable(', '.join(m.tags))}")
    click.echo(f"files    {s.get('files_total', 0)} ({s.get('files_new', 0)} new, {s.get('files_changed', 0)} "
               f"changed, {s.get('files_unchanged', 0)} unchanged), {human(s.get('bytes_total', 0))}")
    click.echo(f"added    {human(s.get('bytes_added', 0))} ({human(s.get('bytes_added_stored', 0))} stored)"
               + ("  INCOMPLETE" if m.incomplete else ""))
    click.echo("")
    for info in rows:
        kind = _KIND_LETTERS.get(info.type, "?")
        suffix = "/" if info.type == "dir" else f" -> {printable(info.target)}" if info.target is not None else ""
        click.echo(f"{kind} {info.mode:04o} {human(info.size) if info.type == 'file' else '':>10}  "
                   f"{info.mtime.strftime('%Y-%m-%d %H:%M')}  {printable(info.path)}{suffix}")


@click.command()
@click.argument("snapshot_id")
@click.argument("path")
@repo_option
@remote_option
@_host_options
@click.pass_context
def cat(ctx, snapshot_id, path, repository, remote, host, all_hosts):
    """Write one file of a snapshot to standard output."""
    with open_repo(ctx, repository, remote=remote) as repo, \
            repo.get(snapshot_id, host=host, all_hosts=all_hosts).open(path) as fh:
        out = sys.stdout.buffer
        while block := fh.read(1 << 20):
            out.write(block)
        out.flush()


@click.command()
@click.argument("old_id")
@click.argument("new_id", default="latest")
@click.argument("path", default="")
@repo_option
@remote_option
@click.option("--values", is_flag=True, help="Compare the JSON inside: key paths added, removed, changed.")
@_host_options
@json_option
@click.pass_context
def diff(ctx, old_id, new_id, path, repository, remote, values, host, all_hosts, as_json):
    """What changed from snapshot OLD_ID to NEW_ID (added +, removed -, modified M, metadata U).

    PATH limits it to one file or directory; --values compares the JSON documents inside.
    M and U lines end with what changed: content (or a symlink's target), size, mode, mtime, owner."""
    if values:
        from casstore.cli.values_view import value_diff  # lazy: only --values needs it

        return value_diff(ctx, old_id, new_id, path, repository, remote, as_json)
    with open_repo(ctx, repository, remote=remote) as repo:
        changes = diff_snapshots(repo.get(old_id, host=host, all_hosts=all_hosts),
                                 repo.get(new_id, host=host, all_hosts=all_hosts))
    if path.strip("/"):
        inside = path.strip("/")
        changes = [c for c in changes if c.path.rstrip("/") == inside or c.path.startswith(inside + "/")]
    emit(as_json, [c.as_dict() for c in changes], lambda: _print_diff(changes))


def _print_diff(changes) -> None:
    marks = {"added": "+", "removed": "-", "modified": "M", "metadata": "U"}
    for c in changes:
        sizes = {"added": human(c.new_size), "removed": human(c.old_size),
                 "modified": f"{human(c.old_size)} -> {human(c.new_size)}", "metadata": ""}[c.kind]
        what = f"  ({', '.join(c.what)})" if c.what else ""
        click.echo(f"{marks[c.kind]}  {printable(c.path)}  {sizes if c.type == 'file' else ''}".rstrip() + what)
    counts = {k: sum(1 for c in changes if c.kind == k) for k in marks}
    click.echo(f"{counts['added']} added, {counts['removed']} removed, {counts['modified']} modified, "
               f"{counts['metadata']} metadata only")


@click.command()
@click.argument("snapshot_id")
@click.argument("target")
@repo_option
@remote_option
@click.option("--path", default="", help="Restore only this file or directory of the snapshot.")
@click.option("--overwrite", type=click.Choice(["never", "if-changed", "always"]), default="never",
              show_default=True, help="What to do with files that already exist in TARGET.")
@click.option("--include", multiple=True, help="Restore only paths matching this pattern (repeatable).")
@click.option("--exclude", multiple=True, help="Do not restore paths matching this pattern (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be restored, write nothing.")
@click.option("--verify", is_flag=True, help="Read every restored file back and check it.")
@click.option("--privileged", is_flag=True,
              help="As root: restore recorded owners, setuid/setgid bits and device nodes (default: none "
                   "of them; files belong to the restoring user). Only for snapshots you trust.")
@_host_options
@json_option
@click.pass_context
def restore(ctx, snapshot_id, target, repository, remote, path, overwrite, include, exclude, dry_run, verify,
            privileged, host, all_hosts, as_json):
    """Restore snapshot SNAPSHOT_ID (an id prefix or 'latest') into directory TARGET."""
    started = datetime.now()
    with open_repo(ctx, repository, remote=remote) as repo:
        snapshot_id = repo.locate(snapshot_id, host=host, all_hosts=all_hosts).id   # resolved once
        total = repo.get(snapshot_id).manifest.summary.get("bytes_total")
        with Progress(total, "restore") as progress:
            result = repo.restore(snapshot_id, target, path=path, overwrite=overwrite, include=tuple(include),
                                  exclude=tuple(exclude), dry_run=dry_run, verify=verify, privileged=privileged,
                                  progress=progress)
    seconds = (datetime.now() - started).total_seconds()
    emit(as_json, result.as_dict(), lambda: _print_restore(result, target, seconds))
    if not result.ok:
        sys.exit(1)


def _print_restore(result, target: str, seconds: float) -> None:
    verb = "would restore" if result.dry_run else "restored"
    click.echo(f"{verb} {result.files} files, {result.dirs} directories, {result.symlinks} symlinks, "
               f"{human(result.bytes)} into {target} in {seconds:.2f} s"
               + (f" ({result.skipped} unchanged skipped)" if result.skipped else ""))
    if result.existing:
        example = f" (such as {printable(result.existing_paths[0])})" if result.existing_paths else ""
        click.echo(f"casstore: error: {result.existing} file(s) already exist in {target}{example} and were left "
                   "as they are; use --overwrite if-changed to replace those that differ, or --overwrite always",
                   err=True)
    for error in result.errors[:100]:
        click.echo(f"error: {printable(error)}", err=True)
    if len(result.errors) > 100:
        click.echo(f"... and {len(result.errors) - 100} more errors", err=True)
