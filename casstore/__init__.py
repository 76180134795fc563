"""casstore: content-addressed, deduplicated, compressed snapshots of a folder.

    import casstore
    repo = casstore.open()                      # settings from the environment / .env
    snap = repo.snapshot()                      # snapshot the configured source
    data = repo.get("latest").to_dict()         # {'snapshot_id', 'timestamp', 'data_sources': {...}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from casstore.errors import (
    CasstoreError,
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    RemoteError,
    RepositoryNotFound,
    SnapshotNotFound,
)

if TYPE_CHECKING:
    from casstore.client import Repository
    from casstore.read.reader import Snapshot

__version__ = "0.1.0"   # as in pyproject.toml

__all__ = [
    "CasstoreError",
    "ConfigError",
    "IntegrityError",
    "ObjectNotFound",
    "RemoteError",
    "Repository",
    "RepositoryNotFound",
    "Snapshot",
    "SnapshotNotFound",
    "cloud_storage",
    "init",
    "open",
]


def open(repository: str | None = None, *, remote: str | None = None, create: bool = False,
         **settings: Any) -> Repository:
    """Open a repository.

    With no arguments: the local repository from CASSTORE_REPOSITORY (default ./.casstore) when it
    exists, else the configured remote (CASSTORE_REMOTE or CLOUD_PROVIDER) read-only. `remote=URL`
    opens that remote directly. `create=True` initializes the local repository if it is missing.
    """
    from casstore.client import open_repository  # lazy: `import casstore` stays light
    from casstore.repo.open import settings_for  # lazy: `import casstore` stays light

    return open_repository(settings_for(repository, **settings), remote=remote, create=create)


def init(repository: str | None = None, *, encrypt: bool = False, **settings: Any) -> Repository:
    """Create a new local repository (see `casstore init`); `encrypt=True` encrypts it under the
    password given as `password=` (or CASSTORE_PASSWORD, _FILE, _COMMAND)."""
    from casstore.client import init_repository  # lazy: `import casstore` stays light
    from casstore.repo.open import settings_for  # lazy: `import casstore` stays light

    return init_repository(settings_for(repository, **settings), encrypt=encrypt)


def __getattr__(name: str) -> object:
    if name == "cloud_storage":
        from casstore.compat import cloud_storage  # lazy: `import casstore` stays light

        return cloud_storage
    if name == "Repository":
        from casstore.client import Repository  # lazy: `import casstore` stays light

        return Repository
    if name == "Snapshot":
        from casstore.read.reader import Snapshot  # lazy: `import casstore` stays light

        return Snapshot
    raise AttributeError(f"module 'casstore' has no attribute {name!r}")
