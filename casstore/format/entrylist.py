"""EntryList: one pack's blob entries as fixed-size records, not Python objects.

A writer keeps the entries of every pack of its session until the index naming them is written
(checkpoints and the final index list every pack of the session, design 9). As `BlobEntry`
objects that cost about 400 bytes a blob, which held an initial snapshot of 200k small files at
225 MiB (issue 14); as records it is 57 bytes a blob. A delta's base (a minority) is kept aside.
A writer's lists go further: their records are written to a `RecordSpill` (an unnamed temporary
file) and read back when the index is encoded, so a session holds nothing per blob beyond the
index table (57 MB at a million new blobs was a fifth of an initial snapshot's peak RSS).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from itertools import starmap
from operator import attrgetter
from typing import Any, overload

from casstore.format.pack import BlobEntry
from casstore.format.spill import RecordSpill

_RECORD = struct.Struct(">B32sQQQ")     # kind, id, offset, length, raw length
_FIELDS = attrgetter("kind", "id", "offset", "length", "raw_length")
_BASE = attrgetter("base")


class EntryList:
    """An immutable sequence of `BlobEntry`, in the order given, stored as packed records (in memory,
    or in a `RecordSpill`: then each use reads them back)."""

    __slots__ = ("_records", "_bases", "_spill", "_at", "_count")

    def __init__(self, entries: Iterable[BlobEntry], spill: RecordSpill | None = None) -> None:
        if isinstance(entries, list):
            # packed in C (a pack of small files has tens of thousands of entries); bases are few
            records: bytes | bytearray = b"".join(starmap(_RECORD.pack, map(_FIELDS, entries)))
            bases = {i: e.base for i, e in enumerate(entries) if e.base is not None} \
                if any(map(_BASE, entries)) else {}
        else:     # entries decoded one at a time (an index object): never held as objects all at once
            records, bases = self._pack_each(entries)
        self._bases: dict[int, bytes] = bases
        self._count = len(records) // _RECORD.size
        self._spill, self._at = spill, 0
        if spill is None:
            self._records = bytes(records)
        else:
            self._records, self._at = b"", spill.append(records)

    @staticmethod
    def _pack_each(entries: Iterable[BlobEntry]) -> tuple[bytearray, dict[int, bytes]]:
        records, bases, pack = bytearray(), {}, _RECORD.pack
        for i, e in enumerate(entries):
            records += pack(e.kind, e.id, e.offset, e.length, e.raw_length)
            if e.base is not None:
                bases[i] = e.base
        return records, bases

    @property
    def _data(self) -> bytes:
        spill = self._spill
        return self._records if spill is None else spill.read(self._at, self._count * _RECORD.size)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[BlobEntry]:
        bases = self._bases
        for i, (kind, blob_id, offset, length, raw_length) in enumerate(_RECORD.iter_unpack(self._data)):
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
        spill, size = self._spill, _RECORD.size
        record = self._records[i * size:(i + 1) * size] if spill is None else spill.read(self._at + i * size, size)
        kind, blob_id, offset, length, raw_length = _RECORD.unpack(record)
        return BlobEntry(kind, blob_id, offset, length, raw_length, self._bases.get(i))

    def as_lists(self) -> Iterator[list[Any]]:
        """Each entry as `BlobEntry.as_list()` gives it, without making the entry (index encoding)."""
        bases = self._bases
        if not bases:     # most packs: made in C, not a generator step a record
            return map(list, _RECORD.iter_unpack(self._data))
        return (list(fields) if (base := bases.get(i)) is None else [*fields, base]
                for i, fields in enumerate(_RECORD.iter_unpack(self._data)))

    def __contains__(self, entry: object) -> bool:
        return any(e == entry for e in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EntryList):
            return self._data == other._data and self._bases == other._bases
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None   # type: ignore[assignment]   # compared by value, like the list it stands for

    def __repr__(self) -> str:
        return f"EntryList({list(self)!r})"
