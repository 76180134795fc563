"""EntryList: one pack's blob entries as fixed-size records, not Python objects.

A writer keeps the entries of every pack of its session until the index naming them is written
(checkpoints and the final index list every pack of the session, design 9). As `BlobEntry`
objects that cost about 400 bytes a blob, which held an initial snapshot of 200k small files at
225 MiB (issue 14); as records it is 57 bytes a blob. A delta's base (a minority) is kept aside.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, overload

from casstore.format.pack import BlobEntry

_RECORD = struct.Struct(">B32sQQQ")     # kind, id, offset, length, raw length


class EntryList:
    """An immutable sequence of `BlobEntry`, in the order given, stored as packed records."""

    __slots__ = ("_records", "_bases")

    def __init__(self, entries: Iterable[BlobEntry]) -> None:
        records, bases, pack = bytearray(), {}, _RECORD.pack
        for i, e in enumerate(entries):
            records += pack(e.kind, e.id, e.offset, e.length, e.raw_length)
            if e.base is not None:
                bases[i] = e.base
        self._records = bytes(records)
        self._bases: dict[int, bytes] = bases

    def __len__(self) -> int:
        return len(self._records) // _RECORD.size

    def __iter__(self) -> Iterator[BlobEntry]:
        bases = self._bases
        for i, (kind, blob_id, offset, length, raw_length) in enumerate(_RECORD.iter_unpack(self._records)):
            yield BlobEntry(kind, blob_id, offset, length, raw_length, bases.get(i))

    @overload
    def __getitem__(self, i: int) -> BlobEntry: ...
    @overload
    def __getitem__(self, i: slice) -> list[BlobEntry]: ...

    def __getitem__(self, i: int | slice) -> BlobEntry | list[BlobEntry]:
        """As a list's: decoded index objects hold their entries as records too (format/index.py)."""
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError("entry index out of range")
        i %= len(self)
        kind, blob_id, offset, length, raw_length = _RECORD.unpack_from(self._records, i * _RECORD.size)
        return BlobEntry(kind, blob_id, offset, length, raw_length, self._bases.get(i))

    def as_lists(self) -> Iterator[list[Any]]:
        """Each entry as `BlobEntry.as_list()` gives it, without making the entry (index encoding)."""
        bases = self._bases
        for i, fields in enumerate(_RECORD.iter_unpack(self._records)):
            base = bases.get(i) if bases else None
            yield list(fields) if base is None else [*fields, base]

    def __contains__(self, entry: object) -> bool:
        return any(e == entry for e in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryList):
            return self._records == other._records and self._bases == other._bases
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None   # type: ignore[assignment]   # compared by value, like the list it stands for

    def __repr__(self) -> str:
        return f"EntryList({list(self)!r})"
