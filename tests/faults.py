"""A fault-injecting remote wrapper: failures, delays, short reads, listings that end early."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from casstore.errors import RemoteError, TransientError
from casstore.remotes.base import ObjectInfo
from casstore.remotes.wrappers import RemoteWrapper


class FaultyRemote(RemoteWrapper):
    """Fails a seeded fraction of calls (TransientError before or after the call takes effect),
    truncates some reads, delays some calls, and cuts some listings short with an error."""

    def __init__(self, inner, *, seed: int, failure_rate: float = 0.1, truncate_rate: float = 0.02,
                 delay_rate: float = 0.05, cut_listing_rate: float = 0.05) -> None:
        super().__init__(inner)
        self.rng = random.Random(seed)
        self.failure_rate, self.truncate_rate = failure_rate, truncate_rate
        self.delay_rate, self.cut_listing_rate = delay_rate, cut_listing_rate
        self.injected = 0

    def _maybe_fail(self, what: str) -> None:
        if self.rng.random() < self.delay_rate:
            time.sleep(0.005)
        if self.rng.random() < self.failure_rate:
            self.injected += 1
            raise TransientError(f"injected failure in {what}")

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        self._maybe_fail("put")
        info = super()._put(key, data, if_absent=if_absent, if_match=if_match)
        if self.rng.random() < self.failure_rate / 2:   # stored, but the answer is lost in transit
            self.injected += 1
            raise TransientError("injected failure after put")
        return info

    def _get(self, key: str, offset: int, length: int | None) -> bytes:
        self._maybe_fail("get")
        data = super()._get(key, offset, length)
        if data and self.rng.random() < self.truncate_rate:
            self.injected += 1
            return data[: len(data) // 2]
        return data

    def _stat(self, key: str) -> ObjectInfo:
        self._maybe_fail("stat")
        return super()._stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._maybe_fail("list")
        cut = self.rng.random() < self.cut_listing_rate
        items = list(super()._list(prefix))
        if cut:
            self.injected += 1
            yield from items[: len(items) // 2]
            raise RemoteError("injected: listing ended early")
        yield from items

    def _delete(self, key: str) -> None:
        self._maybe_fail("delete")
        super()._delete(key)
