"""Azure Blob Storage through azure-storage-blob.

Conditional create is `overwrite=False` (409 BlobAlreadyExists); compare-and-swap is the ETag
with `MatchConditions.IfNotModified` (412). Uploads and downloads up to SINGLE_REQUEST_LIMIT are
one request each. The SDK's retries are off (`retry_total=0`):
`casstore.remotes.wrappers.RetryingRemote` is the one place that retries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

import requests
import requests.adapters
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from casstore.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    RemoteError,
    TransientError,
)
from casstore.remotes.base import ObjectInfo
from casstore.remotes.cloud import CloudRemote, PageTokens, batch_item_error, batches, is_repository_key, unquote
from casstore.remotes.prefixed import KeyPrefix
from casstore.remotes.timeouts import Timeouts

OCTET_STREAM = "application/octet-stream"
SINGLE_REQUEST_LIMIT = 128 * 1024 * 1024
POOL_SIZE = 16
DELETE_BATCH = 256   # blobs one batch request takes
CREDENTIALS_HINT = "check AZURE_STORAGE_CONNECTION_STRING (account key, or the SAS token's expiry and permissions)"
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError"}


class RangeNotSatisfiable(ObjectNotFound):
    """A ranged read starting at or past the end of the object (HTTP 416)."""


def open_azure(container: str, prefix: str = "", *, connection_string: str | None = None,
               timeouts: Timeouts | None = None) -> AzureRemote:
    """An Azure Blob remote; the account and its credentials come from the connection string.
    `timeouts` are given per request: short for metadata, scaled to size for packs."""
    timeouts = timeouts or Timeouts()
    if not container:
        raise ConfigError("no Azure container given (AZURE_CONTAINER or az://container/prefix)")
    if not connection_string:
        raise ConfigError("AZURE_STORAGE_CONNECTION_STRING is not set")
    try:
        service = BlobServiceClient.from_connection_string(
            connection_string, retry_total=0, transport=_transport(timeouts),
            max_single_put_size=SINGLE_REQUEST_LIMIT, max_single_get_size=SINGLE_REQUEST_LIMIT)
    except ValueError as exc:  # the SDK's message never quotes the string; ours neither
        raise ConfigError("AZURE_STORAGE_CONNECTION_STRING is malformed") from exc
    return AzureRemote(service.get_container_client(container), prefix, timeouts)


def _transport(timeouts: Timeouts) -> RequestsTransport:
    """HTTP with timeouts and one pooled connection per upload thread (the default pool holds 10)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=True, connection_timeout=timeouts.connect,
                             read_timeout=timeouts.read)


