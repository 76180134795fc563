"""init, snapshot/backup, check, stats."""

from __future__ import annotations

import sys

import click

from casstore.cli.common import (
    Progress,
    emit,
    estimate_total,
    human,
    json_option,
    open_repo,
    printable,
    repo_option,
    settings,
)
from casstore.client import init_repository, open_repository
from casstore.errors import CasstoreError, ConfigError, RepositoryExists
from casstore.format import layout
from casstore.format.config import DEFAULT_PACK_SIZE, RepoConfig
from casstore.repo.open import adopt_or_share, adopted_config, new_config, remove_empty_local
from casstore.repo.pricing import NO_PRICE
from casstore.snapshot.source import require_source


@click.command()
@repo_option
@click.option("--chunk-avg", type=int, help="Average chunk size in bytes (fixed for the repository's life).")
@click.option("--chunk-min", type=int, help="Minimum chunk size in bytes.")
@click.option("--chunk-max", type=int, help="Maximum chunk size in bytes.")
@click.option("--pack-size", type=int, help="Target pack size in bytes (default 16 MiB).")
@click.option("--from", "from_url", metavar="URL",
              help="Adopt the config (chunker and seed) of this remote (default: the configured remote's).")
@click.option("--replace-empty", is_flag=True,
              help="Replace an existing local repository that holds no snapshot by one adopting the remote's config.")
@click.option("--encrypt", is_flag=True,
              help="Encrypt everything stored, under a password (CASSTORE_PASSWORD[_FILE|_COMMAND] or a prompt).")
@json_option
@click.pass_context
def init(ctx, repository, chunk_avg, chunk_min, chunk_max, pack_size, from_url, replace_empty, encrypt, as_json):
    """Create a new local repository.

    With a remote configured (or --from URL) it shares the remote repository's chunker and seed
    (and, when it is encrypted, its key: the password must open one of its key slots), creating the
    remote repository first when there is none, so every sync works. With --encrypt, the new
    repository is encrypted; losing every password of it loses the data."""
    s = settings(ctx, repository)
    if replace_empty:
        if not (from_url or s.remote):
            raise click.UsageError("--replace-empty adopts a remote's config: give --from URL or configure a remote")
        remove_empty_local(s)
    if layout.is_local_repository(s.repository):
        raise RepositoryExists(f"a repository already exists at {s.repository}")
    chosen = any(v is not None for v in (chunk_avg, chunk_min, chunk_max, pack_size))
    if from_url:
        config = adopted_config(from_url, s)
        if encrypt and not config.encrypted:
            raise ConfigError(f"{from_url} holds an unencrypted repository: drop --encrypt to share it")
    else:
        proposed = new_config(s, encrypt=encrypt, min_size=chunk_min, avg_size=chunk_avg, max_size=chunk_max,
                              pack_size=pack_size or DEFAULT_PACK_SIZE)
        config = adopt_or_share(s, proposed if chosen or encrypt else None) if s.remote else proposed
    repo = init_repository(s, config)
    payload = {"repository": repo.location, "id": config.id, "encrypted": config.encrypted,
               "chunker": {k: v for k, v in config.chunker.items() if k != "seed"}}
    emit(as_json, payload, lambda: _print_created(config, repo.location))


def _print_created(config: RepoConfig, location: str) -> None:
    if not config.encrypted:
        click.echo(f"created repository {config.id[:8]} at {location}")
        return
    click.echo(f"created encrypted repository {config.id[:8]} at {location}")
    click.echo("casstore: keep the password safe: without it the data cannot be read by anyone, you included",
               err=True)


@click.command()
@click.argument("source", required=False)
@repo_option
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="gitignore-style pattern to leave out (repeatable).")
@click.option("--pre-hook", help="Command to run first (quiesce the application); failing aborts.")
@click.option("--post-hook", help="Command to run afterwards, whatever happened.")
@click.option("--allow-empty", is_flag=True, help="Snapshot SOURCE even when it is empty (refused by default).")
@json_option
@click.pass_context
def snapshot(ctx, source, repository, tags, excludes, pre_hook, post_hook, allow_empty, as_json):
    """Take a snapshot of SOURCE (default: CASSTORE_SOURCE or ./data).

    The first snapshot creates the local repository; with a remote configured it adopts the remote's
    repository (or creates both, compatible). A missing or empty SOURCE is refused."""
    s = settings(ctx, repository)
    source = source or s.source
    allow_empty = allow_empty or s.allow_empty
    require_source(source, allow_empty=allow_empty)
    _run_hook(pre_hook, "pre-hook")  # before anything is created: a failing pre-hook changes nothing
    created = not layout.is_local_repository(s.repository)
    repo = open_repository(s, create=True)  # the settings read above: read once per snapshot
    if created and not as_json:
        click.echo(f"created repository at {repo.location}", err=True)
    try:
        with Progress(None, "snapshot") as progress:
            estimate_total(progress, repo, source)
            # no bar (not a terminal): no callback, which the walk would call for every file
            result = repo.snapshot(source, tags=tuple(tags), excludes=tuple(excludes),
                                   progress=progress if progress.shown else None, allow_empty=allow_empty)
    finally:
        if post_hook:
            _run_hook(post_hook, "post-hook", fatal=False)
    emit(as_json, {"id": result.id, "short_id": result.short_id, **result.summary.as_dict(),
                   "incomplete": result.incomplete}, lambda: _print_snapshot(result))
    if result.incomplete:
        sys.exit(3)


backup = click.Command("backup", callback=snapshot.callback, params=snapshot.params,
                       help="Alias of `snapshot`.", short_help="Alias of `snapshot`.")


