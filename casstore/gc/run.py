"""gc: delete the data no snapshot needs (design 9).

    collect_garbage(repo)                     one gc run; returns a GcReport

- The local repository (one writer): under the exclusive repository lock, delete at once
  (`gc_local`), in the sweep's order.
- A remote shared by many hosts: lock-free and two-phase, under `gc/lease` (`gc_lease`). Each
  run first sweeps the plans that are at least one grace period old (`gc_sweep`), then marks
  (`gc_mark`): it condemns and repacks, writing a new plan, and deletes nothing. "gc to
  completion" is repeating runs, a grace period apart, until one has nothing to condemn or sweep.
- A remote with `exclusive=True`: the user guarantees no writer runs; deletes at once like the
  local repository (the only way to gc a store that ignores conditional writes).

gc stops, deleting nothing more, on any listing error, any index, snapshot, tree or pack it cannot
fetch and verify, an indexed pack missing from the pack listing, a lost lease, or clocks that
disagree (GcError and its subclasses in `gc_common`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from casstore._testing import CRASH_AT, crash_hook
from casstore.gc.atonce import collect_at_once
from casstore.gc.context import (
    ClockSkew,
    GcAborted,
    GcContext,
    GcError,
    GcReport,
    GraceTooShort,
    LeaseHeld,
    LeaseLost,
    NoConditionalWrites,
    boottime,
)
from casstore.gc.lease import Lease, lease_ttl
from casstore.gc.listing import delete_retracted, load_view
from casstore.gc.mark import mark
from casstore.gc.sweep import sweep
from casstore.remotes.base import Remote
from casstore.remotes.wrappers import HookedRemote
from casstore.repo.core import RepoCore
from casstore.repo.lock import repository_lock


def collect_garbage(repo: RepoCore, *, dry_run: bool = False, grace: float | None = None, exclusive: bool = False,
                    clock: Callable[[], float] = boottime, local_clock: Callable[[], float] = time.time) -> GcReport:
    """One gc run on `repo` (an open Repository, local or remote); see the module docstring.

    `clock` measures elapsed time (CLOCK_BOOTTIME), `local_clock` is this machine's wall clock;
    both are injectable so tests can run a grace period of hours in milliseconds.
    """
    started = time.monotonic()
    requests_before = _requests(repo)
    report = GcReport(location=repo.location, dry_run=dry_run)
    ctx = GcContext(repo, _hooked(repo.remote), effective_grace(repo, grace, exclusive), report,
                    dry_run=dry_run, clock=clock, local_clock=local_clock,
                    host=repo.settings.host or socket.gethostname())
    if repo.local_dir is not None:
        report.mode = "local"
        with repository_lock(repo.local_dir, exclusive=True, wait=False):
            collect_at_once(ctx)
    elif exclusive:
        report.mode = "exclusive"
        with _leased(ctx, require_conditional=False):
            collect_at_once(ctx)
    else:
        with _leased(ctx, require_conditional=True):
            _two_phase(ctx)
    if not dry_run:
        repo.load_index()   # the in-memory index and the local index cache follow what gc deleted
    report.requests = _requests(repo) - requests_before
    report.seconds = round(time.monotonic() - started, 3)
    return report


def effective_grace(repo: RepoCore, requested: float | None, exclusive: bool) -> float:
    """The repository's grace period (design 9): fixed at init, the same for every writer and gc.

    A longer `requested` grace is honoured (it only keeps more); a shorter one is refused, since
    writers checkpoint and re-check by the repository's grace, unless gc runs `exclusive` (no
    writer runs, nothing waits for a grace period). No host setting (CASSTORE_GRACE) shortens it.
    """
    fixed = float(repo.config.grace_seconds)
    if requested is None:
        return fixed
    if requested < fixed and not exclusive and repo.local_dir is None:
        raise GraceTooShort(f"--grace {requested:.0f}s is shorter than the repository's grace period "
                            f"({fixed:.0f}s, fixed at init); writers rely on it. Use --exclusive only when no "
                            "writer runs")
    return max(fixed, requested)


def _two_phase(ctx: GcContext) -> None:
    view = load_view(ctx)
    ctx.report.snapshots, ctx.report.live_blobs = len(view.snapshots), len(view.live)
    if sweep(ctx, view) and not ctx.dry_run:
        view = load_view(ctx)   # mark on what is there now
    elif not ctx.dry_run:
        delete_retracted(ctx, view)   # withdrawn by their writers: safe to delete at any time
    mark(ctx, view)


@contextmanager
def _leased(ctx: GcContext, *, require_conditional: bool) -> Iterator[None]:
    if ctx.dry_run:
        yield
        return
    lease = Lease(ctx.remote, host=ctx.host, ttl=lease_ttl(ctx.grace), clock=ctx.clock,
                  local_clock=ctx.local_clock)
    ctx.lease = lease.acquire(require_conditional=require_conditional)
    try:
        yield
    finally:
        ctx.lease = None
        lease.release()


def _hooked(remote: Remote) -> Remote:
    """The remote gc writes through: wrapped only when a crash test asks (casstore._testing)."""
    hook = crash_hook(CRASH_AT)
    return remote if hook is None else HookedRemote(remote, hook)


def _requests(repo: RepoCore) -> int:
    total = getattr(repo.remote, "total", None)
    return total() if callable(total) else 0


__all__ = ["ClockSkew", "GcAborted", "GcError", "GcReport", "GraceTooShort", "LeaseHeld", "LeaseLost",
           "NoConditionalWrites", "collect_garbage"]
