"""Shared helpers for the end-to-end tests: the real CLI, real files, and repository surgery.

Everything here works on real directories. `tests/conftest.py` (autouse) has already changed
into the test's tmp_path and set CASSTORE_CACHE_DIR and CASSTORE_HOST, so both the in-process
library and `casstore` subprocesses see an isolated environment.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from click.testing import CliRunner

from casstore.cli.main import cli
from casstore.client import Repository
from casstore.format.config import RepoConfig
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain
from casstore.remotes.local import LocalRemote
from casstore.repo.core import read_config
from casstore.settings import load_settings

KiB, MiB = 1024, 1024 * 1024
SMALL_CHUNKS = 64 * KiB  # average chunk size for tests: many chunks from a few MiB
CASSTORE = shutil.which("casstore")


# -- data --------------------------------------------------------------------------------------


def det_bytes(n: int, seed: int | str) -> bytes:
    """`n` deterministic pseudo-random (incompressible) bytes."""
    return random.Random(seed).randbytes(n)


def write(path: str | Path, data: bytes | str, *, mode: int | None = None, mtime_ns: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def age_tree(root: str | Path, seconds: int = 3600) -> None:
    """Set every mtime below `root` back by `seconds` (ctime cannot be set; see RACY_WINDOW_NS)."""
    past = time.time_ns() - seconds * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(past, past), follow_symlinks=False)


# -- comparing trees ---------------------------------------------------------------------------


def tree_state(root: str | Path, *, with_root: bool = False) -> dict[bytes, tuple]:
    """Everything restore promises to keep, per relative path (bytes, so any name works).

    file -> ('file', mode, mtime_ns, uid, gid, blake3 of content); dir -> ('dir', mode, mtime_ns,
    uid, gid); symlink -> ('symlink', target, mtime_ns); fifo -> ('fifo', mode, mtime_ns).
    """
    root_b = os.fsencode(str(root))
    state: dict[bytes, tuple] = {}
    if with_root:
        st = os.lstat(root_b)
        state[b"."] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("symlink", os.readlink(full), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as fh:
                    digest = blake3.blake3(fh.read()).hexdigest()
                state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, digest)
            elif stat.S_ISFIFO(st.st_mode):
                state[rel] = ("fifo", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                state[rel] = ("other", stat.S_IFMT(st.st_mode))
    return state


def assert_same_tree(expected: dict, actual: dict, what: str = "restored tree") -> None:
    if expected == actual:
        return
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    lines = [f"{what} differs:"]
    lines += [f"  missing {k!r}" for k in missing[:20]]
    lines += [f"  extra   {k!r}" for k in extra[:20]]
    lines += [f"  differs {k!r}: expected {expected[k]} got {actual[k]}" for k in differ[:20]]
    raise AssertionError("\n".join(lines))


def file_contents(root: str | Path) -> dict[str, bytes]:
    """Relative path -> bytes for every regular file (for 'nothing written outside' checks)."""
    found = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                found[os.path.relpath(full, root)] = Path(full).read_bytes()
    return found


# -- the CLI -----------------------------------------------------------------------------------


def run(*args: str, expect: int | None = 0, cwd: str | Path | None = None, env: dict | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `casstore` console script; check the exit code unless `expect` is None."""
    command = [CASSTORE] if CASSTORE else [sys.executable, "-c", "from casstore.cli.main import main; main()"]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(command + [str(a) for a in args], capture_output=True, cwd=cwd, env=full_env,
                          timeout=timeout)
    if expect is not None and proc.returncode != expect:
        raise AssertionError(f"casstore {' '.join(map(str, args))} exited {proc.returncode}, expected {expect}\n"
                             f"stdout: {proc.stdout.decode(errors='replace')[-3000:]}\n"
                             f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}")
    return proc


# A shell without job control starts a background command (`pytest ... &`) with SIGINT ignored, and
# every process below it inherits that: Python then installs no KeyboardInterrupt handler, and a
# Ctrl-C test's SIGINT does nothing (its paused run resumes and stops at the next pause, for good:
# a 60 s timeout and a stopped process and its workers left behind). A terminal's Ctrl-C meets a
# foreground command with SIGINT at its default: this sets that, then execs the command (same pid).
_FOREGROUND = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); os.execv(sys.argv[1], sys.argv[1:])")


def as_from_a_terminal(command: list[str]) -> list[str]:
    """`command` (its first item a path) started as a terminal starts it: SIGINT at its default,
    unblocked, whatever this test run inherited."""
    return [sys.executable, "-c", _FOREGROUND, *command]


