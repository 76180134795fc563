"""`casstore import-legacy`: the seed's unified_backup_*.json.gz become snapshots with their original
times and old ids as tags; get_backup("unified_backup_…") gives back the old data_sources exactly
(checked with json against the files written); corrupt files are reported and skipped; a second
import adds nothing; the same from a bucket (a real S3 server on loopback)."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import casstore
from casstore import cloud_storage
from tests.helpers import invoke

START = datetime(2026, 2, 1, 9, 30, 0)


def old_backups(count: int) -> list[tuple[str, datetime, dict]]:
    """The seed's shape: six sources, collective_iq inside ai_hub, lists, a top-level scalar."""
    made = []
    for n in range(count):
        when = START + timedelta(days=n, seconds=n * 7)
        sources = {
            "ai_hub": {"collective_intelligence": {"collective_iq": 120 + n // 3, "accuracy": 0.8 + n / 100},
                       "shared_knowledge": {"patterns": [{"id": i} for i in range(n % 4)]},
                       "communication_log": [{"msg": f"hello {i}"} for i in range(n)]},
            "total_market_intelligence": {"learned_patterns": ["uptrend", "breakout"][: 1 + n % 2],
                                          "latest": {"BTC": 100 + n}},
            "notification_ai": {},
            "discovered_gems": {"gems": {"a": n}},
            "schema_version": "1.0",
        }
        made.append((f"unified_backup_{when:%Y%m%d_%H%M%S}", when, sources))
    return made


def write_old(folder: Path, backups) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for backup_id, when, sources in backups:
        doc = {"backup_id": backup_id, "timestamp": when.isoformat(), "data_sources": sources}
        (folder / f"{backup_id}.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
        index.append({"backup_id": backup_id, "timestamp": when.isoformat(), "size_mb": 0.01})
    index.append({"backup_id": "unified_backup_20250101_000000", "timestamp": "2025-01-01T00:00:00"})
    (folder / "backup_index.json").write_text(json.dumps({"backups": index}))


def damage(folder: Path) -> list[str]:
    """Three broken files: a truncated gzip, gzip'd non-JSON, JSON without data_sources."""
    good = gzip.compress(json.dumps({"data_sources": {"a": {"b": 1}}}).encode())
    broken = {"unified_backup_20260301_000000": good[: len(good) // 2],
              "unified_backup_20260302_000000": gzip.compress(b'{"data_sources": {"a": '),
              "unified_backup_20260303_000000": gzip.compress(b'{"timestamp": "2026-03-03"}')}
    for backup_id, body in broken.items():
        (folder / f"{backup_id}.json.gz").write_bytes(body)
    return sorted(broken)


@pytest.fixture
def seed_folder(tmp_path):
    backups = old_backups(9)
    write_old(tmp_path / "data" / "unified_backups", backups)
    return backups, damage(tmp_path / "data" / "unified_backups")


def test_import_keeps_times_ids_and_every_value(seed_folder):
    backups, broken = seed_folder
    result = invoke("import-legacy", "data", "--json", expect=1)
    report = json.loads(result.stdout)
    assert [i["backup_id"] for i in report["imported"]] == [b[0] for b in backups]
    assert sorted(s["backup_id"] for s in report["skipped"]) == broken
    assert report["missing"] == ["unified_backup_20250101_000000"]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("casstore: ") for e in errors)
    for backup_id, when, sources in backups:
        data = cloud_storage.get_backup(backup_id)
        assert json.loads(json.dumps(data["data_sources"].materialize())) == sources
        assert datetime.fromisoformat(data["timestamp"]) == when.astimezone()
        assert backup_id in data["tags"]
    with casstore.open() as repo:
        assert len(repo.snapshots()) == len(backups)      # nothing half-imported from the broken files


def test_history_reaches_back_through_imported_backups(seed_folder):
    backups, _ = seed_folder
    invoke("import-legacy", "data/unified_backups", expect=1)
    expected, last = [], None
    for backup_id, _when, sources in backups:
        iq = sources["ai_hub"]["collective_intelligence"]["collective_iq"]
        if iq != last:
            expected.append((backup_id, iq))
        last = iq
    with casstore.open() as repo:
        rows = repo.history("ai_hub/collective_intelligence.json", "collective_iq")
        tags = {info.id: info.manifest.tags[0] for info in repo.snapshots()}
    assert [(tags[r.snapshot_id], r.value) for r in rows] == expected


def test_importing_twice_adds_nothing(seed_folder):
    backups, _ = seed_folder
    invoke("import-legacy", "data", expect=1)
    with casstore.open() as repo:
        before = sorted(s.id for s in repo.snapshots())
    again = json.loads(invoke("import-legacy", "data", "--json", expect=1).stdout)
    assert again["imported"] == [] and again["already_imported"] == [b[0] for b in backups]
    with casstore.open() as repo:
        assert sorted(s.id for s in repo.snapshots()) == before


def test_import_from_a_bucket(tmp_path, moto_server, monkeypatch):
    backups = old_backups(4)
    write_old(tmp_path / "old", backups)
    bucket = moto_server.new_bucket()
    client = moto_server.client()
    for path in (tmp_path / "old").iterdir():
        client.put_object(Bucket=bucket, Key=f"backups/{path.name}", Body=path.read_bytes())
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    report = json.loads(invoke("import-legacy", f"s3://{bucket}", "--json", expect=1).stdout)
    assert [i["backup_id"] for i in report["imported"]] == [b[0] for b in backups]
    assert report["skipped"] == [] and report["missing"] == ["unified_backup_20250101_000000"]
    assert json.loads(json.dumps(cloud_storage.get_backup(backups[2][0])["data_sources"].materialize())) == \
        backups[2][2]


def test_a_folder_without_old_backups_is_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("import-legacy", "empty", expect=1)
    assert len(result.stderr.strip().splitlines()) == 1 and "no unified_backup_" in result.stderr


def test_unknown_old_id_is_a_clear_error(seed_folder):
    invoke("import-legacy", "data", expect=1)
    with pytest.raises(casstore.SnapshotNotFound, match="no snapshot tagged"):
        cloud_storage.get_backup("unified_backup_19990101_000000")


def test_the_api_serves_an_old_id(seed_folder, tmp_path):
    import httpx

    from casstore.settings import load_settings
    from tests.test_api import running_server

    backups, _ = seed_folder
    invoke("import-legacy", "data", expect=1)
    settings = load_settings({"repository": str(tmp_path / ".casstore"), "host": "testhost",
                              "cache_dir": str(tmp_path / "cache")}, environ={}, dotenv_path=str(tmp_path / "no.env"))
    backup_id, _when, sources = backups[5]
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = client.get(f"/api/cloud/backup/{backup_id}").json()
        assert body["data_sources"] == sources and backup_id in body["tags"]
        assert client.get("/api/cloud/backup/unified_backup_19990101_000000").status_code == 404