def _run_hook(command: str | None, what: str, fatal: bool = True) -> None:
    if not command:
        return
    import subprocess  # lazy: start-up time of every command (only a hook runs one)

    completed = subprocess.run(command, shell=True)  # the user's own command line, by design
    if completed.returncode != 0:
        message = f"{what} `{command}` failed with exit code {completed.returncode}"
        if fatal:
            raise CasstoreError(message + "; snapshot not taken")
        click.echo(f"casstore: warning: {message}", err=True)


def _print_snapshot(result) -> None:
    s = result.summary
    click.echo(f"snapshot {result.short_id} saved")
    click.echo(f"  files: {s.files_total} ({s.files_new} new, {s.files_changed} changed, "
               f"{s.files_unchanged} unchanged), {s.dirs_total} directories, {s.excluded} excluded")
    click.echo(f"  read {human(s.bytes_read)} of {human(s.bytes_total)}; added {human(s.bytes_added)} "
               f"({human(s.bytes_added_stored)} stored) in {s.duration_ms / 1000:.2f} s")
    if s.changed_during_read:
        click.echo(f"  {s.changed_during_read} file(s) changed while being read", err=True)
    for error in s.errors:
        click.echo(f"  error: {printable(error)}", err=True)
    if result.incomplete:
        click.echo("casstore: snapshot is INCOMPLETE: some files could not be read", err=True)


@click.command()
@repo_option
@click.option("--read-data", is_flag=True, help="Download and verify every blob.")
@click.option("--read-data-subset", metavar="N%", help="Verify a random N% of the packs.")
@click.option("--remote", "--from", "remote", metavar="URL", help="Check this remote repository instead.")
@json_option
@click.pass_context
def check(ctx, repository, read_data, read_data_subset, remote, as_json):
    """Verify the repository's structure (and with --read-data, every stored byte)."""
    subset = _percent(read_data_subset) if read_data_subset else None
    with open_repo(ctx, repository, remote=remote) as repo:
        report = repo.check(read_data=read_data, subset=subset)
    emit(as_json, report.as_dict(), lambda: _print_check(report))
    if not report.ok:
        sys.exit(1)


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / 100
    except ValueError:
        raise ConfigError(f"--read-data-subset takes a percentage like 10%, not {text!r}") from None
    if not 0 < value <= 1:
        raise ConfigError("--read-data-subset must be between 0% and 100%")
    return value


def _print_check(report) -> None:
    click.echo(f"{report.snapshots} snapshots, {report.indexes} indexes, {report.packs} packs"
               + (f", {report.packs_read} packs read, {report.blobs_verified} blobs verified"
                  if report.packs_read else ""))
    if report.orphan_packs:
        click.echo(f"{report.orphan_packs} packs no index names (left by interrupted runs; `casstore gc` removes them)")
    if report.leftovers:
        click.echo(f"{len(report.leftovers)} leftover temp files ({sum(s for _, s in report.leftovers)} bytes) "
                   "from interrupted runs; `casstore gc` and the next snapshot remove those older than an hour")
    for error in report.errors:
        click.echo(f"error: {printable(error)}")
    for pack_id, reason in report.damaged_packs.items():
        click.echo(f"damaged pack {printable(pack_id[:16])}: {printable(reason)}")
    for snapshot_id, paths in report.affected.items():
        click.echo(f"snapshot {snapshot_id[:8]} is damaged:")
        for path in paths[:50]:
            click.echo(f"  {printable(path)}")
    click.echo("no errors found" if report.ok else "check FAILED")


@click.command()
@repo_option
@click.option("--remote", "--from", "remote", metavar="URL", help="Report on this remote repository instead.")
@json_option
@click.pass_context
def stats(ctx, repository, remote, as_json):
    """Logical and stored bytes, dedup and compression ratios, and estimated monthly cost."""
    with open_repo(ctx, repository, remote=remote) as repo:
        data = repo.stats()
    emit(as_json, data, lambda: _print_stats(data))


def _print_stats(d: dict) -> None:
    click.echo(f"repository      {d['repository']}")
    click.echo(f"snapshots       {d['snapshots']}")
    click.echo(f"logical size    {human(d['logical_bytes_latest'])} latest, "
               f"{human(d['logical_bytes_all_snapshots'])} across all snapshots")
    click.echo(f"unique data     {human(d['unique_bytes'])} in {d['blobs']} blobs")
    click.echo(f"stored          {human(d['stored_bytes'])} (packs {human(d['pack_bytes'])}, "
               f"metadata {human(d['metadata_bytes'])})")
    click.echo(f"dedup ratio     {d['dedup_ratio']}x   compression {d['compression_ratio']}x   "
               f"overall {d['total_ratio']}x")
    if d["per_source"]:
        click.echo("per top-level source (latest snapshot):")
        for name, row in d["per_source"].items():
            click.echo(f"  {name:30} {row['files']:>7} files  {human(row['logical_bytes']):>10} logical  "
                       f"{human(row['stored_bytes']):>10} stored")
    if not d["monthly_cost"]:
        click.echo(f"estimated monthly storage cost: {NO_PRICE}")
        return
    click.echo("estimated monthly cost (storage, and the requests of this host's syncs in the last 30 days):")
    for row in d["monthly_cost"].values():
        requests = row.get("put_requests_per_month", 0) + row.get("get_requests_per_month", 0)
        click.echo(f"  {row['label']:34} ${row['usd_per_month']:.4f}/month  ({human(row['stored_bytes'])} at "
                   f"${row['usd_per_gb_month']}/GB, {requests} requests; prices as of {row['prices_as_of']})")
