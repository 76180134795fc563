"""The gc soak test's orchestration: writer and gc processes on one S3 bucket, held stopped
past the grace period, then every snapshot left on the bucket checked and restored."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from casstore.format.config import RepoConfig
from casstore.remotes.wrappers import RetryingRemote
from casstore.settings import load_settings
from tests.gc_soak_driver import digest
from tests.servers import PROJECT_ROOT
from tests.sync_helpers import KiB

SOAK_SECONDS = 80
SOAK_GRACE = 20
#: writer 0 stops itself right after its re-check, writer 1 right after uploading packs no index lists
#: yet (casstore._testing, CASSTORE_TEST_PAUSE_AT); the test holds the first such stop of each for longer
#: than two grace periods (gc marks and sweeps meanwhile) and releases later ones at once. Writer 2 is
#: SIGSTOPped once at a random moment for more than two grace periods (across marks and sweeps).
PAUSE_POINTS = {0: "after-recheck", 1: "after-pack-upload"}


def remote_config(server, url: str) -> RepoConfig:
    from casstore.client import Repository
    from casstore.remotes import open_remote

    remote = open_remote(url, endpoint_url=server.endpoint, region=server.region,
                         access_key_id=server.access_key, secret_access_key=server.secret_key)
    config = RepoConfig.new(avg_size=16 * KiB, pack_size=128 * KiB, grace_seconds=SOAK_GRACE)
    Repository.init_remote(remote, load_settings({}), config)
    remote.close()
    return config


def soak_env(server, url: str, home: Path, host: str = "gc-host") -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSTORE_TEST_")}
    return {**env, **server.env(), "CASSTORE_REMOTE": url, "CASSTORE_GRACE": f"{SOAK_GRACE}s",
            "CASSTORE_HOST": host, "CASSTORE_CACHE_DIR": str(home / "cache"),
            "CASSTORE_UPLOAD_CONCURRENCY": "2", "PYTHONPATH": str(PROJECT_ROOT)}


def spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.gc_soak_driver", *args], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_writer(server, url: str, config: RepoConfig, home: Path, index: int, seed: int, stop: Path):
    from dataclasses import replace

    from casstore.client import Repository

    env = soak_env(server, url, home, host=f"host-{index}")
    marker = home / "paused"
    if index in PAUSE_POINTS:
        env.update(CASSTORE_TEST_PAUSE_AT=PAUSE_POINTS[index], CASSTORE_TEST_PAUSE_FILE=str(marker))
    source = home / "data"
    source.mkdir(parents=True)
    Repository.init_local(str(home / "repo"), load_settings({"cache_dir": env["CASSTORE_CACHE_DIR"]}),
                          replace(config, id=f"{index:032x}"))
    log = home / "writer.log"
    return spawn(["writer", str(home / "repo"), str(source), str(seed), str(log), str(stop)], env), log, marker


class Pauser:
    """Holds writers stopped past the grace period: at their pause points, or by SIGSTOP."""

    def __init__(self, rng: random.Random, writers) -> None:
        self.writers, self.started = writers, _boottime()
        self.long_stops = {0: 2 * SOAK_GRACE + 4, 1: 2 * SOAK_GRACE + 4}   # writer -> seconds, used once
        self.random_stop = (rng.uniform(5, SOAK_SECONDS - 2 * SOAK_GRACE - 15), 2 * SOAK_GRACE + rng.uniform(2, 6))
        self.resume_at: dict[int, float] = {}
        self.pauses: list[tuple[int, str, float, float]] = []

    def run(self) -> list[tuple[int, str, float, float]]:
        while _boottime() < self.started + SOAK_SECONDS:
            now = _boottime()
            for i in PAUSE_POINTS:
                self._at_pause_point(i, now)
            self._random_stop(2, now)
            for i, when in list(self.resume_at.items()):
                if now >= when:
                    self._resume(i)
            time.sleep(0.05)
        for i in list(self.resume_at):
            self._resume(i)
        return self.pauses

    def _at_pause_point(self, i: int, now: float) -> None:
        proc, _, marker = self.writers[i]
        if i in self.resume_at or not marker.exists() or not _stopped(proc):
            return
        hold = self.long_stops.pop(i, None)
        if hold is not None and now + hold < self.started + SOAK_SECONDS - 5:
            self.resume_at[i] = now + hold
            self.pauses.append((i, PAUSE_POINTS[i], now, now + hold))
        else:
            marker.unlink()
            proc.send_signal(signal.SIGCONT)

    def _random_stop(self, i: int, now: float) -> None:
        at, hold = self.random_stop
        if at and now >= self.started + at:
            self.writers[i][0].send_signal(signal.SIGSTOP)
            self.resume_at[i] = now + hold
            self.pauses.append((i, "random", now, now + hold))
            self.random_stop = (0, 0)

    def _resume(self, i: int) -> None:
        proc, _, marker = self.writers[i]
        del self.resume_at[i]
        if marker.exists():
            marker.unlink()
        proc.send_signal(signal.SIGCONT)


def kill_all(procs: list[subprocess.Popen]) -> None:
    """End every soak process still running, stopped ones included (SIGKILL ends a stopped one)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.send_signal(signal.SIGCONT)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def release_until_exit(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Resume every process that stops itself at a pause point until all have finished."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for proc in procs:
            if _stopped(proc):
                proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    for proc in procs:
        assert proc.poll() == 0, proc.stderr.read().decode()[-3000:]


def _stopped(proc: subprocess.Popen) -> bool:
    try:
        with open(f"/proc/{proc.pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def verify_soak(server, url, tmp_path, writer_logs, gc_log, pauses) -> None:
    writer_events = [_events(log) for log in writer_logs]
    gc_events = _events(gc_log)
    syncs = [e for events in writer_events for e in events if e["event"] == "sync"]
    gcs = [e for e in gc_events if e["ok"]]
    print(f"{len(syncs)} syncs ({sum(not s['ok'] for s in syncs)} aborted, "
          f"{sum(s.get('reuploaded', 0) > 0 for s in syncs)} re-uploaded after gc, "
          f"{sum(s.get('rechecks', 0) > 1 for s in syncs)} re-checked more than once); {len(gc_events)} gc runs "
          f"({len(gc_events) - len(gcs)} stopped), {sum(g['packs_deleted'] for g in gcs)} packs deleted, "
          f"{sum(g['plans_swept'] for g in gcs)} plans swept")
    for error in {e["error"] for e in syncs + gc_events if not e["ok"]}:
        print(f"  stopped: {error[:160]}")
    _assert_paused_writers_reverified(writer_events, pauses)
    broken = [s for s in syncs if s["ok"] and s["missing"]]
    assert not broken, f"a sync committed a snapshot with blobs missing: {broken[:3]}"
    assert sum(g["packs_deleted"] for g in gcs) > 0, "gc never deleted anything: the soak proved nothing"
    _assert_remote_restores(server, url, tmp_path, writer_events)


def _assert_paused_writers_reverified(writer_events, pauses) -> None:
    """A writer held past the grace period at its pause point re-checked (or aborted) before committing."""
    for writer, point, paused_from, paused_to in pauses:
        spanning = [s for s in writer_events[writer] if s["event"] == "sync" and s["started"] < paused_to
                    and s["at"] > paused_from]
        print(f"  writer {writer} held {paused_to - paused_from:.0f} s at {point}: syncs across it "
              f"(ok, rechecks, re-uploaded) {[(s['ok'], s.get('rechecks'), s.get('reuploaded')) for s in spanning]}")
        if point != "random":
            assert len(spanning) == 1, "the writer was stopped inside a sync"
            assert not spanning[0]["ok"] or spanning[0]["rechecks"] >= 2, "paused past the grace, not re-verified"


def _assert_remote_restores(server, url, tmp_path, writer_events) -> None:
    from casstore.client import Repository
    from casstore.remotes import open_remote

    expected = {e["id"]: e["digest"] for events in writer_events for e in events if e["event"] == "snapshot"}
    remote = open_remote(url, endpoint_url=server.endpoint, region=server.region,
                         access_key_id=server.access_key, secret_access_key=server.secret_key)
    repo = Repository.open_remote(RetryingRemote(remote), load_settings({"cache_dir": str(tmp_path / "verify-cache")}))
    report = repo.check(read_data=True)
    assert report.ok, report.as_dict()
    for snapshot_id in repo.snapshot_ids():
        target = tmp_path / "restored" / snapshot_id[:12]
        result = repo.restore(snapshot_id, str(target))
        assert result.ok, f"snapshot {snapshot_id[:8]}: {result.errors[:5]}"
        assert digest(target) == expected[snapshot_id], f"snapshot {snapshot_id[:8]} differs"
    print(f"remote: {report.snapshots} snapshots restored byte-identical, {report.blobs_verified} blobs verified")
