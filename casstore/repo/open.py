"""The one way to open or create a repository: `open_as`. Every entry point uses it: the CLI, the
API, the scheduler, sync (its destination) and the seed's facade, through casstore.client for the
public front or directly with RepoCore.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from typing import Any, TypeVar

from casstore.errors import ConfigError, ObjectExists, RepositoryExists, RepositoryNotFound
from casstore.format import layout
from casstore.format.config import RepoConfig
from casstore.remotes import open_remote
from casstore.remotes.base import Remote
from casstore.repo import keys
from casstore.repo.core import RepoCore, create_config, read_config
from casstore.settings import Settings, load_settings

log = logging.getLogger(__name__)
R = TypeVar("R", bound=RepoCore)


def settings_for(repository: str | None = None, **overrides: Any) -> Settings:
    if repository is not None:
        overrides["repository"] = repository
    return load_settings(overrides)


def open_as(cls: type[R], settings: Settings, *, remote: str | Remote | None = None, create: bool = False,
            like: RepoConfig | str | None = None, fallback_remote: bool = True) -> R:
    """Open a repository as `cls` (RepoCore or the public front).

    - `remote` given (a URL, or a Remote used as it is): that remote repository. With `create` and
      `like`, an empty remote gets a new repository sharing `like`'s chunker, seed and pack settings.
    - otherwise the local repository at settings.repository. When it does not exist: created with
      `create` (sharing the config of `like`, a config or a remote's URL, when given; else adopting
      the configured remote's, see `adopt_or_share`); else, with `fallback_remote`, the configured
      remote (settings.remote) read through retries; else RepositoryNotFound.
    """
    if remote is not None:
        return _open_remote(cls, remote if isinstance(remote, Remote) else connect(remote, settings), settings,
                            create_like=_config_of(like, settings) if create and like is not None else None)
    if layout.is_local_repository(settings.repository):
        return cls.open_local(settings.repository, settings)
    if create:
        return cls.init_local(settings.repository, settings, new_local_config(settings, like))
    if fallback_remote and settings.remote:
        return _open_remote(cls, connect(settings.remote, settings), settings, create_like=None)
    raise RepositoryNotFound(f"no casstore repository at {settings.repository} (run `casstore init`)")


def connect(target: str | Remote, settings: Settings) -> Remote:
    """A remote by URL (or as given), with transient failures retried."""
    from casstore.remotes.wrappers import RetryingRemote  # lazy: a local repository's commands never connect

    remote = target if isinstance(target, Remote) else open_remote(target, **settings.remote_options())
    return RetryingRemote(remote, deadline=settings.request_deadline)


def new_config(settings: Settings, *, encrypt: bool = False, **sizes: Any) -> RepoConfig:
    """A new repository's config from the settings (chunk and pack sizes given as `sizes`); with
    `encrypt`, under a new master key with one key slot for the settings' password."""
    master = keys.new_key(settings, keys.host_name(settings)) if encrypt else None
    return RepoConfig.new(compression_level=settings.compression_level or 3, grace_seconds=settings.grace_seconds,
                          keys=master, **sizes)


def fresh_copy(config: RepoConfig) -> RepoConfig:
    """A new repository's config sharing `config`'s chunker, seed and pack settings (so blobs dedupe)."""
    import secrets  # lazy: start-up time of every command (only a new repository needs an id)

    return replace(config, id=secrets.token_hex(16))


def adopted_config(url: str, settings: Settings) -> RepoConfig:
    """A new repository config sharing an existing remote's chunker, seed and pack settings."""
    with open_remote(url, **settings.remote_options()) as remote:
        return fresh_copy(read_config(remote, settings))


def new_local_config(settings: Settings, like: RepoConfig | str | None = None) -> RepoConfig | None:
    """The config of a new local repository: `like`'s chunker when given, else the configured remote's
    (adopted, or shared by creating it), else None (a fresh one)."""
    if like is not None:
        return fresh_copy(_config_of(like, settings))
    if settings.remote:
        return adopt_or_share(settings)
    return None


def adopt_or_share(settings: Settings, proposed: RepoConfig | None = None) -> RepoConfig:
    """A new local repository's config when a remote is configured (design: adoption).

    The remote holds a repository: share its chunker, seed and pack settings (as `init --from`), so
    the first sync works on a replacement machine. It holds none: write `proposed` (or a new config)
    there first, then share it, so both are created compatible; a host that created it meanwhile wins.
    """
    assert settings.remote
    with connect(settings.remote, settings) as remote:
        try:
            existing = read_config(remote, settings)
        except RepositoryNotFound:
            proposed = proposed or RepoConfig.new(compression_level=settings.compression_level or 3,
                                                  grace_seconds=settings.grace_seconds)
            return fresh_copy(_create_remote(remote, fresh_copy(proposed), settings))
    if proposed is not None and proposed.encrypted and not existing.encrypted:
        raise ConfigError(f"{remote.url} already holds an unencrypted repository; an encrypted local repository "
                          "cannot share it (drop --encrypt, or use another remote)")
    if proposed is not None and proposed.encryption is None and proposed.chunker != existing.chunker:
        raise ConfigError(f"{remote.url} already holds a repository with other chunker parameters; "
                          "drop the --chunk-* options to share its parameters")
    return fresh_copy(existing)


def remove_empty_local(settings: Settings) -> None:
    """Delete the local repository so that it can be created again from a remote's config
    (`init --replace-empty`); refused when it holds a snapshot (nothing is lost, only unreferenced data)."""
    core = RepoCore.open_local(settings.repository, settings)
    with core, core.locked(exclusive=True):
        held = core.snapshot_ids()
        if held:
            raise RepositoryExists(f"{settings.repository} holds {len(held)} snapshot(s): --replace-empty only "
                                   "replaces a repository without snapshots (sync or pull them first)")
        shutil.rmtree(core.location)


def _config_of(like: RepoConfig | str, settings: Settings) -> RepoConfig:
    return adopted_config(like, settings) if isinstance(like, str) else like


def _open_remote(cls: type[R], remote: Remote, settings: Settings, *, create_like: RepoConfig | None) -> R:
    try:
        # with a local repository, its config is the marker sync and pull compare with (check_compatible)
        config = read_config(remote, settings, downgrade_check=not layout.is_local_repository(settings.repository))
    except RepositoryNotFound:
        if create_like is None:
            raise
        config = _create_remote(remote, fresh_copy(create_like), settings)
    return cls(remote, config, settings)


def _create_remote(remote: Remote, config: RepoConfig, settings: Settings | None = None) -> RepoConfig:
    """Write `config` unless another writer created the repository first (then theirs counts)."""
    try:
        create_config(remote, config)
    except ObjectExists:
        config = read_config(remote, settings)
    for warning in remote.setup_warnings():
        log.warning("%s", warning)
    return config
