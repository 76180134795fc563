"""Cloud remotes beyond the shared contract: errors, credentials, SDK settings, wrappers."""

from __future__ import annotations

import datetime
import http.server
import os
import secrets
import threading
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from casstore.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    RemoteError,
    TransientError,
)
from casstore.remotes import open_remote
from casstore.remotes.base import ObjectInfo
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.s3 import S3Remote, encryption_args, open_s3
from casstore.remotes.wrappers import CountingRemote, RetryingRemote
from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY, free_port, unique_name

CLOUD_REMOTES = ["moto_remote", "seaweed_remote", "azurite_remote", "gcs_remote"]
CLOUD_SERVERS = ["moto_server", "seaweed_server", "azurite_server", "gcs_server"]
MiB = 1024 * 1024


@pytest.fixture(params=CLOUD_REMOTES)
def cloud_remote(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=CLOUD_SERVERS)
def cloud_server(request):
    return request.param, request.getfixturevalue(request.param)


# --- every backend: edges of ranged reads the clouds answer with 416 or short data ---------------


def test_reads_at_the_end_of_an_object(remote):
    remote.put("data/00/ten", b"0123456789")
    remote.put("data/00/empty", b"")
    assert remote.get("data/00/ten", 10) == b""
    assert remote.get("data/00/ten", 10, 0) == b""
    assert remote.get("data/00/ten", 3, 0) == b""
    assert remote.get("data/00/empty", 0, 0) == b""
    with pytest.raises(ObjectNotFound):
        remote.get("data/00/ten", 11)
    with pytest.raises(ObjectNotFound):
        remote.get("data/00/ten", 10, 1)
    with pytest.raises(ObjectNotFound):
        remote.get("data/00/empty", 0, 1)
    with pytest.raises(ObjectNotFound):
        remote.get("data/00/missing", 0, 0)


def test_compare_and_swap_on_a_missing_object_loses(remote):
    etag = remote.put("gc/lease", b"a").etag
    remote.delete("gc/lease")
    with pytest.raises(ObjectExists):
        remote.put("gc/lease", b"b", if_match=etag)
    assert not remote.exists("gc/lease")


def test_put_reports_what_stat_reports(remote):
    info = remote.put("snapshots/s1", b"abc")
    stat = remote.stat("snapshots/s1")
    assert (info.size, info.etag) == (stat.size, stat.etag)
    assert abs(info.mtime - stat.mtime) < 5


# --- cloud servers ------------------------------------------------------------------------------


def test_large_conditional_create_is_refused_the_second_time(cloud_remote):
    # above 8 MiB google-cloud-storage would switch to resumable uploads, whose preconditions
    # fake-gcs-server ignores: the backend must keep big puts in one request
    first, second = os.urandom(9 * MiB), os.urandom(9 * MiB)
    info = cloud_remote.put("data/aa/big", first, if_absent=True)
    with pytest.raises(ObjectExists):
        cloud_remote.put("data/aa/big", second, if_absent=True)
    with pytest.raises(ObjectExists):
        cloud_remote.put("data/aa/big", second, if_match="1")
    assert cloud_remote.get("data/aa/big", 8 * MiB, 16) == first[8 * MiB:8 * MiB + 16]
    cloud_remote.put("data/aa/big", second, if_match=info.etag)
    assert cloud_remote.get("data/aa/big") == second


def test_missing_bucket_is_bucket_not_found(cloud_server):
    name, server = cloud_server
    remote = server.open(unique_name("missing"), "casstore/")
    with pytest.raises(BucketNotFound, match="does not exist"):
        remote.put("config", b"x")
    with pytest.raises(BucketNotFound, match="does not exist"):
        list(remote.list("snapshots/"))
    if name != "gcs_server":  # fake-gcs-server answers a plain 404 for a read in a missing bucket
        with pytest.raises(BucketNotFound, match="does not exist"):
            remote.get("config")


