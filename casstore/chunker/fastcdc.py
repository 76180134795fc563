"""FastCDC (2020, normalized) through pyfastcdc's compiled implementation.

The gear table is XORed with a per-repository 63-bit seed, so cut points do not leak content
across repositories. The compiled (Cython) implementation is required: the pure-Python fallback
cuts about 600x slower, so importing it is refused rather than silently used.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Iterator
from typing import BinaryIO

from casstore.fsio.buffers import BufferPool
from casstore.fsio.readahead import hint_range


@functools.cache
def compiled() -> type:
    """pyfastcdc's compiled cutter, imported when the first chunker is made (not by every command
    that imports this package: a no-change snapshot never cuts, and the import costs ~5 ms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyfastcdc warns when it falls back to pure Python
        try:
            from pyfastcdc.cy import FastCDC
        except (ImportError, RuntimeWarning) as exc:  # pragma: no cover - install problem
            raise ImportError(
                "casstore needs pyfastcdc's compiled chunker; reinstall with PYFASTCDC_REQUIRE_CYTHON=1"
            ) from exc
    return FastCDC


# FastCDC normalization level (NC) from the paper; 1 matches fastcdc-rs and restic-like spreads
NORMALIZATION = 1


def new_seed() -> int:
    """A random non-zero seed for a new repository's gear table."""
    import secrets  # lazy: start-up time (only a new repository needs a seed)

    return secrets.randbits(63) | 1


class FastCDCChunker:
    algorithm = "fastcdc-2020"

    def __init__(self, min_size: int, avg_size: int, max_size: int, seed: int) -> None:
        if not 0 < seed < 2**63:
            raise ValueError("the chunker seed must be in 1 .. 2**63-1")
        self.min_size, self.avg_size, self.max_size, self.seed = min_size, avg_size, max_size, seed
        self._cdc = compiled()(avg_size, min_size=min_size, max_size=max_size,
                            normalized_chunking=NORMALIZATION, seed=seed)
        # three kept blocks, now that files share blocks (`_first_block`): on the real-data benchmark
        # the walk waited 0.02-0.06 s a snapshot for a free one (with four, one per file: 0.3-0.7 s);
        # the fourth was 10 MiB of peak RSS at the default sizes (issue 17)
        self._blocks = BufferPool(max_size + 2 * avg_size, keep=3)
        # per reading thread (the walk, the side reader): the unused end of the block its last file
        # ended in, where the next file starts when it fits whole
        self._rests = threading.local()

    @classmethod
    def from_params(cls, params: dict) -> FastCDCChunker:
        return cls(int(params["min_size"]), int(params["avg_size"]), int(params["max_size"]), int(params["seed"]))

    def params(self) -> dict:
        return {"algorithm": self.algorithm, "min_size": self.min_size, "avg_size": self.avg_size,
                "max_size": self.max_size, "normalization": NORMALIZATION, "seed": self.seed}

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        """The reference: pyfastcdc's own streaming cutter (its buffer is reused between chunks)."""
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def chunks_of_fd(self, fd: int, read_ahead: int = 0) -> Iterator[memoryview]:
        """Cut an open file from its current offset, yielding views that stay valid after the next
        chunk (no copies).

        The file is read in blocks of max + 2 x avg bytes, each into a block no chunk still
        refers to (casstore/buffers.py), so chunks handed to worker threads are never overwritten. A cut
        found in a block is the cut the streaming cutter would make when (a) the file ends in
        the block, (b) at least max_size bytes follow the chunk start (the cutter never looks
        further), or (c) at least avg_size bytes follow and the cut was found before the block's
        end (the cutter scans forward with the same masks and stops at the first cut; only a
        cut forced by the end of the data depends on how much data there is). Otherwise the
        tail moves to the next block.

        With `read_ahead`, the kernel is asked to read that many bytes beyond each block in the
        background, so the disk works while the block is cut, hashed and compressed.
        """
        tail = b""
        # file offset read up to, and hinted up to: cutting starts where the file offset is
        offset = hinted = os.lseek(fd, 0, os.SEEK_CUR)
        block = self._first_block(fd, offset)
        while True:
            block[:len(tail)] = tail
            filled, eof = _fill(fd, block, len(tail))
            offset += filled - len(tail)
            if read_ahead and not eof:
                start = max(offset, hinted)
                hinted = offset + read_ahead
                hint_range(fd, start, hinted - start)
            view = block[:filled]
            tail = b""
            for chunk in self._cdc.cut_buf(view):
                available = filled - chunk.offset
                if eof or available >= self.max_size or (available >= self.avg_size and chunk.length < available):
                    yield chunk.data
                else:
                    tail = bytes(view[chunk.offset:])   # a copy, so this block is free again
                    break
            if eof:
                self._rests.view = block[filled:] if len(block) - filled > self.min_size else None
                return
            del block, view   # this frame's own views must not keep the block busy
            chunk = None
            block = self._blocks.get()

    def _first_block(self, fd: int, offset: int) -> memoryview:
        """Where a file's reading starts: the rest of the block the last file on this thread ended
        in when the file fits in it whole (with one byte to see its end), else a free block.

        A block per file left most of each block unused by a 1-3 MiB file, yet kept busy until the
        file's chunks were stored: the walk waited 0.3-0.7 s a snapshot for a free block and its
        blocks were a quarter of the real-data snapshot's peak RSS (issue 17). A file that grows
        meanwhile is still cut right: cuts never depend on the block's size, and its later blocks
        are whole ones."""
        rest: memoryview | None = getattr(self._rests, "view", None)
        self._rests.view = None
        if rest is not None and _remaining(fd, offset) < len(rest):
            return rest
        del rest            # unshared again, so the pool may hand out that very block
        return self._blocks.get()


def _remaining(fd: int, offset: int) -> int:
    """Bytes of the file after `offset` now (it may grow while it is read)."""
    return os.fstat(fd).st_size - offset


def _fill(fd: int, view: memoryview, start: int) -> tuple[int, bool]:
    """Read into view[start:] until it is full or the file ends; return (bytes in it, eof)."""
    filled = start
    while filled < len(view):
        n = os.readv(fd, [view[filled:]])
        if n == 0:
            return filled, True
        filled += n
    return filled, False