def run_isolated(cwd: str | Path, env: dict[str, str], *args: object, expect: int | None = 0,
                 timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `casstore` with exactly `env` (nothing inherited) and no stdin, so a command that would
    prompt for a password fails instead of waiting; check the exit code unless `expect` is None."""
    proc = subprocess.run([CASSTORE, *map(str, args)], capture_output=True, cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    if expect is not None:
        assert proc.returncode == expect, f"{args}: {proc.stderr.decode(errors='replace')}"
    return proc


def invoke(*args: str, expect: int | None = 0):
    """Run the CLI in-process with click's CliRunner (stderr kept apart from stdout)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if expect is not None and result.exit_code != expect:
        raise AssertionError(f"casstore {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                             f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}\n"
                             f"exception: {result.exception!r}")
    return result


def on_a_terminal(*args: str, columns: int = 100, timeout: float = 120) -> tuple[int, bytes]:
    """Run the console script with stderr on a pseudo-terminal: (exit code, what the terminal got)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))  # a fresh pty is 0x0
    try:
        proc = subprocess.run([CASSTORE, *args], stdout=subprocess.PIPE, stderr=slave, timeout=timeout)
        os.close(slave)
        seen = b""
        while True:
            try:
                block = os.read(master, 65536)
            except OSError:   # EIO once the last writer is gone
                break
            if not block:
                break
            seen += block
    finally:
        os.close(master)
    return proc.returncode, seen


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, exactly one line on stderr, no traceback; returns that line."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (0, None), f"expected failure, got exit 0: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# -- repositories ------------------------------------------------------------------------------


def init_repo(path: str | Path, *, avg: int = SMALL_CHUNKS, pack_size: int | None = None) -> Repository:
    """A new local repository with small chunks (and optionally small packs)."""
    config = RepoConfig.new(avg_size=avg, **({"pack_size": pack_size} if pack_size else {}))
    return Repository.init_local(str(path), load_settings(), config)


def open_repo(path: str | Path, remote_wrapper: Callable | None = None, fs=None) -> Repository:
    """Open a local repository, optionally through a remote wrapper or a file-system shim."""
    remote = LocalRemote(str(path), fs=fs, create=False)
    wrapped = remote_wrapper(remote) if remote_wrapper else remote
    return Repository(wrapped, read_config(remote), load_settings(), local_dir=remote.root)


def objects(repo_dir: str | Path, prefix: str) -> list[Path]:
    """Object files under `prefix` ('data', 'index', 'snapshots'), temp files left out."""
    top = Path(repo_dir) / prefix
    if not top.exists():
        return []
    return sorted(p for p in top.rglob("*") if p.is_file() and not p.name.startswith("."))


def pack_of(repo: Repository, kind: int, blob_id: bytes) -> Path:
    """The pack file holding a blob (its first location)."""
    loc = repo.load_index().locations(kind, blob_id)[0]
    return Path(repo.local_dir) / "data" / loc.pack_id[:2] / loc.pack_id


def flip_bit(path: str | Path, offset: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x10
    Path(path).write_bytes(bytes(data))


# -- hand-built (hostile) snapshots ------------------------------------------------------------

NOW_NS = 1_700_000_000_000_000_000


def file_entry(store, name: bytes, data: bytes, mode: int = 0o644, mtime_ns: int = NOW_NS) -> Entry:
    chunks = [store.add(KIND_DATA, data)[0]] if data else []
    return Entry(name, EntryType.FILE, mode, os.getuid(), os.getgid(), mtime_ns, len(data), 0, chunks)


def dir_entry(store, name: bytes, children: list[Entry], mode: int = 0o755, mtime_ns: int = NOW_NS) -> Entry:
    subtree = encode_tree_chain(children, lambda body: store.add(KIND_TREE, body)[0])
    return Entry(name, EntryType.DIR, mode, os.getuid(), os.getgid(), mtime_ns, 0, 0, subtree)


def symlink_entry(name: bytes, target: bytes, mtime_ns: int = NOW_NS) -> Entry:
    return Entry(name, EntryType.SYMLINK, 0o777, os.getuid(), os.getgid(), mtime_ns, len(target), 0, target)


def write_snapshot(repo: Repository, build: Callable[[object], list[Entry]], *, source: str = "/hostile",
                   time_ns: int | None = None, host: str = "testhost", summary: dict | None = None) -> str:
    """Store the entries `build(store)` returns as a root tree and commit a snapshot of them (with
    `summary` as the manifest's, if given)."""
    store = repo.blob_store()
    try:
        root = encode_tree_chain(build(store), lambda body: store.add(KIND_TREE, body)[0])
        store.flush()
    finally:
        store.close()
    manifest = SnapshotManifest(time_ns=time_ns or time.time_ns(), host=host, source=source, tree=root,
                                **({"summary": summary} if summary is not None else {}))
    return commit(repo, manifest)


def commit(repo: Repository, manifest: SnapshotManifest) -> str:
    """Write a snapshot manifest; return its id."""
    written = repo.write_snapshot(manifest)
    return written[0] if isinstance(written, tuple) else written  # (id, ObjectInfo) since sync landed
