"""Test-only hooks for gc: die at the Nth write or delete, so crash tests can loop over N.

`CASSTORE_GC_CRASH_AT=<n>` makes gc SIGKILL itself right before its nth mutating remote call
(a put or a delete, counted across the whole run). Unset in normal use: `crashing(remote)`
then returns the remote unchanged. Hooks, not settings, which is why they are read here.
"""

from __future__ import annotations

import os
import signal

from casstore.remotes.base import Remote
from casstore.remotes.wrappers import RemoteWrapper

ENV = "CASSTORE_GC_CRASH_AT"


def crash_point(counter: list[int], limit: int) -> None:
    """Count one mutating call; kill this process when the count reaches `limit`."""
    counter[0] += 1
    if counter[0] >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


class CrashingRemote(RemoteWrapper):
    """Passes calls through, and dies right before the `limit`th put or delete."""

    def __init__(self, inner: Remote, limit: int) -> None:
        super().__init__(inner)
        self.limit, self.counter = limit, [0]

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None):
        crash_point(self.counter, self.limit)
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _delete(self, key: str) -> None:
        crash_point(self.counter, self.limit)
        super()._delete(key)


def crashing(remote: Remote) -> Remote:
    limit = os.environ.get(ENV)
    return CrashingRemote(remote, int(limit)) if limit else remote
