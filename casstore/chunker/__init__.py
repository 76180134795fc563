"""Content-defined chunking behind one small interface.

A chunker turns a binary stream into consecutive pieces. Every chunker has the same
`chunks(stream)` API; which one a repository uses, with its parameters, is fixed in its config
so that every host sharing the repository cuts identical data at identical points.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol

from casstore.chunker.fastcdc import FastCDCChunker
from casstore.chunker.fixed import FixedChunker
from casstore.errors import FormatError

__all__ = ["Chunker", "ChunkerParams", "FastCDCChunker", "FixedChunker", "chunker_from_params"]

ChunkerParams = dict[str, int | str]


class Chunker(Protocol):
    max_size: int

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield consecutive pieces of `stream`. A piece is valid only until the next one is yielded."""
        ...

    def chunks_of_fd(self, fd: int, read_ahead: int = 0) -> Iterator[memoryview]:
        """The same pieces from an open file descriptor, from its current offset; each stays valid
        after the next is yielded.

        `read_ahead` asks for that many bytes beyond the current read to be fetched in the
        background (a hint; a chunker may ignore it)."""
        ...

    def params(self) -> ChunkerParams:
        """The parameters to record in the repository config."""
        ...


def chunker_from_params(params: ChunkerParams) -> Chunker:
    algorithm = params.get("algorithm")
    if algorithm == FastCDCChunker.algorithm:
        return FastCDCChunker.from_params(params)
    if algorithm == FixedChunker.algorithm:
        return FixedChunker.from_params(params)
    raise FormatError(f"unknown chunker algorithm {algorithm!r} in repository config")
