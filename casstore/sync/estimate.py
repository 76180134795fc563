"""The one monthly cost estimate casstore shows: `sync` (and `--dry-run`), `stats`, `status` and
the dashboard all call `monthly_estimate` (issue 17: they used to disagree, and only `sync`
priced requests, which are a large part of a small repository's bill)."""

from __future__ import annotations

import os
import time

from casstore.remotes.registry import normalized_remote_url
from casstore.repo.pricing import is_directory, monthly_storage_cost
from casstore.sync.state import SyncState


def priced_with_history(stored_bytes: int, where: str | None, state: SyncState | None,
                        now: float | None = None) -> dict[str, dict]:
    """Price `stored_bytes` at `where`, plus the requests `state`'s syncs made in the last 30 days."""
    now = time.time() if now is None else now
    requests = state.requests_last_month(now) if state is not None else None
    return monthly_storage_cost(stored_bytes, where=where, requests=requests)


def monthly_estimate(local_dir: str | None, remote: str | None, stored_bytes: int, *,
                     measured: bool = False, now: float | None = None) -> dict[str, dict]:
    """The monthly cost of keeping this repository at `remote` (every provider's price when None).

    Storage: what the remote held after this host's last sync (the same measure `sync` reports),
    or `stored_bytes` (the repository's own size) before any sync or when it is `measured` on the
    remote itself. Requests: those this host's syncs to `remote` made in the last 30 days, recorded
    in the local repository `local_dir`."""
    state = _recorded(local_dir, remote)
    if state is not None and not measured and "stored_bytes" in state.last_sync:
        stored_bytes = int(state.last_sync["stored_bytes"])
    return priced_with_history(stored_bytes, remote, state, now)


def _recorded(local_dir: str | None, remote: str | None) -> SyncState | None:
    """The sync record of `remote` in `local_dir`, if one was written (reading creates nothing)."""
    if local_dir is None or remote is None or is_directory(remote):
        return None
    if not os.path.isdir(os.path.join(local_dir, "state")):
        return None
    state = SyncState(local_dir, normalized_remote_url(remote))
    return state if state.recorded else None
