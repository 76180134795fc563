"""The scheduler with an injected clock: a month of runs in milliseconds, catch-up, failures,
notification, signals, one scheduler per repository, status, and the systemd/cron output."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from casstore.cli.main import cli
from casstore.service.runs import RunBusy, RunLog, perform_run, run_lock
from casstore.service.scheduler import Scheduler, SchedulerBusy, parse_schedule
from casstore.service.status import service_status, stale_reasons
from casstore.settings import load_settings
from tests.servers import die_with_parent

HOUR, DAY = 3600.0, 86400.0
T0 = 1_760_000_400.0  # a whole hour, so interval grids and wall-clock hours line up


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "data" / "ai_hub").mkdir(parents=True)
    (tmp_path / "data" / "ai_hub" / "collective_intelligence.json").write_text('{"collective_iq": 140}')
    return load_settings({"repository": str(tmp_path / "repo"), "source": str(tmp_path / "data")})


def fake_steps(clock: FakeClock, work: float = 7 * 60, calls: list | None = None):
    """A snapshot step that takes `work` simulated seconds (and notes when it ran)."""
    def snapshot(repo, settings):
        started = clock()
        clock.now += work
        if calls is not None:
            calls.append((started, clock()))
        return {"id": "0" * 64, "short_id": "00000000", "files": 1, "bytes_added_stored": 0, "incomplete": False}
    return (("snapshot", snapshot),)


def scheduler(settings, text: str, clock: FakeClock, **kwargs) -> Scheduler:
    return Scheduler(settings, parse_schedule(text), clock=clock, sleep=clock.sleep, max_nap=DAY, **kwargs)


def test_thirty_days_every_6h_is_120_runs_on_time_and_never_overlapping(settings):
    clock, calls = FakeClock(), []
    started = time.monotonic()
    runs = scheduler(settings, "6h", clock, steps=fake_steps(clock, calls=calls)).run_forever(until=T0 + 30 * DAY)
    assert time.monotonic() - started < 5
    assert runs == 120
    records = RunLog(settings.repository).records()[::-1]
    assert len(records) == 120
    assert [r.started for r in records] == [T0 + i * 6 * HOUR for i in range(120)]
    assert all(r.ok and r.trigger == "schedule" for r in records)
    for earlier, later in zip(records, records[1:], strict=False):
        assert earlier.ended <= later.started
    assert [c[0] for c in calls] == [r.started for r in records]


def test_runs_exclude_each_other_and_a_second_scheduler_is_refused(settings):
    clock, seen = FakeClock(), []

    def snapshot(repo, s):
        with pytest.raises(RunBusy):   # a backup asked for meanwhile (API, CLI) is refused
            perform_run(s, trigger="api", wait=False)
        with pytest.raises(SchedulerBusy, match="another scheduler"):
            scheduler(s, "6h", clock).run_forever(until=clock() + 1)
        seen.append(True)
        return {"id": "1" * 64, "short_id": "11111111", "files": 0, "bytes_added_stored": 0, "incomplete": False}

    assert scheduler(settings, "6h", clock, steps=(("snapshot", snapshot),)).run_forever(until=T0 + 1) == 1
    assert seen == [True]
    assert run_lock(settings.repository).try_acquire()  # released after the run


def test_a_missed_run_is_caught_up_once_then_the_grid_resumes(settings):
    clock = FakeClock()
    assert scheduler(settings, "6h", clock, steps=fake_steps(clock)).run_forever(until=T0 + HOUR) == 1
    clock.now = T0 + 3 * DAY + 2 * HOUR          # the machine was off for three days: 12 slots missed
    again = scheduler(settings, "6h", clock, steps=fake_steps(clock))
    assert again.run_forever(until=T0 + 3 * DAY + 13 * HOUR) == 3
    records = RunLog(settings.repository).records()[::-1]
    assert [r.trigger for r in records] == ["schedule", "catch-up", "schedule", "schedule"]
    assert records[1].started == T0 + 3 * DAY + 2 * HOUR and records[1].due == T0 + 3 * DAY
    assert [r.started for r in records[2:]] == [T0 + 3 * DAY + 6 * HOUR, T0 + 3 * DAY + 12 * HOUR]


def test_sleeping_through_slots_while_running_catches_up_once(settings):
    clock = FakeClock()
    suspended = []

    def sleep(seconds):
        if not suspended and clock.now > T0 + HOUR:  # the laptop lid closes for two days
            suspended.append(True)
            clock.now += 2 * DAY
        clock.sleep(seconds)

    loop = Scheduler(settings, parse_schedule("6h"), clock=clock, sleep=sleep, max_nap=HOUR, steps=fake_steps(clock))
    loop.run_forever(until=T0 + 2 * DAY + 13 * HOUR)
    triggers = [r.trigger for r in RunLog(settings.repository).records()[::-1]]
    assert triggers.count("catch-up") == 1
    assert len(triggers) == 4  # T0, the catch-up on waking, then the next two slots of the grid


def test_cron_schedule_runs_at_its_wall_clock_slots(settings):
    clock = FakeClock()
    assert scheduler(settings, "0 3 * * *", clock, steps=fake_steps(clock)).run_forever(until=T0 + 3 * DAY) == 3
    for record in RunLog(settings.repository).records():
        local = datetime.fromtimestamp(record.started)
        assert (local.hour, local.minute, local.second) == (3, 0, 0)


def test_a_failed_run_is_logged_notified_and_the_next_one_is_on_time(settings, tmp_path, caplog):
    os.rename(settings.source, f"{settings.source}.away")        # the first run finds no source
    notified = tmp_path / "notified.json"
    command = f"{sys.executable} -c \"import json, os; json.dump(dict(os.environ), open({str(notified)!r}, 'w'))\""
    s = settings.with_overrides(notify_cmd=command)
    clock = FakeClock()

    def sleep(seconds):
        if not os.path.isdir(s.source):
            os.rename(f"{s.source}.away", s.source)
        clock.sleep(seconds)

    loop = Scheduler(s, parse_schedule("6h"), clock=clock, sleep=sleep, max_nap=DAY)
    assert loop.run_forever(until=T0 + 7 * HOUR) == 2
    failed, good = RunLog(s.repository).records()[::-1]
    assert not failed.ok and failed.failed_step == "snapshot" and "does not exist" in failed.error
    assert good.ok and good.snapshot["files"] == 1 and good.started == T0 + 6 * HOUR
    env = json.loads(notified.read_text())
    assert env["CASSTORE_ERROR"] == failed.error and env["CASSTORE_RUN_ID"] == failed.id
    assert "CASSTORE_API_TOKEN" not in env
    assert any("does not exist" in r.getMessage() for r in caplog.records)


def test_an_unexpected_exception_does_not_kill_the_loop(settings):
    clock, calls = FakeClock(), []

    def flaky(repo, s):
        calls.append(clock())
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return {"id": "2" * 64, "short_id": "22222222", "files": 0, "bytes_added_stored": 0, "incomplete": False}

    assert scheduler(settings, "1h", clock, steps=(("snapshot", flaky),)).run_forever(until=T0 + 2.5 * HOUR) == 3
    records = RunLog(settings.repository).records()[::-1]
    assert [r.ok for r in records] == [False, True, True]
    assert records[0].error == "snapshot: RuntimeError: disk on fire"


def test_sigterm_finishes_the_current_step_and_abandons_the_rest(settings):
    clock, ran = FakeClock(), []

    def snapshot(repo, s):
        os.kill(os.getpid(), signal.SIGTERM)       # arrives mid-snapshot
        ran.append("snapshot")
        return {"id": "3" * 64, "short_id": "33333333", "files": 0, "bytes_added_stored": 0, "incomplete": False}

    def sync(repo, s):
        ran.append("sync")

    loop = scheduler(settings, "6h", clock, steps=(("snapshot", snapshot), ("sync", sync)))
    restore = loop.install_signal_handlers()
    try:
        assert loop.run_forever(until=T0 + 3 * DAY) == 1
    finally:
        restore()
    assert ran == ["snapshot"]
    record = RunLog(settings.repository).last()
    assert record.abandoned == "stopped before sync" and record.snapshot and not record.ok


def test_retention_runs_only_with_a_policy(settings):
    clock = FakeClock()
    assert settings.keep_last == 30, "the seed's keep-last 30 is the default of scheduled runs"
    perform_run(dataclasses.replace(settings, keep_last=None), trigger="once", clock=clock)  # CASSTORE_KEEP_LAST=0
    assert RunLog(settings.repository).last().retention is None       # no policy set
    record = perform_run(settings.with_overrides(keep_last=3), trigger="once", clock=clock)
    assert record.ok and record.retention["removed"] == [] and record.retention["kept"] == 2
    assert "keep 3 last" in record.retention["policy"]


def test_scheduled_retention_forgets_beyond_keep_last(settings):
    s = settings.with_overrides(keep_last=2)
    records = [perform_run(s, trigger="once") for _ in range(3)]
    assert all(r.ok for r in records)
    assert records[0].retention["removed"] == [] and records[2].retention["kept"] == 2
    assert records[2].retention["removed"] == [records[0].snapshot["id"]]
    assert "keep 2 last" in records[2].retention["policy"]
    assert len(_snapshots(s)) == 2


def test_status_shows_runs_and_flags_stale_repositories(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("CASSTORE_REPOSITORY", settings.repository)
    monkeypatch.setenv("CASSTORE_SOURCE", settings.source)
    runner = CliRunner()
    assert runner.invoke(cli, ["status", "--max-age", "36h"]).exit_code == 1   # nothing yet
    clock = FakeClock(time.time())
    scheduler(settings, "6h", clock).run_forever(until=clock() + 1)
    result = runner.invoke(cli, ["status", "--max-age", "36h"])
    assert result.exit_code == 0, result.output
    assert "last snapshot:" in result.output and "(schedule) ok" in result.output
    doc = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
    assert doc["schedule"]["last_run"]["ok"] and doc["last_good_snapshot"]["files"] == 1
    stale = runner.invoke(cli, ["status", "--max-age", "0s"])
    assert stale.exit_code == 1 and "last good snapshot is" in stale.output
    monkeypatch.setenv("CASSTORE_REMOTE", f"file://{tmp_path / 'offsite'}")
    monkeypatch.setenv("CASSTORE_SCHEDULE", "24h")
    doc = json.loads(runner.invoke(cli, ["status", "--json", "--max-age", "0s"]).stdout)
    assert doc["sync"]["snapshots_unsynced"] == 1 and any("not synced" in r for r in doc["stale"])
    assert doc["schedule"]["next_run"] and doc["schedule"]["schedule"] == "every 24h"
    assert runner.invoke(cli, ["sync"]).exit_code == 0
    s = load_settings()
    status = service_status(s, _snapshots(s))
    assert status["sync"]["last_success"] and status["sync"]["snapshots_unsynced"] == 0
    assert stale_reasons(status, 36 * HOUR, time.time()) == []


def _snapshots(s):
    from casstore.client import Repository

    with Repository.open_local(s.repository, s) as repo:
        return repo.all_snapshots()


def test_schedule_once_and_the_system_scheduler_files(settings, monkeypatch):
    monkeypatch.setenv("CASSTORE_REPOSITORY", settings.repository)
    monkeypatch.setenv("CASSTORE_SOURCE", settings.source)
    runner = CliRunner()
    assert runner.invoke(cli, ["schedule", "--once"]).exit_code == 0
    assert RunLog(settings.repository).last().trigger == "once"
    units = runner.invoke(cli, ["schedule", "--every", "6h", "--print-systemd"]).output
    assert "OnCalendar=*-*-* 00/6:00:00" in units and "Persistent=true" in units
    assert "Type=oneshot" in units and "schedule --once" in units and "WantedBy=timers.target" in units
    weekdays = runner.invoke(cli, ["schedule", "--cron", "30 2 * * 1-5", "--print-systemd"]).output
    assert "OnCalendar=Mon..Fri *-*-* 02:30:00" in weekdays
    assert "OnCalendar=daily" in runner.invoke(cli, ["schedule", "--cron", "@daily", "--print-systemd"]).output
    line = runner.invoke(cli, ["schedule", "--every", "6h", "--print-cron"]).output
    assert line.splitlines()[1].startswith("0 */6 * * * cd ") and "schedule --once" in line
    assert runner.invoke(cli, ["schedule", "--cron", "not a cron"]).exit_code == 2
    assert runner.invoke(cli, ["schedule"]).exit_code == 2


def test_a_second_scheduler_process_exits_with_a_clear_message_and_sigterm_stops_cleanly(settings):
    env = {**os.environ, "CASSTORE_REPOSITORY": settings.repository, "CASSTORE_SOURCE": settings.source}
    command = [sys.executable, "-m", "casstore.cli.main", "schedule", "--every", "1h"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=die_with_parent)
    try:
        runs = Path(settings.repository, "state", "runs.jsonl")
        deadline = time.monotonic() + 20
        while not (runs.exists() and runs.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert "another scheduler" in second.stderr and f"pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=20)
        assert first.returncode == 0, err
        assert "stopped after 1 run" in err
    finally:
        if first.poll() is None:
            first.kill()
