"""Issue 12 item by item: hosts on reads, adoption of the bucket, reads falling through to the
remote, SDKs as dependencies, backups that sync, retention and gc on the bucket, empty sources,
`forget ID`, and bucket creation. "Machines" here are working folders with their own host name
(CASSTORE_HOST) and cache; the bucket is a directory remote (file://) unless the cloud matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from casstore import cloud_storage
from casstore.client import Repository
from casstore.errors import SourceError
from casstore.format.config import RepoConfig
from casstore.remotes.local import LocalRemote
from casstore.repo.core import read_config
from casstore.service.runs import RunLog, perform_run
from casstore.settings import load_settings
from tests.helpers import assert_one_line_error, file_contents, invoke
from tests.machines import write_day

ROOT = Path(__file__).resolve().parent.parent


def cli_json(*args: str) -> object:
    return json.loads(invoke(*args, "--json").stdout)


@pytest.fixture
def bucket(tmp_path, monkeypatch) -> str:
    url = f"file://{tmp_path / 'bucket'}"
    monkeypatch.setenv("CASSTORE_REMOTE", url)
    return url


def machine(tmp_path: Path, monkeypatch, host: str, *, day: int | None = None) -> Path:
    """Become machine `host`: its own folder (cwd), cache and host name; with `day`, that day's data."""
    folder = tmp_path / host
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("CASSTORE_HOST", host)
    monkeypatch.setenv("CASSTORE_CACHE_DIR", str(tmp_path / f"cache-{host}"))
    if day is not None:
        write_day(folder / "data", day)
    return folder


def backed_up(tmp_path, monkeypatch, host: str, days: range) -> list[str]:
    """`host` snapshots each day and syncs; returns the ids, oldest first."""
    machine(tmp_path, monkeypatch, host)
    ids = []
    for day in days:
        write_day(Path("data"), day)
        ids.append(cli_json("snapshot")["id"])
        invoke("sync")
    return ids


# -- 1. reads and hosts ---------------------------------------------------------------------------


def test_a_new_hostname_reads_the_buckets_backups_and_its_own_once_it_has_some(tmp_path, monkeypatch, bucket):
    a_ids = backed_up(tmp_path, monkeypatch, "host-a", range(1, 4))
    machine(tmp_path, monkeypatch, "host-b")
    assert [s["id"] for s in cli_json("list")] == a_ids[::-1], "no snapshot of its own: every host's"
    assert [b["backup_id"] for b in cloud_storage.list_backups()] == a_ids[::-1]
    invoke("restore", "latest", "restored")
    assert json.loads(Path("restored/ai_hub/collective_intelligence.json").read_text())["collective_iq"] == 103

    write_day(Path("data"), 10)
    own = cli_json("snapshot")["id"]
    assert [s["id"] for s in cli_json("list")] == [own], "with snapshots of its own: this host's"
    assert len(cli_json("list", "--all-hosts")) == 4 and len(cli_json("list", "--host", "host-a")) == 3
    assert cloud_storage.get_backup("latest")["data_sources"]["ai_hub"]["collective_intelligence"][
        "collective_iq"] == 110
    old = cloud_storage.get_backup("latest", host="host-a")
    assert old["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"] == 103
    for command in (["show", "latest"], ["cat", "latest", "ai_hub/collective_intelligence.json"],
                    ["diff", a_ids[0], "latest"], ["restore", "latest", "again"]):
        assert invoke(*command, "--host", "host-a").exit_code == 0, command
    assert json.loads(Path("again/ai_hub/collective_intelligence.json").read_text())["collective_iq"] == 103
    shown = invoke("show", "latest", "--host", "host-a", "--json").stdout
    assert json.loads(shown)["id"] == a_ids[-1]
    assert "host-a" not in invoke("cat", "latest", "ai_hub/collective_intelligence.json").stdout


# -- 2. the first write adopts the bucket ------------------------------------------------------------


