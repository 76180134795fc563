"""sync, pull, and remote create-bucket."""

from __future__ import annotations

import click

from casstore.cli.common import Progress, emit, human, json_option, open_repo, repo_option, settings
from casstore.client import open_repository
from casstore.errors import ConfigError
from casstore.remotes import open_remote
from casstore.remotes.cloud import CloudRemote
from casstore.repo.pricing import NO_PRICE, is_directory

remote_option = click.option("--remote", "--to", "remote", metavar="URL",
                             help="Remote repository URL (default: CASSTORE_REMOTE or CLOUD_PROVIDER settings).")


@click.command()
@repo_option
@remote_option
@click.option("--dry-run", is_flag=True,
              help="Print the plan (snapshots, blobs, bytes, requests, cost); upload nothing.")
@json_option
@click.pass_context
def sync(ctx, repository, remote, dry_run, as_json):
    """Copy new local snapshots to the remote, uploading only what it lacks."""
    with open_repo(ctx, repository) as repo, Progress(None, "sync") as progress:
        report = repo.sync(remote, dry_run=dry_run, progress=progress)
    emit(as_json, report.as_dict(), lambda: _print_report(report, "sync"))


@click.command()
@repo_option
@click.option("--remote", "--from", "remote", metavar="URL", help="Remote repository URL (default: settings).")
@click.option("--snapshot", "snapshot_id", help="Pull only this snapshot (id prefix or 'latest').")
@click.option("--host", help="Pull only this host's snapshots.")
@json_option
@click.pass_context
def pull(ctx, repository, remote, snapshot_id, host, as_json):
    """Copy snapshots from the remote into the local repository (created if missing)."""
    s = settings(ctx, repository)
    # a new local repository shares the remote's chunker and seed, so what is pulled dedupes
    with open_repository(s, create=True, like=remote or s.remote) as repo, Progress(None, "pull") as progress:
        report = repo.pull(remote, snapshot=snapshot_id, host=host, progress=progress)
    emit(as_json, report.as_dict(), lambda: _print_report(report, "pull"))


@click.group("remote")
def remote_group() -> None:
    """Manage the remote: `casstore remote create-bucket`."""


@remote_group.command("create-bucket")
@click.argument("url", required=False)
@json_option
@click.pass_context
def create_bucket(ctx, url, as_json):
    """Create the bucket (or Azure container) of URL (default: the configured remote) with the provider's
    secure defaults: public access blocked, encryption on. Buckets are otherwise expected to exist."""
    s = settings(ctx)
    url = url or s.remote
    if not url:
        raise ConfigError("no remote to create: give a URL (s3://bucket, gs://bucket, az://container) or set "
                          "CLOUD_PROVIDER and its bucket in .env")
    with open_remote(url, **s.remote_options()) as remote:
        if not isinstance(remote, CloudRemote):
            raise ConfigError(f"{url} is not a cloud bucket (create-bucket is for s3://, gs:// and az://)")
        applied = remote.create_bucket()
    payload = {"url": url, "created": True, "settings": applied}
    emit(as_json, payload, lambda: click.echo(f"created the bucket of {url}: " + ", ".join(applied)))


def _print_report(r, verb: str) -> None:
    if r.dry_run:
        click.echo(f"plan: {verb} {len(r.snapshots)} snapshot(s) from {r.source} to {r.destination}")
        click.echo(f"  {r.blobs_missing} blobs missing there: {human(r.bytes_missing)} "
                   f"({human(r.bytes_missing_stored)} to upload in about {r.requests_planned} PUT requests); "
                   f"planning took {r.requests} requests")
    elif not r.snapshots:
        click.echo(f"{verb}: nothing new ({r.requests} requests, {r.seconds:.2f} s)")
    else:
        click.echo(f"{verb}: {len(r.snapshots)} snapshot(s) to {r.destination}")
        click.echo(f"  {r.blobs_missing} blobs ({human(r.bytes_missing)}) in {r.packs_uploaded} packs, "
                   f"{human(r.bytes_uploaded)} transferred, {r.requests} requests, {r.seconds:.2f} s")
        if r.reuploaded_blobs:
            click.echo(f"  {r.reuploaded_blobs} blobs uploaded again after a concurrent gc")
    if not r.monthly_cost_after and r.destination and is_directory(r.destination):
        click.echo(f"  estimated monthly storage cost after: {NO_PRICE}")
    elif r.monthly_cost_after:
        costs = ", ".join(f"{row['label'].split(' (')[0]} ${row['usd_per_month']:.4f}"
                          for row in r.monthly_cost_after.values())
        click.echo(f"  estimated monthly cost after (storage, and the requests of this host's syncs in the "
                   f"last 30 days): {costs}")
