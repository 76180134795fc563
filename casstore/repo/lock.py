"""The local repository lock (design 5.8): shared for every operation, exclusive for local gc.

An `fcntl` lock on `<repository>/lock`; the kernel drops it when the process dies, so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from casstore.errors import LockError
from casstore.fsio.private import open_private


@contextmanager
def repository_lock(repo_dir: str, *, exclusive: bool = False, wait: bool = True) -> Iterator[None]:
    fd = open_private(os.path.join(repo_dir, "lock"), os.O_RDWR)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            what = "exclusively (a gc is running?)" if not exclusive else "(another casstore process is using it)"
            raise LockError(f"the repository at {repo_dir} is locked {what}") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
