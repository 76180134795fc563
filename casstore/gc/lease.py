"""`gc/lease`: the one gc that may sweep or repack on a shared remote (design 9).

Taken by conditional create; holds host, pid and an expiry in storage time; renewed by
compare-and-swap on its etag while gc runs; deleted when gc is done. gc stops (LeaseLost) as
soon as a renewal fails. The put that takes the lease also tells gc the storage's notion of now.

A lease is stale, and may be taken over by compare-and-swap, when its expiry is more than
MAX_CLOCK_SKEW in the past by the storage's clock, or at once when it was held by a process of this
same host and boot that no longer runs (a gc that crashed). The storage's "now" for that judgement
comes from writing `clock` (layout.CLOCK_KEY; its last-modified), not the lease, and the clock skew
is checked against it first: a host whose clock runs ahead can no longer take a live lease over
(and lose it again to the skew check, stopping the holder meanwhile).

**Choice.** Right after taking the lease gc repeats the conditional create with other bytes: a
store that accepts it ignores conditional writes, and gc refuses to run there without
`--exclusive` (the design's "checked at init" is done at every gc, which needs no record).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

import msgpack

from casstore.errors import IntegrityError, ObjectExists, ObjectNotFound, RemoteError
from casstore.format.fields import is_int
from casstore.format.layout import CLOCK_KEY, LEASE_KEY
from casstore.gc.context import MAX_CLOCK_SKEW, ClockSkew, LeaseHeld, LeaseLost, NoConditionalWrites
from casstore.remotes.base import Remote

log = logging.getLogger(__name__)
LEASE_VERSION = 1


def lease_ttl(grace: float) -> float:
    """How long one renewal holds: a quarter of the grace period, between 30 s and 10 min."""
    return max(30.0, min(grace / 4, 600.0))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _when(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "an unknown time"
    return datetime.fromtimestamp(min(stamp, 253402300799), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, remote: Remote, *, host: str, ttl: float, clock: Callable[[], float],
                 local_clock: Callable[[], float]) -> None:
        self.remote, self.host, self.ttl = remote, host, ttl
        self.clock, self.local_clock = clock, local_clock
        self.etag: str | None = None
        self.storage_time = 0.0       # storage timestamp of our last write of the lease
        self.written_at = 0.0         # `clock()` when that write returned

    # -- the lease body ----------------------------------------------------------------------

    def body(self, expires: float, probe: bool = False) -> bytes:
        # the nonce makes every write's bytes unique: an S3 ETag is the content's MD5, so a
        # compare-and-swap must never see two writes with equal bytes as the same version
        doc = {"version": LEASE_VERSION, "host": self.host, "pid": os.getpid(), "boot_id": _boot_id(),
               "expires": expires, "probe": probe, "nonce": os.urandom(8)}
        body = msgpack.packb(doc)
        if msgpack.unpackb(body) != doc:   # read back before it leaves the process (design 5.5)
            raise IntegrityError("internal error: the gc lease does not decode to what was encoded")
        return body

    def now(self) -> float:
        """The storage's clock, estimated forward from our last write of the lease."""
        return self.storage_time + (self.clock() - self.written_at)

    def _wrote(self, info) -> None:
        self.etag, self.storage_time, self.written_at = info.etag, info.mtime, self.clock()

    # -- taking, renewing, releasing ---------------------------------------------------------

    def acquire(self, *, require_conditional: bool = True) -> Lease:
        provisional = self.body(self.local_clock() + self.ttl)
        try:
            self._wrote(self.remote.put(LEASE_KEY, provisional, if_absent=True))
        except ObjectExists:
            self._take_over_stale()
        self._check_skew()
        self._probe_conditional(require_conditional)
        self.renew()
        return self

    def storage_now(self) -> float:
        """The storage's clock, read without touching the lease: the timestamp of a write of `clock`."""
        return self.remote.put(CLOCK_KEY, msgpack.packb({"host": self.host, "nonce": os.urandom(8)})).mtime

    def _take_over_stale(self) -> None:
        """Take a stale lease over; its staleness is judged by the storage's clock, after the skew check."""
        now = self.storage_now()
        self._skew_ok(now)
        info = self.remote.stat(LEASE_KEY)
        holder = self._read_holder()
        if not self._stale(holder, info.mtime, now):
            raise LeaseHeld(f"another gc holds {LEASE_KEY} (host {holder.get('host', '?')}, pid "
                            f"{holder.get('pid', '?')}) until {_when(holder.get('expires'))}; try again later")
        log.warning("taking over the stale gc lease of host %s, pid %s", holder.get("host"), holder.get("pid"))
        try:
            self._wrote(self.remote.put(LEASE_KEY, self.body(now + self.ttl), if_match=info.etag))
        except ObjectExists:
            raise LeaseHeld("another gc took the stale gc lease first; try again later") from None

    def _read_holder(self) -> dict:
        try:
            doc = msgpack.unpackb(self.remote.get(LEASE_KEY))
            return doc if isinstance(doc, dict) else {}
        except ObjectNotFound:
            return {}
        except (ValueError, msgpack.UnpackException):
            return {}

    def _stale(self, holder: dict, written: float, storage_now: float) -> bool:
        expires = holder.get("expires")
        if not (is_int(expires) or type(expires) is float):    # msgpack's `true` is not a time
            expires = written + self.ttl
        if expires + MAX_CLOCK_SKEW < storage_now:   # a holder's expiry may be in its own clock
            return True
        same_boot = holder.get("host") == self.host and holder.get("boot_id") == _boot_id() != ""
        pid = holder.get("pid")
        return same_boot and is_int(pid) and pid != os.getpid() and not _pid_alive(pid)

    def _check_skew(self) -> None:
        try:
            self._skew_ok(self.storage_time)
        except ClockSkew:
            self.release()
            raise

    def _skew_ok(self, storage_now: float) -> None:
        skew = storage_now - self.local_clock()
        if abs(skew) > MAX_CLOCK_SKEW:
            raise ClockSkew(f"the storage's clock and this machine's differ by {skew:+.0f} s (more than "
                            f"{MAX_CLOCK_SKEW:.0f} s); fix the clock (NTP) before running gc")

    def _probe_conditional(self, require: bool) -> None:
        try:
            info = self.remote.put(LEASE_KEY, self.body(0.0, probe=True), if_absent=True)
        except ObjectExists:
            return
        self._wrote(info)
        if require:
            self.release()
            raise NoConditionalWrites(f"{self.remote.url} ignores conditional writes, so gc cannot exclude "
                                      "writers there; stop every writer and run gc with --exclusive")

    def renew(self) -> None:
        """Extend the lease by compare-and-swap; any failure stops gc."""
        try:
            self._wrote(self.remote.put(LEASE_KEY, self.body(self.now() + self.ttl), if_match=self.etag))
        except (ObjectExists, RemoteError) as exc:
            raise LeaseLost(f"lost the gc lease ({exc}); gc stopped") from exc

    def keep(self) -> None:
        """Renew when a quarter of the lease's time has passed since the last write."""
        if self.clock() - self.written_at >= self.ttl / 4:
            self.renew()

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        try:
            if self.remote.stat(LEASE_KEY).etag == self.etag:
                self.remote.delete(LEASE_KEY)
        except RemoteError as exc:
            log.warning("could not release the gc lease: %s", exc)
