"""Restore of many small files by worker processes (issue 14, fsio/workers.py).

A restore of a snapshot with at least WORKER_MIN_FILES files from a local repository writes its
small files in forked worker processes. What must hold: the result is the same tree (bytes,
modes, mtimes) as the threads' path and the source; encrypted repositories and --verify work;
an error in a worker reaches the user as one line and a non-zero exit; an interrupted or killed
restore leaves no process behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casstore._testing import PAUSE_AT, PAUSE_FILE, PAUSE_ONCE
from casstore.client import Repository
from casstore.errors import RestoreError
from casstore.format.config import RepoConfig
from casstore.format.pack import KIND_DATA
from casstore.fsio.workers import WorkerPool
from casstore.restore.restorer import RESTORE_WORKERS, WORKER_MIN_FILES
from tests.helpers import (
    CASSTORE,
    NOW_NS,
    KiB,
    as_from_a_terminal,
    assert_one_line_error,
    assert_same_tree,
    dir_entry,
    file_entry,
    init_repo,
    pack_of,
    run,
    tree_state,
    write_snapshot,
)
from tests.sync_helpers import local_repo

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


def test_an_encrypted_repository_restores_through_the_workers_and_verifies(tmp_path, monkeypatch):
    """Small files through the workers and a long sparse file on the walk, keyed ids and all."""
    from casstore.format.config import RepoConfig
    from casstore.repo import keys
    from casstore.settings import load_settings

    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.setenv("CASSTORE_PASSWORD", "workers and keys")
    keys.forget_unlocked()
    source = small_source(tmp_path / "source", WORKER_MIN_FILES + 50)
    settings = load_settings({"repository": str(tmp_path / "repo"), "password": "workers and keys"})
    config = RepoConfig.new(keys=keys.new_key(settings, "testhost"))
    with open(source / "sparse.bin", "wb") as f:     # long enough that the restore knows the zero chunk by its id
        f.truncate(2 * config.max_blob_size + 4096)
        f.seek(-5, os.SEEK_END)
        f.write(b"tail\n")
    with Repository.init_local(str(tmp_path / "repo"), settings, config) as repo:
        repo.snapshot(str(source))
    keys.forget_unlocked()
    run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "out")
    assert_same_tree(tree_state(source), tree_state(tmp_path / "out"))
    # --verify reads each file back and hashes it with the repository's key, as its ids were made
    run("--repo", tmp_path / "repo", "restore", "latest", tmp_path / "verified", "--verify")
    assert_same_tree(tree_state(source), tree_state(tmp_path / "verified"))


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


FORKS = """
import json, os, sys, threading
import casstore
from casstore.client import Repository
from casstore.remotes.memory import MemoryRemote
from casstore.settings import load_settings
repo_dir, ref, target, options, where = sys.argv[1:6]
repo = casstore.open(repo_dir)
if where == "remote":       # the snapshot synced to a remote (in this process's memory), restored from there
    remote = MemoryRemote()
    repo.sync(remote)
    repo = Repository.open_remote(remote, load_settings({"host": "testhost"}))
done = threading.Event()
if where == "beside a thread":     # another thread runs while the restore starts
    threading.Thread(target=done.wait).start()
forks = []
os.register_at_fork(before=lambda: forks.append(1))
try:
    result = repo.restore(ref, target, **json.loads(options))
finally:
    done.set()
print(json.dumps([len(forks), result.files, result.errors]))
"""


@pytest.fixture(scope="module")
def at_the_bound(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Snapshots of one fewer than WORKER_MIN_FILES files, of exactly that many (also all in one
    directory: many batches of it), and one made by hand, whose summary does not count its files."""
    base = tmp_path_factory.mktemp("bound")
    source = small_source(base / "source", WORKER_MIN_FILES - 1)
    repo = init_repo(base / "repo")
    fewer = repo.snapshot(str(source)).id
    (source / "one-more.txt").write_text("the thousandth file")
    exactly = repo.snapshot(str(source)).id
    uncounted = write_snapshot(repo, lambda store: [file_entry(store, b"by-hand.txt", b"made by hand")])
    flat = repo.snapshot(str(small_source(base / "flat", WORKER_MIN_FILES, per_dir=WORKER_MIN_FILES))).id
    return base / "repo", {"fewer": fewer, "exactly": exactly, "uncounted": uncounted, "in one directory": flat}


