"""Indexes: which pack holds each blob.

An index object is msgpack:

    {"version": 1,
     "origin": {"kind": "writer" | "checkpoint" | "gc", "host": str, "session": str},
     "packs": [[pack id (hex str), [[kind, blob id, offset, length, raw length], ...]], ...],
     "supersedes": [index id, ...],          # only for gc's consolidated indexes
     "retracts": [index id, ...]}            # only when a writer withdraws an index of its own

A writer that finds, after writing an index, that a pack it lists was deleted meanwhile (it was
paused past the grace periods) cannot delete that index (writers may only put); it writes a new
index without the lost pack that `retracts` the old one. Readers, check and gc ignore retracted
indexes, and gc deletes them.

It is stored as `index/<BLAKE3 of the stored bytes>` (sealed first in an encrypted
repository). In memory, `MasterIndex` keeps every location of
every blob, keyed by (kind, id) so a chunk equal to a tree blob cannot be confused with it, as
fixed-size records (about 47 bytes a blob, not Python objects).
"""

from __future__ import annotations

import struct
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack

from casstore.errors import FormatError, IntegrityError
from casstore.format.crypto import KIND_INDEX, Sealer, seal_if, unseal_if
from casstore.format.pack import KINDS, BlobEntry

INDEX_VERSION = 1
ORIGINS = ("writer", "checkpoint", "gc")

BlobKey = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: str
    offset: int
    length: int
    raw_length: int


@dataclass
class IndexObject:
    """One decoded index object."""

    origin: dict[str, Any]
    packs: dict[str, list[BlobEntry]]
    supersedes: list[str] = field(default_factory=list)
    retracts: list[str] = field(default_factory=list)

    def encode(self, sealer: Sealer | None = None) -> tuple[str, bytes]:
        """(id, stored bytes): sealed in an encrypted repository, named by the BLAKE3 of what is stored."""
        body = msgpack.packb({
            "version": INDEX_VERSION,
            "origin": self.origin,
            "packs": [[pack_id, [e.as_list() for e in entries]] for pack_id, entries in sorted(self.packs.items())],
            "supersedes": sorted(self.supersedes),
            **({"retracts": sorted(self.retracts)} if self.retracts else {}),
        })
        stored = seal_if(sealer, KIND_INDEX, body)
        return blake3.blake3(stored).hexdigest(), stored


def decode_index(index_id: str, body: bytes, max_raw_length: int, sealer: Sealer | None = None) -> IndexObject:
    if blake3.blake3(body).hexdigest() != index_id:
        raise IntegrityError(f"index {index_id[:16]} does not match its name")
    body = unseal_if(sealer, KIND_INDEX, body, f"index {index_id[:16]}")
    try:
        doc = msgpack.unpackb(body, max_bin_len=64)
        if doc["version"] != INDEX_VERSION:
            raise FormatError(f"unsupported index version {doc['version']}")
        packs = {_hex_id(pack_id): [_entry(item, max_raw_length) for item in entries]
                 for pack_id, entries in doc["packs"]}
        supersedes = [_hex_id(i) for i in doc.get("supersedes", [])]
        retracts = [_hex_id(i) for i in doc.get("retracts", [])]
        origin = doc["origin"]
        if not isinstance(origin, dict) or origin.get("kind") not in ORIGINS:
            raise ValueError("bad origin")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt index {index_id[:16]}: {exc}") from exc
    return IndexObject(origin, packs, supersedes, retracts)


def without_retracted(objects: dict[str, IndexObject]) -> dict[str, IndexObject]:
    """The index objects no other listed index retracts."""
    retracted = {r for index in objects.values() for r in index.retracts}
    return {index_id: index for index_id, index in objects.items() if index_id not in retracted}


def _hex_id(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"bad object id {value!r}")
    return value


