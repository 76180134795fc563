"""Restore of many small files by worker processes (issue 14, fsio/workers.py).

A restore of a snapshot with at least WORKER_MIN_FILES files from a local repository writes its
small files in forked worker processes. What must hold: the result is the same tree (bytes,
modes, mtimes) as the threads' path and the source; encrypted repositories and --verify work;
an error in a worker reaches the user as one line and a non-zero exit; an interrupted or killed
restore leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore._testing import PAUSE_AT, PAUSE_FILE
from casstore.client import Repository
from casstore.errors import RestoreError
from casstore.format.pack import KIND_DATA
from casstore.fsio.workers import WorkerPool
from casstore.restore.restorer import RESTORE_WORKERS, WORKER_MIN_FILES
from tests.helpers import CASSTORE, assert_one_line_error, assert_same_tree, init_repo, pack_of, run, tree_state

MODES = (0o644, 0o600, 0o755, 0o444, 0o640, 0o700, 0o000, 0o666)


def small_source(root: Path, files: int, per_dir: int = 100) -> Path:
    """`files` small files of distinct content, modes and mtimes, `per_dir` a directory."""
    for i in range(files):
        path = root / f"d{i // per_dir:03}" / f"f{i:05}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{{"n": {i}, "pad": "{"x" * (i % 3000)}"}}\n')
        os.chmod(path, MODES[i % len(MODES)])
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 1_000_003, 1_700_000_000_000_000_000 + i * 1_000_003))
    for i, directory in enumerate(sorted(root.iterdir())):
        os.utime(directory, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    return root


@pytest.fixture(scope="module")
def snapshotted(tmp_path_factory) -> tuple[Path, Path]:
    """A repository holding one snapshot of WORKER_MIN_FILES + 300 small files (the workers' path)."""
    base = tmp_path_factory.mktemp("workers")
    source = small_source(base / "source", WORKER_MIN_FILES + 300)
    repo = init_repo(base / "repo")
    repo.snapshot(str(source))
    return source, base / "repo"


def _umask(mask: int) -> int:
    old = os.umask(mask)
    return old


@pytest.mark.parametrize("files", [40, WORKER_MIN_FILES + 300])
def test_a_restore_is_the_source_byte_for_byte_with_modes_and_times_under_any_umask(tmp_path, files):
    source = small_source(tmp_path / "source", files)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    old = _umask(0o077)     # the restore's modes are the recorded ones, not the umask's
    try:
        run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "out")
    finally:
        os.umask(old)
    assert_same_tree(tree_state(source), tree_state(tmp_path / "out"))


def test_existing_files_are_left_or_replaced_as_overwrite_says(snapshotted, tmp_path):
    source, repo_dir = snapshotted
    out = tmp_path / "out"
    (out / "d003").mkdir(parents=True)
    (out / "d003" / "f00300.json").write_text("mine")
    (out / "d007").mkdir()
    (out / "d007" / "f00799.json").write_text("mine too")
    kept = run("--repo", repo_dir, "restore", "latest", out, expect=None)
    assert kept.returncode != 0 and b"2 file(s) already exist" in kept.stderr
    assert (out / "d003" / "f00300.json").read_text() == "mine"
    run("--repo", repo_dir, "restore", "latest", out, "--overwrite", "always")
    assert_same_tree(tree_state(source), tree_state(out))


def test_an_encrypted_repository_restores_through_the_workers(tmp_path, monkeypatch):
    from casstore.format.config import RepoConfig
    from casstore.repo import keys
    from casstore.settings import load_settings

    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.setenv("CASSTORE_PASSWORD", "workers and keys")
    keys.forget_unlocked()
    source = small_source(tmp_path / "source", WORKER_MIN_FILES + 50)
    settings = load_settings({"repository": str(tmp_path / "repo"), "password": "workers and keys"})
    with Repository.init_local(str(tmp_path / "repo"), settings,
                               RepoConfig.new(keys=keys.new_key(settings, "testhost"))) as repo:
        repo.snapshot(str(source))
    keys.forget_unlocked()
    run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "out")
    assert_same_tree(tree_state(source), tree_state(tmp_path / "out"))


def test_verify_restores_many_small_files_and_checks_them(snapshotted, tmp_path):
    source, repo_dir = snapshotted
    run("--repo", repo_dir, "restore", "latest", tmp_path / "out", "--verify")
    assert_same_tree(tree_state(source), tree_state(tmp_path / "out"))


def test_a_damaged_blob_read_in_a_worker_is_one_error_line_and_a_failed_restore(tmp_path):
    source = small_source(tmp_path / "source", WORKER_MIN_FILES + 300)
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    victim = repo.get("latest").entry("d009/f00950.json")
    pack = pack_of(repo, KIND_DATA, victim.chunks[0])
    location = repo.index.locations(KIND_DATA, victim.chunks[0])[0]
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0x40
    pack.write_bytes(bytes(data))
    proc = run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "out", expect=None)
    assert_one_line_error(proc, victim.chunks[0].hex()[:16])


