"""Every test hook, in one place: environment variables named CASSTORE_TEST_*, read at the moment
a hook is reached (unset in normal use, when each hook costs a dictionary lookup).

- `CASSTORE_TEST_PAUSE_AT=<name>`: `pause_point(name)` stops the process (SIGSTOP) when it
  reaches that point, after writing the name to `CASSTORE_TEST_PAUSE_FILE` (if set) so the test
  knows it got there; the test resumes it with SIGCONT. Points: sync/copier.py (after-pack-upload,
  between-listings, before-index-put, after-recheck, after-snapshot-put), gc/sweep.py (sweep-after-list,
  sweep-before-packs, sweep-before-plans), gc/mark.py (mark-before-plan) and snapshot/builder.py
  (snapshot-before-index, snapshot-before-commit), fsio/workers.py (restore-awaiting-answer,
  snapshot-awaiting-answer: the parent waits for a worker's answer, jobs in flight). It stops at
  every pass (gc_soak holds writers at each one); with `CASSTORE_TEST_PAUSE_ONCE=1` only at the
  first, so a test that signals the stopped process and resumes it never finds it stopped again
  at the next pass, before the signal's effect (a Ctrl-C's KeyboardInterrupt) ends it.
- `set_pause_hook(fn)` routes every pause point to `fn(name)` instead, in this process: the
  exploration tests (tests/explore.py) park each actor's thread there until their scheduler says go.
- `CASSTORE_TEST_CRASH_AT=<n>`: gc SIGKILLs itself right before its nth mutating storage call (a
  put or a delete, counted across the run): `crash_hook(CRASH_AT)` gives the function gc's remote
  calls before each write (remotes/wrappers.py HookedRemote), so crash tests can loop over n.
- `CASSTORE_TEST_FAULTS="seed=3,flip=0.05,..."`: every remote a process opens by URL is wrapped
  in a seeded fault injector (remotes/wrappers.py FaultyRemote, `faults_from_env`).
- `CASSTORE_TEST_CRASH_AT_IO=<n>`: any command SIGKILLs itself at its nth durability call (temp
  write, fsync, rename, link, unlink, directory fsync: fsio/durable.py FileSystem).
- `CASSTORE_TEST_WEAK_KDF=1`: new key slots use the cheapest Argon2id parameters (64 KiB, one
  pass), so tests that create many encrypted repositories in subprocesses stay quick
  (`weak_kdf()`, repo/keys.py). Never for real slots.
- `CASSTORE_TEST_CLOCK_FILE=<path>`: a new snapshot records the epoch seconds in that file as its
  time (`snapshot_time_ns`, snapshot/builder.py), so acceptance tests play days of backups through
  `serve` and `schedule --once` processes in seconds.

Binding: a module imports a hook by name (`from casstore._testing import pause_point`); an
in-process test replaces it on that module (`monkeypatch.setattr(copier, "pause_point", ...)`).
These are hooks, not settings, which is why they are read here and not in casstore.settings.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

PAUSE_AT = "CASSTORE_TEST_PAUSE_AT"
PAUSE_FILE = "CASSTORE_TEST_PAUSE_FILE"
PAUSE_ONCE = "CASSTORE_TEST_PAUSE_ONCE"
CRASH_AT = "CASSTORE_TEST_CRASH_AT"
CRASH_AT_IO = "CASSTORE_TEST_CRASH_AT_IO"
CLOCK_FILE = "CASSTORE_TEST_CLOCK_FILE"
FAULTS = "CASSTORE_TEST_FAULTS"
WEAK_KDF = "CASSTORE_TEST_WEAK_KDF"

_hook: Callable[[str], None] | None = None
_paused = False     # this process stopped at a pause point already (PAUSE_ONCE)


def set_pause_hook(hook: Callable[[str], None] | None) -> None:
    global _hook
    _hook = hook


def pausing(name: str) -> bool:
    """Whether `pause_point(name)` would do anything now: a loop over many files asks once (each
    `pause_point` reads the environment: about 1 us, a tenth of a small file's read)."""
    return _hook is not None or os.environ.get(PAUSE_AT) == name


def pause_point(name: str) -> None:
    global _paused
    if _hook is not None:
        _hook(name)
        return
    wanted = os.environ.get(PAUSE_AT)
    if wanted is None or wanted != name:    # never stops a process that was not asked to (a None name)
        return
    if _paused and os.environ.get(PAUSE_ONCE) == "1":
        return
    _paused = True
    marker = os.environ.get(PAUSE_FILE)
    if marker:
        with open(marker, "w") as fh:
            fh.write(name)
    os.kill(os.getpid(), signal.SIGSTOP)


def crash_hook(variable: str) -> Callable[[], None] | None:
    """With `variable` (CRASH_AT or CRASH_AT_IO) set to n, a function that kills this process on
    its nth call; else None."""
    limit = os.environ.get(variable)
    if not limit:
        return None
    counter = [0]

    def count_and_maybe_die() -> None:
        counter[0] += 1
        if counter[0] >= int(limit):
            os.kill(os.getpid(), signal.SIGKILL)

    return count_and_maybe_die


def snapshot_time_ns(now_ns: int) -> int:
    """The time a new snapshot records: `now_ns`, unless `CASSTORE_TEST_CLOCK_FILE` names a file
    holding epoch seconds (acceptance tests play 35 days of backups in seconds, through `serve` and
    `schedule --once` processes, by rewriting that file between runs)."""
    path = os.environ.get(CLOCK_FILE)
    if not path:
        return now_ns
    with open(path) as fh:
        return int(float(fh.read().strip()) * 1e9)


def weak_kdf() -> bool:
    """Whether new key slots take the cheapest KDF parameters (CASSTORE_TEST_WEAK_KDF, tests only)."""
    return os.environ.get(WEAK_KDF) == "1"