def _entry(item: list[Any], max_raw_length: int) -> BlobEntry:
    kind, blob_id, offset, length, raw_length = item
    if kind not in KINDS or not isinstance(blob_id, bytes) or len(blob_id) != 32:
        raise ValueError("bad blob kind or id")
    if not all(isinstance(n, int) and n >= 0 for n in (offset, length, raw_length)) or raw_length > max_raw_length:
        raise ValueError("bad blob bounds")
    return BlobEntry(kind, blob_id, offset, length, raw_length)


class MasterIndex:
    """Every location of every blob, from all loaded index objects.

    `condemned` holds packs that a gc plan condemns: a blob whose only copies are there counts as
    missing for writers (design 9), so it is uploaded again rather than relied on.

    Storage is a table of fixed 47-byte records in sorted runs, not Python objects (issue 14): see `_BlobTable`.
    """

    def __init__(self) -> None:
        self._table = _BlobTable()
        self.index_packs: dict[str, set[str]] = {}   # index id -> packs it lists
        self.index_origins: dict[str, dict[str, Any]] = {}
        self.retracted: set[str] = set()   # ids that a loaded index retracts
        self.condemned: set[str] = set()

    def clear(self) -> None:
        """Forget everything (the index objects behind it changed); `condemned` is reloaded separately."""
        self._table = _BlobTable()
        self.index_packs.clear()
        self.index_origins.clear()
        self.retracted.clear()

    def add_object(self, index_id: str, index: IndexObject) -> None:
        if index_id in self.index_packs:
            return
        self.index_packs[index_id] = set(index.packs)
        self.index_origins[index_id] = index.origin
        self.retracted.update(index.retracts)
        for pack_id, entries in index.packs.items():
            self.add_pack(pack_id, entries)

    def add_pack(self, pack_id: str, entries: Iterable[BlobEntry]) -> None:
        self._table.add(pack_id, entries)

    def drop_packs(self, pack_ids: set[str]) -> None:
        """Forget every location in these packs (they are gone)."""
        self._table.drop(pack_ids)

    def locations(self, kind: int, blob_id: bytes) -> list[Location]:
        return self._table.find(kind, blob_id)

    def has(self, kind: int, blob_id: bytes) -> bool:
        """True if the blob has a copy in a pack no gc plan condemns."""
        if not self.condemned:         # no gc plan in progress: any copy will do
            return self._table.contains(kind, blob_id)
        return any(loc.pack_id not in self.condemned for loc in self._table.find(kind, blob_id))

    def all_pack_ids(self) -> set[str]:
        return self._table.pack_ids()

    def blobs(self) -> Iterator[tuple[BlobKey, list[Location]]]:
        return self._table.items()

    def __len__(self) -> int:
        return len(self._table)


# One record: blob id without its first byte (the bucket implies it), kind << 24 | pack number,
# offset, length, raw length; big-endian so that bytes order is (id, kind, pack, offset) order and
# all locations of one (kind, id) lie side by side.
_RECORD = struct.Struct(">31sIIII")
_SIZE = _RECORD.size                   # 47
_KEY = 32                              # id[1:] + kind byte
_BUCKET_BITS = 14                      # 16,384 buckets: ~610 records each at 10M blobs, 0.7 MB when all used
_MAX_PACKS = 1 << 24
_INSERT_LIMIT = 16                     # up to this many new records are inserted; more re-sort the bucket
_KIND_BYTE = [bytes((kind,)) for kind in range(256)]


