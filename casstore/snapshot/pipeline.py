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
from typing import Any, Protocol, TypeVar

from casstore.format import codec
from casstore.format.pack import KIND_DATA
from casstore.fsio.heap import trim_heap
from casstore.fsio.lazypool import LazyPool
from casstore.repo.blobstore import BlobStore

Prepared = tuple[bytes, codec.Encoded | None, int]  # id, encoded (None if already stored), raw length
Deliver = Callable[[bytes, int, int], None]           # (id, raw length, stored bytes added)
T = TypeVar("T")


class Started(Protocol):
    """A task under way: a Future, or a ticket of a worker process (fsio/workers.py)."""

    def result(self) -> Any: ...


class _Done:
    """A task already done (a `Started`): a repeated zero chunk's result."""

    def __init__(self, value: Prepared) -> None:
        self.value = value

    def result(self) -> Prepared:
        return self.value


class ChunkPipeline:
    def __init__(self, store: BlobStore, workers: int | None = None, window: int = 8,
                 window_bytes: int = 16 * 1024 * 1024) -> None:
        self.store = store
        self._pool = LazyPool(workers or os.cpu_count() or 2, "casstore-chunk")
        self._in_flight: deque[tuple[Started, Callable[[Any], None], int]] = deque()
        self._window, self._window_bytes = window, window_bytes
        self._bytes_in_flight = 0
        self._lock = threading.Lock()
        # deltas on two threads of their own, not on every worker: each holds its base's plaintext
        # and about 20 MiB of zstd tables and dictionary while it is compressed and verified, which
        # glibc then keeps in that thread's heap; on every worker, incremental snapshots of the
        # real-data benchmark peaked at 230-250 MiB instead of about 125 (issue 17). One thread was
        # the snapshot's tail (deltas 1.42x the no-delta wall, quiet run); two: 1.23x at 134 MiB peak,
        # three: 1.23x again (benchmarks/RESULTS.md, "Later snapshots: deltas on two threads")
        self._delta_pool = LazyPool(2, "casstore-delta")

    def _prepare(self, data: bytes | memoryview, blob_id: bytes | None = None, hint: bytes | None = None) -> Prepared:
        blob_id = blob_id or codec.blob_id(data, self.store.sealer)
        if self.store.has(KIND_DATA, blob_id):
            return blob_id, None, len(data)
        if hint is None:
            return blob_id, codec.encode_verified(data, self.store.level, blob_id, self.store.sealer, KIND_DATA), \
                len(data)
        return self._prepare_delta(data, blob_id, hint)    # on the delta thread: `submit` queues it there

    def _prepare_delta(self, data: bytes | memoryview, blob_id: bytes, hint: bytes) -> Prepared:
        try:
            base = self.store.delta_base(hint, blob_id)
            return blob_id, codec.encode_verified(data, self.store.level, blob_id, self.store.sealer, KIND_DATA,
                                                  base=base), len(data)
        finally:
            self.store.forget_bases()
            trim_heap()      # its zstd working memory and base, freed, would otherwise stay in RSS

    def prepare_many(self, datas: list[bytes]) -> list[Prepared]:
        """Hash a batch of small chunks, and compress and verify those not yet stored (on the calling
        thread): in a plain repository in one call each way (`encode_verified_many`)."""
        store = self.store
        if store.sealer is not None:
            return [self._prepare(data) for data in datas]
        ids = [codec.blob_id(data) for data in datas]
        prepared: list[Prepared] = [(blob_id, None, len(data)) for blob_id, data in zip(ids, datas, strict=True)]
        new = [i for i, blob_id in enumerate(ids) if not store.has(KIND_DATA, blob_id)]
        encoded = codec.encode_verified_many([datas[i] for i in new], store.level, [ids[i] for i in new])
        for i, envelope in zip(new, encoded, strict=True):
            prepared[i] = (ids[i], envelope, len(datas[i]))
        return prepared

    def submit(self, data: bytes | memoryview, deliver: Deliver, blob_id: bytes | None = None,
               hint: bytes | None = None) -> None:
        """Queue one chunk; `deliver(id, raw length, stored bytes added)` runs later, under the lock,
        on whichever thread submits or drains then. `blob_id` when already known; `hint`: the chunk
        this one probably replaces (snapshot/deltahints.py), a candidate delta base."""
        # a hinted chunk goes straight to the delta thread, not through a worker that would wait on
        # it: the workers go on with the next chunks meanwhile (issue 17)
        self.submit_task(lambda: self._prepare(data, blob_id, hint),
                         lambda prepared: deliver(*self.store_prepared(prepared)), len(data),
                         self._pool if hint is None else self._delta_pool)

    def submit_task(self, task: Callable[[], T], apply: Callable[[T], None], size: int,
                    pool: LazyPool | None = None) -> None:
        """Queue `task` for a worker (or `pool`); `apply(its result)` runs later, in submission order,
        under the lock. A batch of small files is one task: no thread round trip per file
        (`smallfiles.py`)."""
        with self._lock:
            self._make_room(size)
            self._in_flight.append(((pool or self._pool).submit(task), apply, size))
            self._bytes_in_flight += size

    def add_started(self, started: Started, apply: Callable[[Any], None], size: int) -> None:
        """Queue a task already started elsewhere (a batch sent to a worker process: its ticket);
        `apply(its result)` runs in submission order with the rest. The window counts it."""
        with self._lock:
            self._in_flight.append((started, apply, size))
            self._bytes_in_flight += size
            self._make_room(0)

    def store_prepared(self, prepared: Prepared) -> tuple[bytes, int, int]:
        """Add a prepared chunk to the store (under the lock): (id, raw length, stored bytes added)."""
        blob_id, encoded, raw_length = prepared
        added = self.store.add_encoded(KIND_DATA, blob_id, encoded, raw_length) if encoded is not None else 0
        return blob_id, raw_length, added

    def submit_known(self, blob_id: bytes, raw_length: int, deliver: Deliver) -> None:
        """Queue a chunk whose id is known and whose blob an earlier `submit` stores (a zero chunk
        repeated through a hole): nothing to hash or compress, delivered in order like the rest."""
        done = _Done((blob_id, None, raw_length))
        with self._lock:
            self._make_room(0)
            self._in_flight.append((done, lambda prepared: deliver(*self.store_prepared(prepared)), 0))

    def _make_room(self, size: int) -> None:
        while self._in_flight and (len(self._in_flight) >= self._window
                                   or self._bytes_in_flight + size > self._window_bytes):
            self._apply_oldest()

    def _apply_oldest(self) -> None:
        future, apply, size = self._in_flight.popleft()
        self._bytes_in_flight -= size
        apply(future.result())

    def busy(self) -> bool:
        """Chunks or batches in flight, not yet applied."""
        return bool(self._in_flight)

    def drain(self) -> None:
        with self._lock:
            while self._in_flight:
                self._apply_oldest()

    def close(self) -> None:
        self._in_flight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._delta_pool.shutdown(wait=True, cancel_futures=True)
