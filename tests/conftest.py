from __future__ import annotations

import os
import uuid

import pytest

from casstore.remotes.local import LocalRemote
from casstore.remotes.memory import MemoryRemote
from tests.remote_backends import REMOTE_BACKENDS

pytest_plugins = ["tests.conftest_cloud"]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch):
    """No test reads the developer's .env, cache or host name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CASSTORE_HOST", "testhost")
    for name in list(os.environ):
        if name.startswith(("CLOUD_PROVIDER", "AWS_S3_BUCKET", "GCP_BUCKET", "AZURE_CONTAINER")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CASSTORE_REMOTE", raising=False)
    monkeypatch.delenv("CASSTORE_REPOSITORY", raising=False)
    monkeypatch.delenv("CASSTORE_SOURCE", raising=False)


@pytest.fixture
def memory_remote():
    return MemoryRemote(name=uuid.uuid4().hex)


@pytest.fixture
def local_remote(tmp_path):
    return LocalRemote(str(tmp_path / "remote"))


@pytest.fixture(params=REMOTE_BACKENDS)
def remote(request):
    """A fresh, empty remote of each backend kind."""
    return request.getfixturevalue(request.param)
