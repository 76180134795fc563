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

It is stored as `index/<BLAKE3 of the bytes>`. In memory, `MasterIndex` keeps every location of
every blob, keyed by (kind, id) so a chunk equal to a tree blob cannot be confused with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack

from casstore.errors import FormatError, IntegrityError
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

    def encode(self) -> tuple[str, bytes]:
        body = msgpack.packb({
            "version": INDEX_VERSION,
            "origin": self.origin,
            "packs": [[pack_id, [e.as_list() for e in entries]] for pack_id, entries in sorted(self.packs.items())],
            "supersedes": sorted(self.supersedes),
            **({"retracts": sorted(self.retracts)} if self.retracts else {}),
        })
        return blake3.blake3(body).hexdigest(), body


def decode_index(index_id: str, body: bytes, max_raw_length: int) -> IndexObject:
    if blake3.blake3(body).hexdigest() != index_id:
        raise IntegrityError(f"index {index_id[:16]} does not match its name")
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
    """

    def __init__(self) -> None:
        self._locations: dict[BlobKey, list[Location]] = {}
        self.index_packs: dict[str, set[str]] = {}   # index id -> packs it lists
        self.index_origins: dict[str, dict[str, Any]] = {}
        self.retracted: set[str] = set()   # ids that a loaded index retracts
        self.condemned: set[str] = set()

    def clear(self) -> None:
        """Forget everything (the index objects behind it changed); `condemned` is reloaded separately."""
        self._locations.clear()
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
        known = self._locations
        for e in entries:
            location = Location(pack_id, e.offset, e.length, e.raw_length)
            locations = known.get((e.kind, e.id))
            if locations is None:      # the common case, and every start-up loads them all
                known[(e.kind, e.id)] = [location]
            elif location not in locations:
                locations.append(location)

    def drop_packs(self, pack_ids: set[str]) -> None:
        """Forget every location in these packs (they are gone)."""
        for key in list(self._locations):
            kept = [loc for loc in self._locations[key] if loc.pack_id not in pack_ids]
            if kept:
                self._locations[key] = kept
            else:
                del self._locations[key]

    def locations(self, kind: int, blob_id: bytes) -> list[Location]:
        return self._locations.get((kind, blob_id), [])

    def has(self, kind: int, blob_id: bytes) -> bool:
        """True if the blob has a copy in a pack no gc plan condemns."""
        locations = self._locations.get((kind, blob_id))
        if not locations:
            return False
        if not self.condemned:         # no gc plan in progress: any copy will do
            return True
        return any(loc.pack_id not in self.condemned for loc in locations)

    def all_pack_ids(self) -> set[str]:
        return {loc.pack_id for locs in self._locations.values() for loc in locs}

    def blobs(self) -> Iterator[tuple[BlobKey, list[Location]]]:
        return iter(self._locations.items())

    def __len__(self) -> int:
        return len(self._locations)
