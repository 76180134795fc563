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