def test_seaweedfs_wrong_secret_is_access_denied(seaweed_server):
    bucket = seaweed_server.new_bucket()
    wrong = f"wrong-{secrets.token_hex(8)}"
    remote = open_s3(bucket, "casstore/", endpoint_url=seaweed_server.endpoint,
                     access_key_id=seaweed_server.access_key, secret_access_key=wrong)
    calls = [lambda: remote.put("config", b"x"), lambda: remote.get("config"), lambda: remote.stat("config"),
             lambda: list(remote.list("index/"))]
    for call in calls:
        with pytest.raises(AccessDenied) as caught:
            call()
        message = str(caught.value)
        assert "AWS_SECRET_ACCESS_KEY" in message and "AWS_ACCESS_KEY_ID" in message
        assert wrong not in message and seaweed_server.secret_key not in message


def test_seaweedfs_unknown_access_key_is_access_denied(seaweed_server):
    remote = open_s3(seaweed_server.new_bucket(), "", endpoint_url=seaweed_server.endpoint,
                     access_key_id="nobody", secret_access_key="nothing")
    with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
        remote.put("config", b"x")


def test_azurite_wrong_account_key_is_access_denied(azurite_server):
    container = azurite_server.new_container()
    bad_key = AZURITE_KEY.replace("Eby8", "Xby8")
    remote = open_remote(f"az://{container}/casstore",
                         connection_string=azurite_server.connection_string.replace(AZURITE_KEY, bad_key))
    with pytest.raises(AccessDenied, match="AZURE_STORAGE_CONNECTION_STRING") as caught:
        list(remote.list(""))
    assert bad_key not in str(caught.value)


def test_malformed_azure_connection_string_is_a_config_error():
    with pytest.raises(ConfigError, match="AZURE_STORAGE_CONNECTION_STRING"):
        open_remote("az://container/p", connection_string="not a connection string")


def test_open_remote_by_url_reaches_each_cloud(moto_server, azurite_server, gcs_server):
    remotes = [
        open_remote(f"s3://{moto_server.new_bucket()}/a/b", endpoint_url=moto_server.endpoint,
                    access_key_id="testing", secret_access_key="testing"),
        open_remote(f"az://{azurite_server.new_container()}/a/b", connection_string=azurite_server.connection_string),
        open_remote(f"gs://{gcs_server.new_bucket()}/a/b", endpoint=gcs_server.endpoint, project="p"),
    ]
    for remote in remotes:
        remote.put("config", b"c")
        assert [info.key for info in remote.list("")] == ["config"]
        assert remote.url.endswith("/a/b/")
        remote.close()


def test_s3_prefix_isolates_and_puts_ask_for_encryption_and_class(moto_server):
    bucket = moto_server.new_bucket()
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="elsewhere/config", Body=b"foreign")
    client.put_object(Bucket=bucket, Key="casstore/data/NOT-A-KEY", Body=b"foreign")
    remote = moto_server.open(bucket, "casstore", sse="AES256", storage_class="STANDARD_IA")
    remote.put("data/aa/pack", b"p", cold=True)
    remote.put("index/one", b"i")
    assert sorted(info.key for info in remote.list("")) == ["data/aa/pack", "index/one"]
    pack = client.head_object(Bucket=bucket, Key="casstore/data/aa/pack")
    index = client.head_object(Bucket=bucket, Key="casstore/index/one")
    assert pack["ContentType"] == "application/octet-stream"
    assert pack["ServerSideEncryption"] == index["ServerSideEncryption"] == "AES256"
    assert pack.get("StorageClass") == "STANDARD_IA" and index.get("StorageClass") is None


def test_s3_encryption_settings():
    assert encryption_args("auto", None, custom_endpoint=False) == {"ServerSideEncryption": "AES256"}
    assert encryption_args("auto", None, custom_endpoint=True) == {}
    assert encryption_args("none", None, custom_endpoint=False) == {}
    assert encryption_args("aws:kms", None, custom_endpoint=True) == {"ServerSideEncryption": "aws:kms"}
    assert encryption_args("auto", "key-1", custom_endpoint=False) == {"ServerSideEncryption": "aws:kms",
                                                                        "SSEKMSKeyId": "key-1"}
    with pytest.raises(ConfigError):
        encryption_args("AES256", "key-1", custom_endpoint=False)
    with pytest.raises(ConfigError):
        encryption_args("rot13", None, custom_endpoint=False)


# --- listings that end early must never look complete ------------------------------------------


