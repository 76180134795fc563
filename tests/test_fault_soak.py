"""Soak under injected faults on the four cloud servers (issue 20).

Each operation runs as a real `casstore` process with every remote it opens wrapped in the fault
injector (CASSTORE_TEST_FAULTS: 503 answers, resets after a landed write, truncated and bit-flipped
downloads, slow answers, listings broken off). Each must end byte-identical, or with one clear
error line and a non-zero exit; nothing wrong may be written or returned; and the same operation
with the faults off, on the same machine (same cache, same local repository), must then succeed.
API reads run in this process through the same wrapper.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from casstore.client import Repository
from casstore.errors import CasstoreError
from casstore.remotes.base import Remote
from casstore.remotes.wrappers import FaultyRemote, RetryingRemote
from casstore.settings import load_settings
from tests.sync_helpers import day_of_edits, make_source, tree_digest

SERVERS = {"moto_server": ("s3", "new_bucket"), "seaweed_server": ("s3", "new_bucket"),
           "azurite_server": ("az", "new_container"), "gcs_server": ("gs", "new_bucket")}
FAULTS = "error=0.05,lost_ack=0.05,truncate=0.1,flip=0.05,delay_rate=0.05,cut_listing=0.03"
SAMPLE = ("market.bin", "ai_hub/collective_intelligence.json", "notification_ai/doc_002.json")


class Machine:
    """One machine: its local repository, cache folder and settings, and a fault seed."""

    def __init__(self, home: Path, server: object, url: str, seed: int) -> None:
        self.home, self.url, self.seed = home, url, seed
        self.env = {**os.environ, **server.env(), "CASSTORE_REMOTE": url,  # type: ignore[attr-defined]
                    "CASSTORE_REPOSITORY": str(home / "repo"), "CASSTORE_CACHE_DIR": str(home / "cache"),
                    "CASSTORE_UPLOAD_CONCURRENCY": "2"}
        self.runs = 0

    def run(self, *args: str, faults: bool) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if faults:
            self.runs += 1
            env["CASSTORE_TEST_FAULTS"] = f"seed={self.seed * 100 + self.runs},{FAULTS}"
        return subprocess.run(["casstore", *args], env=env, cwd=self.home, capture_output=True, timeout=120)


def outcome(done: subprocess.CompletedProcess, what: str) -> bool:
    """True when it worked; else it must have failed with one clear line and a non-zero exit."""
    if done.returncode == 0:
        return True
    err = done.stderr.decode().strip()
    assert err.count("\n") == 0 and err.startswith("casstore: error: "), f"{what} failed unclearly:\n{err}"
    print(f"{what} under faults: {err}")
    return False


def faulted_then_clean(machine: Machine, what: str, args: tuple[str, ...], sound: Callable[[], None]) -> None:
    """Run with faults (it works and is sound, or fails cleanly), then without (it works and is sound)."""
    if outcome(machine.run(*args, faults=True), what):
        sound()
    done = machine.run(*args, faults=False)
    assert done.returncode == 0, f"{what} without faults after a faulted run: {done.stderr.decode()}"
    sound()


def assert_nothing_wrong_restored(target: Path, source: Path) -> None:
    """A failed restore may leave files out, never a file with other bytes than the source's."""
    for path in target.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            rel = path.relative_to(target)
            assert (source / rel).is_file() and path.read_bytes() == (source / rel).read_bytes(), rel


@pytest.mark.timeout(600)   # a soak: minutes by design (the suite default is 120 s)
@pytest.mark.parametrize("server_fixture", sorted(SERVERS))
def test_soak_under_faults_on_cloud_servers(server_fixture, request, tmp_path):
    seed = sorted(SERVERS).index(server_fixture) + 1
    print(f"fault seed {seed} on {server_fixture}")
    server = request.getfixturevalue(server_fixture)
    scheme, make = SERVERS[server_fixture]
    bucket = getattr(server, make)()
    url = f"{scheme}://{bucket}/soak/"
    machine = Machine(tmp_path, server, url, seed)
    source = make_source(tmp_path / "data", seed=seed, n_json=15, big_mib=1)

    assert machine.run("init", "--pack-size", str(256 * 1024), faults=False).returncode == 0
    assert machine.run("snapshot", str(source), faults=False).returncode == 0
    day_of_edits(source)
    assert machine.run("snapshot", str(source), faults=False).returncode == 0

    def remote_sound() -> None:
        check = machine.run("check", "--read-data", "--remote", url, "--json", faults=False)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    faulted_then_clean(machine, "sync", ("sync",), remote_sound)

    def restore(target: Path) -> tuple[str, ...]:
        return ("--repo", str(tmp_path / "absent"), "restore", "latest", str(target), "--remote", url,
                "--overwrite", "if-changed")

    # under faults: whatever was written is right (a failed run may leave files out)
    first = tmp_path / "restored-under-faults"
    if outcome(machine.run(*restore(first), faults=True), "restore"):
        assert tree_digest(first) == tree_digest(source)
    elif first.exists():
        assert_nothing_wrong_restored(first, source)
    target = tmp_path / "restored"

    def restored_identical() -> None:
        assert tree_digest(target) == tree_digest(source)

    faulted_then_clean(machine, "restore", restore(target), restored_identical)

    api_reads(machine, server.open(bucket, "soak/"), source)
    faulted_then_clean(machine, "check", ("check", "--read-data", "--remote", url), remote_sound)
    faulted_then_clean(machine, "gc", ("gc", "--remote", url), remote_sound)
    again = tmp_path / "restored-after-gc"
    assert machine.run(*restore(again), faults=False).returncode == 0
    assert tree_digest(again) == tree_digest(source)


def api_reads(machine: Machine, cloud: Remote, source: Path) -> None:
    """The Python API over a faulty remote: right bytes or a CasstoreError; then, healthy, right bytes."""
    settings = load_settings({"cache_dir": machine.env["CASSTORE_CACHE_DIR"]})
    faulty = FaultyRemote(cloud, seed=machine.seed,
                          error_rate=0.05, truncate_rate=0.1, flip_rate=0.05, cut_listing_rate=0.03)
    remote = RetryingRemote(faulty, base_delay=0.01)
    try:
        snapshot = Repository.open_remote(remote, settings).get("latest")
        for path in SAMPLE:
            assert snapshot.read_bytes(path) == (source / path).read_bytes()
    except CasstoreError as exc:
        assert "\n" not in str(exc)
        print(f"API read under faults: {exc}")
    faulty.enabled = False
    snapshot = Repository.open_remote(remote, settings).get("latest")   # the same cache folder
    for path in SAMPLE:
        assert snapshot.read_bytes(path) == (source / path).read_bytes()
    remote.close()