def _adopting_creators() -> dict:
    def api(folder: Path) -> None:
        from tests.test_api import running_server

        with running_server(load_settings()) as base, httpx.Client(base_url=base, timeout=60) as client:
            assert client.post("/api/cloud/backup", params={"wait": 1}).json()["success"]

    return {
        "snapshot": lambda folder: invoke("snapshot"),
        "init": lambda folder: invoke("init"),
        "schedule --once": lambda folder: invoke("schedule", "--once"),
        "create_backup": lambda folder: cloud_storage.create_backup(),
        "api": api,
    }


@pytest.mark.parametrize("creator", list(_adopting_creators()))
def test_whatever_creates_the_local_repository_adopts_the_buckets(creator, tmp_path, monkeypatch, bucket):
    backed_up(tmp_path, monkeypatch, "host-a", range(1, 2))
    folder = machine(tmp_path, monkeypatch, "host-b", day=2)
    _adopting_creators()[creator](folder)
    local, remote = read_config(LocalRemote(str(folder / ".casstore"), create=False)), \
        read_config(LocalRemote(str(tmp_path / "bucket"), create=False))
    assert local.chunker == remote.chunker and local.id != remote.id
    invoke("sync")   # works: the same chunker and seed


def test_an_empty_bucket_is_created_with_the_local_repository_compatible(tmp_path, monkeypatch, bucket):
    folder = machine(tmp_path, monkeypatch, "host-a")
    invoke("init")
    local = read_config(LocalRemote(str(folder / ".casstore"), create=False))
    assert read_config(LocalRemote(str(tmp_path / "bucket"), create=False)).chunker == local.chunker


def test_a_failed_first_backup_creates_nothing(tmp_path, monkeypatch, bucket):
    backed_up(tmp_path, monkeypatch, "host-a", range(1, 2))
    folder = machine(tmp_path, monkeypatch, "host-b")
    with pytest.raises(SourceError):
        cloud_storage.create_backup()
    invoke("snapshot", expect=1)
    assert not (folder / ".casstore").exists()
    invoke("schedule", "--once", expect=1)
    assert not (folder / ".casstore" / "config").exists(), "only the failed run's record (for status), no repository"
    assert RunLog(str(folder / ".casstore")).last().failed_step == "snapshot"
    assert len(cloud_storage.list_backups()) == 1, "so nothing hides the bucket's snapshots"


def test_an_empty_incompatible_repository_is_replaced_by_one_command(tmp_path, monkeypatch, bucket):
    backed_up(tmp_path, monkeypatch, "host-a", range(1, 2))
    folder = machine(tmp_path, monkeypatch, "host-b", day=2)
    Repository.init_local(str(folder / ".casstore"), load_settings(), RepoConfig.new())   # the old bug's leftover
    invoke("init", "--replace-empty")
    assert read_config(LocalRemote(str(folder / ".casstore"), create=False)).chunker == \
        read_config(LocalRemote(str(tmp_path / "bucket"), create=False)).chunker
    invoke("snapshot")
    invoke("sync")
    error = invoke("init", "--replace-empty", expect=1).stderr
    assert "holds 1 snapshot" in error and (folder / ".casstore" / "config").exists()


# -- 3. reads fall through to the configured remote ------------------------------------------------


def test_a_snapshot_only_the_bucket_holds_is_read_without_a_url(tmp_path, monkeypatch, bucket):
    a_first, _ = backed_up(tmp_path, monkeypatch, "host-a", range(1, 3))
    machine(tmp_path, monkeypatch, "host-b", day=5)
    own = cli_json("snapshot")["id"]
    short = a_first[:8]
    assert json.loads(invoke("show", short, "--json").stdout)["where"] == "remote"
    assert json.loads(invoke("cat", short, "ai_hub/collective_intelligence.json").stdout)["collective_iq"] == 101
    invoke("restore", short, "restored")
    assert file_contents("restored")["ai_hub/collective_intelligence.json"] == \
        json.dumps({"collective_iq": 101, "accuracy": 0.5}).encode()
    changed = {c["path"] for c in cli_json("diff", short, own)}
    assert "ai_hub/collective_intelligence.json" in changed
    data = cloud_storage.get_backup(short)
    assert data["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"] == 101

    from tests.test_api import running_server

    with running_server(load_settings()) as base, httpx.Client(base_url=base, timeout=30) as client:
        doc = client.get(f"/api/cloud/backup/{short}").json()
        assert doc["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"] == 101
        listed = client.get("/api/cloud/backups", params={"all_hosts": 1}).json()["backups"]
        assert {b["backup_id"] for b in listed} >= {a_first, own}
        assert [b["backup_id"] for b in client.get("/api/cloud/backups").json()["backups"]] == [own]
        latest_a = client.get("/api/cloud/backup/latest", params={"host": "host-a"}).json()
        assert latest_a["host"] == "host-a" and latest_a["snapshot_id"] != a_first
        assert client.get("/api/cloud/backup/latest").json()["snapshot_id"] == own


