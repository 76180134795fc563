"""A thread pool made on its first task.

A no-change snapshot submits nothing (no chunk, no pack, no side read), yet made three pools:
importing `concurrent.futures` for them was 22M of its ~600M instructions (3.5%). `LazyPool`
imports and makes the pool when the first task comes; until then it is a few attributes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

T = TypeVar("T")


class LazyPool:
    def __init__(self, workers: int, name: str) -> None:
        self._workers, self._name = workers, name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        pool = self._pool
        if pool is None:
            with self._lock:      # two threads' first tasks make one pool
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
                pool = self._pool
        return pool.submit(fn, *args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
