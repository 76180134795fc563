"""Indexes: which pack holds each blob.

An index object is msgpack:

    {"version": 1,
     "origin": {"kind": "writer" | "checkpoint" | "gc", "host": str, "session": str},
     "packs": [[pack id (hex str), [[kind, blob id, offset, length, raw length(, base id)], ...]], ...],
     "supersedes": [index id, ...],          # only for gc's consolidated indexes
     "retracts": [index id, ...]}            # only when a writer withdraws an index of its own

A writer that finds, after writing an index, that a pack it lists was deleted meanwhile (it was
paused past the grace periods) cannot delete that index (writers may only put); it writes a new
index without the lost pack that `retracts` the old one. Readers, check and gc ignore retracted
indexes, and gc deletes them.

It is stored as `index/<BLAKE3 of the stored bytes>` (sealed first in an encrypted
repository). In memory, `MasterIndex` keeps every location of
every blob, keyed by (kind, id) so a chunk equal to a tree blob cannot be confused with it, as
fixed-size records (46 bytes a blob, not Python objects; see `_BlobTable`).
"""

from __future__ import annotations

import io
import struct
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

import blake3
import msgpack

from casstore.errors import FormatError, IntegrityError
from casstore.format.blobset import BlobSet
from casstore.format.crypto import KIND_INDEX, Sealer, seal_if, unseal_if
from casstore.format.entrylist import EntryList
from casstore.format.fields import is_int
from casstore.format.pack import BlobEntry, entry_fields, plain_rows_valid
from casstore.format.reasons import unpack_reason
from casstore.format.spill import RecordSpill

INDEX_VERSION = 1
ORIGINS = ("writer", "checkpoint", "gc")

BlobKey = tuple[int, bytes]


class Location(NamedTuple):
    """Where one copy of a blob lies (a tuple: built per lookup, so it must be cheap to make)."""

    pack_id: str
    offset: int
    length: int
    raw_length: int
    base: bytes | None = None      # a delta blob's base (format/delta.py)


@dataclass
class IndexObject:
    """One decoded index object."""

    origin: dict[str, Any]
    packs: Mapping[str, Collection[BlobEntry]]
    supersedes: list[str] = field(default_factory=list)
    retracts: list[str] = field(default_factory=list)

    def encode(self, sealer: Sealer | None = None) -> tuple[str, bytes]:
        """(id, stored bytes): sealed in an encrypted repository, named by the BLAKE3 of what is stored."""
        return encode_index(self.origin, self.packs, self.supersedes, self.retracts, sealer)


def _header(origin: dict[str, Any], supersedes: Iterable[str], retracts: Iterable[str]) -> dict[str, Any]:
    """Every field of an index object but its packs, in the stored key order (packs after origin)."""
    retracts = sorted(retracts)
    return {"version": INDEX_VERSION, "origin": origin, "supersedes": sorted(supersedes),
            **({"retracts": retracts} if retracts else {})}


def encode_index(origin: dict[str, Any], packs: Mapping[str, Collection[BlobEntry]], supersedes: Iterable[str] = (),
                 retracts: Iterable[str] = (), sealer: Sealer | None = None) -> tuple[str, bytes]:
    """(id, stored bytes) of an index object, packed pack by pack: the same bytes as `msgpack.packb`
    of the whole document, without building a list per blob of the whole session first (a session's
    index may name millions of blobs kept compactly, as `EntryList`s)."""
    header, packer = _header(origin, supersedes, retracts), msgpack.Packer()
    # a BytesIO hands its buffer over as the bytes (`getvalue`): a bytearray's `bytes()` copied
    # the whole body, twice its size at once (issue 14: 45 MB more at the end of a 1M-file snapshot)
    body = io.BytesIO()
    body.write(packer.pack_map_header(len(header) + 1))
    for key, value in header.items():
        body.write(packer.pack(key))
        body.write(packer.pack(value))
        if key == "origin":
            body.write(packer.pack("packs"))
            body.write(packer.pack_array_header(len(packs)))
            for pack_id in sorted(packs):
                entries = packs[pack_id]
                body.write(packer.pack_array_header(2))
                body.write(packer.pack(pack_id))
                # a pack's entries packed in one call: the same bytes as an array header and each
                # entry packed in turn; one pack's lists are held at a time, never the session's
                body.write(packer.pack(list(_as_lists(entries))))
    stored = seal_if(sealer, KIND_INDEX, body.getvalue())
    return blake3.blake3(stored).hexdigest(), stored


def _as_lists(entries: Collection[BlobEntry]) -> Iterator[list[Any]]:
    # a session's entries are records: packed from them directly, 50k blobs cost a tenth of a second less
    as_lists = getattr(entries, "as_lists", None)
    return as_lists() if as_lists is not None else (e.as_list() for e in entries)


def check_encoded(index_id: str, stored: bytes, origin: dict[str, Any], packs: Mapping[str, Collection[BlobEntry]],
                  retracts: Iterable[str], max_raw_length: int, sealer: Sealer | None = None) -> None:
    """Read back (design 5.5): `stored` must decode to exactly this index. Decoded entry by entry
    and compared as it goes, so a session's index is never held as objects twice."""
    if blake3.blake3(stored).hexdigest() != index_id:
        raise IntegrityError("internal error: an index is not named by its bytes")
    body = unseal_if(sealer, KIND_INDEX, stored, f"index {index_id[:16]}")
    try:
        same = _decodes_to(msgpack.Unpacker(io.BytesIO(body), max_bin_len=64), len(body),
                           _header(origin, (), retracts), packs, max_raw_length)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"internal error: an index does not decode: {exc}") from exc
    if not same:
        raise IntegrityError("internal error: an index does not decode to what was encoded")


