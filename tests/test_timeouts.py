"""Timeouts that fit the request (issue 20, item 4): a stalled answer is cut after the configured
read timeout (not the SDK's 60 s), packs get a timeout scaled to their size, and one operation's
retries stop at its deadline. A provider checksum (Azure's stored Content-MD5) is compared."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from casstore.errors import RemoteError, TransientError
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.timeouts import Timeouts
from casstore.remotes.wrappers import RetryingRemote
from casstore.settings import load_settings

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


def test_pack_requests_get_a_read_timeout_scaled_to_their_size():
    t = Timeouts(connect=2, read=10, min_rate=1024 * 1024)
    assert t.for_key("index/ab", None) == 10
    assert t.for_key("data/ab/abcd", 16 * 1024 * 1024) == 10 + 16
    assert t.for_key("data/ab/abcd", None) > t.for_key("data/ab/abcd", 1024)


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
