"""The sync report's monthly estimate prices the requests as well as the storage (issue 17)."""

from __future__ import annotations

import json

import pytest

from casstore.repo.pricing import PRICES, monthly_storage_cost
from tests.helpers import invoke
from tests.sync_helpers import day_of_edits, local_repo, make_source


def test_the_sync_estimate_counts_the_requests_of_the_last_syncs(memory_remote, tmp_path):
    source = make_source(tmp_path / "data", n_json=10, big_mib=1)
    repo = local_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    first = repo.sync(memory_remote)
    day_of_edits(source)
    repo.snapshot(str(source))
    second = repo.sync(memory_remote)
    row = second.monthly_cost_after["aws"]
    assert row["put_requests_per_month"] + row["get_requests_per_month"] == first.requests + second.requests
    _, per_gb, per_put, per_get = PRICES["aws"]
    requests_usd = row["put_requests_per_month"] / 1000 * per_put + row["get_requests_per_month"] / 1000 * per_get
    assert row["requests_usd_per_month"] == pytest.approx(requests_usd, abs=1e-4) and requests_usd > 0
    assert row["usd_per_month"] == pytest.approx(row["storage_usd_per_month"] + requests_usd, abs=2e-4)
    dry = repo.sync(memory_remote, dry_run=True)            # a dry run prices, but records nothing
    assert dry.monthly_cost_after["aws"]["put_requests_per_month"] == row["put_requests_per_month"]


def test_storage_only_estimates_keep_their_shape():
    row = monthly_storage_cost(10 * 1024**3)["aws"]
    assert row["usd_per_month"] == pytest.approx(10 * PRICES["aws"][1]) and "requests_usd_per_month" not in row
    assert monthly_storage_cost(1, where="file:///tmp/x") == {}


def test_stats_status_and_the_dashboard_show_the_estimate_sync_shows(tmp_path, monkeypatch, moto_server):
    """One estimate everywhere (issue 17): after two syncs to a real S3 server, `stats --json`,
    `status --json` and GET /api/cloud/status price what `sync --dry-run` prices, requests included."""
    from fastapi.testclient import TestClient

    from casstore.api.app import create_app
    from casstore.settings import load_settings

    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CASSTORE_REMOTE", f"s3://{moto_server.new_bucket()}/casstore")
    source = make_source(tmp_path / "data", n_json=6, big_mib=1)
    invoke("init", "--chunk-avg", 64 * 1024)
    synced = 0
    for day in range(2):
        if day:
            day_of_edits(source)
        invoke("snapshot", str(source))
        synced += json.loads(invoke("sync", "--json").stdout)["requests"]
    dry = json.loads(invoke("sync", "--dry-run", "--json").stdout)["monthly_cost_after"]
    stats = json.loads(invoke("stats", "--json").stdout)["monthly_cost"]
    status = json.loads(invoke("status", "--json").stdout)["cost_estimate"]["providers"]
    with TestClient(create_app(load_settings(), allowed_hosts=None)) as client:
        dashboard = client.get("/api/cloud/status").json()["cost_estimate"]["providers"]
    row = dry["aws"]
    assert row["put_requests_per_month"] + row["get_requests_per_month"] == synced
    assert row["requests_usd_per_month"] > 0 and row["usd_per_month"] > row["storage_usd_per_month"]
    assert stats == status == dashboard == dry
    assert f"AWS S3 Standard ${row['usd_per_month']:.4f}" in invoke("status").stdout
    assert f"${row['usd_per_month']:.4f}/month" in invoke("stats").stdout
