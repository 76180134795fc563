"""The seed's `.env` works unchanged: sync with CLOUD_PROVIDER settings, then restore on a fresh
machine that has nothing but those settings (no local repository at all)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.sync_helpers import make_source, tree_digest


def _casstore(args: list[str], cwd, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "casstore.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _clean_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLOUD_", "CASSTORE_", "GCP_", "AZURE_"))}
    env["CASSTORE_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def _dotenv(server_kind: str, server, bucket: str) -> str:
    if server_kind == "aws":
        return (f"CLOUD_PROVIDER=aws\nAWS_S3_BUCKET={bucket}\nAWS_REGION={server.region}\n"
                f"AWS_ACCESS_KEY_ID={server.access_key}\nAWS_SECRET_ACCESS_KEY={server.secret_key}\n"
                f"AWS_ENDPOINT_URL={server.endpoint}\n")
    if server_kind == "gcp":
        return (f"CLOUD_PROVIDER=gcp\nGCP_BUCKET={bucket}\nGCP_PROJECT_ID={server.project}\n"
                f"STORAGE_EMULATOR_HOST={server.endpoint}\n")
    return (f"CLOUD_PROVIDER=azure\nAZURE_CONTAINER={bucket}\n"
            f"AZURE_STORAGE_CONNECTION_STRING={server.connection_string}\n")


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_seed_dotenv_sync_and_fresh_machine_restore(provider, tmp_path, request):
    fixture = {"aws": "seaweed_server", "gcp": "gcs_server", "azure": "azurite_server"}[provider]
    server = request.getfixturevalue(fixture)
    bucket = server.new_container() if provider == "azure" else server.new_bucket()
    dotenv = _dotenv(provider, server, bucket)
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir(), machine_b.mkdir()
    for machine in (machine_a, machine_b):
        (machine / ".env").write_text(dotenv)
    make_source(machine_a / "data")
    env = _clean_env(tmp_path)

    snap = _casstore(["snapshot"], machine_a, env)
    assert snap.returncode == 0, snap.stderr
    sync = _casstore(["sync"], machine_a, env)
    assert sync.returncode == 0, sync.stderr
    assert "1 snapshot(s)" in sync.stdout
    assert server_secret_not_in(dotenv, sync.stdout + sync.stderr)

    env_b = {**env, "CASSTORE_CACHE_DIR": str(tmp_path / "cache-b")}
    restored = _casstore(["restore", "latest", "./data"], machine_b, env_b)
    assert restored.returncode == 0, restored.stderr
    assert not (machine_b / ".casstore").exists()
    assert tree_digest(machine_b / "data") == tree_digest(machine_a / "data")


def server_secret_not_in(dotenv: str, output: str) -> bool:
    secrets = [line.split("=", 1)[1] for line in dotenv.splitlines()
               if line.startswith(("AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING"))]
    return not any(secret in output for secret in secrets)


def test_bad_credentials_are_one_clear_line(seaweed_server, tmp_path):
    bucket = seaweed_server.new_bucket()
    (tmp_path / ".env").write_text(
        f"CLOUD_PROVIDER=aws\nAWS_S3_BUCKET={bucket}\nAWS_REGION=us-east-1\nAWS_ACCESS_KEY_ID=wrong\n"
        f"AWS_SECRET_ACCESS_KEY=also-wrong-secret\nAWS_ENDPOINT_URL={seaweed_server.endpoint}\n")
    make_source(tmp_path / "data")
    env = _clean_env(tmp_path)
    # the first snapshot adopts the bucket's repository, so it is the first to reach the bucket
    for command in (["snapshot"], ["sync"]):
        result = _casstore(command, tmp_path, env)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("casstore: error:"), result.stderr
        assert "AWS_ACCESS_KEY_ID" in lines[0] and "also-wrong-secret" not in result.stderr
        assert not (tmp_path / ".casstore").exists(), "a failed first snapshot creates nothing"


def test_missing_bucket_variable_is_named(tmp_path):
    (tmp_path / ".env").write_text("CLOUD_PROVIDER=aws\n")
    make_source(tmp_path / "data")
    env = _clean_env(tmp_path)
    _casstore(["snapshot"], tmp_path, env)
    result = _casstore(["sync"], tmp_path, env)
    assert result.returncode == 2
    assert "AWS_S3_BUCKET" in result.stderr and "Traceback" not in result.stderr
