"""How long one request may take: short for small objects, scaled to size for large ones (DESIGN.md "Verified reads").

Socket timeouts bound a stall (no byte for `read` seconds) and the time to connect. A large
object also needs time proportional to its size: a 16 MiB pack PUT is answered only once the
store has received and stored it. So a request for `size` bytes gets `read + size / min_rate`
before it is cut, where `min_rate` is the slowest transfer rate still worth waiting for. The
total time of one operation, retries included, is bounded in RetryingRemote (`deadline`).
A read whose size is not known up front is sized by the caller's `large` hint (Remote.get): the
storage layer never guesses it from the key, it does not know the repository's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the size assumed for a read hinted `large` whose size is not known up front (a whole pack)
PACK_SIZE_GUESS = 32 * 1024 * 1024


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0           # seconds to open a connection
    read: float = 15.0             # seconds a small answer may stall (CASSTORE_READ_TIMEOUT)
    min_rate: int = 256 * 1024     # bytes per second a large transfer may fall to (CASSTORE_MIN_READ_RATE)

    def for_size(self, size: int) -> float:
        """The read timeout for a request moving `size` bytes."""
        return self.read + size / max(1, self.min_rate)

    def for_request(self, size: int | None, *, large: bool = False) -> float:
        """A request's read timeout: by its size when known, else by the caller's hint (large or small)."""
        if size is None:
            size = PACK_SIZE_GUESS if large else 0
        return self.for_size(size)

    def is_long(self, size: int) -> bool:
        """True when moving `size` bytes at `min_rate` takes longer than a small answer may stall:
        such a request needs a read timeout scaled to its size."""
        return size / max(1, self.min_rate) > self.read
