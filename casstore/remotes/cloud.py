"""What the cloud backends (S3, GCS, Azure) share, so each makes the clouds look alike the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeGuard

from casstore.errors import AccessDenied, ObjectNotFound, RemoteError, TransientError
from casstore.remotes.base import Remote, validate_key


def batches(keys: list[str], size: int) -> Iterator[list[str]]:
    """`keys` in runs of at most `size`: what one batch request of the store takes."""
    for start in range(0, len(keys), size):
        yield keys[start:start + size]


def batch_item_error(status: int, where: str, detail: str) -> RemoteError | None:
    """The error for one deletion in a batch answered `status`; None when it is gone (2xx, or 404:
    a missing key is no error)."""
    if 200 <= status < 300 or status == 404:
        return None
    if status in (401, 403):
        return AccessDenied(f"{where}: access denied ({status} {detail})")
    if status == 429 or status >= 500:
        return TransientError(f"{where}: {status} {detail}")
    return RemoteError(f"{where}: {status} {detail}")


class CloudRemote(Remote):
    """A Remote over an object store SDK; subclasses set `url` and implement `_stat`."""

    def create_bucket(self) -> list[str]:
        """Create the bucket (container) with the provider's secure defaults; return what was set.
        Buckets are otherwise expected to exist: only `casstore remote create-bucket` calls this."""
        raise NotImplementedError

    def _empty_read(self, key: str, offset: int) -> bytes:
        """A zero-length read (or a 416 answer): empty at the end of the object, an error past it."""
        size = self._stat(key).size
        if offset > size:
            raise ObjectNotFound(f"{self.url}{key}: offset {offset} past the end ({size} bytes)")
        return b""

    def _exact(self, data: bytes, key: str, offset: int, length: int | None) -> bytes:
        """Clouds answer a range past the end with fewer bytes; the contract says that is an error."""
        if length is not None and len(data) != length:
            raise ObjectNotFound(f"{self.url}{key}: range {offset}+{length} past the end of the object")
        return data


class PageTokens:
    """Continuation tokens of one listing: a token that repeats means the listing would never end
    (or would end early and look complete), so it is an error."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._seen: set[str] = set()

    def advance(self, token: str | None) -> None:
        if not token:
            return
        if token in self._seen:
            raise RemoteError(f"{self.where}: listing continuation token did not advance")
        self._seen.add(token)


def unquote(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def is_repository_key(key: str | None) -> TypeGuard[str]:
    """Folder placeholders and foreign objects in a bucket are not repository objects."""
    try:
        validate_key(key or "")
    except ValueError:
        return False
    return True
