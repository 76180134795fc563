"""Google Cloud Storage through google-cloud-storage.

Conditional create is `if_generation_match=0`; compare-and-swap uses the object generation as
the etag (`if_generation_match=int(etag)`). Every upload is one request: google-cloud-storage
switches to resumable uploads above 8 MiB, which costs extra round trips and whose preconditions
fake-gcs-server ignores, so the single-request limit is raised above our largest pack. The
library's own retries are off (`retry=None`): `casstore.remotes.wrappers.RetryingRemote` retries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import google.auth
import google.cloud.storage.blob as _blob_module
import requests
import requests.adapters
from google.api_core import exceptions as api
from google.auth import exceptions as auth_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from casstore.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    RemoteError,
    TransientError,
)
from casstore.remotes.base import ObjectInfo, delete_each
from casstore.remotes.cloud import CloudRemote, PageTokens, batch_item_error, batches, is_repository_key
from casstore.remotes.prefixed import KeyPrefix
from casstore.remotes.timeouts import Timeouts

log = logging.getLogger(__name__)
OCTET_STREAM = "application/octet-stream"
POOL_SIZE = 16
DELETE_BATCH = 100   # calls one JSON API batch request takes
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
CREDENTIALS_HINT = "check GOOGLE_APPLICATION_CREDENTIALS (or the ambient credentials) and the bucket's IAM roles"
SINGLE_REQUEST_LIMIT = 128 * 1024 * 1024
_LIST_FIELDS = "items(name,size,updated,generation),nextPageToken"

# google-cloud-storage reads this module global on every upload to choose multipart vs resumable
if not isinstance(getattr(_blob_module, "_MAX_MULTIPART_SIZE", None), int):
    raise ImportError("google-cloud-storage no longer has blob._MAX_MULTIPART_SIZE: update casstore.remotes.gcs")
_blob_module._MAX_MULTIPART_SIZE = max(_blob_module._MAX_MULTIPART_SIZE, SINGLE_REQUEST_LIMIT)

_SDK_ERRORS = (api.GoogleAPIError, auth_errors.GoogleAuthError, requests.exceptions.RequestException,
               InvalidResponse, DataCorruption)


class RangeNotSatisfiable(ObjectNotFound):
    """A ranged read starting at or past the end of the object (HTTP 416)."""


def open_gcs(bucket: str, prefix: str = "", *, project: str | None = None, credentials_file: str | None = None,
             endpoint: str | None = None, timeouts: Timeouts | None = None) -> GCSRemote:
    """A GCS remote. `endpoint` (STORAGE_EMULATOR_HOST) selects an emulator, without credentials.
    `timeouts` are given per request: short for metadata, scaled to size for packs."""
    if not bucket:
        raise ConfigError("no GCS bucket given (GCP_BUCKET or gs://bucket/prefix)")
    return GCSRemote(make_client(project, credentials_file, endpoint), bucket, prefix, timeouts)


def make_client(project: str | None, credentials_file: str | None, endpoint: str | None) -> storage.Client:
    client = _new_client(project, credentials_file, endpoint)
    # google-cloud-storage >= 3.x fetches each bucket's metadata in a background thread (for
    # tracing attributes), with its default 120 s retry: an extra request we neither need nor count
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)  # one connection per upload thread
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


def _new_client(project: str | None, credentials_file: str | None, endpoint: str | None) -> storage.Client:
    if endpoint:
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        return storage.Client(project=project or "casstore", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": url})
    try:
        if credentials_file:
            credentials, file_project = google.auth.load_credentials_from_file(credentials_file, scopes=SCOPES)
            return storage.Client(project=project or file_project, credentials=credentials)
        return storage.Client(project=project or None)
    except auth_errors.GoogleAuthError as exc:
        raise AccessDenied(f"no usable Google credentials ({type(exc).__name__}): {CREDENTIALS_HINT}") from exc


class GCSRemote(CloudRemote):
    """Objects in one bucket below a key prefix, through a ready storage.Client."""

    def __init__(self, client: storage.Client, bucket: str, prefix: str = "", timeouts: Timeouts | None = None) -> None:
        self._client = client
        self._timeouts = timeouts or Timeouts()
        self._bucket = client.bucket(bucket)
        self.bucket = bucket
        self._keys = KeyPrefix(prefix)
        self.url = f"gs://{bucket}/{self._keys.prefix}"
        self.batch_deletes = True   # until the server shows it has no batch endpoint

    def create_bucket(self) -> list[str]:
        """The bucket with uniform bucket-level access and public access prevention enforced; GCS
        encrypts every object at rest."""
        bucket = self._client.bucket(self.bucket)
        bucket.iam_configuration.uniform_bucket_level_access_enabled = True
        bucket.iam_configuration.public_access_prevention = "enforced"
        with self._errors("", missing="bucket"):
            self._client.create_bucket(bucket, retry=None, timeout=self._timeout(0))
        return ["uniform bucket-level access", "public access prevention enforced",
                "encrypted at rest (Google-managed keys)"]

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        blob = self._bucket.blob(self._keys.full(key))
        generation = 0 if if_absent else None
        if if_match is not None:
            if not if_match.isdigit():
                raise ObjectExists(f"{self.url}{key}: {if_match!r} is not a GCS generation")
            generation = int(if_match)
        with self._errors(key, missing="bucket"):  # an upload never needs the object to exist
            blob.upload_from_string(data, content_type=OCTET_STREAM, if_generation_match=generation,
                                    retry=None, timeout=self._timeout(len(data)))
        return _info(key, blob)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        if length == 0:
            return self._empty_read(key, offset)
        blob = self._bucket.blob(self._keys.full(key))
        end = None if length is None else offset + length - 1
        try:
            with self._errors(key):
                # a whole-object download is checked against the stored CRC32C/MD5 by the library
                # (DataCorruption, retried); a range has no stored checksum: the caller verifies it
                data = blob.download_as_bytes(start=offset or None, end=end, retry=None,
                                              timeout=self._timeout(length, large=large))
        except RangeNotSatisfiable:
            self._drop_idle_connections()
            return self._empty_read(key, offset)
        return self._exact(data, key, offset, length)

    def _timeout(self, size: int | None, *, large: bool = False) -> tuple[float, float]:
        return self._timeouts.connect, self._timeouts.for_request(size, large=large)

    def _drop_idle_connections(self) -> None:
        # fake-gcs-server closes the connection after a 416 without saying so; a request reusing
        # it would fail. A real 416 is rare (reads at or past the end), so reconnecting is cheap.
        for adapter in self._client._http.adapters.values():
            adapter.close()

    def _stat(self, key: str) -> ObjectInfo:
        blob = self._bucket.blob(self._keys.full(key))
        with self._errors(key):
            blob.reload(retry=None, timeout=self._timeout(0))
        return _info(key, blob)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        blobs = self._client.list_blobs(self._bucket, prefix=self._keys.full(prefix), fields=_LIST_FIELDS,
                                        retry=None, timeout=self._timeout(0))
        tokens = PageTokens(f"{self.url}{prefix}")
        with self._errors(prefix, missing="bucket"):  # listing a prefix with no objects is no 404
            for page in blobs.pages:
                for blob in page:
                    key = self._keys.strip(blob.name)
                    if is_repository_key(key):
                        yield _info(key, blob)
                tokens.advance(blobs.next_page_token)

    def _delete(self, key: str) -> None:
        blob = self._bucket.blob(self._keys.full(key))
        with suppress(ObjectNotFound), self._errors(key):  # missing is success, as on S3
            blob.delete(retry=None, timeout=self._timeout(0))

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        """JSON API batches of 100 deletions, each answer checked (404 is no error). A server
        without the batch endpoint (fake-gcs-server) answers the batch request itself with an
        error: then this remote deletes one key per request from then on."""
        errors: dict[str, RemoteError] = {}
        for batch in batches(keys, DELETE_BATCH):
            answers = self._batch_delete(batch) if self.batch_deletes else None
            if answers is None:
                errors.update(delete_each(self._delete, batch))
                continue
            for key, answer in zip(batch, answers, strict=True):
                error = batch_item_error(answer.status_code, f"{self.url}{key}", answer.reason or "")
                if error is not None:
                    errors[key] = error
        return errors

    def _batch_delete(self, batch: list[str]) -> list[Any] | None:
        """The answers to one batch of deletions, or None when the server has no batch endpoint
        (it refuses the batch request, or answers it with something that is not a batch answer,
        as fake-gcs-server does: "not multi-part"). Deleting is idempotent, so falling back to one
        request per key after such an answer is safe whatever the server did with it."""
        try:
            with self._errors(batch[0]), self._client.batch(raise_exception=False) as deferred:
                for key in batch:
                    self._bucket.blob(self._keys.full(key)).delete(retry=None, timeout=self._timeout(0))
        except (ValueError, RemoteError) as exc:
            if isinstance(exc, TransientError | AccessDenied | BucketNotFound):
                raise
            log.info("%s: no batch endpoint (%s); deleting one key per request", self.url, exc)
            self.batch_deletes = False
            return None
        return list(deferred._responses)

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _errors(self, key: str, missing: str = "object") -> Iterator[None]:
        try:
            yield
        except _SDK_ERRORS as exc:
            raise translate(exc, self.bucket, f"{self.url}{key}", missing) from exc


def translate(exc: Exception, bucket: str, where: str, missing: str = "object") -> RemoteError:
    """The casstore error for a google-cloud-storage exception.

    `missing` says what a 404 means where the API cannot tell: "bucket" for uploads and listings
    (they need no object), "object" elsewhere unless the message names the bucket.
    """
    if isinstance(exc, InvalidResponse) and getattr(exc, "response", None) is not None:
        exc = api.from_http_status(exc.response.status_code, str(exc))
    if isinstance(exc, api.NotFound):
        if missing == "bucket" or "bucket does not exist" in str(exc.message).lower():
            return BucketNotFound(f"bucket {bucket} does not exist ({where})")
        return ObjectNotFound(where)
    if isinstance(exc, api.RequestRangeNotSatisfiable):
        return RangeNotSatisfiable(f"{where}: range starts past the end of the object")
    if isinstance(exc, api.PreconditionFailed | api.Conflict):
        return ObjectExists(f"{where}: precondition failed ({exc.code})")
    if isinstance(exc, api.Unauthorized | api.Forbidden | auth_errors.DefaultCredentialsError
                  | auth_errors.RefreshError):
        return AccessDenied(f"{where}: access denied ({_describe(exc)}); {CREDENTIALS_HINT}")
    if isinstance(exc, _transient_types()):
        return TransientError(f"{where}: {_describe(exc)}")
    return RemoteError(f"{where}: {_describe(exc)}")


def _transient_types() -> tuple[type[BaseException], ...]:
    return (api.TooManyRequests, api.ServerError, api.DeadlineExceeded, api.RetryError,
            requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError, auth_errors.TransportError, DataCorruption)


def _describe(exc: Exception) -> str:
    if isinstance(exc, api.GoogleAPICallError):
        return f"{exc.code} {exc.message}".strip()
    return f"{type(exc).__name__}: {exc}"


def _info(key: str, blob: Any) -> ObjectInfo:
    stamp = blob.updated or blob.time_created
    return ObjectInfo(key, int(blob.size or 0), stamp.timestamp() if stamp else 0.0, str(blob.generation))


