"""The remote contract: the smallest storage interface a repository needs.

A remote stores opaque byte objects under string keys. It knows nothing about blobs, packs or
snapshots. Retries, request counting and fault injection are wrappers around a remote
(`casstore.remotes.wrappers`), never code inside a backend.

Keys are validated once, here, at the boundary: lowercase ASCII, `/`-separated, no empty
segment, no `.` or `..`, no leading `/`, no temp suffix. Backends implement the underscore
methods and may assume a valid key.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from casstore.errors import ObjectNotFound, RemoteError, ShortRead

_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-.]*(/[a-z0-9][a-z0-9_\-.]*)*$")
_TEMP_SUFFIXES = (".tmp", ".partial")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object as a listing or stat reports it.

    `mtime` is the storage's own timestamp (seconds since the epoch, UTC) of when the object
    arrived; `etag` identifies the stored version for compare-and-swap writes.
    """

    key: str
    size: int
    mtime: float
    etag: str | None = None


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise ValueError."""
    if not isinstance(key, str) or not _KEY.match(key) or key.endswith(_TEMP_SUFFIXES):
        raise ValueError(f"invalid object key: {key!r}")
    if any(part in (".", "..") or part.startswith("..") for part in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a valid key followed by `/`."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise ValueError(f"invalid listing prefix (must end with '/'): {prefix!r}")
    validate_key(prefix[:-1])
    return prefix


class Remote(ABC):
    """Byte objects under string keys.

    Contracts every backend keeps (the contract suite in tests/test_remote_contract.py checks
    them on every backend):

    - `put` stores the whole object or nothing; readers never see a partial object. With
      `if_absent=True` it fails with ObjectExists when the key exists (conditional create).
      With `if_match=etag` it replaces the object only if its current etag is `etag`, else
      ObjectExists (compare-and-swap; used only for `gc/lease`). It returns the new ObjectInfo.
    - `get(key, offset, length)` returns exactly `length` bytes from `offset` (or everything
      from `offset` to the end when length is None). A missing key is ObjectNotFound; a range
      past the end of the object is an error, never a silently short answer. `large=True` is the
      caller's hint that the read may move many bytes (a pack, or a blob in one): a backend gives
      such a request a read timeout scaled for it rather than the short one for small objects.
    - `stat` returns ObjectInfo or raises ObjectNotFound.
    - `list(prefix)` yields every object whose key starts with `prefix`, each exactly once, in
      no particular order. A listing that fails or ends early raises; it never looks empty.
    - `delete` removes a key; deleting a missing key succeeds (uniform across clouds).
    - `delete_many(keys)` removes many keys in as few requests as the store allows (S3
      DeleteObjects, 1,000 keys a request; an Azure blob batch, 256; a GCS batch, 100) and
      returns the keys it could not delete with why (empty when all went); a missing key is not
      an error. A store without a batch call deletes one key per request.
    - Calls may come from several threads at once (parallel pack uploads, a sync's first
      listings, casstore.sync.ahead); the SDK clients the backends hold are safe for that.
    """

    #: short human-readable location, never containing secrets
    url: str = ""
    #: True when `_put` writes any bytes-like object as it is (no copy into `bytes` first)
    takes_buffers: bool = False

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False, if_match: str | None = None,
            cold: bool = False) -> ObjectInfo:
        """`cold` is the caller's hint that the object is bulk data read rarely (a pack): a backend
        configured with a cheaper storage class for such objects uses it. The storage layer never
        guesses this from the key: it does not know the repository's layout."""
        if if_absent and if_match is not None:
            raise ValueError("if_absent and if_match exclude each other")
        if not isinstance(data, bytes) and not self.takes_buffers:
            data = bytes(data)
        put = self._put_cold if cold else self._put
        # a backend that `takes_buffers` writes any bytes-like object as it is
        return put(validate_key(key), cast(bytes, data), if_absent=if_absent, if_match=if_match)

    def get(self, key: str, offset: int = 0, length: int | None = None, *, large: bool = False) -> bytes:
        """`large` is the caller's hint that the read may be long (a pack): as with `cold`, the
        storage layer never guesses this from the key."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be >= 0")
        data = self._get(validate_key(key), offset, length, large=large)
        if length is not None and len(data) != length:
            raise ShortRead(f"{key}: range {offset}+{length} answered {len(data)} bytes")
        return data

    def stat(self, key: str) -> ObjectInfo:
        return self._stat(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(validate_prefix(prefix))

    def delete(self, key: str) -> None:
        self._delete(validate_key(key))

    def delete_many(self, keys: Iterable[str]) -> dict[str, RemoteError]:
        """Delete every key; returns {key: error} for those that could not be deleted."""
        valid = [validate_key(key) for key in keys]
        return self._delete_many(valid) if valid else {}

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def setup_warnings(self) -> builtins.list[str]:  # `list` here is the method above
        """What the user should know about how the storage is set up (asked when a repository is
        created there), e.g. a versioned bucket without a rule expiring old versions."""
        return []

    def close(self) -> None:
        """Release connections; the remote must not be used afterwards."""

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo: ...

    def _put_cold(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        """A put hinted `cold`; a backend with a storage class for cold objects overrides this."""
        return self._put(key, data, if_absent=if_absent, if_match=if_match)

    @abstractmethod
    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes: ...

    @abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    def _delete_many(self, keys: builtins.list[str]) -> dict[str, RemoteError]:
        """One request per key; a backend with a batch call overrides this."""
        return delete_each(self._delete, keys)


def delete_each(delete: Callable[[str], None], keys: Iterable[str]) -> dict[str, RemoteError]:
    """`delete` each key, collecting the errors per key (the fallback of `delete_many`)."""
    errors: dict[str, RemoteError] = {}
    for key in keys:
        try:
            delete(key)
        except RemoteError as exc:
            errors[key] = exc
    return errors


def read_range(data: bytes, key: str, offset: int, length: int | None) -> bytes:
    """Slice `data` for a ranged read, refusing ranges that run past the end."""
    end = len(data) if length is None else offset + length
    if offset > len(data) or end > len(data):
        raise ShortRead(f"{key}: range {offset}..{end} past the end ({len(data)} bytes)")
    return data[offset:end]