def _forks_and_result(repo_dir: Path, ref: str, target: Path, options: dict, where: str = "local") -> list:
    """[processes forked, files restored, errors] of a restore run alone in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", FORKS, str(repo_dir), ref, str(target), json.dumps(options), where],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize(("where", "files", "options", "forks"), [
    ("local", "exactly", {}, RESTORE_WORKERS),
    ("local", "in one directory", {}, RESTORE_WORKERS),
    ("local", "fewer", {}, 0),
    ("local", "uncounted", {}, 0),
    ("local", "exactly", {"dry_run": True}, 0),
    ("local", "exactly", {"verify": True}, 0),
    ("beside a thread", "exactly", {}, 0),
    ("remote", "exactly", {}, 0)],
    ids=["bound", "one directory", "under", "uncounted", "dry-run", "verify", "thread", "remote"])
def test_worker_processes_restore_only_many_files_of_a_local_repository_being_written(
        at_the_bound, tmp_path, where, files, options, forks):
    """Workers are forked for a snapshot of at least WORKER_MIN_FILES files from a local
    repository, never for fewer (or a snapshot that does not say how many), a dry run or --verify
    (which write nothing in batches), a repository on a remote (whose connections a fork must not
    share) or while another thread runs (a lock it holds would stay held in the fork); the result
    is the same."""
    repo_dir, snapshots = at_the_bound
    count = {"fewer": WORKER_MIN_FILES - 1, "uncounted": 1}.get(files, WORKER_MIN_FILES)
    assert _forks_and_result(repo_dir, snapshots[files], tmp_path / "out", options, where) == [forks, count, []]
    if not options:
        assert len(list((tmp_path / "out").rglob("*.*"))) == count


def _said_to_hold_many_files(repo: Repository, build) -> str:
    """A snapshot of the entries `build(store)` returns whose summary says it holds WORKER_MIN_FILES
    files: restored by the workers."""
    return write_snapshot(repo, build, time_ns=NOW_NS, summary={"files_total": WORKER_MIN_FILES})


def test_names_too_long_for_any_file_system_are_one_error_each_and_the_rest_restores_through_the_workers(tmp_path):
    """A hostile tree's directory of names longer than a file system holds (255 bytes), more
    than a batch: each is one error line, the rest is restored, as without workers."""
    repo = init_repo(tmp_path / "repo")
    names = [b"n%02d" % i + b"x" * 2000 for i in range(40)]
    ref = _said_to_hold_many_files(repo, lambda store: [dir_entry(store, b"d", [
        *(file_entry(store, name, b"long %d" % i) for i, name in enumerate(names)),
        file_entry(store, b"ok.txt", b"ok")])])
    forks, files, errors = _forks_and_result(tmp_path / "repo", ref, tmp_path / "out", {})
    assert (forks, files) == (RESTORE_WORKERS, 1)
    assert errors == [f"d/{name.decode()}: File name too long" for name in names]
    assert os.listdir(tmp_path / "out" / "d") == ["ok.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="setting another owner needs root")
@pytest.mark.parametrize("privileged", [False, True], ids=["plain", "privileged"])
def test_workers_restore_recorded_owners_and_setuid_bits_only_when_privileged(tmp_path, privileged):
    repo = init_repo(tmp_path / "repo")
    owned = {"uid": 12345, "gid": 12346, "mode": 0o4755}
    ref = _said_to_hold_many_files(repo, lambda store: [dir_entry(store, b"d", [
        dataclasses.replace(file_entry(store, b"f%d" % i, b"%d" % i), **owned) for i in range(3)])])
    forks, files, errors = _forks_and_result(tmp_path / "repo", ref, tmp_path / "out", {"privileged": privileged})
    assert (forks, files, errors) == (RESTORE_WORKERS, 3, [])
    expected = (12345, 12346, 0o4755) if privileged else (os.geteuid(), os.getegid(), 0o755)
    for i in range(3):
        st = os.stat(tmp_path / "out" / "d" / f"f{i}")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == expected


KILLED_FIRST = """
import os, signal, sys, time
import casstore
from casstore.errors import CasstoreError
killed = []

