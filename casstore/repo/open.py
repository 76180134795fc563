"""Turning settings into an open repository: local when it exists, else the configured remote."""

from __future__ import annotations

import os

from casstore.errors import RepositoryNotFound
from casstore.repo.core import Repository
from casstore.settings import Settings, load_settings


def settings_for(repository: str | None = None, **overrides) -> Settings:
    if repository is not None:
        overrides["repository"] = repository
    return load_settings(overrides)


def open_repository(repository: str | None = None, *, remote: str | None = None, create: bool = False,
                    **overrides) -> Repository:
    settings = settings_for(repository, **overrides)
    if remote is not None:
        return open_remote_repository(remote, settings)
    if os.path.isfile(os.path.join(settings.repository, "config")):
        return Repository.open_local(settings.repository, settings)
    if create:
        return Repository.init_local(settings.repository, settings)
    if settings.remote:
        return open_remote_repository(settings.remote, settings)
    raise RepositoryNotFound(f"no casstore repository at {settings.repository} (run `casstore init`)")


def open_remote_repository(url: str, settings: Settings) -> Repository:
    """A remote repository for reading, with transient failures retried."""
    from casstore.remotes import open_remote
    from casstore.remotes.wrappers import RetryingRemote

    remote = RetryingRemote(open_remote(url, **settings.remote_options()), deadline=settings.request_deadline)
    return Repository.open_remote(remote, settings)


def init_repository(repository: str | None = None, **overrides) -> Repository:
    settings = settings_for(repository, **overrides)
    return Repository.init_local(settings.repository, settings)


def adopted_config(url: str, settings: Settings):
    """A new repository config sharing an existing remote's chunker, seed and pack settings."""
    import secrets
    from dataclasses import replace

    from casstore.remotes import open_remote
    from casstore.repo.core import read_config

    with open_remote(url, **settings.remote_options()) as remote:
        return replace(read_config(remote), id=secrets.token_hex(16))


def open_or_init_from(url: str | None, settings: Settings) -> Repository:
    """The local repository; created from the remote's config when it does not exist yet."""
    if os.path.isfile(os.path.join(settings.repository, "config")):
        return Repository.open_local(settings.repository, settings)
    url = url or settings.remote
    config = adopted_config(url, settings) if url else None
    return Repository.init_local(settings.repository, settings, config)
