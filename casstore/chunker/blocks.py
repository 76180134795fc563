"""Read blocks that are reused once no chunk refers to them any more.

The chunker hands out views into its read blocks (no copy per chunk), and the workers hash and
compress them later, so a block cannot simply be overwritten by the next read. A fresh block per
read was 1 GB of zeroed, page-faulted memory per GB read (about 5% of a cold snapshot's CPU).
Python already counts the views of a bytearray: one with live views refuses to change size. So a
block is free exactly when resizing it succeeds, and no bookkeeping can drift from the truth.
"""

from __future__ import annotations


class BlockPool:
    """Up to `keep` blocks of `size` bytes; a new, unpooled block when all of them are in use."""

    def __init__(self, size: int, keep: int = 4) -> None:
        self.size, self.keep = size, keep
        self._blocks: list[bytearray] = []

    def get(self) -> bytearray:
        """A block nothing else refers to (its previous contents are garbage)."""
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
