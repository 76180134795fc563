"""Issue 12's "Done when": the seed's whole story on real servers, one machine replacing another.

Machine A (hostname host-a; its folder holds the `.env` and its data) backs up daily for 35 simulated
days: days 1-33 through the HTTP API (`casstore serve`, POST /api/cloud/backup, which syncs), days
34-35 through the scheduler (`casstore schedule --once`, which also forgets on the bucket by the
default keep-last 30 and runs the bucket's two-phase gc). Machine B (host-b, only the `.env`) lists
the bucket, restores byte-identical, reads `collective_iq` with the seed's own code, then takes over
with a scheduled run of its own into the same bucket.

The documented rule (DESIGN.md, Retention): scheduled runs forget only their own host's snapshots,
so the bucket ends with host-a's last 30 (days 6-35), which stay until someone forgets them, and
host-b's. Every one of them restores, and `check --read-data` on the bucket is clean.

The simulated days are the snapshots' recorded times (CASSTORE_TEST_CLOCK_FILE); the grace period
is 10 s (the shortest a repository allows), and each scheduled run comes at least that long after
the previous one, so a gc run sweeps what the previous run condemned.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.machines import SERVER_FIXTURE, URL_SCHEME, Machine, dotenv_for, new_bucket, write_day
from tests.servers import free_port
from tests.sync_helpers import tree_digest

DAY0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC).timestamp()
API_DAYS, SCHEDULED_DAYS, B_DAYS = range(1, 34), (34, 35), (36,)
GRACE = 10.0
LAST_RUN = [0.0]   # monotonic time of the last scheduled run

SEED_CODE = """
from casstore import cloud_storage

backups = cloud_storage.list_backups(limit=5)
for backup_meta in backups:
    data = cloud_storage.get_backup(backup_meta['backup_id'])
    ai_hub = data['data_sources']['ai_hub']
    collective_iq = ai_hub['collective_intelligence']['collective_iq']
    print(f"Backup {backup_meta['timestamp']}: IQ {collective_iq}")
"""

RESTORE_EVERY = """
import json, sys, tempfile
import casstore

repo = casstore.open(remote=sys.argv[1])
seen = {}
for info in repo.snapshots(all_hosts=True):
    with tempfile.TemporaryDirectory() as target:
        result = repo.restore(info.id, target, verify=True)
        assert result.ok, result.errors
        with open(target + "/ai_hub/collective_intelligence.json") as fh:
            seen[info.id] = [info.manifest.host, json.load(fh)["collective_iq"], info.manifest.time_ns]