def _decodes_to(unpacker: msgpack.Unpacker, size: int, expected: dict[str, Any],
                packs: Mapping[str, Collection[BlobEntry]], max_raw_length: int) -> bool:
    found: dict[Any, Any] = {}
    if unpacker.read_map_header() != len(expected) + 1:
        return False
    for _ in range(len(expected) + 1):
        key = unpacker.unpack()
        if key != "packs":
            found[key] = unpacker.unpack()
            continue
        # a count that differs ends the comparison here: read on, the next pack would be taken for a key
        if unpacker.read_array_header() != len(packs):
            return False
        for pack_id in sorted(packs):
            if not (unpacker.read_array_header() == 2 and unpacker.unpack() == pack_id
                    and _same_entries(unpacker.unpack(), packs[pack_id], max_raw_length)):
                return False
    return found == expected and unpacker.tell() == size


def _same_entries(rows: Any, entries: Collection[BlobEntry], max_raw_length: int) -> bool:
    """One pack's decoded rows are exactly `entries`, each one `decode_index` accepts: compared
    whole and checked column by column (`plain_rows_valid`), else entry by entry. One pack's rows
    are held at a time, never the session's."""
    if type(rows) is not list or len(rows) != len(entries) or rows != list(_as_lists(entries)):
        return False
    return plain_rows_valid(rows, max_raw_length, 0, 0) or all(_entry(item, max_raw_length) is not None
                                                              for item in rows)


def decode_index(index_id: str, body: bytes, max_raw_length: int, sealer: Sealer | None = None) -> IndexObject:
    if blake3.blake3(body).hexdigest() != index_id:
        raise IntegrityError(f"index {index_id[:16]} does not match its name")
    body = unseal_if(sealer, KIND_INDEX, body, f"index {index_id[:16]}")
    try:
        doc = _unpack_index(body, max_raw_length)
        if doc["version"] != INDEX_VERSION:
            raise FormatError(f"unsupported index version {doc['version']}")
        packs = doc["packs"]
        supersedes = [_hex_id(i) for i in doc.get("supersedes", [])]
        retracts = [_hex_id(i) for i in doc.get("retracts", [])]
        origin = doc["origin"]
        if not isinstance(origin, dict) or origin.get("kind") not in ORIGINS:
            raise ValueError("bad origin")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt index {index_id[:16]}: {unpack_reason(exc)}") from exc
    return IndexObject(origin, packs, supersedes, retracts)


