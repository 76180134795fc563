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


class BufferPool:
    """Up to `keep` buffers of `size` bytes; a new, unpooled one when all of them are in use."""

    def __init__(self, size: int, keep: int = 4) -> None:
        self.size, self.keep = size, keep
        self._blocks: list[bytearray] = []

    def get(self) -> bytearray:
        """A buffer nothing else views (its previous contents are garbage)."""
        for block in self._blocks:
            if _unshared(block):
                return block
        block = bytearray(self.size)
        if len(self._blocks) < self.keep:
            self._blocks.append(block)
        return block


def _unshared(block: bytearray) -> bool:
    """True when no memoryview of `block` is alive (shrinking a viewed bytearray raises)."""
    try:
        del block[-1]         # shrink first: growing back then stays within the allocation
    except BufferError:
        return False
    block.append(0)
    return True
