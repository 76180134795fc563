"""Valid JSON everywhere, one error shape, the snapshot tree endpoint and a size history that
survives retention (issue 12), over a real uvicorn server on loopback; and the Python API's
JSON-ready form of a snapshot.
"""

from __future__ import annotations

import json
import math
import os
import time

import httpx
import pytest

from casstore.client import Repository
from casstore.gc.retention import RetentionPolicy, apply_retention
from casstore.gc.run import collect_garbage
from tests.test_api import BINARY, make_settings, running_server, take_snapshots

NON_FINITE = '{"nan": NaN, "inf": Infinity, "ninf": -Infinity, "huge": 1e999, "ok": 1.5, "list": [NaN, 2]}'


def strict_loads(text: str | bytes) -> object:
    """json.loads as JSON.parse: NaN, Infinity and -Infinity are syntax errors."""
    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("api-ux")
    settings = make_settings(base)
    data = base / "data"
    (data / "ai_hub" / "metrics.json").write_text(NON_FINITE)
    (data / "ai_hub" / "events.jsonl").write_text('{"v": NaN}\n{"v": 3}\n')
    os.symlink("ai_hub/metrics.json", data / "current")
    ids = take_snapshots(settings, 1)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, settings, ids


# -- valid JSON -----------------------------------------------------------------------------------


def test_the_api_never_writes_nan_or_infinity(served):
    client, _, ids = served
    for url in (f"/api/cloud/backup/{ids[0]}", "/api/cloud/backup/latest?path=ai_hub",
                "/api/cloud/backup/latest?path=ai_hub/metrics", "/api/cloud/backup/latest?path=ai_hub/events.jsonl",
                "/api/cloud/status", "/api/cloud/backups", "/api/cloud/backup/latest/tree?path=ai_hub"):
        response = client.get(url)
        assert response.status_code == 200, url
        strict_loads(response.content)            # raises on NaN/Infinity anywhere in the document
    metrics = strict_loads(client.get("/api/cloud/backup/latest?path=ai_hub/metrics").content)
    assert metrics == {"nan": None, "inf": None, "ninf": None, "huge": None, "ok": 1.5, "list": [None, 2]}
    events = strict_loads(client.get("/api/cloud/backup/latest?path=ai_hub/events").content)
    assert events == [{"v": None}, {"v": 3}]


def test_the_python_api_gives_a_json_ready_snapshot(served):
    _, settings, ids = served
    with Repository.open_local(settings.repository, settings) as repo:
        snapshot = repo.get(ids[0])
        lazy = snapshot.to_dict()
        assert math.isnan(lazy["data_sources"]["ai_hub"]["metrics"]["nan"])   # Python's own view keeps NaN
        assert lazy["data_sources"]["market"]["big.bin"] == BINARY
        with pytest.raises(TypeError):
            json.dumps(lazy)
        ready = snapshot.to_dict(json_ready=True)
    text = json.dumps(ready, allow_nan=False)           # plain dicts, no bytes, no NaN
    doc = strict_loads(text)
    assert doc["snapshot_id"] == ids[0]
    sources = doc["data_sources"]
    assert sources["ai_hub"]["metrics"]["inf"] is None and sources["ai_hub"]["metrics"]["ok"] == 1.5
    assert sources["ai_hub"]["collective_intelligence"] == {"collective_iq": 142, "accuracy": 0.91}
    assert sources["market"]["big.bin"] == {"$file": "market/big.bin", "size": len(BINARY)}
    assert sources["notification_ai"]["broken"] == {"$file": "notification_ai/broken.json", "size": 9,
                                                         "error": "does not parse as JSON"}
    assert sources["current"] is None                   # a symlink, as to_dict() gives it


