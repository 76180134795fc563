"""history and find: questions asked across snapshots."""

from __future__ import annotations

import csv
import json
import sys
from itertools import groupby

import click

from casstore.cli.common import (
    _host_options,
    emit,
    human,
    json_option,
    open_repo,
    printable,
    remote_option,
    repo_option,
)
from casstore.cli.values_view import short_value


@click.command()
@click.argument("path")
@click.option("--key", "-k", metavar="A.B.C", help="A key path inside the JSON file (list indexes as numbers).")
@click.option("--since", metavar="TIME", help="Only snapshots at or after TIME (2026-02-07, ISO time, or 30d).")
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Only the newest N rows.")
@repo_option
@remote_option
@_host_options
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV (value as JSON).")
@click.pass_context
def history(ctx, path, key, since, limit, repository, remote, host, all_hosts, as_json, as_csv):
    """One row per snapshot where the file PATH (or the value at --key) changed, oldest first."""
    from casstore.read.history import parse_since  # lazy: start-up time

    with open_repo(ctx, repository, remote=remote) as repo:
        rows = repo.history(path, key, since=parse_since(since) if since else None, limit=limit, host=host,
                            all_hosts=all_hosts)
    if as_csv:
        _print_csv([r.as_dict() for r in rows], ("time", "snapshot_id", "change", "value", "size"))
        return
    emit(as_json, [r.as_dict() for r in rows], lambda: _print_history(rows))


def _print_history(rows) -> None:
    click.echo(f"{'TIME (local)':19}  {'ID':8}  {'CHANGE':7}  VALUE")
    for row in rows:
        click.echo(f"{row.time.astimezone().strftime('%Y-%m-%d %H:%M:%S')}  {row.snapshot_id[:8]}  "
                   f"{row.change:7}  {short_value(row.value) if row.change != 'removed' else '-'}")
    click.echo(f"{len(rows)} rows")


def _print_csv(rows: list[dict], columns: tuple[str, ...]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])


def _cell(value: object) -> object:
    if value is None or isinstance(value, int | float | str):
        return "" if value is None else value
    return json.dumps(value, ensure_ascii=False)


@click.command()
@click.argument("pattern")
@click.option("--path-only", is_flag=True, help="Print each matching path once, not per snapshot.")
@repo_option
@remote_option
@_host_options
@json_option
@click.pass_context
def find(ctx, pattern, path_only, repository, remote, host, all_hosts, as_json):
    """Snapshots and paths whose name matches the glob PATTERN (with a '/': the whole path)."""
    with open_repo(ctx, repository, remote=remote) as repo:
        found = repo.find(pattern, host=host, all_hosts=all_hosts)
    if path_only:
        paths = sorted({f.path for f in found})
        emit(as_json, paths, lambda: [click.echo(printable(p)) for p in paths])
        return
    emit(as_json, [f.as_dict() for f in found], lambda: _print_found(found))


def _print_found(found) -> None:
    for snapshot_id, group in groupby(found, key=lambda f: f.snapshot_id):
        rows = list(group)
        click.echo(f"{len(rows)} in snapshot {snapshot_id[:8]} from "
                   f"{rows[0].time.astimezone().strftime('%Y-%m-%d %H:%M:%S')}")
        for f in rows:
            size = human(f.size) if f.type == "file" else ""
            click.echo(f"  {printable(f.path)}{'/' if f.type == 'dir' else ''}  {size}".rstrip())
    click.echo(f"{len(found)} matches in {len({f.snapshot_id for f in found})} snapshots")
