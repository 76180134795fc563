"""Fixed-size chunking: a reference chunker for tests (no dedup across shifted data)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO


class FixedChunker:
    algorithm = "fixed"

    def __init__(self, size: int) -> None:
        self.max_size = size

    @classmethod
    def from_params(cls, params: dict) -> FixedChunker:
        return cls(int(params["size"]))

    def params(self) -> dict:
        return {"algorithm": self.algorithm, "size": self.max_size}

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        while piece := stream.read(self.max_size):
            yield memoryview(piece)

    def chunks_of_fd(self, fd: int, read_ahead: int = 0) -> Iterator[memoryview]:
        with os.fdopen(os.dup(fd), "rb") as stream:
            yield from self.chunks(stream)
