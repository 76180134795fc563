"""Timeouts that fit the request (issue 20, item 4): a stalled answer is cut after the configured
read timeout (not the SDK's 60 s), packs get a timeout scaled to their size, and one operation's
retries stop at its deadline. A provider checksum (Azure's stored Content-MD5) is compared."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from casstore.client import Repository
from casstore.errors import RemoteError, TransientError
from casstore.format import layout
from casstore.remotes.base import Remote
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.timeouts import Timeouts
from casstore.remotes.wrappers import RemoteWrapper, RetryingRemote
from casstore.settings import load_settings
from tests.servers import AzureServer, GCSServer, S3Server
from tests.sync_helpers import local_repo, make_source

SHORT = Timeouts(connect=1.0, read=0.5, min_rate=1024 * 1024)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections, reads requests and never answers (a stalled store)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def _open(kind: str, endpoint: str):  # noqa: ANN202 - a Remote
    if kind == "s3":
        from casstore.remotes.s3 import open_s3

        return open_s3("bucket", "", endpoint_url=f"http://{endpoint}", region="us-east-1", access_key_id="k",
                       secret_access_key="s", timeouts=SHORT)
    if kind == "gs":
        from casstore.remotes.gcs import open_gcs

        return open_gcs("bucket", "", project="p", endpoint=f"http://{endpoint}", timeouts=SHORT)
    from casstore.remotes.azure import open_azure

    conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            f"BlobEndpoint=http://{endpoint}/devstoreaccount1;")
    return open_azure("container", "", connection_string=conn, timeouts=SHORT)


@pytest.mark.parametrize("kind", ["s3", "gs", "az"])
def test_a_stalled_answer_is_cut_by_the_configured_read_timeout(silent_server, kind):
    remote = _open(kind, silent_server)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            remote.get("config")
        except BaseException as exc:   # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)     # the SDKs' own default would wait 60 s per attempt
    assert not reader.is_alive(), "a stalled answer was waited out past the configured read timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], TransientError), outcome
    remote.close()


def test_a_request_timeout_is_scaled_to_its_size_or_else_to_the_callers_hint():
    t = Timeouts(connect=2, read=10, min_rate=1024 * 1024)
    assert t.for_request(None) == 10
    assert t.for_request(16 * 1024 * 1024) == 10 + 16
    assert t.for_request(16 * 1024 * 1024, large=True) == 10 + 16    # a known size wins over the hint
    assert t.for_request(None, large=True) > t.for_request(1024)
    assert not t.is_long(1024) and t.is_long(16 * 1024 * 1024)


class SlowProxy:
    """A TCP proxy in front of a real store that holds each answer for `delay` seconds (a slow store)."""

    def __init__(self, endpoint: str, delay: float) -> None:
        self.upstream, self.delay = urlsplit(endpoint).netloc, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return      # closed
            host, _, port = self.upstream.partition(":")
            server = socket.create_connection((host, int(port)))
            self.sockets += [client, server]
            asked = threading.Event()
            threading.Thread(target=self._pump, args=(client, server, asked, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, asked, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, asked: threading.Event, answers: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if answers and asked.is_set():
                    time.sleep(self.delay)      # the first bytes of each answer come late
                    asked.clear()
                elif not answers:
                    asked.set()
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _open_through(kind: str, request: pytest.FixtureRequest, delay: float) -> tuple[Remote, Remote, SlowProxy]:
    """(a remote reached directly, the same store reached through a SlowProxy, the proxy)."""
    if kind == "s3":
        s3: S3Server = request.getfixturevalue("moto_server")
        bucket = s3.new_bucket()
        proxy = SlowProxy(s3.endpoint, delay)
        slow = replace(s3, endpoint=f"http://127.0.0.1:{proxy.port}")
        return s3.open(bucket), slow.open(bucket, timeouts=SHORT), proxy
    if kind == "gs":
        gcs: GCSServer = request.getfixturevalue("gcs_server")
        bucket = gcs.new_bucket()
        proxy = SlowProxy(gcs.endpoint, delay)
        return gcs.open(bucket), replace(gcs, endpoint=f"http://127.0.0.1:{proxy.port}").open(
            bucket, timeouts=SHORT), proxy
    azure: AzureServer = request.getfixturevalue("azurite_server")
    container = azure.new_container()
    proxy = SlowProxy(azure.endpoint, delay)
    slow = replace(azure, connection_string=azure.connection_string.replace(proxy.upstream, f"127.0.0.1:{proxy.port}"))
    return azure.open(container), slow.open(container, timeouts=SHORT), proxy


@pytest.mark.parametrize("kind", ["s3", "gs", "az"])
def test_a_read_hinted_large_waits_for_a_slow_answer_that_cuts_an_unhinted_one(kind, request):
    # the store answers 2 s late: past the short read timeout (0.5 s), well within a large read's (32 s)
    direct, slow, proxy = _open_through(kind, request, delay=2.0)
    try:
        direct.put("data/ab/abcd", b"pack bytes" * 100)
        direct.put("config", b"config bytes")
        assert slow.get("config", large=True) == b"config bytes"      # the hint, not the key, decides
        with pytest.raises(TransientError):
            slow.get("data/ab/abcd")
    finally:
        slow.close()
        direct.close()
        proxy.close()


def test_settings_carry_timeouts_to_every_backend():
    s = load_settings({}, environ={"CASSTORE_READ_TIMEOUT": "3s", "CASSTORE_CONNECT_TIMEOUT": "2s",
                                   "CASSTORE_MIN_READ_RATE": "1M", "CASSTORE_REQUEST_DEADLINE": "30s",
                                   "CASSTORE_CACHE_MAX": "2G"}, dotenv_path="/nonexistent")
    assert s.request_deadline == 30 and s.cache_max_bytes == 2 * 1024 ** 3
    for options in s.remote_options().values():
        assert Timeouts(**options["timeouts"]) == Timeouts(connect=2, read=3, min_rate=1024 * 1024)


class AlwaysBusy(MemoryRemote):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self.calls += 1
        raise TransientError("503 SlowDown")


def test_retries_stop_at_the_operation_deadline():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    inner = AlwaysBusy()
    remote = RetryingRemote(inner, attempts=1000, base_delay=1.0, max_delay=4.0, deadline=20.0, sleep=sleep,
                            jitter=lambda: 1.0, clock=lambda: now[0])
    with pytest.raises(TransientError, match="deadline") as raised:
        remote.get("config")
    assert now[0] <= 20.0 < now[0] + 4.0        # waited up to the deadline, not past it
    assert 3 < inner.calls < 1000
    assert "503 SlowDown" in str(raised.value)


def test_azure_whole_blob_reads_are_compared_with_the_stored_content_md5(azurite_remote, monkeypatch):
    from azure.storage.blob import StorageStreamDownloader

    azurite_remote.put("snapshots/abc", b"manifest bytes" * 100)
    assert azurite_remote.get("snapshots/abc") == b"manifest bytes" * 100
    original = StorageStreamDownloader.readall

    def damaged(self: StorageStreamDownloader) -> bytes:
        data = bytearray(original(self))
        data[5] ^= 1
        return bytes(data)

    monkeypatch.setattr(StorageStreamDownloader, "readall", damaged)
    with pytest.raises(TransientError, match="Content-MD5"):
        azurite_remote.get("snapshots/abc")
    with pytest.raises(RemoteError):
        RetryingRemote(azurite_remote, attempts=2, base_delay=0.01).get("snapshots/abc")


class RecordingRemote(RemoteWrapper):
    """Records the key and the `large` hint of every read that reaches the storage."""

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self.reads: list[tuple[str, bool, bool]] = []     # (key, whole object, large)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self.reads.append((key, offset == 0 and length is None, large))
        return super()._get(key, offset, length, large=large)


def test_pack_reads_through_the_repository_carry_the_large_hint_and_nothing_else_does(memory_remote, tmp_path):
    source = make_source(tmp_path / "data", n_json=6, big_mib=1)
    writer = local_repo(tmp_path / "repo")
    writer.snapshot(str(source))
    writer.sync(memory_remote)
    writer.close()
    recording = RecordingRemote(memory_remote)
    repo = Repository.open_remote(recording, load_settings({"cache_dir": str(tmp_path / "cache")}))
    assert repo.restore("latest", str(tmp_path / "out")).ok      # blob reads (ranges of packs)
    assert repo.check(read_data=True).ok                          # whole-pack reads
    repo.close()
    packs = [read for read in recording.reads if read[0].startswith(layout.DATA_PREFIX)]
    others = [read for read in recording.reads if not read[0].startswith(layout.DATA_PREFIX)]
    assert {whole for _, whole, _ in packs} == {True, False} and others    # ranges and whole packs were read
    assert [read for read in packs if not read[2]] == []
    assert [read for read in others if read[2]] == []
