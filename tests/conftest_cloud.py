"""Cloud fixtures (a pytest plugin, registered in tests/conftest.py).

Each server starts once per test session, on first use, and stops when the session ends:
`moto_server`, `seaweed_server` (S3Server), `azurite_server` (AzureServer), `gcs_server`
(GCSServer); each has `.env()` for tests that run casstore as a process, and makes fresh buckets.
The `*_remote` fixtures yield a fresh, empty remote in its own bucket or container, opened through
the backend's public `open_*` function below the key prefix REMOTE_PREFIX.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from casstore.remotes.base import Remote
from tests import servers
from tests.servers import AzureServer, GCSServer, S3Server

REMOTE_PREFIX = "casstore/"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = servers.start_moto(tmp_path_factory.mktemp("moto"))
    yield S3Server(server.endpoint)
    server.stop()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    access_key, secret_key = f"casstore{secrets.token_hex(4)}", secrets.token_hex(20)
    server = servers.start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), access_key, secret_key)
    yield S3Server(server.endpoint, access_key, secret_key)
    server.stop()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    server = servers.start_azurite(tmp_path_factory.mktemp("azurite"))
    yield AzureServer(server.endpoint, server.extra["connection_string"])
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    server = servers.start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield GCSServer(server.endpoint)
    server.stop()


def _opened(remote: Remote) -> Iterator[Remote]:
    yield remote
    remote.close()


@pytest.fixture
def moto_remote(moto_server: S3Server) -> Iterator[Remote]:
    yield from _opened(moto_server.open(moto_server.new_bucket(), REMOTE_PREFIX))


@pytest.fixture
def seaweed_remote(seaweed_server: S3Server) -> Iterator[Remote]:
    yield from _opened(seaweed_server.open(seaweed_server.new_bucket(), REMOTE_PREFIX))


@pytest.fixture
def azurite_remote(azurite_server: AzureServer) -> Iterator[Remote]:
    yield from _opened(azurite_server.open(azurite_server.new_container(), REMOTE_PREFIX))


@pytest.fixture
def gcs_remote(gcs_server: GCSServer) -> Iterator[Remote]:
    yield from _opened(gcs_server.open(gcs_server.new_bucket(), REMOTE_PREFIX))