def _stubbed_s3() -> tuple[S3Remote, Stubber]:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    return S3Remote(client, "bkt", "p/"), Stubber(client)


def _page(keys: list[str], truncated: bool, token: str | None = None) -> dict:
    stamp = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    page = {"IsTruncated": truncated, "KeyCount": len(keys),
            "Contents": [{"Key": f"p/{key}", "Size": 1, "LastModified": stamp, "ETag": '"e"'} for key in keys]}
    if token:
        page["NextContinuationToken"] = token
    return page


def test_s3_truncated_page_without_token_raises():
    remote, stubber = _stubbed_s3()
    stubber.add_response("list_objects_v2", _page(["index/a"], truncated=True), {"Bucket": "bkt", "Prefix": "p/index/"})
    with stubber, pytest.raises(RemoteError, match="continuation token"):
        list(remote.list("index/"))


def test_s3_continuation_token_that_does_not_advance_raises():
    remote, stubber = _stubbed_s3()
    stubber.add_response("list_objects_v2", _page(["index/a"], True, "t1"))
    stubber.add_response("list_objects_v2", _page(["index/b"], True, "t1"))
    with stubber, pytest.raises(RemoteError):
        list(remote.list("index/"))


def test_s3_listing_follows_tokens_to_the_end():
    remote, stubber = _stubbed_s3()
    stubber.add_response("list_objects_v2", _page(["index/a"], True, "t1"))
    stubber.add_response("list_objects_v2", _page(["index/b"], False),
                         {"Bucket": "bkt", "Prefix": "p/index/", "ContinuationToken": "t1"})
    with stubber:
        assert [info.key for info in remote.list("index/")] == ["index/a", "index/b"]


# --- SDK retries are off: one request, then TransientError, never a long hang -------------------


class _Unavailable(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        body = b"busy"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    _Unavailable.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["s3", "gs", "az"])
def test_server_errors_are_transient_and_not_retried_by_the_sdk(unavailable_server, scheme):
    options = {
        "s3": {"endpoint_url": unavailable_server, "access_key_id": "x", "secret_access_key": "y"},
        "gs": {"endpoint": unavailable_server},
        "az": {"connection_string": f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                                    f"AccountKey={AZURITE_KEY};BlobEndpoint={unavailable_server}/{AZURITE_ACCOUNT};"},
    }[scheme]
    remote = open_remote(f"{scheme}://bucket-x/p", **options)
    with pytest.raises(TransientError):
        remote.get("config")
    assert len(_Unavailable.requests) == 1


# --- error translation tables --------------------------------------------------------------------


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, ObjectNotFound), ("404", 404, ObjectNotFound), ("NoSuchBucket", 404, BucketNotFound),
    ("PreconditionFailed", 412, ObjectExists), ("ConditionalRequestConflict", 409, ObjectExists),
    ("AccessDenied", 403, AccessDenied), ("SignatureDoesNotMatch", 403, AccessDenied),
    ("SlowDown", 503, TransientError), ("InternalError", 500, TransientError), ("", 429, TransientError),
    ("InvalidArgument", 400, RemoteError),
])
def test_s3_error_translation(code, status, expected):
    from casstore.remotes.s3 import translate

    exc = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")
    assert type(translate(exc, "bkt", "s3://bkt/k")) is expected


def test_gcs_and_azure_error_translation():
    from azure.core.exceptions import HttpResponseError, ServiceRequestError
    from google.api_core import exceptions as api

    from casstore.remotes import azure, gcs

    assert type(gcs.translate(api.ServiceUnavailable("x"), "b", "gs://b/k")) is TransientError
    assert type(gcs.translate(api.TooManyRequests("x"), "b", "gs://b/k")) is TransientError
    assert type(gcs.translate(api.Forbidden("x"), "b", "gs://b/k")) is AccessDenied
    assert type(gcs.translate(api.NotFound("x"), "b", "gs://b/k")) is ObjectNotFound
    assert type(gcs.translate(api.NotFound("The specified bucket does not exist."), "b", "k")) is BucketNotFound
    assert type(gcs.translate(api.PreconditionFailed("x"), "b", "gs://b/k")) is ObjectExists
    busy = HttpResponseError(message="Server busy")
    busy.status_code, busy.error_code = 503, "ServerBusy"
    assert type(azure.translate(busy, "c", "az://c/k")) is TransientError
    assert type(azure.translate(ServiceRequestError("connection refused"), "c", "az://c/k")) is TransientError


