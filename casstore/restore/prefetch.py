"""Read blobs ahead on worker threads, hand them out in order.

Restore and sync read many blobs one after another; fetching, decompressing and verifying them
(file reads, zstd and BLAKE3 all release the GIL) on a small pool while the caller writes keeps
every core busy. The window bounds how many decoded blobs wait in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from casstore.errors import CasstoreError


class Prefetcher:
    """Blobs in the order given to `plan`, each fetched ahead by `read` on the pool."""

    def __init__(self, read: Callable[[bytes], bytes], pool: ThreadPoolExecutor, window: int = 8) -> None:
        self._read, self._pool, self._window = read, pool, window
        self._planned: deque[bytes] = deque()
        self._in_flight: deque[tuple[bytes, Future]] = deque()

    def plan(self, blob_ids: Iterable[bytes]) -> None:
        self._planned.extend(blob_ids)
        self._top_up()

    def _top_up(self) -> None:
        while self._planned and len(self._in_flight) < self._window:
            blob_id = self._planned.popleft()
            self._in_flight.append((blob_id, self._pool.submit(self._read, blob_id)))

    def take(self, blob_id: bytes) -> bytes:
        """The next planned blob, which must be `blob_id`."""
        if not self._in_flight:
            self._top_up()
        if not self._in_flight or self._in_flight[0][0] != blob_id:
            raise CasstoreError("internal error: blobs taken out of their planned order")
        _, future = self._in_flight.popleft()
        self._top_up()
        return future.result()

    def skip(self, blob_ids: Iterable[bytes]) -> None:
        """Drop planned blobs that will not be taken (their file is not written after all)."""
        for blob_id in blob_ids:
            if self._in_flight and self._in_flight[0][0] == blob_id:
                self._in_flight.popleft()[1].cancel()
            elif self._planned and self._planned[0] == blob_id:
                self._planned.popleft()
        self._top_up()

    def close(self) -> None:
        for _, future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        self._planned.clear()