# -- one error shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,url,status", [
    ("GET", "/api/no/such/route", 404),                       # FastAPI's router
    ("GET", "/api/cloud/backups?limit=0", 422),               # FastAPI's validation
    ("GET", "/api/cloud/backup/latest/file", 422),            # a required parameter missing
    ("DELETE", "/api/cloud/status", 405),
    ("GET", "/api/cloud/backup/ffffffff", 404),               # ours
    ("GET", "/api/cloud/backup/latest/tree?path=market/big.bin", 404),
    ("GET", "/api/cloud/backup/latest?path=a/../b", 400),
])
def test_every_error_has_the_seeds_shape(served, method, url, status):
    client, _, _ = served
    response = client.request(method, url)
    assert response.status_code == status
    doc = strict_loads(response.content)
    assert set(doc) == {"success", "error"} and doc["success"] is False
    assert isinstance(doc["error"], str) and doc["error"]
    if status == 422:
        assert "limit" in doc["error"] or "path" in doc["error"]


def test_the_openapi_description_gives_the_same_error_shape(served):
    client, _, _ = served
    spec = client.get("/openapi.json").json()
    error = spec["components"]["schemas"]["HTTPValidationError"]
    assert set(error["required"]) == {"success", "error"} and "detail" not in error.get("properties", {})
    assert "/api/cloud/backup/{backup_id}/tree" in spec["paths"]


def test_status_quotes_no_cloud_price_for_a_directory_remote(tmp_path):
    settings = make_settings(tmp_path, remote=(tmp_path / "nas").as_uri())
    take_snapshots(settings, 1)
    with running_server(settings) as url:
        cost = httpx.get(url + "/api/cloud/status", timeout=30).json()["cost_estimate"]
    assert cost["providers"] == {} and cost["note"] == "no provider price for a local directory"


# -- the snapshot tree, for the dashboard's view ---------------------------------------------------


def test_the_tree_endpoint_lists_one_directory(served):
    client, _, ids = served
    root = client.get(f"/api/cloud/backup/{ids[0][:8]}/tree").json()
    assert root["success"] and root["backup_id"] == ids[0] and root["path"] == ""
    rows = {row["name"]: row for row in root["entries"]}
    assert rows["current"]["type"] == "symlink" and rows["current"]["target"] == "ai_hub/metrics.json"
    assert rows["market"]["type"] == "dir" and "href" not in rows["market"]
    market = client.get("/api/cloud/backup/latest/tree", params={"path": "market"}).json()
    big = market["entries"][0]
    assert big["path"] == "market/big.bin" and big["size"] == len(BINARY) and big["mode"] == "0644"
    assert client.get(big["href"]).content == BINARY
    limited = client.get("/api/cloud/backup/latest/tree", params={"limit": 2}).json()
    assert len(limited["entries"]) == 2 and limited["truncated"] and limited["total"] == len(root["entries"])


# -- the repository's size history -----------------------------------------------------------------


def test_the_size_history_survives_forgetting_the_first_snapshots(tmp_path):
    settings = make_settings(tmp_path)
    for i in range(4):
        (tmp_path / "data" / f"day-{i}.bin").write_bytes(os.urandom(40_000))
        take_snapshots(settings, 1)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get("/api/cloud/backups").json()["backups"]
        before = {b["backup_id"]: b["stored_bytes_cumulative"] for b in listed}
        assert all(size > 0 for size in before.values()) and len(set(before.values())) == 4
        with Repository.open_local(settings.repository, settings) as repo:
            result = apply_retention(repo, RetentionPolicy.coerce({"last": 2}), False)
            assert len(result.removed) == 2
            collect_garbage(repo)
        after: dict = {}    # the API caches its listing for a few seconds: poll until it sees the forget
        for _ in range(100):
            after = {b["backup_id"]: b["stored_bytes_cumulative"]
                     for b in client.get("/api/cloud/backups").json()["backups"]}
            if len(after) == 2:
                break
            time.sleep(0.1)
    assert len(after) == 2 and after == {k: before[k] for k in after}   # what each snapshot recorded
