"""casstore's one exception tree.

    CasstoreError                     every error casstore raises on purpose (exit code 1)
    ├── ConfigError                   a setting is missing or wrong (exit 2)
    ├── SourceError                   the source directory is missing or unreadable
    ├── RepositoryError
    │   ├── RepositoryNotFound        no repository at the given place
    │   ├── RepositoryExists          init over an existing repository
    │   ├── FormatError               an object does not follow the format (bad magic, wrong types)
    │   ├── IntegrityError            stored bytes do not match their id
    │   ├── SnapshotNotFound          unknown or ambiguous snapshot id / prefix
    │   ├── LockError                 the repository lock is held
    │   ├── IncompatibleRepository    chunker parameters or seeds differ
    │   └── EncryptionError           an encrypted repository cannot be opened as asked
    │       ├── WrongPassword         no key slot opens with the password given
    │       ├── MissingKey            encrypted, but no key slot, or no password to try
    │       └── DowngradeError        encrypted objects under a plain config, or a plain config
    │                                 where the repository is known to be encrypted
    ├── RestoreError                  restore refused (unsafe name, existing file)
    └── RemoteError                   the storage below a repository failed
        ├── ObjectNotFound            the only meaning of "missing"
        │   └── ShortRead             a ranged read answered fewer bytes than asked (cut, or past the end)
        ├── ObjectExists              a conditional create or compare-and-swap lost
        ├── AccessDenied              credentials refused
        ├── BucketNotFound            the bucket / container does not exist
        └── TransientError            may succeed if retried (throttling, 5xx, network)

Every SDK exception is translated at the edge of `casstore.remotes` and re-raised `from` the
original, so callers only ever see this tree.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "CasstoreError",
    "ConfigError",
    "DowngradeError",
    "EncryptionError",
    "FormatError",
    "IncompatibleRepository",
    "IntegrityError",
    "LockError",
    "MissingKey",
    "ObjectExists",
    "ObjectNotFound",
    "RemoteError",
    "RepositoryError",
    "RepositoryExists",
    "RepositoryNotFound",
    "RestoreError",
    "SnapshotNotFound",
    "ShortRead",
    "SourceError",
    "TransientError",
    "WrongPassword",
]


class CasstoreError(Exception):
    """Base of every error casstore raises on purpose."""

    exit_code = 1


class ConfigError(CasstoreError):
    exit_code = 2


class SourceError(CasstoreError):
    pass


class RepositoryError(CasstoreError):
    pass


class RepositoryNotFound(RepositoryError):
    pass


class RepositoryExists(RepositoryError):
    pass


class FormatError(RepositoryError):
    pass


class IntegrityError(RepositoryError):
    pass


class SnapshotNotFound(RepositoryError):
    pass


class LockError(RepositoryError):
    pass


class IncompatibleRepository(RepositoryError):
    pass


class EncryptionError(RepositoryError):
    pass


class WrongPassword(EncryptionError):
    pass


class MissingKey(EncryptionError):
    pass


class DowngradeError(EncryptionError):
    pass


class RestoreError(CasstoreError):
    pass


class RemoteError(CasstoreError):
    pass


class ObjectNotFound(RemoteError):
    pass


class ShortRead(ObjectNotFound):
    """A subclass, not a sibling: callers that only know "past the end is missing" keep working,
    while verified reads treat it as damage in transit and fetch again."""


class ObjectExists(RemoteError):
    pass


class AccessDenied(RemoteError):
    pass


class BucketNotFound(RemoteError):
    pass


class TransientError(RemoteError):
    pass