def _unpack_index(body: bytes, max_raw_length: int) -> dict[Any, Any]:
    """The index document, its packs' entries decoded one at a time into records (`EntryList`):
    a million-blob index decoded whole as lists and then as entries held about 450 bytes a blob
    (a `check` of a million-file snapshot peaked at 491 MiB, issue 14)."""
    unpacker = msgpack.Unpacker(max_bin_len=64, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    doc: dict[Any, Any] = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        doc[key] = _unpack_packs(unpacker, max_raw_length) if key == "packs" else unpacker.unpack()
    if unpacker.tell() != len(body):
        raise ValueError("trailing bytes after the index")
    return doc


def _unpack_packs(unpacker: msgpack.Unpacker, max_raw_length: int) -> dict[str, EntryList]:
    packs: dict[str, EntryList] = {}
    for _ in range(unpacker.read_array_header()):
        if unpacker.read_array_header() != 2:
            raise ValueError("a pack's item is not [id, entries]")
        pack_id = _hex_id(unpacker.unpack())
        count = unpacker.read_array_header()
        packs[pack_id] = EntryList(_entry(unpacker.unpack(), max_raw_length) for _ in range(count))
    return packs


def without_retracted(objects: dict[str, IndexObject]) -> dict[str, IndexObject]:
    """The index objects no other listed index retracts."""
    retracted = {r for index in objects.values() for r in index.retracts}
    return {index_id: index for index_id, index in objects.items() if index_id not in retracted}


def _hex_id(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"bad object id {value!r}")
    return value


def _entry(item: list[Any], max_raw_length: int) -> BlobEntry:
    entry = entry_fields(item)
    bounds = (entry.offset, entry.length, entry.raw_length)
    if not all(is_int(n) and n >= 0 for n in bounds) or entry.raw_length > max_raw_length:
        raise ValueError("bad blob bounds")
    return entry


def add_delta_bases(index: MasterIndex, reached: BlobSet) -> None:
    """Add to `reached` the base of every delta copy of a blob in it, and theirs: a blob is
    readable only with its chain, so gc keeps bases live and sync carries them (after the blobs
    that need them, in an ordered set). Deltas are few (`delta_keys`), so they are what is scanned."""
    deltas = index.delta_keys()
    todo = sorted(key for key in deltas if key in reached) if deltas else []
    while todo:
        kind, blob_id = todo.pop()
        for base in sorted(index.delta_bases(kind, blob_id)):
            if reached.add(kind, base):
                todo.append((kind, base))


class MasterIndex:
    """Every location of every blob, from all loaded index objects.

    `condemned` holds packs that a gc plan condemns: a blob whose only copies are there counts as
    missing for writers (design 9), so it is uploaded again rather than relied on.

    Storage is a table of fixed 46-byte records, not Python objects (issue 14): see `_BlobTable`.
    `write_image` / `read_image` save and restore it whole (the local index table cache).
    """

    def __init__(self) -> None:
        self._table = _BlobTable()
        self.index_packs: dict[str, set[str]] = {}   # index id -> packs it lists
        self.index_origins: dict[str, dict[str, Any]] = {}
        self.retracted: set[str] = set()   # ids that a loaded index retracts
        self.condemned: set[str] = set()
        self._loose: set[str] = set()      # packs added by a writer that no loaded index lists yet
        self._diverged = False             # packs some loaded index lists were dropped

    def clear(self) -> None:
        """Forget everything (the index objects behind it changed); `condemned` is reloaded separately."""
        self._table = _BlobTable()
        self.index_packs.clear()
        self.index_origins.clear()
        self.retracted.clear()
        self._loose.clear()
        self._diverged = False

    def adopt(self, other: MasterIndex) -> None:
        """Take `other`'s contents (all but `condemned`) in place of this index's. Lookups read the
        table through one attribute, so a reader in another thread sees the old table or the new
        one, never one half rebuilt (a reload after a miss: `RepoCore.reload_index`)."""
        self._table = other._table
        self.index_packs, self.index_origins = other.index_packs, other.index_origins
        self.retracted, self._loose, self._diverged = other.retracted, other._loose, other._diverged

    def add_object(self, index_id: str, index: IndexObject) -> None:
        if index_id in self.index_packs:
            return
        self.add_written(index_id, index.origin, set(index.packs), index.retracts)
        for pack_id, entries in index.packs.items():
            self._table.add(pack_id, entries)

    def add_written(self, index_id: str, origin: dict[str, Any], pack_ids: set[str], retracts: Iterable[str]) -> None:
        """An index object this writer wrote, of packs whose entries are already here (`add_pack`):
        only the bookkeeping, so a session's blobs are not added to the table a second time."""
        if index_id in self.index_packs:
            return
        self.index_packs[index_id] = pack_ids
        self.index_origins[index_id] = origin
        self.retracted.update(retracts)
        self._loose -= pack_ids

    def remove_objects(self, index_ids: set[str]) -> None:
        """Forget these index objects (gone or retracted); packs no remaining one lists are dropped."""
        gone = {pack for index_id in index_ids for pack in self.index_packs.pop(index_id, ())}
        for index_id in index_ids:
            self.index_origins.pop(index_id, None)
        still = {pack for packs in self.index_packs.values() for pack in packs}
        self._table.drop(gone - still - self._loose)

    def drop_retracted(self) -> set[str]:
        """Forget the loaded index objects another loaded one retracts (they name lost packs);
        returns their ids."""
        withdrawn = set(self.index_packs) & self.retracted
        if withdrawn:
            self.remove_objects(withdrawn)
        return withdrawn

    def add_pack(self, pack_id: str, entries: Iterable[BlobEntry]) -> None:
        """A pack a writer uploaded, before (or without) an index object that lists it."""
        self._loose.add(pack_id)
        self._table.add(pack_id, entries)

    def drop_packs(self, pack_ids: set[str]) -> None:
        """Forget every location in these packs (they are gone)."""
        if pack_ids - self._loose:
            self._diverged = True
        self._loose -= pack_ids
        self._table.drop(pack_ids)

    @property
    def from_objects_only(self) -> bool:
        """True when the table holds exactly what its loaded index objects list (then it may be cached)."""
        return not self._loose and not self._diverged

    def locations(self, kind: int, blob_id: bytes) -> list[Location]:
        return self._table.find(kind, blob_id)

    def has(self, kind: int, blob_id: bytes) -> bool:
        """True if the blob has a copy in a pack no gc plan condemns."""
        if not self.condemned:         # no gc plan in progress: any copy will do
            return self._table.contains(kind, blob_id)
        return any(loc.pack_id not in self.condemned for loc in self._table.find(kind, blob_id))

    def has_all(self, kind: int, blob_ids: list[bytes]) -> bool:
        """`has` of every one (a files cache entry's chunks: one call a file, not three a chunk)."""
        if not self.condemned:
            return self._table.contains_all(kind, blob_ids)
        return all(self.has(kind, blob_id) for blob_id in blob_ids)

    def all_pack_ids(self) -> set[str]:
        return self._table.pack_ids()

    def delta_keys(self) -> set[BlobKey]:
        """Every blob with a delta copy somewhere (they all live in the table's small `_wide` part)."""
        return self._table.delta_keys()

    def delta_bases(self, kind: int, blob_id: bytes) -> set[bytes]:
        """The bases of the blob's delta copies (empty for a blob stored whole everywhere)."""
        return {loc.base for loc in self.locations(kind, blob_id) if loc.base is not None}

    def delta_depth(self, kind: int, blob_id: bytes, limit: int) -> int:
        """Deltas to decode before the blob's shortest chain reaches a whole blob (0: stored whole),
        or `limit` when that is `limit` or more, or a base is in no index."""
        frontier, depth = {blob_id}, 0
        while depth < limit:
            bases: set[bytes] = set()
            for one in frontier:
                locations = self.locations(kind, one)
                if any(loc.base is None for loc in locations):
                    return depth
                bases |= {loc.base for loc in locations if loc.base is not None}
            if not bases:
                return limit
            frontier, depth = bases, depth + 1
        return limit

    def blobs(self) -> Iterator[tuple[BlobKey, list[Location]]]:
        return self._table.items()

    def __len__(self) -> int:
        return len(self._table)

    def untouched(self) -> bool:
        """True when nothing was ever added since it was made or cleared (no settle needed to say so)."""
        return not self.index_packs and self._table.untouched()

    # -- saving and restoring the whole table ------------------------------------------------

    def write_image(self, out: BinaryIO) -> None:
        """Write the table and what it was built from (index ids, origins, retractions), ending in
        a BLAKE3 digest of everything before it, for `read_image`."""
        fps, rests, starts, counts, packs, wide = self._table.image()
        hasher = _image_hasher(len(fps) + len(rests))
        numbers = {pack_id: n for n, pack_id in enumerate(packs)}
        for index_id, pack_ids in self.index_packs.items():
            if not pack_ids <= numbers.keys():
                # every listed pack passed through the table (add_object, add_pack): a pack missing
                # means two loads mixed their work (what RepoCore's index lock prevents)
                raise RuntimeError(f"index {index_id[:16]} lists packs the index table never held: "
                                   f"{sorted(pack_ids - numbers.keys())}")
        header = msgpack.packb({
            "indexes": [[index_id, self.index_origins.get(index_id, {}), sorted(numbers[p] for p in pack_ids)]
                        for index_id, pack_ids in self.index_packs.items()],
            "retracted": sorted(self.retracted), "packs": packs, "records": len(fps) // _FP,
            "distinct": self._table.distinct, "counts": _le(counts), "wide": wide})
        for piece in (_IMAGE_MAGIC, len(header).to_bytes(8, "little"), header, _le(starts), fps, rests):
            hasher.update(piece)
            out.write(piece)
        out.write(hasher.digest())

    def read_image(self, src: io.BufferedIOBase) -> None:
        """Replace everything but `condemned` with an image `write_image` wrote; FormatError when
        it is not one, or its digest does not match (then nothing is replaced)."""
        head: list[bytearray] = []           # read before the header tells the image's size
        hasher: blake3.blake3 | None = None

        def take(n: int) -> bytearray:
            piece = bytearray(n)
            if src.readinto(piece) != n:
                raise FormatError("index table image is truncated")
            if hasher is None:
                head.append(piece)
            else:
                hasher.update(piece)
            return piece

        try:
            if take(len(_IMAGE_MAGIC)) != _IMAGE_MAGIC:
                raise FormatError("not an index table image")
            doc = msgpack.unpackb(take(int.from_bytes(take(8), "little")))
            hasher = _image_hasher(doc["records"] * _SIZE)
            for piece in head:
                hasher.update(piece)
            starts = _from_le("I", take(4 * (_BUCKETS + 1)))
            fps, rests = take(doc["records"] * _FP), take(doc["records"] * _REST)
            if src.read(33) != hasher.digest():     # 33: trailing bytes count as a mismatch too
                raise FormatError("index table image does not match its digest")
            loaded = _BlobTable.from_image(fps, rests, starts, _from_le("Q", doc["counts"]), doc["packs"],
                                           doc["distinct"], doc["wide"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise FormatError(f"corrupt index table image: {unpack_reason(exc)}") from exc
        self.clear()
        self._table = loaded
        for index_id, origin, numbers in doc["indexes"]:
            self.index_packs[index_id] = {doc["packs"][n] for n in numbers}
            self.index_origins[index_id] = origin
        self.retracted = set(doc["retracted"])


_IMAGE_MAGIC = b"casstore index table 2\n"
# An image's records at least this large are hashed on every core. Below it one thread does (64 MiB
# in about 10 ms): blake3's thread pool, started for the 390 KB image of a 2,000-file repository,
# left two threads spinning (130 sched_yield calls) through a no-change snapshot (measured: 3 ms
# of its ~125 ms CPU, within the noise under load).
_HASH_THREADS_MIN = 64 * 1024 * 1024


def _image_hasher(records_bytes: int) -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO if records_bytes >= _HASH_THREADS_MIN else 1)


def _le(values: array[int]) -> bytes:
    """An array's bytes, little-endian whatever the machine."""
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_le(typecode: str, data: bytes | bytearray) -> array[int]:
    values = array(typecode, data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


# One record: the blob id without its first two bytes (the bucket, the id's first 16 bits, implies
# them), then kind << 24 | pack number, offset, length, raw length; big-endian, so that bytes order
# is (id, kind, pack, offset) order and all locations of one (kind, id) lie side by side. The first
# 31 bytes (id[2:] + kind) are the record's key. A settled table stores each record in two columns:
# its first 4 bytes (id[2:6], the fingerprint a lookup scans) and the other 42.
_RECORD = struct.Struct(">30sIIII")
_SIZE = _RECORD.size                   # 46
_KEY = 31
_FP = 4                                # (shifts by 2 in the lookups rely on it)
_REST = _SIZE - _FP                    # 42
_REST_KEY = _KEY - _FP                 # 27
_UNPACK_REST = struct.Struct(">26sIIII").unpack_from
_PACK_AT = _REST_KEY                   # the 3-byte pack number's place in the rests column's record
_SCAN_PACKS = 32                       # dropping more packs than this passes over every record instead
_BUCKETS = 1 << 16
_MAX_PACKS = 1 << 24
_KIND_BYTE = [bytes((kind,)) for kind in range(256)]
_BUCKET_PREFIX = struct.Struct(">H")  # a record's bucket before it, while settling a group
_GROUP = 256                           # buckets settled together where tails are dense (`_merge_group`)
_FEED_RECORDS = 1 << 16                # tail records gathered per pass over the spill when settling (3 MB)
_READ_RECORDS = 16384                  # records a read of the spill when settling (736 KB)

Column = bytes | bytearray             # a restored image's columns are bytearrays


def _bucket(blob_id: bytes) -> int:
    return blob_id[0] << 8 | blob_id[1]


def _first(fps: Column, rests: Column, fp: bytes, rest_key: bytes, lo: int, hi: int) -> int:
    """The number of the first record in [lo, hi) whose key is fp + rest_key, or -1.

    `bytes.find` scans the bucket's 4-byte fingerprints at C speed (60 bytes at 1M blobs, 600 at
    10M); a hit off a 4-byte boundary, or whose other 27 key bytes differ (the same id of another
    kind, or another id with the same 4 bytes), is passed over. In a sorted bucket the first
    matching record is the first of its key."""
    at = fps.find(fp, lo * _FP, hi * _FP)
    while at >= 0:
        if not at % _FP:
            i = at // _FP
            if rests[i * _REST:i * _REST + _REST_KEY] == rest_key:
                return i
        at = fps.find(fp, at + 1, hi * _FP)
    return -1


class _Tails:
    """The records added since a table was last settled, by bucket, unsorted.

    A whole record is written to an unnamed temporary file (`RecordSpill`); a bucket's tail in
    memory holds each record's 4-byte fingerprint and its number there: 8 bytes a record. Kept
    whole in per-bucket buffers they cost about 70 bytes a record in memory, 70 MB of an initial
    snapshot of a million small files (issue 14). A lookup that finds the fingerprint reads the
    record back (a duplicate within the session, or one in 2^32 records of the bucket); settling
    reads them all back: a bucket's one `pread` each, or, where tails are dense, a range of
    buckets' in the file's order in large reads (`grouped`).
    """

    __slots__ = ("_by_bucket", "_spill", "count")

    def __init__(self) -> None:
        self._by_bucket: dict[int, bytearray] = {}
        self._spill: RecordSpill | None = None          # made with the first record
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def __contains__(self, bucket: int) -> bool:
        return bucket in self._by_bucket

    def buckets(self) -> list[int]:
        return sorted(self._by_bucket)

    def add(self, buckets: list[int], records: bytes | bytearray) -> None:
        """Add `records` (whole, back to back), the i-th of bucket `buckets[i]`. Written to the
        spill first: a lookup that sees a record's number can read it."""
        if self._spill is None:
            self._spill = RecordSpill()
        number = self._spill.append(records) // _SIZE
        by_bucket, entry = self._by_bucket, _TAIL.pack
        for at, b in enumerate(buckets):
            item = entry(records[at * _SIZE:at * _SIZE + _FP], number + at)
            tail = by_bucket.get(b)
            if tail is None:
                by_bucket[b] = bytearray(item)
            else:
                tail += item
        self.count += len(buckets)

    def hits(self, bucket: int, key: bytes) -> Iterator[bytes]:
        """Every record of the bucket whose 31-byte key is `key`, read back from the spill."""
        tail, spill, fp = self._by_bucket.get(bucket), self._spill, key[:_FP]
        if tail is None or spill is None:
            return
        at = tail.find(fp)
        while at >= 0:
            if not at % _TAIL.size:
                record = spill.read(_TAIL.unpack_from(tail, at)[1] * _SIZE, _SIZE)
                if record[:_KEY] == key:
                    yield record
            at = tail.find(fp, at + 1)

    def tail(self, bucket: int) -> bytearray | None:
        """The bucket's tail: (fingerprint, number) items back to back."""
        return self._by_bucket.get(bucket)

    def size(self, bucket: int) -> int:
        """Records in the bucket's tail."""
        tail = self._by_bucket.get(bucket)
        return len(tail) // _TAIL.size if tail is not None else 0

    def grouped(self, first: int, end: int) -> dict[int, bytearray]:
        """The records of buckets [first, end), each prefixed with its bucket's two bytes, back to
        back in one buffer per group of _GROUP buckets: read in the spill's order, in large reads
        (a `pread` a record was most of settling an initial snapshot's table)."""
        found: dict[int, bytearray] = {}
        spill, by_bucket = self._spill, self._by_bucket
        if spill is None:
            return found
        # each wanted record as one int (its number, then its bucket), sorted: the spill's order
        wanted = sorted(number << 16 | b for b in range(first, end) if (tail := by_bucket.get(b)) is not None
                        for _, number in _TAIL.iter_unpack(tail))
        prefix, piece, piece_at = _BUCKET_PREFIX.pack, b"", -_READ_RECORDS
        for key in wanted:
            number, b = key >> 16, key & 0xFFFF
            if number >= piece_at + _READ_RECORDS:
                piece_at = number
                piece = spill.read(number * _SIZE, min(_READ_RECORDS, self.count - number) * _SIZE)
            group = found.get(b // _GROUP)
            if group is None:
                group = found[b // _GROUP] = bytearray()
            group += prefix(b)
            at = (number - piece_at) * _SIZE
            group += piece[at:at + _SIZE]
        return found

    def records(self, bucket: int) -> bytes:
        """The bucket's records, whole, back to back, read back from the spill."""
        tail, spill = self._by_bucket.get(bucket), self._spill
        if tail is None or spill is None:
            return b""
        return b"".join(spill.read(n * _SIZE, _SIZE) for _, n in _TAIL.iter_unpack(tail))


_TAIL = struct.Struct("<4sI")          # a tail's item: a record's fingerprint, its number in the spill


class _BlobTable:
    """Blob locations as fixed 46-byte records: one sorted table, bucket after bucket by the id's
    first 16 bits, plus unsorted per-bucket tails of records added since it was last settled
    (`_Tails`: the records themselves in a temporary file).

    A lookup is a `bytes.find` of the id's 4-byte fingerprint within its bucket's range of the
    fingerprint column, then one comparison of the rest of the key: no Python object per record,
    no bisect with a key function. `starts` (65,537 uint32) says where each bucket begins, so the
    table is two objects, not 65,536 (which would cost ~50 bytes a bucket). Settling (for `len`,
    `items`, `drop`, saving) merges the tails into a new table in one pass and drops exact
    duplicates; a settled table is never mutated, so a lookup that holds it stays valid.

    Pack ids are interned (a record holds a 3-byte pack number). A location that does not fit (a
    field of 4 GiB or more, beyond 16M packs, or a delta blob's base id) lives in the small `_wide`
    dict, so nothing is refused.
    Upload threads add packs while chunk workers look blobs up. Writers (adding, settling,
    dropping) take one lock; lookups take none: they read `_state`, the (fingerprints, rests,
    starts, tails) tuple that settling replaces in one assignment, so a lookup sees one consistent
    state, and appending to a tail bytearray or inserting a new tail is one operation under the GIL.
    """

    def __init__(self) -> None:
        # the two columns of the sorted table, the record number where each bucket begins in them,
        # the unsorted tails
        self._state: tuple[Column, Column, array[int], _Tails] = (
            b"", b"", array("I", bytes(4 * (_BUCKETS + 1))), _Tails())
        self._distinct = 0                                     # distinct (kind, id) in the table
        self._packs: list[str] = []
        self._numbers: dict[str, int] = {}
        self._counts = array("Q")                              # records per pack number
        self._wide: dict[BlobKey, list[Location]] = {}
        self._lock = threading.Lock()

    # -- writing -----------------------------------------------------------------------------

    def untouched(self) -> bool:
        return not self._packs and not self._wide

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
        pack, wide = _RECORD.pack, number >= _MAX_PACKS
        buckets: list[int] = []
        records = bytearray()
        for e in entries:
            # a delta's base has no room in a record: deltas are a minority, kept in `_wide`
            if wide or e.base is not None or (e.offset | e.length | e.raw_length) >> 32:
                self._add_wide(e, Location(pack_id, e.offset, e.length, e.raw_length, e.base))
                continue
            buckets.append(e.id[0] << 8 | e.id[1])
            records += pack(e.id[2:], e.kind << 24 | number, e.offset, e.length, e.raw_length)
        if buckets:
            self._state[3].add(buckets, records)
        self._counts[number] += len(buckets)

    def _add_wide(self, e: BlobEntry, location: Location) -> None:
        locations = self._wide.setdefault((e.kind, e.id), [])
        if location not in locations:
            locations.append(location)

    def _settle(self, drop: frozenset[int] = frozenset()) -> None:
        """Merge every tail into a new sorted table (dropping exact repeats and, with `drop`, the
        records of those pack numbers); untouched stretches of the table are copied whole."""
        fps, rests, starts, tails = self._state
        if not tails and not drop:
            return
        touched = self._holding(drop) if drop else tails.buckets()
        # the new columns are written in place, at most the old table and every tail long: no
        # piece per bucket joined at the end, which held the table twice over (issue 14: that join
        # was the peak of `check` and of a snapshot saving its table)
        room = len(fps) // _FP + tails.count
        out = _Columns(room)
        new_starts = array("I", bytes(4 * (_BUCKETS + 1)))
        copied_to = 0                  # bucket up to which the old table has been copied out
        shift = 0                      # records gained (or lost) so far
        dense = {} if drop else self._dense_groups(starts, tails)
        feed: dict[int, bytearray] = {}      # dense groups' tail records, read a range at a time
        for b in touched:
            if b < copied_to:          # merged with its group
                continue
            group = b // _GROUP in dense
            if group:
                b -= b % _GROUP
            lo, hi = starts[b], starts[b + _GROUP if group else b + 1]
            if lo == hi and b not in tails and not group:   # nothing to merge (most buckets of a small index)
                continue
            if lo > starts[copied_to]:
                out.put(memoryview(fps)[starts[copied_to] * _FP:lo * _FP],      # copied at once: a view
                        memoryview(rests)[starts[copied_to] * _REST:lo * _REST])  # is never kept
            for j in range(copied_to, b + 1):
                new_starts[j] = starts[j] + shift
            if group:
                if b // _GROUP not in feed:
                    feed = tails.grouped(b, self._feed_end(b // _GROUP, dense) * _GROUP)
                merged = self._merge_group(fps, rests, starts, feed.pop(b // _GROUP), b, out, new_starts)
                copied_to = b + _GROUP
            else:
                old = _whole_records(fps[lo * _FP:hi * _FP], rests[lo * _REST:hi * _REST])
                merged, distinct_change = self._merge(old, tails.records(b), drop)
                out.put(b"".join(record[:_FP] for record in merged), b"".join(record[_FP:] for record in merged))
                self._distinct += distinct_change
                copied_to = b + 1
            shift += len(merged) - (hi - lo)
        out.put(memoryview(fps)[starts[copied_to] * _FP:], memoryview(rests)[starts[copied_to] * _REST:])
        for j in range(copied_to, _BUCKETS + 1):
            new_starts[j] = starts[j] + shift
        self._state = (*out.finish(), new_starts, _Tails())

    @staticmethod
    def _feed_end(group: int, dense: dict[int, int]) -> int:
        """The group after the range of dense groups from `group` read in one pass over the spill:
        at most _FEED_RECORDS tail records (their buffers are held until merged), at least one group."""
        held, end = 0, group
        while end < _BUCKETS // _GROUP and (held == 0 or held + dense.get(end, 0) <= _FEED_RECORDS):
            held += dense.get(end, 0)
            end += 1
        return end

    @staticmethod
    def _dense_groups(starts: array[int], tails: _Tails) -> dict[int, int]:
        """The groups of _GROUP buckets whose tails are merged as one (`_merge_group`): those where
        the tails hold at least a quarter as many records as the table. A bucket at a time, an
        initial snapshot of 200k small files spent 0.6 s settling its table (65,536 buckets of three
        records, a dozen Python steps each); a group at a time it is a sort of a few hundred."""
        added: dict[int, int] = {}
        for b in tails.buckets():
            added[b // _GROUP] = added.get(b // _GROUP, 0) + tails.size(b)
        return {g: n for g, n in added.items() if starts[(g + 1) * _GROUP] - starts[g * _GROUP] <= 4 * n}

    def _merge_group(self, fps: Column, rests: Column, starts: array[int], added: bytearray, first: int,
                     out: _Columns, new_starts: array[int]) -> list[bytes]:
        """Merge the _GROUP buckets from `first` (table records and tails) in one sort, each record
        prefixed with its bucket's two bytes; write them to `out` and their buckets' starts to
        `new_starts`. Exact repeats are dropped and counted, as `_merge` does a bucket at a time."""
        records: list[bytes] = []
        for b in range(first, first + _GROUP):
            lo, hi = starts[b], starts[b + 1]
            if lo < hi:
                prefix = _BUCKET_PREFIX.pack(b)
                records += [prefix + record for record in _whole_records(fps[lo * _FP:hi * _FP],
                                                                         rests[lo * _REST:hi * _REST])]
        before = len({record[:2 + _KEY] for record in records}) if records else 0
        whole = bytes(added)              # the tails' records, prefixed (`_Tails.grouped`)
        records += [whole[i:i + 2 + _SIZE] for i in range(0, len(whole), 2 + _SIZE)]
        if len(set(records)) < len(records):
            records = self._without(records, frozenset(), at=2)
        records.sort()
        self._distinct += len({record[:2 + _KEY] for record in records}) - before
        at = out.records
        for b in range(first, first + _GROUP):
            new_starts[b] = at + bisect_left(records, _BUCKET_PREFIX.pack(b))
        out.put(b"".join(record[2:2 + _FP] for record in records), b"".join(record[2 + _FP:] for record in records))
        return records

    def _holding(self, numbers: frozenset[int]) -> list[int] | range:
        """The buckets that hold records of these pack numbers (every bucket, for many of them).

        For a few packs (a gc's deletions), `bytes.find` of each 3-byte pack number in the rests
        column, kept where it is a record's pack field, finds them at C speed: a Python pass over
        every record of a 10M-blob table takes tens of seconds."""
        if len(numbers) > _SCAN_PACKS:
            return range(_BUCKETS)
        rests, starts = self._state[1], self._state[2]
        buckets: set[int] = set()
        for number in numbers:
            pattern = number.to_bytes(3, "big")
            at = rests.find(pattern)
            while at >= 0:
                if at % _REST == _PACK_AT:
                    buckets.add(bisect_right(starts, at // _REST) - 1)
                at = rests.find(pattern, at + 1)
        return sorted(buckets)

    def _merge(self, records: list[bytes], tail: Column, drop: frozenset[int]) -> tuple[list[bytes], int]:
        """One bucket's records and tail as one sorted list, and the change in its distinct keys."""
        before = len({record[:_KEY] for record in records}) if records else 0
        added = bytes(tail)
        records += [added[i:i + _SIZE] for i in range(0, len(added), _SIZE)]
        if drop or len(set(records)) < len(records):
            records = self._without(records, drop)
        records.sort()
        return records, len({record[:_KEY] for record in records}) - before

    def _without(self, records: list[bytes], drop: frozenset[int], at: int = 0) -> list[bytes]:
        """`records` (each after `at` bytes of prefix) without exact repeats and without the records
        of `drop` pack numbers, counted."""
        seen: set[bytes] = set()
        kept = []
        for record in records:
            if record in seen or (drop and _pack_number(record[at:]) in drop):
                self._counts[_pack_number(record[at:])] -= 1
                continue
            seen.add(record)
            kept.append(record)
        return kept

    def drop(self, pack_ids: set[str]) -> None:
        with self._lock:
            self._drop(pack_ids)

    def _drop(self, pack_ids: set[str]) -> None:
        for key in [k for k, locs in self._wide.items() if any(loc.pack_id in pack_ids for loc in locs)]:
            kept = [loc for loc in self._wide[key] if loc.pack_id not in pack_ids]
            if kept:
                self._wide[key] = kept
            else:
                del self._wide[key]
        numbers = frozenset(self._numbers[p] for p in pack_ids if p in self._numbers and self._counts[self._numbers[p]])
        if numbers:
            self._settle()
            self._settle(drop=numbers)

    # -- reading -----------------------------------------------------------------------------

    def _records(self, kind: int, blob_id: bytes) -> list[bytes]:
        """Every record of (kind, blob_id), whole, from the table and the bucket's tail; sorted."""
        b, fp, rest_key = _bucket(blob_id), blob_id[2:6], blob_id[6:] + _KIND_BYTE[kind]
        fps, rests, starts, tails = self._state
        found: list[bytes] = []
        i, hi = _first(fps, rests, fp, rest_key, starts[b], starts[b + 1]), starts[b + 1]
        while 0 <= i < hi and fps[i * _FP:(i + 1) * _FP] == fp and rests[i * _REST:i * _REST + _REST_KEY] == rest_key:
            found.append(bytes(fps[i * _FP:(i + 1) * _FP] + rests[i * _REST:(i + 1) * _REST]))
            i += 1
        if b in tails:
            for record in tails.hits(b, fp + rest_key):
                if record not in found:
                    found.append(record)
            found.sort()
        return found

    def find(self, kind: int, blob_id: bytes) -> list[Location]:
        # the hot path of every read and every chunk of a snapshot: `_first` inlined, locals only
        b = blob_id[0] << 8 | blob_id[1]
        fps, rests, starts, tails = self._state
        found: list[Location] = []
        if b in tails:                 # rare once settled: merge with the tail's records
            found = [self._location(record) for record in self._records(kind, blob_id)]
        else:
            fp, hi = blob_id[2:6], starts[b + 1] << 2
            at = fps.find(fp, starts[b] << 2, hi)
            if at >= 0:
                rest_key = blob_id[6:] + _KIND_BYTE[kind]
                while at >= 0:
                    r = (at >> 2) * _REST
                    if not at & 3 and rests[r:r + _REST_KEY] == rest_key:
                        _, kind_pack, offset, length, raw_length = _UNPACK_REST(rests, r)
                        found = [Location(self._packs[kind_pack & 0xFFFFFF], offset, length, raw_length)]
                        if fps[at + _FP:at + 2 * _FP] == fp:     # another copy may follow: rarely
                            found = self._run_at(fps, rests, at >> 2, hi >> 2, fp, rest_key)
                        break
                    at = fps.find(fp, at + 1, hi)
        if self._wide:
            found += self._wide.get((kind, blob_id), ())
        return found

    def _run_at(self, fps: Column, rests: Column, i: int, hi: int, fp: bytes, rest_key: bytes) -> list[Location]:
        """The locations of record i and of the records after it with the same key."""
        packs, found = self._packs, []
        while True:
            _, kind_pack, offset, length, raw_length = _UNPACK_REST(rests, i * _REST)
            found.append(Location(packs[kind_pack & 0xFFFFFF], offset, length, raw_length))
            i += 1
            if i >= hi or fps[i * _FP:(i + 1) * _FP] != fp or rests[i * _REST:i * _REST + _REST_KEY] != rest_key:
                return found

    def contains(self, kind: int, blob_id: bytes) -> bool:
        b = blob_id[0] << 8 | blob_id[1]
        fps, rests, starts, tails = self._state
        fp, hi = blob_id[2:6], starts[b + 1] << 2
        at = fps.find(fp, starts[b] << 2, hi)
        if at >= 0:                    # most lookups of a blob not stored end here
            rest_key = blob_id[6:] + _KIND_BYTE[kind]
            while at >= 0:
                r = (at >> 2) * _REST
                if not at & 3 and rests[r:r + _REST_KEY] == rest_key:
                    return True
                at = fps.find(fp, at + 1, hi)
        # no generator made unless the tail holds the fingerprint (every new blob of an initial
        # snapshot is looked up in a table that is all tails)
        tail = tails.tail(b)
        if tail is not None and tail.find(fp) >= 0 and \
                next(tails.hits(b, blob_id[2:] + _KIND_BYTE[kind]), None) is not None:
            return True
        return bool(self._wide) and (kind, blob_id) in self._wide

    def contains_all(self, kind: int, blob_ids: list[bytes]) -> bool:
        """`contains` of every one, the settled table's part in one loop: a no-change snapshot asks
        this of every chunk of every file, and a call each was a third of its walk's instructions."""
        fps, rests, starts, _ = self._state
        kind_byte = _KIND_BYTE[kind]
        for blob_id in blob_ids:
            b = blob_id[0] << 8 | blob_id[1]
            fp, hi = blob_id[2:6], starts[b + 1] << 2
            at = fps.find(fp, starts[b] << 2, hi)
            if at >= 0 and not at & 3 and rests[(at >> 2) * _REST:(at >> 2) * _REST + _REST_KEY] == \
                    blob_id[6:] + kind_byte:
                continue              # the common case: the first fingerprint hit is the blob
            if not self.contains(kind, blob_id):
                return False
        return True

    def _location(self, record: bytes) -> Location:
        _, kind_pack, offset, length, raw_length = _RECORD.unpack(record)
        return Location(self._packs[kind_pack & 0xFFFFFF], offset, length, raw_length)

    def delta_keys(self) -> set[BlobKey]:
        with self._lock:
            return {key for key, locs in self._wide.items() if any(loc.base is not None for loc in locs)}

    def pack_ids(self) -> set[str]:
        with self._lock:
            ids = {self._packs[n] for n, count in enumerate(self._counts) if count}
            return ids | {loc.pack_id for locs in self._wide.values() for loc in locs}

    def items(self) -> Iterator[tuple[BlobKey, list[Location]]]:
        with self._lock:               # a settled table is never mutated: iterate the current one
            self._settle()
            fps, rests, starts, _ = self._state
            wide = {key: list(locs) for key, locs in self._wide.items()}
        for b in range(_BUCKETS):
            lo, hi = starts[b], starts[b + 1]
            if lo == hi:               # most buckets of a small index are empty: skip them cheaply
                continue
            prefix = b.to_bytes(2, "big")
            records = _whole_records(fps[lo * _FP:hi * _FP], rests[lo * _REST:hi * _REST])
            at = 0
            while at < len(records):
                key = records[at][:_KEY]
                blob = (key[-1], prefix + key[:-1])
                end = at + 1
                while end < len(records) and records[end][:_KEY] == key:
                    end += 1
                yield blob, [self._location(r) for r in records[at:end]] + wide.pop(blob, [])
                at = end
        yield from wide.items()

    # -- whole images (the local index table cache) ------------------------------------------

    def image(self) -> tuple[Column, Column, array[int], array[int], list[str], list[Any]]:
        """(settled fingerprints, rests, starts, records per pack number, pack ids, wide locations)."""
        with self._lock:
            self._settle()
            fps, rests, starts, _ = self._state
            wide = [[kind, blob_id, [list(loc) for loc in locs]] for (kind, blob_id), locs in self._wide.items()]
            return fps, rests, starts, array("Q", self._counts), list(self._packs), wide

    @property
    def distinct(self) -> int:
        with self._lock:
            self._settle()
            return self._distinct

    @classmethod
    def from_image(cls, fps: Column, rests: Column, starts: array[int], counts: array[int], packs: list[str],
                   distinct: int, wide: list[Any]) -> _BlobTable:
        records = starts[-1] if len(starts) == _BUCKETS + 1 else -1
        if records < 0 or starts[0] or len(fps) != records * _FP or len(rests) != records * _REST \
                or len(counts) != len(packs) or not _ascending(starts):
            raise ValueError("inconsistent table image")
        loaded = cls()
        loaded._state = (fps, rests, starts, _Tails())
        loaded._packs, loaded._counts, loaded._distinct = list(packs), counts, int(distinct)
        loaded._numbers = {pack_id: n for n, pack_id in enumerate(packs)}
        loaded._wide = {(kind, bytes(blob_id)): [Location(*loc) for loc in locs] for kind, blob_id, locs in wide}
        return loaded

    def __len__(self) -> int:
        with self._lock:
            self._settle()
            wide_only = sum(1 for kind, blob_id in self._wide if not self._in_table(kind, blob_id))
            return self._distinct + wide_only

    def _in_table(self, kind: int, blob_id: bytes) -> bool:
        b, (fps, rests, starts, _) = _bucket(blob_id), self._state
        return _first(fps, rests, blob_id[2:6], blob_id[6:] + _KIND_BYTE[kind], starts[b], starts[b + 1]) >= 0


def _ascending(starts: array[int]) -> bool:
    """Every bucket starts at or after the one before it. Sorting an already sorted list finds one
    ascending run in C, one comparison a bucket: 2.5x fewer instructions than a pairwise `map`,
    which was 38M of a no-change snapshot's 630M, whatever the repository's size."""
    values = starts.tolist()
    return values == sorted(values)


class _Columns:
    """The two columns of a settling table, written in place into buffers made `room` records long."""

    def __init__(self, room: int) -> None:
        self.fps, self.rests = bytearray(room * _FP), bytearray(room * _REST)
        self.records = 0

    def put(self, fps: Column | memoryview, rests: Column | memoryview) -> None:
        at, n = self.records, len(fps) // _FP
        self.fps[at * _FP:(at + n) * _FP] = fps
        self.rests[at * _REST:(at + n) * _REST] = rests
        self.records += n

    def finish(self) -> tuple[Column, Column]:
        """The columns, cut to the records written (fewer than `room` when repeats or dropped packs
        went); a buffer mostly empty (a gc dropping many packs) is copied rather than kept."""
        columns: list[Column] = []
        for column, width in ((self.fps, _FP), (self.rests, _REST)):
            used = self.records * width
            if used < len(column) // 2:
                columns.append(bytes(memoryview(column)[:used]))
            else:
                del column[used:]
                columns.append(column)
        return columns[0], columns[1]


def _whole_records(fps: Column, rests: Column) -> list[bytes]:
    """A stretch of the two columns as whole 46-byte records (bytes: hashable, comparable)."""
    fps, rests = bytes(fps), bytes(rests)
    return [fps[k * _FP:(k + 1) * _FP] + rests[k * _REST:(k + 1) * _REST] for k in range(len(fps) // _FP)]


def _pack_number(record: bytes | bytearray) -> int:
    return int.from_bytes(record[_KEY:_KEY + 3], "big")
