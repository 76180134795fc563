"""An in-memory remote: the fast reference backend for tests, with an injectable storage clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from casstore.errors import ObjectExists, ObjectNotFound
from casstore.remotes.base import ObjectInfo, Remote, read_range


class MemoryRemote(Remote):
    """Objects in a dict. `clock` answers the storage's notion of now (seconds since the epoch)."""

    def __init__(self, clock: Callable[[], float] = time.time, name: str = "memory") -> None:
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._version = 0
        self.url = f"memory://{name}"

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        with self._lock:
            current = self._objects.get(key)
            if if_absent and current is not None:
                raise ObjectExists(key)
            if if_match is not None and (current is None or current[1].etag != if_match):
                raise ObjectExists(f"{key}: etag does not match")
            self._version += 1
            info = ObjectInfo(key, len(data), self._clock(), f"v{self._version}")
            self._objects[key] = (bytes(data), info)
            return info

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        data, _ = self._lookup(key)
        return read_range(data, key, offset, length)

    def _stat(self, key: str) -> ObjectInfo:
        return self._lookup(key)[1]

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            infos = [info for key, (_, info) in self._objects.items() if key.startswith(prefix)]
        return iter(infos)

    def _delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def _lookup(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound(key)
        return found