class _BlobTable:
    """Blob locations as fixed-size records in 16,384 buckets, by the id's first 14 bits.

    Each bucket is a sorted run (one `bytes`; empty buckets share b"") plus, after additions, an
    unsorted tail (a bytearray in `_tails`); a lookup settles its bucket first (bisect-insert a
    short tail, re-sort a long one, dropping exact duplicates), so a bulk load costs one sort per
    bucket and a pack added mid-snapshot a few small inserts. Pack ids are interned (a record holds
    a 3-byte pack number). A location that does not fit (a field of 4 GiB or more, beyond 16M packs)
    lives in the small `_wide` dict instead, so nothing is refused.

    Upload threads add packs while chunk workers look blobs up, and a lookup may settle a bucket:
    one lock serialises them (a dict needed none: each of its operations was atomic).
    """

    def __init__(self) -> None:
        self._runs: list[bytes] = [b""] * (1 << _BUCKET_BITS)
        self._distinct = array("I", bytes(4 << _BUCKET_BITS))   # distinct (kind, id) in each run
        self._tails: dict[int, bytearray] = {}
        self._packs: list[str] = []
        self._numbers: dict[str, int] = {}
        self._counts = array("Q")                                # records per pack number
        self._wide: dict[BlobKey, list[Location]] = {}
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------

    def _number(self, pack_id: str) -> int:
        number = self._numbers.get(pack_id)
        if number is None:
            number = self._numbers[pack_id] = len(self._packs)
            self._packs.append(pack_id)
            self._counts.append(0)
        return number

    def add(self, pack_id: str, entries: Iterable[BlobEntry]) -> None:
        with self._lock:
            self._add(pack_id, list(entries))

    def _add(self, pack_id: str, entries: list[BlobEntry]) -> None:
        number = self._number(pack_id)
        tails, pack, shift = self._tails, _RECORD.pack, 16 - _BUCKET_BITS
        added, wide = 0, number >= _MAX_PACKS
        for e in entries:
            if wide or (e.offset | e.length | e.raw_length) >> 32:
                self._add_wide(e, Location(pack_id, e.offset, e.length, e.raw_length))
                continue
            b = int.from_bytes(e.id[:2], "big") >> shift
            record = pack(e.id[1:], e.kind << 24 | number, e.offset, e.length, e.raw_length)
            tail = tails.get(b)
            if tail is None:
                tails[b] = bytearray(record)
            else:
                tail += record
            added += 1
        self._counts[number] += added

    def _add_wide(self, e: BlobEntry, location: Location) -> None:
        locations = self._wide.setdefault((e.kind, e.id), [])
        if location not in locations:
            locations.append(location)

    def _settle(self, b: int) -> None:
        """Merge bucket b's unsorted tail into its sorted run."""
        tail, run = self._tails.pop(b), self._runs[b]
        new = [bytes(tail[i:i + _SIZE]) for i in range(0, len(tail), _SIZE)]
        if run and len(new) <= _INSERT_LIMIT:
            for record in new:
                self._insert(b, record)
            return
        records = [run[i:i + _SIZE] for i in range(0, len(run), _SIZE)] + new
        records.sort()
        kept: list[bytes] = []
        distinct = 0
        for record in records:
            if kept and record == kept[-1]:
                self._uncount(record)
                continue
            if not kept or record[:_KEY] != kept[-1][:_KEY]:
                distinct += 1
            kept.append(record)
        self._runs[b], self._distinct[b] = b"".join(kept), distinct

    def _insert(self, b: int, record: bytes) -> None:
        run = self._runs[b]
        n = len(run) // _SIZE
        i = bisect_left(range(n), record, key=lambda j: run[j * _SIZE:(j + 1) * _SIZE])
        at = i * _SIZE
        if i < n and run[at:at + _SIZE] == record:
            self._uncount(record)      # an exact duplicate: the same location listed twice
            return
        key = record[:_KEY]
        old_key = run[at:at + _KEY] == key or (i > 0 and run[at - _SIZE:at - _SIZE + _KEY] == key)
        self._runs[b] = run[:at] + record + run[at:]
        self._distinct[b] += not old_key

    def _uncount(self, record: bytes) -> None:
        self._counts[_RECORD.unpack(record)[1] & 0xFFFFFF] -= 1

    def _settle_all(self) -> None:
        for b in list(self._tails):
            self._settle(b)

    def drop(self, pack_ids: set[str]) -> None:
        with self._lock:
            self._drop(pack_ids)

    def _drop(self, pack_ids: set[str]) -> None:
        numbers = {self._numbers[p] for p in pack_ids if p in self._numbers}
        for key in [k for k, locs in self._wide.items() if any(loc.pack_id in pack_ids for loc in locs)]:
            kept = [loc for loc in self._wide[key] if loc.pack_id not in pack_ids]
            if kept:
                self._wide[key] = kept
            else:
                del self._wide[key]
        numbers = {n for n in numbers if self._counts[n]}
        if not numbers:
            return
        self._settle_all()
        for b, run in enumerate(self._runs):
            if not run:   # most of the 16,384 buckets are empty in a small index: skip them cheaply
                continue
            left = [rec for rec in (run[i:i + _SIZE] for i in range(0, len(run), _SIZE))
                    if _RECORD.unpack(rec)[1] & 0xFFFFFF not in numbers]
            if len(left) * _SIZE != len(run):
                self._runs[b] = b"".join(left)
                self._distinct[b] = len({rec[:_KEY] for rec in left})
        for n in numbers:
            self._counts[n] = 0

    # -- reading -----------------------------------------------------------------------------

    def _span(self, kind: int, blob_id: bytes) -> tuple[bytes, int, int]:
        """Sorted run, first and end record index of the records of (kind, blob_id)."""
        b = int.from_bytes(blob_id[:2], "big") >> (16 - _BUCKET_BITS)
        if b in self._tails:
            self._settle(b)
        run = self._runs[b]
        key = blob_id[1:] + _KIND_BYTE[kind]
        n = len(run) // _SIZE
        start = bisect_left(range(n), key, key=lambda j: run[j * _SIZE:j * _SIZE + _KEY])
        end = start
        while end < n and run[end * _SIZE:end * _SIZE + _KEY] == key:
            end += 1
        return run, start, end

    def find(self, kind: int, blob_id: bytes) -> list[Location]:
        with self._lock:
            run, start, end = self._span(kind, blob_id)
            wide = list(self._wide.get((kind, blob_id), ())) if self._wide else []
        return [self._location(run, i) for i in range(start, end)] + wide

    def contains(self, kind: int, blob_id: bytes) -> bool:
        with self._lock:
            return self._in_table(kind, blob_id) or (kind, blob_id) in self._wide

    def _in_table(self, kind: int, blob_id: bytes) -> bool:
        _, start, end = self._span(kind, blob_id)
        return end > start

    def _location(self, run: bytes, i: int) -> Location:
        _, kind_pack, offset, length, raw_length = _RECORD.unpack_from(run, i * _SIZE)
        return Location(self._packs[kind_pack & 0xFFFFFF], offset, length, raw_length)

    def pack_ids(self) -> set[str]:
        with self._lock:
            ids = {self._packs[n] for n, count in enumerate(self._counts) if count}
            return ids | {loc.pack_id for locs in self._wide.values() for loc in locs}

    def items(self) -> Iterator[tuple[BlobKey, list[Location]]]:
        with self._lock:               # runs are immutable bytes: iterate a snapshot of the list
            self._settle_all()
            runs, wide = list(self._runs), {key: list(locs) for key, locs in self._wide.items()}
        for b, run in enumerate(runs):
            if not run:
                continue
            first = _KIND_BYTE[b >> (_BUCKET_BITS - 8)]
            i, n = 0, len(run) // _SIZE
            while i < n:
                key = run[i * _SIZE:i * _SIZE + _KEY]
                blob = (key[-1], first + key[:-1])
                end = i + 1
                while end < n and run[end * _SIZE:end * _SIZE + _KEY] == key:
                    end += 1
                yield blob, [self._location(run, j) for j in range(i, end)] + wide.pop(blob, [])
                i = end
        yield from wide.items()

    def __len__(self) -> int:
        with self._lock:
            self._settle_all()
            wide_only = sum(1 for kind, blob_id in self._wide if not self._in_table(kind, blob_id))
            return sum(self._distinct) + wide_only
