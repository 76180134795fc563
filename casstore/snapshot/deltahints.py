"""Which earlier chunk a changed chunk probably replaces: its candidate delta base (issue 17).

A changed file's chunks are matched against the same path's chunk ids in the previous snapshot
(the files cache). FastCDC re-synchronises after an edit, so unchanged chunks reappear; each one
seen realigns the two lists, and a new chunk's candidate is the old chunk at the same distance
after the last unchanged one, so a chunk inserted early in a file does not pair every later new
chunk with the wrong old one. (On the real releases of RESULTS.md it made no difference: their
edits change chunks in place. It costs nothing more: the ids hashed here are not hashed again.)
"""

from __future__ import annotations

from casstore.format import codec


class DeltaHints:
    """Candidate bases for one file's chunks, fed in file order."""

    def __init__(self, previous: list[bytes]) -> None:
        self._previous = previous
        self._position = {chunk_id: i for i, chunk_id in enumerate(previous)}
        self._shift = 0
        self._next = 0

    def __bool__(self) -> bool:
        return bool(self._previous)

    def next(self, data: bytes | memoryview) -> tuple[bytes, bytes | None]:
        """(id of this chunk, the old chunk it probably replaces or None). Hashes here, on the
        reading thread: the realignment needs every earlier chunk's id before the next one's hint."""
        k, self._next = self._next, self._next + 1
        chunk_id = codec.blob_id(data)
        old = self._position.get(chunk_id)
        if old is not None:
            self._shift = old - k
            return chunk_id, None
        at = k + self._shift
        return chunk_id, self._previous[at] if 0 <= at < len(self._previous) else None
