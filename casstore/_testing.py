"""Test-only pause points, so protocol tests can stop a process exactly where a race matters.

`CASSTORE_PAUSE_AT=<name>` makes the process stop itself (SIGSTOP) when it reaches the named
point, after touching `CASSTORE_PAUSE_FILE` (if set) so the test knows it got there; the test
resumes it with SIGCONT. Unset in normal use: then `pause_point` is a dictionary lookup.
These are hooks, not settings, which is why they are read here and not in casstore.settings.

`set_pause_hook(fn)` routes every pause point to `fn(name)` instead, in this process: the
exploration tests (tests/explore.py) park each actor's thread there until their scheduler says go.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def set_pause_hook(hook: Callable[[str], None] | None) -> None:
    global _hook
    _hook = hook


def pause_point(name: str) -> None:
    if _hook is not None:
        _hook(name)
        return
    if os.environ.get("CASSTORE_PAUSE_AT") != name:
        return
    marker = os.environ.get("CASSTORE_PAUSE_FILE")
    if marker:
        with open(marker, "w") as fh:
            fh.write(name)
    os.kill(os.getpid(), signal.SIGSTOP)
