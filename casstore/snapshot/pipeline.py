"""The chunk pipeline: hash, compress and verify chunks on worker threads.

BLAKE3 and zstd release the GIL, so with the main thread reading and cutting (the FastCDC loop
also releases it) every core is busy. Results are applied in submission order, one at a time
under the pipeline's lock (the walk and the side reader both submit), so the blob store needs no
locking for its packs. The number of chunks in flight is bounded, which bounds memory whatever
the file sizes.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from casstore.format import codec
from casstore.format.pack import KIND_DATA
from casstore.repo.blobstore import BlobStore

Prepared = tuple[bytes, codec.Encoded | None, int]  # id, encoded (None if already stored), raw length
Deliver = Callable[[bytes, int, int], None]           # (id, raw length, stored bytes added)


class ChunkPipeline:
    def __init__(self, store: BlobStore, workers: int | None = None, window: int = 8,
                 window_bytes: int = 16 * 1024 * 1024) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(workers or os.cpu_count() or 2, thread_name_prefix="casstore-chunk")
        self._in_flight: deque[tuple[Future, Deliver, int]] = deque()
        self._window, self._window_bytes = window, window_bytes
        self._bytes_in_flight = 0
        self._lock = threading.Lock()

    def _prepare(self, data: bytes | memoryview) -> Prepared:
        blob_id = codec.blob_id(data, self.store.sealer)
        if self.store.has(KIND_DATA, blob_id):
            return blob_id, None, len(data)
        return blob_id, codec.encode_verified(data, self.store.level, blob_id, self.store.sealer, KIND_DATA), len(data)

    def submit(self, data: bytes | memoryview, deliver: Deliver) -> None:
        """Queue one chunk; `deliver(id, raw length, stored bytes added)` runs later, under the lock,
        on whichever thread submits or drains then."""
        with self._lock:
            while self._in_flight and (len(self._in_flight) >= self._window
                                       or self._bytes_in_flight + len(data) > self._window_bytes):
                self._apply_oldest()
            self._in_flight.append((self._pool.submit(self._prepare, data), deliver, len(data)))
            self._bytes_in_flight += len(data)

    def _apply_oldest(self) -> None:
        future, deliver, size = self._in_flight.popleft()
        self._bytes_in_flight -= size
        blob_id, encoded, raw_length = future.result()
        added = self.store.add_encoded(KIND_DATA, blob_id, encoded, raw_length) if encoded is not None else 0
        deliver(blob_id, raw_length, added)

    def drain(self) -> None:
        with self._lock:
            while self._in_flight:
                self._apply_oldest()

    def close(self) -> None:
        self._in_flight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
