"""The sync report's monthly estimate prices the requests as well as the storage (issue 17)."""

from __future__ import annotations

import pytest

from casstore.repo.pricing import PRICES, monthly_storage_cost
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
