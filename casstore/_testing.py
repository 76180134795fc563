"""Test-only pause points, so protocol tests can stop a process exactly where a race matters.

`CASSTORE_PAUSE_AT=<name>` makes the process stop itself (SIGSTOP) when it reaches the named
point, after touching `CASSTORE_PAUSE_FILE` (if set) so the test knows it got there; the test
resumes it with SIGCONT. Unset in normal use: then `pause_point` is a dictionary lookup.
These are hooks, not settings, which is why they are read here and not in casstore.settings.
"""

from __future__ import annotations

import os
import signal


def pause_point(name: str) -> None:
    if os.environ.get("CASSTORE_PAUSE_AT") != name:
        return
    marker = os.environ.get("CASSTORE_PAUSE_FILE")
    if marker:
        with open(marker, "w") as fh:
            fh.write(name)
    os.kill(os.getpid(), signal.SIGSTOP)


def snapshot_time_ns(now_ns: int) -> int:
    """The time a new snapshot records: `now_ns`, unless `CASSTORE_TEST_CLOCK_FILE` names a file
    holding epoch seconds (acceptance tests play 35 days of backups in seconds, through `serve` and
    `schedule --once` processes, by rewriting that file between runs)."""
    path = os.environ.get("CASSTORE_TEST_CLOCK_FILE")
    if not path:
        return now_ns
    with open(path) as fh:
        return int(float(fh.read().strip()) * 1e9)