# --- wrappers ------------------------------------------------------------------------------------


class FlakyRemote(MemoryRemote):
    """Fails the next `failures` calls of each method with TransientError; counts every call."""

    def __init__(self, failures: int = 0, *, fail_after_put: bool = False) -> None:
        super().__init__()
        self.failures = {"put": failures, "get": failures, "stat": failures, "list": failures}
        self.fail_after_put = fail_after_put
        self.calls = {"put": 0, "get": 0, "stat": 0, "list": 0}

    def _flake(self, method: str) -> None:
        self.calls[method] += 1
        if self.failures[method] > 0:
            self.failures[method] -= 1
            raise TransientError(f"{method}: 503 SlowDown")

    def _put(self, key, data, *, if_absent, if_match) -> ObjectInfo:
        if self.fail_after_put and self.failures["put"] > 0:
            super()._put(key, data, if_absent=if_absent, if_match=if_match)  # lands, then the answer is lost
        self._flake("put")
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _get(self, key, offset, length, *, large) -> bytes:
        self._flake("get")
        return super()._get(key, offset, length, large=large)

    def _list(self, prefix) -> Iterator[ObjectInfo]:
        infos = list(super()._list(prefix))
        self.calls["list"] += 1
        for number, info in enumerate(infos):
            if number == 2 and self.failures["list"] > 0:
                self.failures["list"] -= 1
                raise TransientError("connection reset while listing")
            yield info


def test_retrying_remote_retries_transient_errors_with_growing_delays():
    sleeps: list[float] = []
    inner = FlakyRemote(failures=3)
    remote = RetryingRemote(inner, attempts=5, base_delay=0.1, max_delay=0.3, sleep=sleeps.append, jitter=lambda: 1.0)
    remote.put("config", b"c")
    assert inner.calls["put"] == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])


def test_retrying_remote_does_not_retry_answers():
    inner = FlakyRemote()
    remote = RetryingRemote(inner, sleep=lambda _: None)
    with pytest.raises(ObjectNotFound):
        remote.get("missing")
    assert inner.calls["get"] == 1
    remote.put("gc/lease", b"a", if_absent=True)
    with pytest.raises(ObjectExists):
        remote.put("gc/lease", b"b", if_absent=True)
    assert inner.calls["put"] == 2


def test_retrying_remote_gives_up_after_its_attempts():
    inner = FlakyRemote(failures=10)
    with pytest.raises(TransientError):
        RetryingRemote(inner, attempts=3, sleep=lambda _: None).get("config")
    assert inner.calls["get"] == 3


def test_retried_conditional_create_that_landed_succeeds():
    inner = FlakyRemote(failures=1, fail_after_put=True)
    remote = RetryingRemote(inner, sleep=lambda _: None)
    info = remote.put("gc/lease", b"mine", if_absent=True)
    assert info.size == 4 and remote.get("gc/lease") == b"mine"
    inner.fail_after_put, inner.failures["put"] = False, 1
    with pytest.raises(ObjectExists):  # other bytes are stored: a real loss, not our own landed write
        remote.put("gc/lease", b"theirs", if_absent=True)


def test_retried_listing_yields_each_key_once():
    inner = FlakyRemote()
    for number in range(5):
        inner.put(f"index/{number}", b"i")
    inner.failures["list"] = 1
    listed = [info.key for info in RetryingRemote(inner, sleep=lambda _: None).list("index/")]
    assert sorted(listed) == [f"index/{number}" for number in range(5)]
    assert inner.calls["list"] == 2


def test_counting_remote_counts_calls_and_bytes():
    remote = CountingRemote(MemoryRemote())
    remote.put("data/aa/p", b"12345")
    remote.put("index/i", b"12")
    remote.get("data/aa/p", 1, 2)
    remote.exists("index/i")
    assert len(list(remote.list(""))) == 2
    remote.delete("index/i")
    with pytest.raises(ObjectNotFound):
        remote.get("index/i")
    assert remote.counts == {"put": 2, "get": 2, "stat": 1, "list": 1, "delete": 1}
    assert remote.total() == 7
    assert (remote.bytes_up, remote.bytes_down) == (7, 2)


