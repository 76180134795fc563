"""An encrypted repository synced to a real S3 server (moto on loopback), shared by two hosts with
their own passwords, collected by the lock-free gc, checked, served by the HTTP API and run by the
scheduler; and the bucket, scanned object by object, shows nothing readable."""

from __future__ import annotations

import functools
import json
import os

import httpx
import pytest

from casstore.client import Repository
from casstore.repo import keys
from casstore.settings import load_settings
from tests.helpers import file_contents, run_isolated
from tests.test_api import running_server
from tests.test_encryption import PASSWORD, assert_nothing_readable, encrypted_repo, make_source, needles_of

PASSWORD_B = "host b has a password of its own"


@pytest.fixture(autouse=True)
def _weak_kdf(monkeypatch):
    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    keys.forget_unlocked()
    yield
    keys.forget_unlocked()


cli = functools.partial(run_isolated, timeout=180)


def host_env(moto_server, url: str, host: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSTORE_PASSWORD")}
    return {**env, **moto_server.env(), "CASSTORE_REMOTE": url, "CASSTORE_HOST": host,
            "CASSTORE_PASSWORD": password, "CASSTORE_TEST_WEAK_KDF": "1", "CASSTORE_GRACE": "10s"}


def bucket_objects(moto_server, bucket: str) -> dict[str, bytes]:
    client = moto_server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_two_hosts_share_an_encrypted_bucket_and_it_shows_nothing_readable(moto_server, tmp_path):
    # about 25 s on a loaded 2-core machine: 16 CLI processes, each a Python start (issue 15's journey
    # in one bucket: splitting it would repeat the setup, the part that costs)
    bucket = moto_server.new_bucket()
    url = f"s3://{bucket}/casstore"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    source_a = make_source(a / "data")
    source_b = make_source(b / "data")
    (source_b / "only-on-host-b.txt").write_text("host b's own confidential words, many of them\n" * 50)
    env_a = host_env(moto_server, url, "hosta", PASSWORD)
    env_b = host_env(moto_server, url, "hostb", PASSWORD_B)

    cli(a, env_a, "init", "--encrypt")                   # creates the bucket's repository, encrypted
    cli(a, env_a, "snapshot")
    cli(a, env_a, "sync")
    # host b gets a key slot of its own: no password is shared between hosts
    cli(a, {**env_a, "CASSTORE_NEW_PASSWORD": PASSWORD_B}, "key", "add", "--remote", url, "--host", "hostb")
    assert "wrong password" in cli(b, {**env_b, "CASSTORE_PASSWORD": "guess"}, "init", expect=None).stderr.decode()
    cli(b, env_b, "init")                                # adopts the bucket's key through its own slot
    cli(b, env_b, "snapshot")
    synced_b = json.loads(cli(b, env_b, "sync", "--json").stdout)
    assert 0 < synced_b["bytes_missing"] < 20_000          # the shared files dedupe across hosts
    listed = json.loads(cli(b, env_b, "list", "--all-hosts", "--remote", url, "--json").stdout)
    assert {s["host"] for s in listed} == {"hosta", "hostb"}

    # host b restores host a's snapshot from the bucket
    cli(b, env_b, "restore", "latest", b / "restored", "--host", "hosta", "--remote", url)
    assert file_contents(b / "restored") == file_contents(source_a)

    # the lock-free gc on the bucket: forget host a's snapshot, condemn (a sealed plan), check
    cli(a, env_a, "forget", "--remote", url, listed[-1]["id"] if listed[-1]["host"] == "hosta" else listed[0]["id"])
    gc = json.loads(cli(a, env_a, "gc", "--remote", url, "--json").stdout)
    assert gc["mode"] != "exclusive"
    assert json.loads(cli(b, env_b, "check", "--remote", url, "--read-data", "--json").stdout)["ok"]

    objects = bucket_objects(moto_server, bucket)
    kinds = {key.split("/")[1] for key in objects}
    assert {"config", "data", "index", "snapshots", "keys"} <= kinds
    keys.forget_unlocked()
    with Repository.open_local(str(a / ".casstore"), load_settings({"repository": str(a / ".casstore"),
                                                                     "password": PASSWORD})) as repo:
        config = repo.config
    needles = {**needles_of(source_a, config), **needles_of(source_b, config)}
    needles["password b"] = PASSWORD_B.encode()
    needles["host names"] = b"hostb"
    assert_nothing_readable(objects, {k: v for k, v in needles.items() if k != "host names"})
    # host names appear only in key slots (who holds a key), never in snapshots or indexes
    assert all(b"hostb" not in body for key, body in objects.items() if key.split("/")[1] != "keys")


def test_the_http_api_and_the_scheduler_on_an_encrypted_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("CASSTORE_PASSWORD", PASSWORD)
    source = make_source(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    with encrypted_repo(repo_dir) as repo:
        snapshot_id = repo.snapshot(str(source)).id
    keys.forget_unlocked()
    settings = load_settings({"repository": str(repo_dir), "source": str(source), "host": "testhost",
                              "cache_dir": str(tmp_path / "cache"), "password": PASSWORD},
                             environ={}, dotenv_path=str(tmp_path / "no.env"))
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        backups = client.get("/api/cloud/backups").json()
        assert backups["success"] and snapshot_id[:8] in json.dumps(backups)
        doc = client.get(f"/api/cloud/backup/{snapshot_id[:12]}").json()
        assert "Zanzibar Quux Widget Co" in json.dumps(doc)
        status = client.get("/api/cloud/status").json()
        assert status["success"] and status["statistics"]["total_backups"] == 1
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CASSTORE_PASSWORD")},
           "CASSTORE_PASSWORD": PASSWORD, "CASSTORE_SOURCE": str(source), "CASSTORE_KEEP_LAST": "1"}
    cli(tmp_path, env, "--repo", repo_dir, "schedule", "--once")
    listed = json.loads(cli(tmp_path, env, "--repo", repo_dir, "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["id"] != snapshot_id     # the run's snapshot, retention kept 1
    assert "authentication" not in cli(tmp_path, env, "--repo", repo_dir, "gc").stderr.decode()
    assert json.loads(cli(tmp_path, env, "--repo", repo_dir, "check", "--read-data", "--json").stdout)["ok"]
