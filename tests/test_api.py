"""The HTTP API, driven over real sockets: a uvicorn server on a free loopback port, httpx as client.

Every endpoint, the seed's shapes, auth (401), Host and cross-site refusals (403), bad ids (404),
traversal attempts (400/404), body limits (413), concurrent backups (one runs, the others get 409),
jobs polled to completion, `serve --schedule` in a subprocess, and a bounded schemathesis fuzz run
that must find no 5xx.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from casstore.cli.main import cli
from casstore.client import Repository
from casstore.settings import load_settings
from tests.servers import die_with_parent

TOKEN = "s3cr3t-t0ken-for-tests"
BINARY = bytes(range(256)) * 40


def seed_source(root: Path) -> Path:
    """A small source in the seed's layout: JSON, JSONL, a binary file, a nested source."""
    files = {
        "ai_hub/collective_intelligence.json": json.dumps({"collective_iq": 142, "accuracy": 0.91}),
        "ai_hub/shared_knowledge.json": json.dumps({"patterns": [{"id": i, "w": i / 10} for i in range(50)]}),
        "ai_hub/communication_log.jsonl": "\n".join(json.dumps({"n": i, "msg": f"hello {i}"}) for i in range(5)),
        "total_market_intelligence/learning/learned_patterns.json": json.dumps([{"p": "uptrend"}]),
        "discovered_gems/gems.json": json.dumps({"gems": ["a", "b"]}),
        "notification_ai/broken.json": "{not json",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "market" / "big.bin").parent.mkdir(parents=True, exist_ok=True)
    (root / "market" / "big.bin").write_bytes(BINARY)
    return root


def make_settings(base: Path, **overrides):
    """Settings for a server of its own (no .env, no environment: tests run it in-process)."""
    seed_source(base / "data")
    values = {"repository": str(base / "repo"), "source": str(base / "data"), "host": "testhost",
              "cache_dir": str(base / "cache"), **overrides}
    return load_settings(values, environ={}, dotenv_path=str(base / "no.env"))


