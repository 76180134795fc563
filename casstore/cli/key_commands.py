"""key list|add|remove|passwd: the key slots (passwords) of an encrypted repository."""

from __future__ import annotations

import time
from typing import Any

import click

from casstore.cli.common import emit, json_option, printable, remote_option, repo_option, settings
from casstore.errors import ConfigError, ObjectNotFound, RepositoryNotFound
from casstore.format import layout
from casstore.format.config import encryption_domain
from casstore.format.crypto import MasterKey
from casstore.remotes.base import Remote
from casstore.remotes.local import LocalRemote
from casstore.repo import keys
from casstore.repo.open import connect
from casstore.settings import Settings


@click.group("key")
def key_group() -> None:
    """Manage the keys (passwords) of an encrypted repository: list, add, remove, passwd.

    Each key slot wraps the same master key under its own password, so hosts and people never
    share one password. Losing every password loses the data."""


def _opened(ctx: click.Context, repository: str | None, remote_url: str | None) -> tuple[Settings, Remote, MasterKey]:
    """The repository's storage and its master key, opened with the password (never from the
    process's memory: the slot that this password opens is the one reported and protected)."""
    s = settings(ctx, repository)
    if remote_url:
        remote: Remote = connect(remote_url, s)
    elif layout.is_local_repository(s.repository):
        remote = LocalRemote(s.repository, create=False)
    else:
        raise RepositoryNotFound(f"no casstore repository at {s.repository} (give --remote URL for a remote one)")
    try:
        body = remote.get(layout.CONFIG_KEY)
    except ObjectNotFound:
        raise RepositoryNotFound(f"no casstore repository at {remote.url}") from None
    domain = encryption_domain(body)
    if domain is None:
        raise ConfigError(f"the repository at {remote.url} is not encrypted: it has no keys")
    return s, remote, keys.unlock(remote, domain, s, cached=False)


@key_group.command("list")
@repo_option
@remote_option
@json_option
@click.pass_context
def list_keys(ctx: click.Context, repository: str | None, remote: str | None, as_json: bool) -> None:
    """List the key slots; `*` marks the one the password opened."""
    _, store, key = _opened(ctx, repository, remote)
    slots = keys.list_slots(store)
    rows: list[dict[str, Any]] = [{"id": i.id, "current": i.id == key.slot_id, "host": i.host,
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(i.created_ns / 1e9)),
             "kdf": i.kdf} for i in slots]

    def text() -> None:
        for r in rows:
            kdf = r["kdf"]
            params = ", ".join(f"{k}={v}" for k, v in kdf.items() if k != "algorithm")
            click.echo(f"{'*' if r['current'] else ' '}{r['id'][:8]}  {printable(r['host']):<20} {r['created']}  "
                       f"{kdf.get('algorithm')} ({params})")

    emit(as_json, rows, text)


@key_group.command("add")
@repo_option
@remote_option
@click.option("--host", "for_host", help="Host name recorded in the new slot (default: this host).")
@json_option
@click.pass_context
def add_key(ctx: click.Context, repository: str | None, remote: str | None, for_host: str | None,
            as_json: bool) -> None:
    """Add a key slot with a new password (CASSTORE_NEW_PASSWORD[_FILE] or a prompt)."""
    s, store, key = _opened(ctx, repository, remote)
    slot_id = keys.add_slot(store, key, keys.password(s, new=True), for_host or keys.host_name(s))
    emit(as_json, {"added": slot_id}, lambda: click.echo(f"added key {slot_id[:8]}"))


@key_group.command("remove")
@click.argument("slot")
@repo_option
@remote_option
@json_option
@click.pass_context
def remove_key(ctx: click.Context, slot: str, repository: str | None, remote: str | None, as_json: bool) -> None:
    """Remove key slot SLOT (an id prefix); never the one in use, never the last."""
    _, store, key = _opened(ctx, repository, remote)
    slot_id = keys.resolve_slot(store, slot)
    keys.remove_slot(store, slot_id, key.slot_id)
    emit(as_json, {"removed": slot_id}, lambda: click.echo(f"removed key {slot_id[:8]}"))


@key_group.command("passwd")
@repo_option
@remote_option
@json_option
@click.pass_context
def change_password(ctx: click.Context, repository: str | None, remote: str | None, as_json: bool) -> None:
    """Change the password: a new slot for the new password, then the old slot is removed."""
    s, store, key = _opened(ctx, repository, remote)
    slot_id = keys.add_slot(store, key, keys.password(s, new=True), keys.host_name(s))
    if key.slot_id is not None:
        keys.remove_slot(store, key.slot_id, current=slot_id)
    emit(as_json, {"added": slot_id, "removed": key.slot_id},
         lambda: click.echo(f"changed password: key {slot_id[:8]} replaces {(key.slot_id or '')[:8]}"))
