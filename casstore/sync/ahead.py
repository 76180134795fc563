"""Listings issued ahead, concurrently: the first reads of a sync do not wait for one another.

A sync with something to copy needs the remote's config, and listings of `gc/` and `snapshots/`;
none depends on another's answer, so with 2-10 s per answer, made one after another they add up.
(Its `index/` listing must wait for the `gc/` listing's answer, so it is not sent ahead: DESIGN.md
"Sync", plans strictly before indexes.) `ListingsAhead` starts the listings in threads when it is
made (the caller reads the config meanwhile) and answers the first `list(prefix)` of each with the
listing made then; every later call goes to the remote. The caller takes its protocol clock before
making it (DESIGN.md "Sync": the shortcut re-check counts from before the listings began). Remotes
are used from several threads already (parallel pack uploads); the listings only read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

from casstore.remotes.base import ObjectInfo, Remote
from casstore.remotes.wrappers import RemoteWrapper


class ListingsAhead(RemoteWrapper):
    """`inner`, with each of `prefixes` listed now in its own thread and handed out once."""

    def __init__(self, inner: Remote, prefixes: Iterable[str]) -> None:
        super().__init__(inner)
        prefixes = list(prefixes)
        self._lock = threading.Lock()
        self._pending: dict[str, Future[list[ObjectInfo]]] = {}
        if prefixes:
            pool = ThreadPoolExecutor(max_workers=len(prefixes), thread_name_prefix="casstore-list")
            # each listing is read to its end in its thread: a lazy listing would send nothing yet
            self._pending = {p: pool.submit(_read_listing, inner, p) for p in prefixes}
            pool.shutdown(wait=False)   # the threads end with their listing

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            ahead = self._pending.pop(prefix, None)
        if ahead is None:
            return self.inner.list(prefix)
        return iter(ahead.result())   # a failed listing raises here, as it would have inline

    def settle(self) -> None:
        """Wait for listings nobody will use (the open failed), so no request outlives the sync."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        wait(pending)


def _read_listing(remote: Remote, prefix: str) -> list[ObjectInfo]:
    return list(remote.list(prefix))