def test_a_worker_that_dies_is_an_error_naming_how_not_a_hang():
    def die(dir_fd: int, payload: object) -> object:
        os.kill(os.getpid(), signal.SIGKILL)
        return None

    pool = WorkerPool(die, 2, what="restore", error=RestoreError)
    fd = os.open(".", os.O_RDONLY)
    try:
        ticket = pool.submit(fd, [])
        with pytest.raises(RestoreError, match="ended unexpectedly.*signal 9"):
            ticket.result()
    finally:
        os.close(fd)
        pool.close(abort=True)


def test_a_handlers_exception_is_raised_in_the_parent_and_the_worker_goes_on():
    def handle(dir_fd: int, payload: int) -> int:
        if payload < 0:
            raise RestoreError(f"refused {payload}")
        return payload * 2

    pool = WorkerPool(handle, 1, what="restore", error=RestoreError)
    fd = os.open(".", os.O_RDONLY)
    try:
        tickets = [pool.submit(fd, n) for n in (1, -5, 3)]
        assert tickets[0].result() == 2
        with pytest.raises(RestoreError, match="refused -5"):
            tickets[1].result()
        assert tickets[2].result() == 6
    finally:
        os.close(fd)
        pool.close()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def paused_with_workers(arguments: list[str], what: str, marker: Path) -> tuple[subprocess.Popen, set[int]]:
    """A CLI run of `arguments`, stopped (SIGSTOP) while its parent waits for a worker's answer with
    jobs in flight (pause point `<what>-awaiting-answer`), and its workers. A signal sent now lands
    mid-run, never after the end: the caller sends it, then resumes the run (SIGCONT)."""
    command = [CASSTORE] if CASSTORE else [sys.executable, "-c", "from casstore.cli.main import main; main()"]
    env = {**os.environ, PAUSE_AT: f"{what}-awaiting-answer", PAUSE_FILE: str(marker)}
    proc = subprocess.Popen([*command, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (marker.exists() and _state(proc.pid) == "T"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the {what} never waited for a worker (exit {proc.returncode}): "
                                 f"{err.decode(errors='replace')}")
        time.sleep(0.01)
    return proc, _children(proc.pid)


def signal_paused(proc: subprocess.Popen, workers: set[int], how: int) -> None:
    """Send `how` to a run paused by `paused_with_workers` and resume it, so it meets the signal in
    the middle of its work: SIGINT is exit 130 and one line; either way every worker ends."""
    proc.send_signal(how)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and err.decode().strip() == "casstore: interrupted", err
    assert_all_end(workers)


def assert_all_end(pids: set[int], within: float = 30) -> None:
    """Every process of `pids` ends (or is a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _state(pid: int) -> str:
    """The process's state letter (R, S, T: stopped, Z: zombie), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes in a container counts as gone)."""
    return _state(pid) not in ("", "Z")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_or_killed_restore_leaves_no_process_behind(snapshotted, tmp_path, how):
    _, repo_dir = snapshotted
    proc, workers = paused_with_workers(["--repo", str(repo_dir), "restore", "latest", str(tmp_path / "out")],
                                        "restore", tmp_path / "paused")
    assert len(workers) == RESTORE_WORKERS
    signal_paused(proc, workers, how)


STUCK = """
import os, signal, sys, time
from casstore.fsio.workers import WorkerPool
from casstore.errors import RestoreError
pool = WorkerPool(lambda fd, payload: time.sleep(600), 2, what="restore", error=RestoreError)
fd = os.open(".", os.O_RDONLY)
pool.submit(fd, 1)
pool.submit(fd, 2)
time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


FORK_INTERRUPTED = """
import os, signal, sys
from casstore.fsio.workers import WorkerPool
from casstore.errors import RestoreError
sent = []

def interrupt():      # Ctrl-C inside the second worker's fork, as a user's can land
    sent.append(1)
    if len(sent) == 2:
        os.kill(os.getpid(), signal.SIGINT)

os.register_at_fork(before=interrupt)
try:
    pool = WorkerPool(lambda fd, payload: payload, 2, what="restore", error=RestoreError)
except KeyboardInterrupt:
    sys.exit(130)
pool.close()
"""


def test_a_ctrl_c_that_lands_while_a_worker_is_forked_interrupts_not_vanishes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", FORK_INTERRUPTED], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    workers: set[int] = set()
    while proc.poll() is None:
        workers |= _children(proc.pid)
        time.sleep(0.001)
    _, err = proc.communicate()
    assert proc.returncode == 130 and err == b"", err
    assert_all_end(workers, within=10)


def test_workers_busy_when_their_parent_is_killed_die_with_it(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, cwd=tmp_path)
    workers: set[int] = set()
    while parent.poll() is None:
        workers |= _children(parent.pid)
        time.sleep(0.01)
    parent.communicate()
    assert len(workers) == 2 and parent.returncode == -signal.SIGKILL
    assert_all_end(workers, within=10)
