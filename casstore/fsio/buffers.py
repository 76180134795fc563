"""Large buffers that are reused once nothing views them any more.

The chunker reads into blocks and hands out views of them (no copy per chunk) that the workers
hash and compress later; a sealed pack is framed into a buffer the upload thread writes from. So
a buffer cannot simply be overwritten by the next use. A fresh buffer each time was 1 GB of
zeroed, page-faulted memory per GB read (about 5% of a cold snapshot's CPU), and freed large
buffers make glibc keep much more memory around. Python already counts the views of a
bytearray: one with live views refuses to change size. So a buffer is free exactly when resizing
it succeeds, and no bookkeeping can drift from the truth.
"""

from __future__ import annotations

import threading
import time

# When every kept buffer is in use, wait this long (in rounds) for one before making another.
WAIT_ROUNDS, WAIT_SECONDS = 50, 0.001


class BufferPool:
    """Up to `keep` buffers of `size` bytes. When all are in use, wait a little for one to be
    released before making a new buffer that is not kept."""

    def __init__(self, size: int, keep: int = 4) -> None:
        self.size, self.keep = size, keep
        self._blocks: list[bytearray] = []
        self._lock = threading.Lock()   # two readers may ask at once: never hand one buffer to both

    def get(self) -> memoryview:
        """A view of a buffer nothing else views (its previous contents are garbage).

        A view, taken under the lock: the buffer counts as in use from the moment it is handed
        out, so a second caller can never be given it too."""
        with self._lock:
            for attempt in range(WAIT_ROUNDS + 1):
                for block in self._blocks:
                    if _unshared(block):
                        return memoryview(block)
                if len(self._blocks) < self.keep:
                    self._blocks.append(bytearray(self.size))
                    return memoryview(self._blocks[-1])
                if attempt < WAIT_ROUNDS:
                    time.sleep(WAIT_SECONDS)   # the workers drop their views as they finish chunks
            return memoryview(bytearray(self.size))   # still none free: one that is not kept

    def release(self) -> None:
        """Forget the kept buffers (a buffer still viewed lives on until its views go)."""
        with self._lock:
            self._blocks = []


def _unshared(block: bytearray) -> bool:
    """True when no memoryview of `block` is alive (shrinking a viewed bytearray raises)."""
    try:
        del block[-1]         # shrink first: growing back then stays within the allocation
    except BufferError:
        return False
    block.append(0)
    return True