class AzureRemote(CloudRemote):
    """Objects in one container below a key prefix, through a ready ContainerClient."""

    def __init__(self, container: ContainerClient, prefix: str = "", timeouts: Timeouts | None = None) -> None:
        self._container = container
        self._timeouts = timeouts or Timeouts()
        self.container = container.container_name
        self._keys = KeyPrefix(prefix)
        self.url = f"az://{self.container}/{self._keys.prefix}"

    def create_bucket(self) -> list[str]:
        """The container, private (no anonymous access); Azure Storage encrypts every blob at rest."""
        with self._errors(""):
            self._container.create_container(public_access=None)
        return ["private (no anonymous access)", "encrypted at rest (Azure Storage Service Encryption)"]

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        blob = self._container.get_blob_client(self._keys.full(key))
        condition: dict[str, Any] = {}
        if if_match is not None:
            condition = {"etag": f'"{if_match}"', "match_condition": MatchConditions.IfNotModified}
        with self._errors(key):
            result = blob.upload_blob(data, overwrite=not if_absent, max_concurrency=1, validate_content=True,
                                      content_settings=ContentSettings(content_type=OCTET_STREAM),
                                      read_timeout=self._timeouts.for_request(len(data)), **condition)
        return ObjectInfo(key, len(data), result["last_modified"].timestamp(), unquote(result["etag"]))

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        if length == 0:
            return self._empty_read(key, offset)
        blob = self._container.get_blob_client(self._keys.full(key))
        start = offset if offset or length is not None else None  # the SDK wants an offset with a length
        try:
            with self._errors(key):
                download = blob.download_blob(offset=start, length=length, max_concurrency=1,
                                              read_timeout=self._timeouts.for_request(length, large=large))
                data = download.readall()
        except RangeNotSatisfiable:
            return self._empty_read(key, offset)
        if start is None:
            check_content_md5(data, download.properties.content_settings.content_md5, f"{self.url}{key}")
        return self._exact(data, key, offset, length)

    def _stat(self, key: str) -> ObjectInfo:
        with self._errors(key):
            props = self._container.get_blob_client(self._keys.full(key)).get_blob_properties()
        return ObjectInfo(key, props.size, props.last_modified.timestamp(), unquote(props.etag))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._container.list_blobs(name_starts_with=self._keys.full(prefix)).by_page()
        tokens = PageTokens(f"{self.url}{prefix}")
        with self._errors(prefix):
            for page in pages:
                for item in page:
                    key = self._keys.strip(item.name)
                    if is_repository_key(key):
                        yield ObjectInfo(key, item.size, item.last_modified.timestamp(), unquote(item.etag))
                tokens.advance(cast(Any, pages).continuation_token)  # the page iterator has it; its stubs do not

    def _delete(self, key: str) -> None:
        blob = self._container.get_blob_client(self._keys.full(key))
        with suppress(ObjectNotFound), self._errors(key):  # missing is success, as on S3
            blob.delete_blob(delete_snapshots="include")

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        """Blob batch delete, 256 blobs a request; each blob's answer is checked (404 is no error)."""
        errors: dict[str, RemoteError] = {}
        for batch in batches(keys, DELETE_BATCH):
            with self._errors(batch[0]):
                answers = list(self._container.delete_blobs(*[self._keys.full(key) for key in batch],
                                                            delete_snapshots="include", raise_on_any_failure=False))
            for key, answer in zip(batch, answers, strict=True):
                error = batch_item_error(answer.status_code, f"{self.url}{key}", str(answer.reason or ""))
                if error is not None:
                    errors[key] = error
        return errors

    def close(self) -> None:
        self._container.close()

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except AzureError as exc:
            raise translate(exc, self.container, f"{self.url}{key}") from exc


def check_content_md5(data: bytes, stored: bytes | bytearray | None, where: str) -> None:
    """A whole blob against the MD5 the service stored at upload (a single Put Blob records it); a
    mismatch is damage on the way, retried like any transient failure. A range has no stored MD5."""
    if stored and hashlib.md5(data).digest() != bytes(stored):
        raise TransientError(f"{where}: the body does not match its stored Content-MD5 (damaged in transit)")


def translate(exc: AzureError, container: str, where: str) -> RemoteError:
    """The casstore error for an azure-core exception. Messages carry no keys or signatures."""
    code = str(getattr(exc, "error_code", None) or "")
    status = getattr(exc, "status_code", None) or 0
    detail = _describe(exc, code, status)
    if code == "ContainerNotFound":
        return BucketNotFound(f"container {container} does not exist ({where})")
    if code == "InvalidRange" or status == 416:
        return RangeNotSatisfiable(f"{where}: range starts past the end of the object")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return ObjectNotFound(where)
    if isinstance(exc, ResourceExistsError | ResourceModifiedError) or status in (409, 412):
        return ObjectExists(f"{where}: precondition failed ({code or status})")
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AccessDenied(f"{where}: access denied ({detail}); {CREDENTIALS_HINT}")
    if (isinstance(exc, ServiceRequestError | ServiceResponseError | DecodeError) or code in _TRANSIENT_CODES
            or status == 429 or status >= 500):
        return TransientError(f"{where}: {detail}")
    return RemoteError(f"{where}: {detail}")


def _describe(exc: AzureError, code: str, status: int) -> str:
    # only the first line: later lines of an auth failure echo the string the server signed
    first_line = (str(exc.message or "") or type(exc).__name__).splitlines()[0]
    return " ".join(part for part in (str(status or ""), code, first_line) if part)



