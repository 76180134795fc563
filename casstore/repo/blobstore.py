"""BlobStore: add blobs (deduplicated, encoded, packed) and read them back verified."""

from __future__ import annotations

import logging
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from casstore.errors import IntegrityError, ObjectNotFound, RemoteError
from casstore.format import codec, delta, layout
from casstore.format.config import RepoConfig
from casstore.format.crypto import Sealer
from casstore.format.entrylist import EntryList
from casstore.format.index import Location, MasterIndex, check_encoded, encode_index
from casstore.format.pack import (
    KIND_DATA,
    KIND_NAMES,
    KIND_TREE,
    BlobEntry,
    PackBuilder,
    entry_rows,
    envelope_parts,
    header_rows,
)
from casstore.format.spill import RecordSpill
from casstore.fsio.buffers import BufferPool
from casstore.fsio.lazypool import LazyPool
from casstore.remotes.base import ObjectInfo, Remote
from casstore.repo.objectcache import BAD_BYTES, BlobCache, ReadPolicy, read_verified

if TYPE_CHECKING:
    from concurrent.futures import Future

log = logging.getLogger(__name__)

# packs being uploaded at once (sync runs several threads); 48 MiB took an initial sync to 151-156 MiB
MAX_BYTES_IN_FLIGHT = 32 * 1024 * 1024
_KEY = operator.attrgetter("kind", "id")  # an entry's (kind, id), as `_pending` holds it
PACK_SLACK = 2 * 1024 * 1024              # a pack's last blob and header; a larger pack is joined afresh
PackCallback = Callable[[str, list[BlobEntry], int, object], None]   # pack id, entries, size, ObjectInfo