# -- 4. the cloud SDKs --------------------------------------------------------------------------------


def test_the_cloud_sdks_are_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert {"boto3", "google-cloud-storage", "azure-storage-blob"} <= names


@pytest.mark.parametrize("module, url, package", [("boto3", "s3://b/p", "boto3"),
                                                  ("google.cloud.storage", "gs://b/p", "google-cloud-storage"),
                                                  ("azure.storage.blob", "az://c/p", "azure-storage-blob")])
def test_a_missing_sdk_is_one_line_naming_the_install_command(module, url, package, tmp_path):
    code = (f"import sys; sys.modules[{module!r}] = None\n"   # the import now fails, as if not installed
            "from casstore.cli.main import main\n"
            f"sys.argv = ['casstore', 'list', '--remote', {url!r}]\nmain()")
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": "AccountName=x;AccountKey=eA==",
           "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    line = assert_one_line_error(done, f"pip install {package}")
    assert "Traceback" not in line


# -- 5. backups sync; scheduled runs keep the bucket within the policy ------------------------------


def test_api_and_facade_backups_sync_unless_told_not_to(tmp_path, monkeypatch, bucket):
    from tests.test_api import running_server

    machine(tmp_path, monkeypatch, "host-a", day=1)
    done = cloud_storage.create_backup()
    assert done["synced"]["snapshots"] == [done["backup_id"]]
    write_day(Path("data"), 2)
    assert cloud_storage.create_backup(sync=False)["synced"] is None
    with running_server(load_settings()) as base, httpx.Client(base_url=base, timeout=60) as client:
        write_day(Path("data"), 3)
        job = client.post("/api/cloud/backup", params={"wait": 1}).json()["job"]
        assert job["result"]["snapshot"]["id"] == job["backup_id"] and job["result"]["sync"]["snapshots"] == 2
        write_day(Path("data"), 4)
        job = client.post("/api/cloud/backup", params={"wait": 1, "sync": 0}).json()["job"]
        assert job["state"] == "succeeded" and job["result"]["sync"] is None
        status = client.get("/api/cloud/status").json()
        assert status["last_sync"]["snapshots_unsynced"] == 1
        assert status["schedule"]["retention"].startswith("keep 30 last")


def test_scheduled_runs_forget_on_the_bucket_and_gc_it_for_this_host_only(tmp_path, monkeypatch, bucket):
    monkeypatch.setenv("CASSTORE_GRACE", "10s")   # the bucket's grace (the shortest allowed), set when created
    other = backed_up(tmp_path, monkeypatch, "host-a", range(1, 4))
    folder = machine(tmp_path, monkeypatch, "host-b")
    monkeypatch.setenv("CASSTORE_KEEP_LAST", "2")
    records = []
    for day in range(10, 14):
        write_day(folder / "data", day)
        time.sleep(10.2 if day >= 12 else 0)   # packs a grace period old are condemned; plans that old swept
        records.append(perform_run(load_settings(), trigger="once"))
    assert all(r.ok for r in records), [r.error for r in records]
    assert [len(r.bucket["removed"]) for r in records] == [0, 0, 1, 1]
    assert records[2].bucket["gc"]["plan"] and records[3].bucket["gc"]["plans_swept"] >= 1
    in_bucket = Repository.open_remote(LocalRemote(str(tmp_path / "bucket"), create=False), load_settings())
    hosts = sorted(s.manifest.host for s in in_bucket.all_snapshots())
    assert hosts == ["host-a"] * 3 + ["host-b"] * 2, "host-a's snapshots are not this host's to forget"
    assert set(other) <= set(in_bucket.snapshot_ids())
    assert in_bucket.check(read_data=True).ok