def take_snapshots(settings, n: int = 1) -> list[str]:
    repo = (Repository.open_local if os.path.isfile(os.path.join(settings.repository, "config"))
            else Repository.init_local)(settings.repository, settings)
    with repo:
        return [repo.snapshot(settings.source).id for _ in range(n)]


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def running_server(settings, *, scheduler=None, log_config=None, log_level: str = "warning"):
    """The real app on a real uvicorn server, in a thread, on a free loopback port."""
    import uvicorn

    from casstore.api.app import create_app
    from casstore.api.security import allowed_host_names

    app = create_app(settings, allowed_hosts=allowed_host_names("127.0.0.1"), scheduler=scheduler)
    sock = free_socket()
    config = uvicorn.Config(app, log_level=log_level, log_config=log_config, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tokenless loopback server over a repository with two snapshots."""
    settings = make_settings(tmp_path_factory.mktemp("api"))
    ids = take_snapshots(settings, 2)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, settings, ids


# -- the seed's endpoints ------------------------------------------------------------------------


def test_status_has_the_seed_shape_and_more(served):
    client, settings, ids = served
    response = client.get("/api/cloud/status")
    assert response.status_code == 200
    doc = response.json()
    assert doc["success"] is True
    stats = doc["statistics"]
    assert stats["total_backups"] >= 2 and stats["total_size_mb"] > 0
    assert stats["cloud_synced"] == 0 and stats["provider"] == "local"
    assert doc["recent_backups"][0]["backup_id"] in ids or len(doc["recent_backups"]) == 5
    assert {"next_run", "last_scheduled_run", "last_sync", "schedule"} <= doc.keys()
    assert set(doc["cost_estimate"]["providers"]) == {"aws", "gcp", "azure"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in response.headers


def test_backups_list_is_newest_first_and_limited(served):
    client, _, ids = served
    doc = client.get("/api/cloud/backups", params={"limit": 1}).json()
    assert doc["success"] and doc["count"] == 1 and len(doc["backups"]) == 1
    everything = client.get("/api/cloud/backups?limit=100").json()["backups"]
    stamps = [b["timestamp"] for b in everything]
    assert stamps == sorted(stamps, reverse=True)
    row = everything[-1]
    assert row["backup_id"] == ids[0] and row["files"] == 7 and row["bytes_total"] > len(BINARY)
    assert row["stored_bytes_cumulative"] >= row["bytes_added_stored"] > 0   # the whole repository then
    for bad in ("0", "-1", "abc", "100001"):
        assert client.get(f"/api/cloud/backups?limit={bad}").status_code == 422


def test_a_backup_reads_as_to_dict_with_file_references(served):
    client, settings, ids = served
    response = client.get(f"/api/cloud/backup/{ids[0]}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["snapshot_id"] == doc["backup_id"] == ids[0]
    sources = doc["data_sources"]
    assert sources["ai_hub"]["collective_intelligence"]["collective_iq"] == 142       # the seed's example 1
    assert sources["ai_hub"]["communication_log"][4] == {"n": 4, "msg": "hello 4"}
    assert sources["total_market_intelligence"]["learning"]["learned_patterns"] == [{"p": "uptrend"}]
    ref = sources["market"]["big.bin"]
    assert ref["$file"] == "market/big.bin" and ref["size"] == len(BINARY)
    assert sources["notification_ai"]["broken"]["$file"] == "notification_ai/broken.json"
    assert client.get(ref["href"]).content == BINARY
    with Repository.open_local(settings.repository, settings) as repo:
        expected = repo.get(ids[0]).to_dict().materialize()
    assert expected["data_sources"]["ai_hub"] == sources["ai_hub"]
    latest = client.get("/api/cloud/backup/latest").json()
    assert latest["data_sources"]["ai_hub"] == sources["ai_hub"] and latest["snapshot_id"] != ids[0]


def test_path_selects_one_source_or_file(served):
    client, _, ids = served
    short = ids[0][:8]
    hub = client.get(f"/api/cloud/backup/{short}", params={"path": "ai_hub"}).json()
    assert set(hub) == {"collective_intelligence", "shared_knowledge", "communication_log"}
    by_file = client.get(f"/api/cloud/backup/{short}?path=ai_hub/collective_intelligence.json").json()
    by_key = client.get(f"/api/cloud/backup/{short}?path=ai_hub/collective_intelligence").json()
    assert by_file == by_key == {"collective_iq": 142, "accuracy": 0.91}
    assert client.get(f"/api/cloud/backup/{short}?path=market/big.bin").json()["size"] == len(BINARY)
    assert client.get(f"/api/cloud/backup/{short}?path=nothing/here").status_code == 404


def test_a_path_below_a_file_is_404(served):
    client, _, ids = served
    for ref in ("latest", ids[0][:8]):
        for path in ("ai_hub/collective_intelligence.json/x", "market/big.bin/deeper/still"):
            assert client.get(f"/api/cloud/backup/{ref}", params={"path": path}).status_code == 404
            assert client.get(f"/api/cloud/backup/{ref}/file", params={"path": path}).status_code == 404


def test_raw_download_is_an_attachment(served):
    client, _, ids = served
    response = client.get(f"/api/cloud/backup/{ids[1]}/file", params={"path": "market/big.bin"})
    assert response.status_code == 200 and response.content == BINARY
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in response.headers["content-security-policy"]
    assert client.get(f"/api/cloud/backup/{ids[1]}/file?path=ai_hub").status_code == 404      # a directory
    assert client.get(f"/api/cloud/backup/{ids[1]}/file").status_code == 422                  # no path


@pytest.mark.parametrize("path", [
    "/api/cloud/backup/not-an-id", "/api/cloud/backup/ffffffff", "/api/cloud/backup/abc",
    "/api/cloud/backup/..%2F..%2Fconfig", "/api/cloud/backup/%2E%2E", "/api/cloud/backup/latest%2F..%2F..",
    "/api/cloud/backup/ffffffff/file?path=x", "/api/jobs/nope", "/api/jobs/" + "a" * 32, "/api/jobs/..%2F..",
])
def test_bad_ids_are_404(served, path):
    client, _, _ = served
    response = client.get(path)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("query", [
    "path=../config", "path=ai_hub/../../config", "path=..", "path=ai_hub%2F..%2F..%2Fconfig",
    "path=%00", "path=ai_hub%00.json", "path=a%0Ab",
])
def test_traversal_attempts_are_refused(served, query):
    client, _, ids = served
    for endpoint in (f"/api/cloud/backup/{ids[0]}", f"/api/cloud/backup/{ids[0]}/file"):
        response = client.get(f"{endpoint}?{query}")
        assert response.status_code == 400, (endpoint, query, response.text)
        assert "config" not in response.text or "not allowed" in response.text


def test_nul_and_dot_segments_in_the_url_path(served):
    client, _, ids = served
    with socket.create_connection(("127.0.0.1", int(str(client.base_url).rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"GET /api/cloud/backup/latest%00 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")
    assert client.get("/api/cloud/backup/latest/../../../etc/passwd").status_code == 404


# -- security ------------------------------------------------------------------------------------


def test_host_header_must_name_this_server(served):
    client, _, _ = served
    port = str(client.base_url).rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "localhost.evil.example"):
        response = client.get("/api/cloud/status", headers={"Host": host})
        assert response.status_code == 403, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST:{port}"):
        assert client.get("/api/cloud/status", headers={"Host": host}).status_code == 200, host
    assert client.get("/", headers={"Host": "rebind.example"}).status_code == 403


def test_cross_site_writes_and_cors_are_refused(served):
    client, _, _ = served
    response = client.post("/api/cloud/backup", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert client.post("/api/cloud/backup", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.post("/api/cloud/backup", headers={"Origin": "null"}).status_code == 403
    preflight = client.options("/api/cloud/backup", headers={"Origin": "http://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    read = client.get("/api/cloud/status", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in read.headers


def test_request_bodies_are_size_limited(served):
    client, _, _ = served
    assert client.post("/api/cloud/sync", content=b"x" * 200_000).status_code == 413

    def chunks():
        for _ in range(20):
            yield b"y" * 10_000

    assert client.post("/api/cloud/sync", content=chunks()).status_code == 413


def test_token_is_required_compared_and_never_logged(tmp_path, caplog):
    settings = make_settings(tmp_path, api_token=TOKEN)
    take_snapshots(settings)
    caplog.set_level(logging.INFO)
    with running_server(settings, log_level="info") as url, httpx.Client(base_url=url) as client:
        missing = client.get("/api/cloud/status")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/api/cloud/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/cloud/status", headers={"Authorization": TOKEN}).status_code == 401
        assert client.post("/api/cloud/backup").status_code == 401
        assert client.get("/api/cloud/backup/latest").status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/cloud/status", headers=good).status_code == 200
        assert client.get("/api/cloud/backup/latest", headers=good).json()["data_sources"]["ai_hub"]
        assert client.get("/").status_code == 200                     # the page asks for the token itself
        assert client.get("/openapi.json").status_code == 200
    assert "GET /api/cloud/status" in caplog.text                     # the access log ran ...
    assert TOKEN not in caplog.text                                   # ... without the token


def test_serve_refuses_a_public_bind_without_a_token(monkeypatch):
    monkeypatch.delenv("CASSTORE_API_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output
    result = CliRunner().invoke(cli, ["serve", "--host", "192.0.2.10"])
    assert result.exit_code == 2


# -- jobs ----------------------------------------------------------------------------------------


def test_concurrent_backups_one_runs_the_others_are_told(served, monkeypatch):
    import casstore.api.app as app_module

    client, settings, _ = served
    gate, real = threading.Event(), app_module.snapshot_step

    def slow_snapshot(repo, s):
        assert gate.wait(30)
        return real(repo, s)

    monkeypatch.setattr(app_module, "snapshot_step", slow_snapshot)
    before = client.get("/api/cloud/backups?limit=1000").json()["total"]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: client.post("/api/cloud/backup"), range(6)))
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 409]
    assert len(accepted) == 1 and len(refused) == 5
    job_id = accepted[0].json()["job_id"]
    assert accepted[0].json()["success"] is True and accepted[0].json()["poll"] == f"/api/jobs/{job_id}"
    assert all(r.json()["running_job"] == job_id and "already running" in r.json()["error"] for r in refused)
    assert client.get("/api/cloud/status").json()["running_job"]["id"] == job_id
    assert client.post("/api/cloud/backup?wait=1").status_code == 409
    assert client.get(f"/api/jobs/{job_id}").json()["job"]["state"] == "running"
    gate.set()
    job = wait_for_job(client, job_id)
    assert job["state"] == "succeeded" and job["backup_id"]
    after = client.get("/api/cloud/backups?limit=1000").json()
    assert after["total"] == before + 1 and after["backups"][0]["backup_id"] == job["backup_id"]
    assert client.get(f"/api/cloud/backup/{job['backup_id']}").status_code == 200


def test_backup_wait_blocks_until_done_and_records_the_run(served):
    client, settings, _ = served
    response = client.post("/api/cloud/backup", params={"wait": 1})
    assert response.status_code == 200
    doc = response.json()
    assert doc["success"] and doc["job"]["state"] == "succeeded" and doc["backup_id"]
    from casstore.service.runs import RunLog

    record = RunLog(settings.repository).last()
    assert record.trigger == "api" and record.snapshot["id"] == doc["backup_id"]
    assert client.get(f"/api/cloud/backup/{doc['backup_id'][:12]}").status_code == 200


def test_sync_without_a_remote_is_refused(served):
    client, _, _ = served
    response = client.post("/api/cloud/sync")
    assert response.status_code == 409 and "no remote configured" in response.json()["error"]


def test_sync_job_to_a_directory_remote(tmp_path):
    remote = tmp_path / "offsite"
    settings = make_settings(tmp_path, remote=f"file://{remote}")
    ids = take_snapshots(settings, 2)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        accepted = client.post("/api/cloud/sync")
        assert accepted.status_code == 202
        job = wait_for_job(client, accepted.json()["job_id"])
        assert job["state"] == "succeeded" and job["result"]["sync"]["snapshots"] == 2
        status = client.get("/api/cloud/status").json()
        assert status["statistics"]["cloud_synced"] == 2 and status["statistics"]["provider"] == "directory"
        assert status["last_sync"]["last_success"] and status["last_sync"]["last_attempt"]["ok"]
        again = client.post("/api/cloud/sync?wait=true").json()
        assert again["success"] and again["job"]["result"]["sync"]["snapshots"] == 0
    assert sorted(p.name for p in (remote / "snapshots").iterdir()) == sorted(ids)


def test_serve_sees_snapshots_taken_by_others(served):
    client, settings, _ = served
    new_id = take_snapshots(settings)[0]
    assert client.get(f"/api/cloud/backup/{new_id}").status_code == 200      # resolves at once
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get("/api/cloud/backups?limit=1").json()["backups"][0]["backup_id"] == new_id:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the listing never showed the new snapshot")


def test_openapi_describes_every_endpoint(served):
    client, _, _ = served
    spec = client.get("/openapi.json").json()
    assert {"/api/cloud/status", "/api/cloud/backup", "/api/cloud/backups", "/api/cloud/sync", "/api/jobs/{job_id}",
            "/api/cloud/backup/{backup_id}", "/api/cloud/backup/{backup_id}/file"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


# -- the command, with the scheduler inside ------------------------------------------------------


def test_serve_command_with_the_scheduler_inside(tmp_path):
    settings = make_settings(tmp_path)
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "CASSTORE_REPOSITORY": settings.repository, "CASSTORE_SOURCE": settings.source}
    command = [sys.executable, "-m", "casstore.cli.main", "serve", "--port", str(port), "--schedule", "6h"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=die_with_parent)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            status = _poll_status(client, server)
            assert status["schedule"]["running"] and status["schedule"]["schedule"] == "every 6h"
            assert status["last_scheduled_run"]["ok"] and status["statistics"]["total_backups"] == 1
            assert status["next_run"] is not None
            second = subprocess.run([sys.executable, "-m", "casstore.cli.main", "schedule", "--every", "1h"],
                                    env=env, capture_output=True, text=True, timeout=30)
            assert second.returncode != 0 and "another scheduler" in second.stderr
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=20)
        assert server.returncode in (0, -signal.SIGTERM), err   # uvicorn re-raises SIGTERM after a clean shutdown
        assert "Application shutdown complete" in err and "serving" in err
    finally:
        if server.poll() is None:
            server.kill()


def _poll_status(client: httpx.Client, server: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            doc = client.get("/api/cloud/status").json()
            if doc["last_scheduled_run"]:
                return doc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the in-process scheduler never ran")


# -- fuzzing -------------------------------------------------------------------------------------


def test_openapi_fuzz_finds_no_server_errors(tmp_path):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hsettings
    from schemathesis import GenerationMode

    settings = make_settings(tmp_path)
    take_snapshots(settings)
    with running_server(settings) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures, calls = [], []
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in GenerationMode:

                @hsettings(max_examples=10, deadline=None, database=None, derandomize=True,
                           phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(mode))
                def fuzz(case):
                    response = case.call(base_url=url, timeout=30)
                    calls.append(response.status_code)
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} {case.query}: {response.status_code}")

                fuzz()
    assert failures == []
    assert len(calls) > 50 and any(code == 200 for code in calls) and any(code == 422 for code in calls)