class BlobStore:
    """Blob-level access to one repository on one remote.

    Write order (design 5.1): packs are uploaded first; `flush()` then writes the index that lists
    them. Nothing here writes snapshots: the caller commits one only after `flush()` returned.
    """

    def __init__(self, remote: Remote, config: RepoConfig, index: MasterIndex, *,
                 origin: dict, compression_level: int | None = None, upload_threads: int = 1,
                 reload_index: Callable[[], object] | None = None, blob_cache: BlobCache | None = None,
                 read_policy: ReadPolicy | None = None) -> None:
        self.remote, self.config, self.index = remote, config, index
        self.sealer = config.sealer     # None for a plain repository
        self.origin = origin
        self.level = config.compression["level"] if compression_level is None else compression_level
        self._reload_index = reload_index
        self._blob_cache = blob_cache
        self.read_policy = read_policy or ReadPolicy()
        self._bases = BaseCache()                          # decoded plaintexts of recent delta bases
        self._builders: dict[int, PackBuilder] = {}    # made when a blob of the kind first comes
        self._pending: set[tuple[int, bytes]] = set()       # in a builder or being uploaded
        # entries as fixed-size records in a temporary file: a session keeps every pack's until its
        # final index, and held in memory they were 57 MB of a million-file snapshot (issue 14)
        self._spill = RecordSpill()
        self._unindexed: dict[str, EntryList] = {}    # uploaded, not yet in an index
        self._session: dict[str, EntryList] = {}      # every pack this session uploaded or adopted
        self._uploads: list[Future] = []
        self._pool = LazyPool(max(1, upload_threads), "casstore-upload")
        # each pack in flight holds up to pack_size bytes: bound them by count and by bytes
        self._max_in_flight = max(1, min(upload_threads, MAX_BYTES_IN_FLIGHT // config.pack_size))
        # data packs are built in reused buffers (one per pack in flight, one filling), when the
        # remote writes from a buffer as it is; a remote that needs `bytes` would copy each one
        # again, so for it packs are joined from their parts (measured: sync to S3 peaked at
        # 195-210 MiB with buffers, about 145 without)
        self._pack_buffers = (BufferPool(config.pack_size + PACK_SLACK, keep=self._max_in_flight + 1)
                              if remote.takes_buffers else None)

        self._lock = threading.Lock()
        self.on_pack_uploaded: PackCallback | None = None
        self.on_index_written: Callable[[str, bytes], None] | None = None   # index id, its bytes
        self.session_indexes: dict[str, dict[str, EntryList]] = {}   # written by this session
        self.packs_written = 0
        self.bytes_written = 0

    # -- writing -----------------------------------------------------------------------------

    def has(self, kind: int, blob_id: bytes) -> bool:
        return (kind, blob_id) in self._pending or self.index.has(kind, blob_id)

    def has_all(self, kind: int, blob_ids: list[bytes]) -> bool:
        if self._pending:
            return all(self.has(kind, blob_id) for blob_id in blob_ids)
        return self.index.has_all(kind, blob_ids)

    def add(self, kind: int, data: bytes | memoryview) -> tuple[bytes, int]:
        """Store `data` unless present; return (id, stored bytes added)."""
        blob_id = codec.blob_id(data, self.sealer)
        if self.has(kind, blob_id):
            return blob_id, 0
        encoded = codec.encode_verified(data, self.level, blob_id, self.sealer, kind)
        return blob_id, self.add_encoded(kind, blob_id, encoded, len(data))

    def add_encoded(self, kind: int, blob_id: bytes, encoded: bytes | codec.Encoded, raw_length: int) -> int:
        """Add an already encoded and verified blob; return the stored bytes added (0 if a duplicate)."""
        if self.has(kind, blob_id):
            return 0
        length = sum(map(len, envelope_parts(encoded)))
        if kind in self._builders and not self._builders[kind].fits(length):
            self._seal(kind)
        builder = self._builders.get(kind)
        if builder is None:
            builder = self._builders[kind] = self._new_builder(kind)
        builder.add(blob_id, encoded, raw_length)
        self._pending.add((kind, blob_id))
        if builder.size >= self.config.pack_size:
            self._seal(kind)
        return length

    def add_encoded_many(self, kind: int, blobs: list[tuple[bytes, tuple[bytes, ...], int]]) -> tuple[int, int, int]:
        """`add_encoded` of each (id, envelope in parts, raw length), none a delta (a batch of small
        files: a call and two envelope passes a blob were a tenth of the snapshot's main thread).
        Returns (blobs added, their raw bytes, stored bytes added)."""
        pending, indexed = self._pending, self.index.has
        fresh = []
        for blob in blobs:
            key = (kind, blob[0])
            if key not in pending and not indexed(kind, blob[0]):
                pending.add(key)     # a second copy in the same batch is a duplicate
                fresh.append(blob)
        at = 0
        while at < len(fresh):
            builder = self._builders.get(kind)
            if builder is None:
                builder = self._builders[kind] = self._new_builder(kind)
            at = builder.add_many(fresh, at, self.config.pack_size)
            if at < len(fresh) or builder.size >= self.config.pack_size:
                self._seal(kind)     # full, or a blob does not fit: the next starts a new pack
        return len(fresh), sum(blob[2] for blob in fresh), sum(sum(map(len, blob[1])) for blob in fresh)

    def _new_builder(self, kind: int) -> PackBuilder:
        # tree packs are small: parts joined at the end are cheaper than a pack-sized buffer
        pool = self._pack_buffers if kind == KIND_DATA else None
        return PackBuilder(kind, pool.get() if pool is not None else None, self.sealer)

    def _seal(self, kind: int) -> None:
        builder = self._builders.pop(kind, None)    # the next blob of this kind starts a new pack
        if builder is None or not len(builder):
            return
        self._wait_for_room()   # first: the finished upload frees the buffer the next pack fills
        # sealing (the header: one row per blob, tens of thousands in a pack of small files),
        # hashing and read-back happen on the upload thread, off the snapshot's main thread
        self._uploads.append(self._pool.submit(self._finish_and_upload, builder))

    def _wait_for_room(self) -> None:
        while len(self._uploads) >= self._max_in_flight:
            self._uploads.pop(0).result()

    def _finish_and_upload(self, builder: PackBuilder) -> None:
        pack_id, data = builder.finish()
        _read_back(pack_id, data, builder.entries, self.config.max_blob_size, self.sealer)
        self._upload(pack_id, data, builder.entries)

    def _upload(self, pack_id: str, data: bytes | memoryview, entries: list[BlobEntry]) -> None:
        info = self.remote.put(layout.pack_key(pack_id), data, cold=True)  # packs may go to a colder class
        with self._lock:
            self._unindexed[pack_id] = self._session[pack_id] = EntryList(entries, self._spill)
            self.index.add_pack(pack_id, entries)
            self._pending.difference_update(map(_KEY, entries))
            self.packs_written += 1
            self.bytes_written += len(data)
        if self.on_pack_uploaded:
            self.on_pack_uploaded(pack_id, entries, len(data), info)

    def adopt_uploaded(self, pack_id: str, entries: list[BlobEntry]) -> None:
        """Take a pack an earlier, interrupted session uploaded (confirmed to exist) into this one."""
        with self._lock:
            self._unindexed[pack_id] = self._session[pack_id] = EntryList(entries, self._spill)
            self.index.add_pack(pack_id, entries)

    def unindexed(self) -> dict[str, list[BlobEntry]]:
        with self._lock:
            return {pack_id: list(entries) for pack_id, entries in self._unindexed.items()}

    def session_packs(self) -> set[str]:
        with self._lock:
            return set(self._session)

    def forget_unindexed(self, pack_ids: set[str]) -> None:
        """Packs found gone before they were indexed: their blobs count as missing again."""
        with self._lock:
            for pack_id in pack_ids:
                self._unindexed.pop(pack_id, None)
                self._session.pop(pack_id, None)
        self.index.drop_packs(pack_ids)

    def wait_uploads(self) -> None:
        """Seal partial packs and wait until every pack is stored."""
        for kind in (KIND_DATA, KIND_TREE):
            self._seal(kind)
        while self._uploads:
            self._uploads.pop(0).result()

    def write_index(self, kind: str = "writer") -> tuple[str, ObjectInfo] | None:
        """Write an index listing every uploaded pack not yet indexed; return (id, ObjectInfo) or None."""
        with self._lock:
            packs, self._unindexed = self._unindexed, {}
        if not packs:
            return None
        return self.put_index(packs, kind)

    def write_session_index(self, kind: str) -> tuple[str, ObjectInfo] | None:
        """Write an index listing every pack of this session, indexed before or not (design 9: a
        checkpoint protects every pack of the live session, not only those since the previous
        one). Returns (id, ObjectInfo), or None when the session has no pack."""
        with self._lock:
            packs, self._unindexed = dict(self._session), {}
        if not packs:
            return None
        return self.put_index(packs, kind)

    def put_index(self, packs: Mapping[str, Collection[BlobEntry]], kind: str, retracts: tuple[str, ...] = ()):
        """Write one index object of `packs` (withdrawing `retracts`); return (id, ObjectInfo).
        Every pack must be one this store uploaded or adopted (its entries are in `self.index`)."""
        origin = {"kind": kind, **self.origin}    # the stored key order: kind, host, session
        index_id, body = encode_index(origin, packs, retracts=retracts, sealer=self.sealer)
        check_encoded(index_id, body, origin, packs, retracts, self.config.max_blob_size, self.sealer)  # design 5.5
        info = self.remote.put(layout.index_key(index_id), body)
        if self.on_index_written:
            self.on_index_written(index_id, body)
        self.index.add_written(index_id, origin, set(packs), retracts)
        self.session_indexes[index_id] = {pack_id: _compact(entries) for pack_id, entries in packs.items()}
        return index_id, info

    def flush(self):
        """Packs first, then the index that lists them (design 5.1). Returns (index id, info) or None."""
        self.wait_uploads()
        if self._pack_buffers is not None:
            # every pack is stored: its buffers (two of 16 MiB) go before the index body is made,
            # the peak of a large session (issue 14); a later pack makes a new one
            self._pack_buffers.release()
        return self.write_index("writer")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- reading -----------------------------------------------------------------------------

    def read(self, kind: int, blob_id: bytes) -> bytes:
        """Return the blob's plaintext, verified; try every location, re-listing indexes once."""
        return self._read(kind, blob_id, 0)

    def _read(self, kind: int, blob_id: bytes, depth: int, verify: bool = True) -> bytes:
        """`verify` False: a level of a delta chain, decoded for the blob above it, whose own hash
        covers this one (`_fetch_verified`)."""
        errors: list[str] = []
        for attempt in range(2):
            for location in self._by_preference(self.index.locations(kind, blob_id)):
                try:
                    return self._fetch_verified(kind, location, blob_id, depth, verify)[1]
                except delta.BaseUnreadable:
                    raise
                except (IntegrityError, ObjectNotFound, RemoteError) as exc:
                    errors.append(f"pack {location.pack_id[:12]}: {exc}")
            if attempt == 0 and self._reload_index is not None:
                self._reload_index()
        name = KIND_NAMES.get(kind, "blob")
        detail = "; ".join(errors) if errors else "not in any index"
        raise IntegrityError(f"{name} blob {blob_id.hex()[:16]} cannot be read: {detail}")

    def read_encoded(self, kind: int, blob_id: bytes) -> tuple[bytes, int]:
        """The blob's stored encoding and raw length, verified by decoding (for copying blobs).

        Like `read`, every location is tried and the index re-listed once (a gc of the source may
        have repacked the blob since the index was loaded)."""
        errors: list[str] = []
        for attempt in range(2):
            for location in self.index.locations(kind, blob_id):
                try:
                    return self._fetch_verified(kind, location, blob_id, 0)[0], location.raw_length
                except (IntegrityError, ObjectNotFound, RemoteError) as exc:
                    errors.append(f"pack {location.pack_id[:12]}: {exc}")
            if attempt == 0 and self._reload_index is not None:
                self._reload_index()
        raise IntegrityError(f"blob {blob_id.hex()[:16]} cannot be read: {'; '.join(errors) or 'not indexed'}")

    @staticmethod
    def _by_preference(locations: list[Location]) -> list[Location]:
        """A copy stored whole first: it decodes without reading a chain."""
        return sorted(locations, key=lambda loc: loc.base is not None)

    def delta_base(self, hint: bytes | None, blob_id: bytes) -> tuple[bytes, bytes] | None:
        """(id, plaintext) of `hint` when a new data blob may be stored as a delta against it: the
        repository writes deltas, the hint is stored outside condemned packs, and a delta on it stays
        within the chain bound. Any failure to read it only means the blob is stored whole."""
        chain = self.config.delta_chain
        if not chain or hint is None or hint == blob_id or not self.index.has(KIND_DATA, hint):
            return None
        if self.index.delta_depth(KIND_DATA, hint, chain) >= chain:
            return None
        try:
            return hint, self.base_plaintext(hint)
        except (IntegrityError, ObjectNotFound, RemoteError) as exc:
            log.warning("storing a chunk whole: its delta base %s cannot be read (%s)", hint.hex()[:16], exc)
            return None

    def forget_bases(self) -> None:
        """Drop the cached base plaintexts: a snapshot uses each base once (the chunk it replaces),
        so after a delta they only hold memory (up to 8 MiB: issue 17's peak RSS)."""
        self._bases.clear()

    def base_plaintext(self, blob_id: bytes, depth: int = 0) -> bytes:
        """A delta base's plaintext, verified against its id: from the bounded cache or read (and
        then cached)."""
        return self._base(blob_id, depth, verified=True)[0]

    def _base(self, blob_id: bytes, depth: int, verified: bool) -> tuple[bytes, bool]:
        """(plaintext, whether it was hashed against `blob_id`) of a delta base. `verified` False: a
        level of a chain below a blob that is hashed itself, so this level need not be (each level
        cost a BLAKE3 pass; issue 17). A remote repository's reads are always hashed: its blob
        cache keeps only verified bytes, and a download costs far more than a hash."""
        verified = verified or self._blob_cache is not None
        cached = self._bases.get(blob_id)
        if cached is not None:
            plain, hashed = cached
            if hashed or not verified:
                return cached
            if codec.blob_id(plain, self.sealer) == blob_id:
                self._bases.put(blob_id, plain, True)
                return plain, True
            self._bases.discard(blob_id)      # decoded from a damaged chain: read it again, verified
        if depth >= delta.MAX_RESOLVE:
            raise delta.BaseUnreadable(f"delta chain longer than {delta.MAX_RESOLVE} at {blob_id.hex()[:16]} "
                                       "(corrupt or hostile)")
        try:
            plain = self._read(KIND_DATA, blob_id, depth + 1, verified)
        except delta.BaseUnreadable:
            raise
        except (IntegrityError, ObjectNotFound, RemoteError) as exc:
            raise delta.BaseUnreadable(f"delta base {blob_id.hex()[:16]} cannot be read: {exc}") from exc
        self._bases.put(blob_id, plain, verified)
        return plain, verified

    def _fetch_verified(self, kind: int, location: Location, blob_id: bytes, depth: int,
                        verify: bool = True) -> tuple[bytes, bytes]:
        """(encoded, plaintext) of one blob at one location, checked against its id before it is
        cached or returned; a cached copy that fails the check is evicted (DESIGN.md "Verified reads").
        `verify` False (a chain level below a verified blob): decoded, not hashed, not cached.

        A delta's base is read first (the chain, `depth` deep so far, through the bounded cache),
        outside the verified read: a broken chain is not worth fetching this blob again. The
        chain's levels are decoded without hashing them: this blob's hash covers them. When that
        hash (or the decoding) fails, the chain is read again level by level, each verified, so a
        broken base is named as such (`delta.BaseUnreadable`) and a good one lets the blob's own
        bytes be judged as any blob's are (fetched again on mismatch)."""
        if location.base is None:
            return self._fetch_checked(kind, location, blob_id, None, verify)
        base, hashed = self._base(location.base, depth, verified=False)
        if not hashed:
            try:
                return self._fetch_checked(kind, location, blob_id, base, verify, base_trusted=False)
            except _UnverifiedBase:
                base = self._base(location.base, depth, verified=True)[0]
        return self._fetch_checked(kind, location, blob_id, base, verify)

    def _fetch_checked(self, kind: int, location: Location, blob_id: bytes, base: bytes | None, verify: bool,
                       base_trusted: bool = True) -> tuple[bytes, bytes]:
        cache, raw_length = self._blob_cache, location.raw_length

        def check(encoded: bytes) -> tuple[bytes, bytes]:
            if delta.base_of(encoded) != location.base:
                raise IntegrityError(f"blob {blob_id.hex()[:16]}: its envelope's delta base is not the indexed one")
            try:
                if not verify:
                    return encoded, codec.decode(encoded, raw_length, self.sealer, kind, blob_id, base=base)
                return encoded, codec.decode_verified(encoded, raw_length, blob_id, self.sealer, kind, base=base)
            except BAD_BYTES as exc:
                if base_trusted:
                    raise
                raise _UnverifiedBase from exc     # not retried here: the chain is verified first

        if cache is not None:
            cached = cache.get(kind, blob_id, raw_length)
            if cached is not None:
                try:
                    return check(cached)
                except BAD_BYTES as exc:
                    log.warning("evicting a damaged cached blob and downloading again: %s", exc)
                    cache.discard(kind, blob_id, raw_length)
        key = layout.pack_key(location.pack_id)
        # `large`: a blob may be MiBs, so the remote gives the read a pack's timeout, not a small object's
        return read_verified(
            f"blob {blob_id.hex()[:16]} in pack {location.pack_id[:12]}",
            lambda: self.remote.get(key, location.offset, location.length, large=True), check, self.read_policy,
            on_verified=(lambda encoded: cache.put(kind, blob_id, raw_length, encoded)) if cache and verify else None)


class _UnverifiedBase(Exception):
    """A delta decoded with a base that was not hashed did not verify (or decode): the base may be
    to blame, so the blob is not fetched again before its chain is read verified."""


class BaseCache:
    """Plaintexts of recently used delta bases, bounded in bytes (least recently used out first;
    a base over a quarter of the bound is not kept), each marked whether it was hashed against
    its id (a chain level decoded for a blob above it is not: `BlobStore._base`).

    A delta read twice, or two deltas on one base, decode that base once. Small on purpose: a
    chain (at most `compression.delta` bases) is read base first, so each base is needed once
    per read, and memory is the tighter bound (issue 17: peak RSS)."""

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self._items: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        self._bytes, self._limit = 0, limit
        self._lock = threading.Lock()

    def get(self, blob_id: bytes) -> tuple[bytes, bool] | None:
        """(plaintext, verified) or None."""
        with self._lock:
            item = self._items.get(blob_id)
            if item is not None:
                self._items.move_to_end(blob_id)
            return item

    def put(self, blob_id: bytes, plain: bytes, verified: bool = True) -> None:
        if len(plain) > self._limit // 4:
            return
        with self._lock:
            old = self._items.get(blob_id)
            if old is not None and (old[1] or not verified):
                return
            self._items[blob_id] = (plain, verified)     # a verified copy replaces an unverified one
            self._bytes += len(plain) - (len(old[0]) if old is not None else 0)
            while self._bytes > self._limit:
                _, (evicted, _) = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def discard(self, blob_id: bytes) -> None:
        with self._lock:
            item = self._items.pop(blob_id, None)
            if item is not None:
                self._bytes -= len(item[0])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _compact(entries: Collection[BlobEntry]) -> EntryList:
    return entries if isinstance(entries, EntryList) else EntryList(entries)


def _read_back(pack_id: str, data: bytes | memoryview, entries: list[BlobEntry], max_raw_length: int,
               sealer: Sealer | None) -> None:
    """A sealed pack must parse back to exactly the blobs put in it before it may be stored (design 5.5).

    The blobs themselves were decoded and re-hashed when they were encoded, and the pack's name
    was just hashed from these very bytes; this checks the framing: that the header parses back
    to the blobs written, each where the header says.
    """
    # compared as rows, not entries: an entry object each was most of the read-back (issue 14)
    if header_rows(data, max_raw_length, sealer) != entry_rows(entries):
        raise IntegrityError("internal error: a pack header does not describe the blobs written")
