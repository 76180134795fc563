"""What every part of gc shares: its errors, its report, and the context one run carries.

    GcError (CasstoreError)          gc stopped and deleted nothing more
    ├── GcAborted                    a listing, index, tree or pack could not be trusted
    ├── LeaseHeld                    another gc holds `gc/lease`
    ├── LeaseLost                    the lease could not be renewed; gc stopped
    ├── ClockSkew                    local clock and storage clock disagree by minutes
    ├── NoConditionalWrites          the store ignores conditional create (use --exclusive)
    └── GraceTooShort                --grace below the repository's grace period (use --exclusive)
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from casstore.errors import CasstoreError
from casstore.remotes.base import Remote
from casstore.repo.core import RepoCore

#: a pack whose dead blobs take at least this fraction of its blob bytes is repacked
REPACK_DEAD_FRACTION = 0.10
#: the largest difference between the local clock and the storage's that gc accepts (design 9)
MAX_CLOCK_SKEW = 300.0
DELETE_BATCH = 1000   # keys per delete_many call: S3's limit per request; the lease is kept between


class GcError(CasstoreError):
    """gc stopped; what it had not deleted yet stays."""


class GcAborted(GcError):
    """gc will not delete on the strength of what it saw (design 5.6)."""


class LeaseHeld(GcError):
    pass


class LeaseLost(GcError):
    pass


class ClockSkew(GcError):
    pass


class NoConditionalWrites(GcError):
    pass


class GraceTooShort(GcError):
    """A grace period shorter than the repository's was asked for on a shared remote."""


def boottime() -> float:
    """Elapsed seconds on a clock that keeps counting through suspend (design 9)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


@dataclass
class GcReport:
    location: str = ""
    mode: str = "remote"                # "local" (exclusive lock), "remote" (two-phase), "exclusive"
    dry_run: bool = False
    snapshots: int = 0
    live_blobs: int = 0
    plans_swept: int = 0
    packs_kept: int = 0                 # condemned, but a snapshot needs them: dropped from the plan
    packs_condemned: int = 0
    bytes_condemned: int = 0
    packs_repacked: int = 0
    bytes_repacked: int = 0
    packs_written: int = 0
    bytes_written: int = 0
    plan: str | None = None
    packs_deleted: int = 0
    indexes_deleted: int = 0
    plans_deleted: int = 0
    bytes_deleted: int = 0
    would_free: int = 0                 # dry run: bytes the sweep and the mark would free
    requests: int = 0
    seconds: float = 0.0

    @property
    def objects_deleted(self) -> int:
        return self.packs_deleted + self.indexes_deleted + self.plans_deleted

    @property
    def idle(self) -> bool:
        """Nothing condemned, swept or deleted: gc has run to completion."""
        return not (self.plans_swept or self.packs_condemned or self.objects_deleted or self.packs_written)

    def as_dict(self) -> dict:
        doc = {k: getattr(self, k) for k in self.__dataclass_fields__}
        doc["objects_deleted"] = self.objects_deleted
        return doc


class HeldLease(Protocol):
    """What a run needs of the lease it holds (gc/lease.py Lease)."""

    def now(self) -> float: ...

    def renew(self) -> None: ...

    def keep(self) -> None: ...


@dataclass
class GcContext:
    """One gc run: where it works, how long the grace period is, and which clocks it trusts."""

    repo: RepoCore
    remote: Remote
    grace: float
    report: GcReport
    dry_run: bool = False
    clock: Callable[[], float] = boottime            # elapsed time (lease renewal)
    local_clock: Callable[[], float] = time.time     # wall clock (skew check, dry runs)
    lease: HeldLease | None = None                   # a gc/lease.py Lease while one is held
    host: str = field(default_factory=socket.gethostname)

    def storage_now(self) -> float:
        """The storage's notion of now: from the lease gc just wrote (its own clock in a dry run)."""
        return self.lease.now() if self.lease is not None else self.local_clock()

    def keep_lease(self) -> None:
        if self.lease is not None:
            self.lease.keep()

    def origin(self) -> dict:
        return {"kind": "gc", "host": self.host, "session": os.urandom(8).hex()}

    def put(self, key: str, body: bytes):
        self.keep_lease()
        return self.remote.put(key, body)

    def delete_all(self, objects: list[tuple[str, int]], what: str) -> None:
        """Delete (key, size) pairs in batches (`Remote.delete_many`: on S3 one request per 1,000
        keys) and count them; the lease is renewed before each batch when it is due. Any key that
        could not be deleted stops gc there, as a failed single delete would."""
        for start in range(0, len(objects), DELETE_BATCH):
            batch = objects[start:start + DELETE_BATCH]
            self.keep_lease()
            errors = self.remote.delete_many([key for key, _ in batch])
            for key, size in batch:
                if key not in errors:
                    self.report.bytes_deleted += size
                    setattr(self.report, what, getattr(self.report, what) + 1)
            if errors:
                key, first = next(iter(sorted(errors.items())))
                raise type(first)(f"{len(errors)} of {len(batch)} deletions failed, first {key}: {first}")
