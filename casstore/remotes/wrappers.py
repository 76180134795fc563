"""Cross-cutting behaviour around any remote: retries and request counting.

Each wrapper is itself a Remote around an `inner` one, so they stack
(`CountingRemote(RetryingRemote(open_remote(url)))` counts logical calls; the other order counts
attempts). Backends turn their SDK's own retries down, so RetryingRemote is the one place that
decides, and retries never multiply.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from casstore.errors import ObjectExists, ObjectNotFound, TransientError
from casstore.remotes.base import ObjectInfo, Remote

T = TypeVar("T")


class RemoteWrapper(Remote):
    """Passes every call to `inner`; subclasses change what they are about."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.url = inner.url
        self.takes_buffers = inner.takes_buffers

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        return self._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=False)

    def _put_cold(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        if type(self)._put is not RemoteWrapper._put:
            # a wrapper that overrides `_put` alone (fault injection) must see every put; the
            # hint then stops there, which only costs a storage class
            return self._put(key, data, if_absent=if_absent, if_match=if_match)
        return self._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=True)

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        """Every put, with its hint kept for the inner remote; subclasses override this one."""
        return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)

    def _get(self, key: str, offset: int, length: int | None) -> bytes:
        return self.inner.get(key, offset, length)

    def _stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def _delete(self, key: str) -> None:
        self.inner.delete(key)

    def setup_warnings(self) -> list[str]:
        return self.inner.setup_warnings()

    def close(self) -> None:
        self.inner.close()


class HookedRemote(RemoteWrapper):
    """Calls `before_write()` right before each put and delete: a fault-injection seam in the style
    of kopia's FaultyStorage (casstore._testing.crash_hook kills the process at the nth write)."""

    def __init__(self, inner: Remote, before_write: Callable[[], None]) -> None:
        super().__init__(inner)
        self.before_write = before_write

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        self.before_write()
        return super()._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=cold)

    def _delete(self, key: str) -> None:
        self.before_write()
        super()._delete(key)


class RetryingRemote(RemoteWrapper):
    """Retries TransientError (throttling, 5xx, network) with capped exponential backoff and jitter.

    Nothing else is retried: ObjectNotFound, ObjectExists, AccessDenied are answers, not accidents.
    A conditional put whose earlier attempt failed in transit may have landed anyway; when the
    retry then loses its condition but the stored bytes are exactly ours, the put succeeded.
    A listing that fails part-way is restarted and yields only keys it has not yielded before.
    """

    def __init__(self, inner: Remote, attempts: int = 5, base_delay: float = 0.2, max_delay: float = 5.0, *,
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random) -> None:
        super().__init__(inner)
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self._sleep: Callable[[float], None] = sleep
        self._jitter: Callable[[], float] = jitter

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): half fixed, half random."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return cap * (0.5 + self._jitter() / 2)

    def _retry(self, call: Callable[[int], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return call(attempt)
            except TransientError:
                if attempt == self.attempts:
                    raise
                self._sleep(self.delay(attempt))
        raise AssertionError("unreachable")

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        def put_once(attempt: int) -> ObjectInfo:
            try:
                return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
            except ObjectExists:
                if attempt > 1 and self._holds(key, data):
                    return self.inner.stat(key)
                raise

        return self._retry(put_once)

    def _holds(self, key: str, data: bytes) -> bool:
        try:
            return self.inner.get(key) == data
        except ObjectNotFound:
            return False

    def _get(self, key: str, offset: int, length: int | None) -> bytes:
        return self._retry(lambda _: self.inner.get(key, offset, length))

    def _stat(self, key: str) -> ObjectInfo:
        return self._retry(lambda _: self.inner.stat(key))

    def _delete(self, key: str) -> None:
        self._retry(lambda _: self.inner.delete(key))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        yielded: set[str] = set()
        for attempt in range(1, self.attempts + 1):
            try:
                for info in self.inner.list(prefix):
                    if info.key not in yielded:
                        yielded.add(info.key)
                        yield info
                return
            except TransientError:
                if attempt == self.attempts:
                    raise
                self._sleep(self.delay(attempt))


class CountingRemote(RemoteWrapper):
    """Counts calls per method (`counts`) and payload bytes (`bytes_up`, `bytes_down`).

    A call counts when it is made, whether or not it succeeds; a `list()` counts once however
    many pages it reads. Bytes count only for calls that succeeded. Thread-safe.
    """

    METHODS = ("put", "get", "stat", "list", "delete")

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(self.METHODS, 0)
        self.bytes_up = 0
        self.bytes_down = 0

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _count(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def _add_bytes(self, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.bytes_up += up
            self.bytes_down += down

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        self._count("put")
        info = self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
        self._add_bytes(up=len(data))
        return info

    def _get(self, key: str, offset: int, length: int | None) -> bytes:
        self._count("get")
        data = self.inner.get(key, offset, length)
        self._add_bytes(down=len(data))
        return data

    def _stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._count("list")
        return self.inner.list(prefix)

    def _delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)
