"""The value diff's command body and printing (`casstore diff A B [PATH] --values`), and short
one-line renderings of JSON values, shared with `history`."""

from __future__ import annotations

import json

import click

from casstore.cli.common import emit, open_repo, printable

VALUE_WIDTH = 100


def short_value(value: object) -> str:
    text = printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."


def value_diff(ctx: click.Context, old_id: str, new_id: str, path: str, repository: str | None, remote: str | None,
               as_json: bool) -> None:
    """`casstore diff A B [PATH] --values`: key paths added, removed and changed in JSON files."""
    from casstore.read.jsondiff import diff_snapshot_values  # lazy: start-up time

    with open_repo(ctx, repository, remote=remote) as repo:
        diffs = diff_snapshot_values(repo.get(old_id), repo.get(new_id), path)
    emit(as_json, [d.as_dict() for d in diffs], lambda: _print_value_diff(diffs))


MARKS = {"added": "+", "removed": "-", "changed": "M", "appended": "+", "truncated": "-"}


def _print_value_diff(diffs) -> None:
    for d in diffs:
        click.echo(f"{printable(d.path)} ({d.status}, {len(d.changes)} changes)")
        for c in d.changes:
            key = printable(c["key"]) or "(whole document)"
            if c["op"] == "changed":
                click.echo(f"  M {key}: {short_value(c['old'])} -> {short_value(c['new'])}")
            else:
                click.echo(f"  {MARKS[c['op']]} {key}: {short_value(c['new'] if c['new'] is not None else c['old'])}"
                           + ("  (appended)" if c["op"] == "appended" else ""))
    click.echo(f"{len(diffs)} JSON files differ")