def test_keep_last_30_is_the_default_and_zero_turns_it_off(tmp_path, monkeypatch, bucket):
    machine(tmp_path, monkeypatch, "host-a", day=1)
    assert "keep 30 last" in invoke("status").stdout
    monkeypatch.setenv("CASSTORE_KEEP_LAST", "0")
    assert "retention:      off" in invoke("status").stdout
    record = perform_run(load_settings(), trigger="once")
    assert record.ok and record.retention is None and record.bucket is None


# -- 6. missing or empty sources --------------------------------------------------------------------


def test_an_empty_or_missing_source_is_refused_everywhere(tmp_path, monkeypatch):
    folder = machine(tmp_path, monkeypatch, "host-a")
    (folder / "data").mkdir()
    error = invoke("snapshot", expect=1).stderr
    assert error.count("\n") == 1 and "is empty" in error and "--allow-empty" in error
    with pytest.raises(SourceError, match="is empty"):
        cloud_storage.create_backup()
    record = perform_run(load_settings(), trigger="once")
    assert record.failed_step == "snapshot" and "is empty" in record.error
    assert not (folder / ".casstore" / "config").exists()
    from tests.test_api import running_server

    with running_server(load_settings()) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer = client.post("/api/cloud/backup", params={"wait": 1})
        assert answer.status_code == 409 and "is empty" in answer.json()["error"]
        assert client.post("/api/cloud/backup", params={"wait": 1, "allow_empty": 1}).json()["success"]
    invoke("snapshot", "--allow-empty")
    assert len(cli_json("list")) == 2
    (folder / "data").rmdir()
    assert "does not exist" in invoke("snapshot", "--allow-empty", expect=1).stderr


# -- 7. forget ID, create-bucket --------------------------------------------------------------------


def test_forget_ids_here_and_on_the_configured_remote(tmp_path, monkeypatch, bucket):
    first, second, third = backed_up(tmp_path, monkeypatch, "host-a", range(1, 4))
    data = cli_json("forget", first[:8])
    assert data["forgotten"][0]["id"] == first and len(data["forgotten"][0]["locations"]) == 2
    assert first not in {s["id"] for s in cli_json("list", "--all-hosts")}, "gone locally and from the bucket"
    only_remote = cli_json("forget", second[:8], "--remote", bucket)
    assert len(only_remote["forgotten"][0]["locations"]) == 1
    assert second in {s["id"] for s in cli_json("list")}, "--remote leaves the local copy"
    assert "no snapshot with id ffffffff" in invoke("forget", "ffffffff", expect=1).stderr
    assert third in {s["id"] for s in cli_json("list")}


def test_create_bucket_with_secure_defaults_s3(moto_server, monkeypatch, tmp_path):
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"casstore-new-{os.urandom(4).hex()}"
    invoke("remote", "create-bucket", f"s3://{bucket}/casstore")
    client = moto_server.client()
    blocked = client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(blocked.values()) and len(blocked) == 4
    rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    invoke("remote", "create-bucket", expect=2)   # no URL and no remote configured: one line (ConfigError)


def test_create_bucket_gcs_and_azure_private(gcs_server, azurite_server, monkeypatch):
    from azure.storage.blob import BlobServiceClient

    for name, value in {**gcs_server.env(), **azurite_server.env()}.items():
        monkeypatch.setenv(name, value)
    name = f"casstore-new-{os.urandom(4).hex()}"
    out = invoke("remote", "create-bucket", f"gs://{name}").stdout
    assert "uniform bucket-level access" in out and "public access prevention" in out
    assert gcs_server.open(name).list("") is not None
    invoke("remote", "create-bucket", f"az://{name}")
    with BlobServiceClient.from_connection_string(azurite_server.connection_string) as service:
        assert service.get_container_client(name).get_container_properties().public_access is None
