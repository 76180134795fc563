"""AWS S3 and S3-compatible stores (SeaweedFS, MinIO, Ceph, ...) through boto3.

Every put is one PutObject: conditional create is `IfNoneMatch="*"`, compare-and-swap is
`IfMatch=<etag>`, each with Content-MD5 so the store verifies the bytes it received. botocore's
own retries are off: `casstore.remotes.wrappers.RetryingRemote` is the one place that retries.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

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
from casstore.remotes.cloud import CloudRemote, PageTokens, batches, is_repository_key, unquote
from casstore.remotes.prefixed import KeyPrefix
from casstore.remotes.timeouts import PACK_SIZE_GUESS, Timeouts

OCTET_STREAM = "application/octet-stream"
DELETE_BATCH = 1000   # keys one DeleteObjects request takes
CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, the IAM role) and bucket policy"

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "401", "403"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
              "InternalError", "ServiceUnavailable", "OperationAborted", "429"}


class RangeNotSatisfiable(ObjectNotFound):
    """A ranged read starting at or past the end of the object (HTTP 416)."""


def open_s3(bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
            sse: str = "auto", kms_key_id: str | None = None, storage_class: str | None = None,
            profile: str | None = None, access_key_id: str | None = None, secret_access_key: str | None = None,
            session_token: str | None = None, timeouts: Timeouts | None = None) -> S3Remote:
    """An S3 remote. Credentials come from boto3's own chain unless given explicitly.

    `endpoint_url` selects an S3-compatible store (AWS_ENDPOINT_URL). `sse="auto"` asks AWS for
    SSE-S3 and sends nothing to custom endpoints; `kms_key_id` selects SSE-KMS. `storage_class`
    applies to puts hinted `cold` (the blob store's packs) only: indexes and snapshots stay hot.
    `timeouts`: botocore sets them per client, so large requests (reads hinted `large`, puts too
    big for the short timeout) go through a second client whose read timeout is scaled to a
    pack's size (casstore.remotes.timeouts).
    """
    timeouts = timeouts or Timeouts()
    if not bucket:
        raise ConfigError("no S3 bucket given (AWS_S3_BUCKET or s3://bucket/prefix)")
    try:
        session = boto3.session.Session(profile_name=profile or None, aws_access_key_id=access_key_id or None,
                                        aws_secret_access_key=secret_access_key or None,
                                        aws_session_token=session_token or None)
        clients = [session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                  config=client_config(custom_endpoint=bool(endpoint_url), connect_timeout=
                                                       timeouts.connect, read_timeout=read_timeout))
                   for read_timeout in (timeouts.read, timeouts.for_size(PACK_SIZE_GUESS))]
    except ProfileNotFound as exc:
        raise ConfigError(f"AWS profile {profile!r} not found (AWS_PROFILE)") from exc
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise ConfigError(f"AWS_ENDPOINT_URL {endpoint_url!r} is not a usable URL ({exc})") from exc
    return S3Remote(clients[0], bucket, prefix, put_args=encryption_args(sse, kms_key_id, bool(endpoint_url)),
                    storage_class=storage_class, pack_client=clients[1], timeouts=timeouts)


def client_config(*, custom_endpoint: bool, connect_timeout: float = 5.0, read_timeout: float = 15.0) -> Config:
    return Config(
        # total_max_attempts counts the first request; the legacy "max_attempts" counts retries only
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=16,
        # Content-MD5 is sent explicitly; botocore's default trailing checksums trip some S3 clones
        request_checksum_calculation="when_required",
        s3={"addressing_style": "path"} if custom_endpoint else None,
        # the endpoint is a casstore setting (AWS_ENDPOINT_URL, passed in), decided in one place
        ignore_configured_endpoint_urls=True,
    )


def encryption_args(sse: str | None, kms_key_id: str | None, custom_endpoint: bool) -> dict[str, str]:
    """PutObject arguments requesting server-side encryption (CASSTORE_S3_SSE, CASSTORE_S3_KMS_KEY_ID)."""
    mode = (sse or "none").strip()
    if kms_key_id:
        if mode not in ("auto", "aws:kms"):
            raise ConfigError(f"CASSTORE_S3_KMS_KEY_ID needs SSE 'aws:kms', not {mode!r}")
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    if mode == "auto":
        return {} if custom_endpoint else {"ServerSideEncryption": "AES256"}
    if mode in ("AES256", "aws:kms"):
        return {"ServerSideEncryption": mode}
    if mode.lower() in ("none", "off", ""):
        return {}
    raise ConfigError(f"CASSTORE_S3_SSE must be auto, AES256, aws:kms or none, not {mode!r}")


class S3Remote(CloudRemote):
    """Objects in one bucket below a key prefix, through a ready boto3 S3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, put_args: dict[str, str] | None = None,
                 storage_class: str | None = None, pack_client: Any = None, timeouts: Timeouts | None = None) -> None:
        self._client = client
        self._pack_client = pack_client or client    # the same API, a read timeout scaled to packs
        self._timeouts = timeouts or Timeouts()
        self.bucket = bucket
        self._keys = KeyPrefix(prefix)
        self._put_args = dict(put_args or {})
        self._storage_class = storage_class or None
        self.url = f"s3://{bucket}/{self._keys.prefix}"

    def create_bucket(self) -> list[str]:
        """The bucket, then public access blocked (all four settings) and default encryption SSE-S3."""
        region = self._client.meta.region_name
        location = {} if region in (None, "us-east-1") else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        blocked = dict.fromkeys(("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                 "RestrictPublicBuckets"), True)
        encryption = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
        with self._errors(""):
            self._client.create_bucket(Bucket=self.bucket, **location)
            self._client.put_public_access_block(Bucket=self.bucket, PublicAccessBlockConfiguration=blocked)
            self._client.put_bucket_encryption(Bucket=self.bucket, ServerSideEncryptionConfiguration=encryption)
        return ["public access blocked", "default encryption SSE-S3 (AES256)"]

    def setup_warnings(self) -> list[str]:
        """A versioned bucket keeps every deleted pack as a noncurrent version: gc frees nothing
        unless a lifecycle rule expires noncurrent versions."""
        try:
            if self._client.get_bucket_versioning(Bucket=self.bucket).get("Status") != "Enabled":
                return []
            rules = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                return []   # not allowed to ask: say nothing rather than guess
            rules = []
        except BotoCoreError:
            return []
        if any(r.get("Status") == "Enabled" and "NoncurrentVersionExpiration" in r for r in rules):
            return []
        return [f"bucket {self.bucket} is versioned and has no lifecycle rule expiring noncurrent versions: "
                "gc will free no space (add a NoncurrentVersionExpiration rule)"]

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        return self._put_object(key, data, if_absent=if_absent, if_match=if_match, storage_class=None)

    def _put_cold(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        return self._put_object(key, data, if_absent=if_absent, if_match=if_match, storage_class=self._storage_class)

    def _put_object(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    storage_class: str | None) -> ObjectInfo:
        args = {"Bucket": self.bucket, "Key": self._keys.full(key), "Body": data, "ContentType": OCTET_STREAM,
                "ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode(), **self._put_args}
        if storage_class:
            args["StorageClass"] = storage_class
        if if_absent:
            args["IfNoneMatch"] = "*"
        if if_match is not None:
            args["IfMatch"] = f'"{if_match}"'
        try:
            with self._errors(key):
                response = self._client_for(large=self._timeouts.is_long(len(data))).put_object(**args)
        except ObjectNotFound as exc:  # AWS answers If-Match on a missing key with NoSuchKey
            if if_match is None:
                raise
            raise ObjectExists(f"{self.url}{key}: no current object to compare-and-swap") from exc
        return ObjectInfo(key, len(data), _server_time(response), unquote(response.get("ETag")))

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        if length == 0:
            return self._empty_read(key, offset)
        args = {"Bucket": self.bucket, "Key": self._keys.full(key)}
        if offset or length is not None:
            args["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        try:
            with self._errors(key):
                data = self._client_for(large=large).get_object(**args)["Body"].read()
        except RangeNotSatisfiable:
            return self._empty_read(key, offset)
        return self._exact(data, key, offset, length)

    def _client_for(self, *, large: bool) -> Any:
        return self._pack_client if large else self._client

    def _stat(self, key: str) -> ObjectInfo:
        with self._errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._keys.full(key))
        return ObjectInfo(key, head["ContentLength"], head["LastModified"].timestamp(), unquote(head.get("ETag")))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._keys.full(prefix))
        tokens = PageTokens(f"{self.url}{prefix}")
        with self._errors(prefix):
            for page in pages:
                check_page(page, tokens)
                for item in page.get("Contents", ()):
                    info = self._listed(item)
                    if info is not None:
                        yield info

    def _listed(self, item: dict[str, Any]) -> ObjectInfo | None:
        key = self._keys.strip(item["Key"])
        if not is_repository_key(key):
            return None
        return ObjectInfo(key, item["Size"], item["LastModified"].timestamp(), unquote(item.get("ETag")))

    def _delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._keys.full(key))

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        """DeleteObjects, 1,000 keys a request (quiet: only failures are answered; S3 reports no
        error for a missing key). A request that fails as a whole raises."""
        errors: dict[str, RemoteError] = {}
        for batch in batches(keys, DELETE_BATCH):
            objects = [{"Key": self._keys.full(key)} for key in batch]
            with self._errors(batch[0]):
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            for item in response.get("Errors", ()):
                key = self._keys.strip(str(item.get("Key", ""))) or str(item.get("Key", ""))
                failed = {"Error": {"Code": item.get("Code", ""), "Message": item.get("Message", "")}}
                error = _from_error_response(ClientError(failed, "DeleteObjects"), self.bucket, f"{self.url}{key}")
                if not isinstance(error, ObjectNotFound):
                    errors[key] = error
        return errors

    def close(self) -> None:
        self._client.close()
        if self._pack_client is not self._client:
            self._pack_client.close()

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, self.bucket, f"{self.url}{key}") from exc


def check_page(page: dict[str, Any], tokens: PageTokens) -> None:
    """Refuse a listing page that would make a cut-short listing look complete."""
    if not page.get("IsTruncated"):
        return
    token = page.get("NextContinuationToken")
    if not token:
        raise RemoteError(f"{tokens.where}: listing truncated without a continuation token")
    tokens.advance(token)


def translate(exc: Exception, bucket: str, where: str) -> RemoteError:
    """The casstore error for a boto3/botocore exception. Messages carry no credentials."""
    if isinstance(exc, ClientError):
        return _from_error_response(exc, bucket, where)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDenied(f"{where}: no usable AWS credentials: {CREDENTIALS_HINT}")
    if isinstance(exc, HTTPClientError | IncompleteReadError):
        return TransientError(f"{where}: {type(exc).__name__}: {exc}")
    return RemoteError(f"{where}: {type(exc).__name__}: {exc}")


def _from_error_response(exc: ClientError, bucket: str, where: str) -> RemoteError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    detail = f"{code or status}: {error.get('Message') or 'no message'}"
    if code == "NoSuchBucket":
        return BucketNotFound(f"bucket {bucket} does not exist ({where})")
    if code == "InvalidRange" or status == 416:
        return RangeNotSatisfiable(f"{where}: range starts past the end of the object")
    if code in _NOT_FOUND:
        return ObjectNotFound(where)
    if code in _PRECONDITION or status == 412:
        return ObjectExists(f"{where}: precondition failed ({code})")
    if code == "RequestTimeTooSkewed":
        return AccessDenied(f"{where}: this machine's clock is too far from the server's; fix the clock")
    if code in _DENIED or status in (401, 403):
        return AccessDenied(f"{where}: access denied ({detail}); {CREDENTIALS_HINT}")
    if code in _TRANSIENT or status == 429 or status >= 500:
        return TransientError(f"{where}: {detail}")
    return RemoteError(f"{where}: {detail}")


def _server_time(response: dict[str, Any]) -> float:
    """When the store answered: its own clock, close to the object's LastModified."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()