print(json.dumps(seen))
"""


def set_clock(clock: Path, day: int) -> None:
    clock.write_text(str(DAY0 + day * 86400))


def day_of(time_ns: int) -> int:
    return round((time_ns / 1e9 - DAY0) / 86400)


def backup_through_api(machine: Machine, port: int, clock: Path, days: range) -> None:
    server = machine.popen("serve", "--port", str(port))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_until_serving(client, server)
            LAST_RUN[0] = time.monotonic()   # day 1's packs must be a grace period old before gc can condemn them
            for day in days:
                write_day(machine.dir / "data", day)
                set_clock(clock, day)
                answer = client.post("/api/cloud/backup", params={"wait": 1}).json()
                assert answer["success"], answer
                steps = answer["job"]["result"]
                assert steps["snapshot"]["id"] == answer["backup_id"] and steps["sync"]["snapshots"] == 1, steps
            pending = client.get("/api/cloud/status").json()["statistics"]
            assert pending["cloud_synced"] == pending["total_backups"] == len(days), pending
    finally:
        server.terminate()
        server.communicate(timeout=30)


def _wait_until_serving(client: httpx.Client, server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            client.get("/api/cloud/status")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("casstore serve never answered")


def scheduled_run(machine: Machine, clock: Path, day: int) -> dict:
    write_day(machine.dir / "data", day)
    set_clock(clock, day)
    # one grace period (CASSTORE_GRACE=10s, the shortest allowed) since the previous gc run's plan
    time.sleep(max(0.0, GRACE + 0.2 - (time.monotonic() - LAST_RUN[0])))
    machine.casstore("schedule", "--once")
    LAST_RUN[0] = time.monotonic()
    record = json.loads((machine.dir / ".casstore" / "state" / "runs.jsonl").read_text().splitlines()[-1])
    assert record["ok"] and record["sync"]["snapshots"] == 1, record
    return record


@pytest.mark.parametrize("provider", ["aws", "azure", "gcp"])
def test_a_replacement_machine_restores_reads_and_takes_over_the_bucket(provider, tmp_path, request):
    server = request.getfixturevalue(SERVER_FIXTURE[provider])
    bucket = new_bucket(provider, server)
    url = f"{URL_SCHEME[provider]}://{bucket}/casstore/"
    dotenv = dotenv_for(provider, server, bucket, extra=f"CASSTORE_GRACE={GRACE:g}s\n")
    clock_a, clock_b = tmp_path / "clock-a", tmp_path / "clock-b"
    a = Machine(tmp_path / "a", "host-a", dotenv, CASSTORE_TEST_CLOCK_FILE=str(clock_a))
    b = Machine(tmp_path / "b", "host-b", dotenv, CASSTORE_TEST_CLOCK_FILE=str(clock_b))

    # -- machine A: 33 days through the API, 2 through the scheduler ---------------------------------
    backup_through_api(a, free_port(), clock_a, API_DAYS)
    first, second = (scheduled_run(a, clock_a, day) for day in SCHEDULED_DAYS)
    assert len(first["bucket"]["removed"]) == 4 and first["bucket"]["kept"] == 30, first["bucket"]
    assert first["bucket"]["gc"]["plan"], "the first bucket gc condemns the forgotten snapshots' packs"
    assert len(second["bucket"]["removed"]) == 1 and second["bucket"]["gc"]["plans_swept"] >= 1, second["bucket"]
    assert second["bucket"]["gc"]["packs_deleted"] >= 1, "a later run deletes what an earlier one condemned"
    assert a.json("status")["schedule"]["retention"].startswith("keep 30 last")

    # -- machine B: another hostname, only the .env ----------------------------------------------------
    assert sorted(p.name for p in b.dir.iterdir()) == [".env"]
    listed = b.json("list")
    assert [s["host"] for s in listed] == ["host-a"] * 30, "with no snapshots of its own, B sees the other hosts'"
    b.casstore("restore", "latest", "./data")
    assert tree_digest(b.dir / "data") == tree_digest(a.dir / "data"), "byte-identical, modes and mtimes"
    seed_lines = b.python(SEED_CODE).stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in seed_lines] == ["135", "134", "133", "132", "131"]
    assert not (b.dir / ".casstore").exists(), "reading creates nothing"

    # -- B takes over: its first run adopts the bucket's repository ---------------------------------
    for day in B_DAYS:
        record = scheduled_run(b, clock_b, day)
        assert record["bucket"]["removed"] == [], "B's retention touches host-b's snapshots only"
        assert record["bucket"]["gc"]["plans_swept"] >= 1, "B's gc sweeps what A's last run condemned"
    assert [s["host"] for s in b.json("list")] == ["host-b"], "B now reads its own first"
    assert len(b.json("list", "--host", "host-a")) == 30

    # -- the bucket holds exactly what the rule keeps, every snapshot restores, check is clean -----
    restored = json.loads(b.python(RESTORE_EVERY.replace("sys.argv[1]", repr(url))).stdout)
    kept = sorted((host, day_of(t), iq) for host, iq, t in restored.values())
    expected = [("host-a", d, 100 + d) for d in range(6, 36)] + [("host-b", d, 100 + d) for d in B_DAYS]
    assert kept == sorted(expected)
    check = b.casstore("check", "--read-data", "--remote", url)
    assert "no errors found" in check.stdout