def kill_the_first_worker():    # it dies (as by the OOM killer) before it is sent anything
    if not killed:
        killed.extend(int(pid) for pid in open(f"/proc/self/task/{os.getpid()}/children").read().split())
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        while any(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z" for pid in killed):
            time.sleep(0.01)

os.register_at_fork(after_in_parent=kill_the_first_worker)
try:
    casstore.open(sys.argv[1]).restore("latest", sys.argv[2])
except CasstoreError as exc:
    print(type(exc).__name__, exc)
"""


def test_a_worker_killed_before_its_first_batch_fails_the_restore_with_one_line_naming_how(snapshotted, tmp_path):
    _, repo_dir = snapshotted
    proc = subprocess.run([sys.executable, "-c", KILLED_FIRST, str(repo_dir), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("RestoreError a restore worker process ended unexpectedly (killed by signal 9); "
                                   "the restore is incomplete")


def _table(path: Path, version: int) -> None:
    """A JSON table of about 110 KB (a few chunks, a small file to the restore); each version
    changes 40 values spread over it, so a later snapshot stores its changed chunks as deltas."""
    rnd = random.Random(7)
    rows = [{"id": i, "score": round(rnd.random(), 6)} for i in range(4000)]
    for i in random.Random(version).sample(range(4000), 40):
        rows[i]["score"] = version + i / 4000
    path.write_text(json.dumps(rows, separators=(",", ":")))
    os.utime(path, ns=(NOW_NS + version, NOW_NS + version))


def test_a_small_file_stored_as_deltas_is_left_by_the_worker_to_the_parent_and_its_batch_restores(tmp_path):
    """A worker reads only whole blobs; a file whose chunks are deltas (first of its directory's
    batch) is written by the parent instead, and the files after it in that batch by the worker."""
    source = small_source(tmp_path / "source", WORKER_MIN_FILES + 10)
    repo = local_repo(tmp_path / "repo", config=RepoConfig.new(avg_size=64 * KiB, delta_chain=8))
    for version in (0, 1):
        _table(source / "d000" / "a.json", version)
        repo.snapshot(str(source))
    index = repo.load_index()
    chunks = repo.get("latest").entry("d000/a.json").chunks
    deltas = [any(loc.base is not None for loc in index.locations(KIND_DATA, c)) for c in chunks]
    assert len(chunks) <= 4 and any(deltas)       # a batch's file the worker cannot read whole
    result = repo.restore("latest", str(tmp_path / "out"))
    assert result.ok and result.files == WORKER_MIN_FILES + 11
    assert_same_tree(tree_state(source), tree_state(tmp_path / "out"))


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
    jobs in flight (pause point `<what>-awaiting-answer`, once: resumed, it runs on), and its
    workers. A signal sent now lands mid-run, never after the end: the caller sends it, then
    resumes the run (SIGCONT). The run meets SIGINT as a command started at a terminal does."""
    command = [CASSTORE] if CASSTORE else [sys.executable, "-c", "from casstore.cli.main import main; main()"]
    env = {**os.environ, PAUSE_AT: f"{what}-awaiting-answer", PAUSE_FILE: str(marker), PAUSE_ONCE: "1"}
    proc = subprocess.Popen(as_from_a_terminal([*command, *arguments]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (marker.exists() and _state(proc.pid) == "T"):
        if proc.poll() is not None or time.monotonic() > deadline:
            end_run(proc)
            _, err = proc.communicate()
            raise AssertionError(f"the {what} never waited for a worker (exit {proc.returncode}): "
                                 f"{err.decode(errors='replace')}")
        time.sleep(0.01)
    return proc, _children(proc.pid)


def signal_paused(proc: subprocess.Popen, workers: set[int], how: int) -> None:
    """Send `how` to a run paused by `paused_with_workers` and resume it, so it meets the signal in
    the middle of its work: SIGINT is exit 130 and one line; either way every worker ends."""
    try:
        proc.send_signal(how)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        end_run(proc)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and err.decode().strip() == "casstore: interrupted", err
    assert_all_end(workers)


def end_run(proc: subprocess.Popen) -> None:
    """SIGKILL a run that has not ended (a failed test leaves no process behind), its workers first
    (only while they are still its children: a pid of a process that ended may be reused)."""
    if proc.poll() is not None:
        return
    for pid in _children(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()          # a stopped process ends too
    proc.wait()


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


def test_an_interrupted_restore_ends_at_once_even_when_its_workers_are_stuck(snapshotted, tmp_path):
    """A Ctrl-C ends the restore even when its workers cannot go on (stopped here, as a worker stuck in
    a hung file system would be): they are killed, not waited for, and nothing is left behind."""
    _, repo_dir = snapshotted
    proc, workers = paused_with_workers(["--repo", str(repo_dir), "restore", "latest", str(tmp_path / "out")],
                                        "restore", tmp_path / "paused")
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and err.decode().strip() == "casstore: interrupted", err
        assert_all_end(workers)
    finally:
        end_run(proc)


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
    proc = subprocess.Popen(as_from_a_terminal([sys.executable, "-c", FORK_INTERRUPTED]), stdout=subprocess.PIPE,
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
