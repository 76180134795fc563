"""GET /api/cloud/history and GET /api/cloud/diff on a real loopback server over a generated
history: the same rows and changes as the Python API, and clear 4xx answers to bad input."""

from __future__ import annotations

import httpx
import pytest

from casstore.read.jsondiff import diff_snapshot_values
from casstore.settings import load_settings
from tests.query_helpers import CI, HOST, TICKS, generated_history  # noqa: F401 - the `hist` fixture
from tests.test_api import running_server


@pytest.fixture(scope="module")
def served(hist, tmp_path_factory):
    root = tmp_path_factory.mktemp("qapi")
    settings = load_settings({"repository": str(hist.repo_path), "source": str(root / "data"), "host": HOST,
                              "cache_dir": str(hist.cache_dir)}, environ={}, dotenv_path=str(root / "no.env"))
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, hist


def test_history_endpoint_gives_the_python_rows(served):
    client, hist = served
    with hist.open() as repo:
        expected = [r.as_dict() for r in repo.history(CI, "collective_iq")]
        tail = [r.as_dict() for r in repo.history(TICKS, "-1", limit=2)]
    body = client.get("/api/cloud/history", params={"path": CI, "key": "collective_iq"}).json()
    assert body["success"] and body["rows"] == expected and len(expected) > 2
    body = client.get("/api/cloud/history", params={"path": "/" + TICKS, "key": "-1", "limit": 2}).json()
    assert body["rows"] == tail


def test_diff_endpoint_gives_the_python_changes(served):
    client, hist = served
    a, b = hist.ids[9], hist.ids[21]
    with hist.open() as repo:
        expected = [d.as_dict() for d in diff_snapshot_values(repo.get(a), repo.get(b), "ai_hub")]
    body = client.get("/api/cloud/diff", params={"a": a[:12], "b": b, "path": "ai_hub"}).json()
    assert body["success"] and (body["a"], body["b"]) == (a, b) and body["files"] == expected
    latest = client.get("/api/cloud/diff", params={"a": a}).json()
    assert latest["b"] == hist.ids[-1]


@pytest.mark.parametrize(("url", "params", "status"), [
    ("/api/cloud/history", {"path": "no/such.json"}, 404),
    ("/api/cloud/history", {"path": CI, "key": "a..b"}, 400),
    ("/api/cloud/history", {"path": CI, "since": "not a time"}, 400),
    ("/api/cloud/history", {"path": "../etc/passwd"}, 400),
    ("/api/cloud/history", {}, 422),
    ("/api/cloud/diff", {"a": "zzzz"}, 404),
    ("/api/cloud/diff", {"a": "latest", "path": "ai_hub/../x"}, 400),
])
def test_bad_queries_are_4xx(served, url, params, status):
    client, _ = served
    response = client.get(url, params=params)
    assert response.status_code == status
    if status != 422:
        assert response.json()["success"] is False and response.json()["error"]