def test_versioned_bucket_without_lifecycle_rule_is_warned_about(moto_server, caplog, tmp_path):
    import logging

    from casstore.settings import load_settings
    from casstore.sync.transfer import open_destination
    from tests.sync_helpers import local_repo, make_source

    client = moto_server.client()
    bucket = moto_server.new_bucket()
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    remote = moto_server.open(bucket, "casstore/")
    assert remote.setup_warnings() and "NoncurrentVersionExpiration" in remote.setup_warnings()[0]
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(make_source(tmp_path / "data")))
    with caplog.at_level(logging.WARNING):
        open_destination(remote, repo, load_settings({}))
    assert "versioned" in caplog.text
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": "expire-old", "Status": "Enabled", "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})
    assert remote.setup_warnings() == []
    plain = moto_server.open(moto_server.new_bucket(), "casstore/")
    assert plain.setup_warnings() == []


# -- delete_many: batches where the store has them (issue 11, item 8) -------------------------

def test_fake_gcs_server_has_no_batch_endpoint_so_delete_many_falls_back_to_one_key_a_request(gcs_remote):
    """fake-gcs-server answers a JSON API batch request with something that is not a batch answer
    ("not multi-part"); the remote then deletes one key per request, and says so in `batch_deletes`."""
    keys = [f"data/0{i}/fallback{i}" for i in range(5)]
    for key in keys:
        gcs_remote.put(key, b"x")
    assert gcs_remote.batch_deletes
    assert gcs_remote.delete_many([*keys, "data/00/missing"]) == {}
    assert not gcs_remote.batch_deletes, "the batch endpoint answered: this test's premise changed"
    assert list(gcs_remote.list("data/")) == []
    gcs_remote.put(keys[0], b"x")
    assert gcs_remote.delete_many(keys[:1]) == {} and not gcs_remote.exists(keys[0])


class FailsOneKey(MemoryRemote):
    """A store where deleting `stuck` is refused, and `flaky` fails transiently `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.batches: list[list[str]] = []

    def _delete_many(self, keys):
        self.batches.append(list(keys))
        errors = {}
        for key in keys:
            if key == "data/00/stuck":
                errors[key] = AccessDenied(f"{key}: access denied")
            elif key == "data/00/flaky" and self.failures:
                self.failures -= 1
                errors[key] = TransientError(f"{key}: 503")
            else:
                self._delete(key)
        return errors


def test_delete_many_reports_each_failed_key_and_retries_only_the_transient_ones():
    inner = FailsOneKey(failures=2)
    for key in ("data/00/a", "data/00/stuck", "data/00/flaky"):
        inner.put(key, b"x")
    remote = RetryingRemote(inner, sleep=lambda _: None)
    errors = remote.delete_many(["data/00/a", "data/00/stuck", "data/00/flaky", "data/00/missing"])
    assert list(errors) == ["data/00/stuck"] and isinstance(errors["data/00/stuck"], AccessDenied)
    assert inner.batches[1:] == [["data/00/flaky"], ["data/00/flaky"]], "only the transient key is retried"
    assert [info.key for info in inner.list("data/")] == ["data/00/stuck"]


def test_a_local_delete_many_reports_the_key_it_could_not_delete(tmp_path, monkeypatch):
    from casstore.remotes.local import LocalRemote

    remote = LocalRemote(str(tmp_path / "r"))
    for key in ("index/a", "index/b"):
        remote.put(key, b"i")
    unlink = remote.fs.unlink

    def refuse_b(path):
        if path.endswith("/b"):
            raise PermissionError(13, "Permission denied")
        unlink(path)

    monkeypatch.setattr(remote.fs, "unlink", refuse_b)
    errors = remote.delete_many(["index/a", "index/b", "index/never"])
    assert list(errors) == ["index/b"] and "Permission denied" in str(errors["index/b"])
    assert [info.key for info in remote.list("index/")] == ["index/b"]
