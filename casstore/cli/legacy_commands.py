"""import-legacy: the seed's unified backups as snapshots."""

from __future__ import annotations

import sys

import click

from casstore.cli.common import emit, json_option, printable, repo_option, settings
from casstore.client import open_repository


@click.command("import-legacy")
@click.argument("where", metavar="PATH|BUCKET-URL")
@repo_option
@json_option
@click.pass_context
def import_legacy(ctx, where, repository, as_json):
    """Import the old system's unified_backup_*.json.gz (data/unified_backups/, or backups/ in a bucket).

    Each becomes a snapshot with its original time, tagged with its old id; corrupt files are
    reported and skipped; backups imported before are left alone."""
    with open_repository(settings(ctx, repository), create=True) as repo:
        report = repo.import_legacy(where)
    emit(as_json, report.as_dict(), lambda: _print(report))
    for item in report.skipped:
        click.echo(f"casstore: skipped {printable(item['error'])}", err=True)
    for backup_id in report.missing:
        click.echo(f"casstore: {printable(backup_id)} is in backup_index.json but its file is missing", err=True)
    if not report.ok:
        sys.exit(1)


def _print(report) -> None:
    for item in report.imported:
        click.echo(f"imported {printable(item['backup_id'])} as snapshot {item['snapshot_id'][:8]} ({item['time']})")
    click.echo(f"{len(report.imported)} imported, {len(report.already)} already imported, "
               f"{len(report.skipped)} skipped, {len(report.missing)} missing")
