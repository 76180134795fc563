"""Packs: immutable objects holding many encoded blobs and a header describing them.

Layout:  MAGIC (4 bytes) | version (1 byte) | encoded blobs back to back |
         msgpack header | header length (4 bytes, little endian)

The header is {"nonce": 16 random bytes, "blobs": [[kind, id, offset, length, raw_length], ...]};
a delta blob's entry has a sixth element, its base's id (format/delta.py).
The pack id is BLAKE3 of the whole pack, so the name verifies the content; the random nonce
makes every pack write a fresh name even when two packs hold the same blobs.

In an encrypted repository the version byte is 2 and the header is sealed (format/crypto.py, kind
"pack header"), so the pack shows only its total size; each blob is sealed on its own (codec).
"""

from __future__ import annotations

import operator
import os
import struct
from dataclasses import dataclass
from itertools import starmap
from typing import Any

import blake3
import msgpack

from casstore.errors import DowngradeError, FormatError, IntegrityError
from casstore.format import delta
from casstore.format.crypto import KIND_PACK_HEADER, Sealer
from casstore.format.fields import is_int
from casstore.format.reasons import unpack_reason

MAGIC = b"CASP"
VERSION = 1
SEALED_VERSION = 2
_PREAMBLE = len(MAGIC) + 1
_TRAILER = struct.Struct("<I")

KIND_DATA = 0
KIND_TREE = 1
KINDS = (KIND_DATA, KIND_TREE)
KIND_NAMES = {KIND_DATA: "data", KIND_TREE: "tree"}
_KIND_SET = frozenset(KINDS)


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """Where one encoded blob lies inside its pack."""

    kind: int
    id: bytes
    offset: int
    length: int
    raw_length: int
    base: bytes | None = None      # a delta blob's base (format/delta.py)

    def as_list(self) -> list[Any]:
        fields = [self.kind, self.id, self.offset, self.length, self.raw_length]
        return fields if self.base is None else [*fields, self.base]


def envelope_parts(encoded: bytes | tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A blob's envelope as the parts laid back to back: given whole, or as (tag, payload)."""
    return encoded if isinstance(encoded, tuple) else (encoded,)


class PackBuilder:
    """Accumulates encoded blobs of one kind until the pack is full.

    Given a `buffer` (a reused one, from a BufferPool), blobs are copied into it as they come,
    so each encoded blob is freed at once and the pack is framed in place. Without one, blobs
    are kept as parts and joined when sealed. A reused buffer instead of parts and a fresh
    16 MiB join per pack took the heap's retained free memory at a snapshot's peak from about
    72 MiB to a few MiB (glibc raised its thresholds after each freed 16 MiB and kept the rest).
    """

    def __init__(self, kind: int, buffer: memoryview | None = None, sealer: Sealer | None = None) -> None:
        self.kind = kind
        self._buffer = buffer
        self._sealer = sealer
        preamble = MAGIC + bytes((VERSION if sealer is None else SEALED_VERSION,))
        self._parts: list[bytes] = []
        if buffer is None:
            self._parts.append(preamble)
        else:
            buffer[:_PREAMBLE] = preamble
        self._size = _PREAMBLE
        self._sealed: bytes | memoryview | None = None
        self.entries: list[BlobEntry] = []
        self._deltas = False              # any entry a delta (with a base to list)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def fits(self, length: int) -> bool:
        """Whether a blob of `length` encoded bytes can still be added."""
        return self._buffer is None or self._size + length <= len(self._buffer)

    def add(self, blob_id: bytes, encoded: bytes | tuple[bytes, ...], raw_length: int) -> int:
        """Append one blob's envelope, whole or in parts laid back to back; return its length.
        A delta envelope's base is recorded in its entry."""
        parts = envelope_parts(encoded)
        length = sum(map(len, parts))
        base = delta.base_of(parts)
        self._deltas = self._deltas or base is not None
        return self.add_parts(blob_id, parts, length, raw_length, base)

    def add_many(self, blobs: list[tuple[bytes, tuple[bytes, ...], int]], start: int, limit: int) -> int:
        """Append plain blobs (id, envelope in parts, raw length; none a delta) from `blobs[start]`
        while each fits and the pack is under `limit` bytes; return the index of the first not
        added. A batch of small files' new blobs: a call and a room check or two a blob were a
        tenth of the snapshot's critical path (issue 14)."""
        entries, buffer, parts_out, kind, size = self.entries, self._buffer, self._parts, self.kind, self._size
        room = len(buffer) if buffer is not None else -1
        at = start
        try:
            for at in range(start, len(blobs)):
                if size >= limit:
                    return at
                blob_id, parts, raw_length = blobs[at]
                length = sum(map(len, parts))
                if buffer is None:
                    parts_out.append(parts[0] if len(parts) == 1 else b"".join(parts))
                elif size + length > room:
                    if not entries:
                        raise ValueError("internal error: blob added to a full pack buffer")
                    return at
                else:
                    offset = size
                    for part in parts:
                        buffer[offset:offset + len(part)] = part
                        offset += len(part)
                entries.append(BlobEntry(kind, blob_id, size, length, raw_length))
                size += length
            return len(blobs)
        finally:
            self._size = size

    def add_parts(self, blob_id: bytes, parts: tuple[bytes, ...], length: int, raw_length: int,
                  base: bytes | None = None) -> int:
        """`add` of an envelope already in parts, its length and delta base known."""
        if not self.fits(length):
            raise ValueError("internal error: blob added to a full pack buffer")
        self.entries.append(BlobEntry(self.kind, blob_id, self._size, length, raw_length, base))
        if self._buffer is None:
            # one copy, kept until the pack is sealed: holding zstd's own output objects instead
            # kept their worst-case-sized allocations in the heap (about 40 MiB more at a peak)
            self._parts.append(parts[0] if len(parts) == 1 else b"".join(parts))
        else:
            offset = self._size
            for part in parts:
                self._buffer[offset:offset + len(part)] = part
                offset += len(part)
        self._size += length
        return length

    def seal(self) -> None:
        """Append the header; the pack is then one buffer (at most one copy of it is alive)."""
        if self._sealed is not None:
            return
        header = msgpack.packb({"nonce": os.urandom(16), "blobs": _header_rows(self.entries, self._deltas)})
        if self._sealer is not None:
            header = self._sealer.seal(KIND_PACK_HEADER, b"", header)
        tail = header + _TRAILER.pack(len(header))
        if self._buffer is None:
            self._sealed = b"".join([*self._parts, tail])
        elif self.fits(len(tail)):
            self._buffer[self._size:self._size + len(tail)] = tail
            self._sealed = self._buffer[:self._size + len(tail)]
        else:   # a header too large for the buffer's slack (a pack of very many tiny blobs)
            self._sealed = bytes(self._buffer[:self._size]) + tail
        self._parts, self._buffer = [], None

    def finish(self) -> tuple[str, bytes | memoryview]:
        """Return (pack id, pack bytes), sealing first if needed."""
        self.seal()
        data, self._sealed = self._sealed, None
        assert data is not None  # seal() just set it
        return blake3.blake3(data).hexdigest(), data


_PLAIN_FIELDS = operator.attrgetter("kind", "id", "offset", "length", "raw_length")


def _header_rows(entries: list[BlobEntry], deltas: bool) -> list[Any]:
    """Every entry's `as_list()`, as msgpack packs it (a tuple packs as the same array): one C-level
    pass for the plain ones (a pack of small files has tens of thousands; issue 14)."""
    rows: list[Any] = list(map(_PLAIN_FIELDS, entries))
    for i, entry in enumerate(entries) if deltas else ():
        if entry.base is not None:
            rows[i] = entry.as_list()
    return rows


def parse_header(pack: bytes | memoryview, max_raw_length: int, sealer: Sealer | None = None) -> list[BlobEntry]:
    """Read a whole pack's header, refusing anything out of bounds before allocating for it."""
    rows, plain = _header(pack, max_raw_length, sealer)
    return list(starmap(BlobEntry, rows)) if plain else rows


def header_rows(pack: bytes | memoryview, max_raw_length: int, sealer: Sealer | None = None) -> list[list[Any]]:
    """A pack header's blob rows, each as `BlobEntry.as_list()` gives it; refuses exactly what
    `parse_header` refuses. The read-back of a pack just written compares them with what was put
    in (`entry_rows`) at C speed, without an entry object each."""
    rows, plain = _header(pack, max_raw_length, sealer)
    return rows if plain else [entry.as_list() for entry in rows]


def _header(pack: bytes | memoryview, max_raw_length: int, sealer: Sealer | None) -> tuple[list[Any], bool]:
    """(the header's rows as decoded, True) when every row is a plain entry within bounds (checked
    column by column), else (the entries, False), checked one by one."""
    view = memoryview(pack)
    if len(view) < _PREAMBLE + _TRAILER.size or bytes(view[:4]) != MAGIC:
        raise FormatError("not a casstore pack (bad magic)")
    _check_version(view[4], sealer)
    (header_length,) = _TRAILER.unpack(view[-_TRAILER.size:])
    body_end = len(view) - _TRAILER.size - header_length
    if body_end < _PREAMBLE:
        raise FormatError("pack header length out of bounds")
    header_bytes: bytes | memoryview = view[body_end:-_TRAILER.size]
    if sealer is not None:
        header_bytes = sealer.open(KIND_PACK_HEADER, b"", header_bytes, "pack header")
    try:
        header = msgpack.unpackb(header_bytes, max_bin_len=64, max_array_len=10_000_000)
        rows = header["blobs"]
        if plain_rows_valid(rows, max_raw_length, _PREAMBLE, 1, body_end):
            return rows, True
        return [_entry(item, body_end, max_raw_length) for item in rows], False
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt pack header: {unpack_reason(exc)}") from exc


def entry_rows(entries: list[BlobEntry]) -> list[list[Any]]:
    """Each entry's `as_list()` (a pack header's rows, an index's entries), the plain ones made in C."""
    return [list(row) if type(row) is tuple else row
            for row in _header_rows(entries, any(e.base is not None for e in entries))]


def plain_rows_valid(rows: Any, max_raw_length: int, min_offset: int, min_length: int,
                     end: int | None = None) -> bool:
    """True when every row is a plain blob entry (a list of 5 fields: no delta base) that
    `entry_fields` and these bounds accept: offset >= min_offset, length >= min_length, offset +
    length <= end (if given), 0 <= raw length <= max_raw_length. Checked column by column in C-level
    passes: entry by entry, a pack of small files (tens of thousands of rows) and a session's index
    (hundreds of thousands) spent most of their read-back here (issue 14). Never raises; False does
    not mean invalid: the caller then checks entry by entry, which raises the precise error or
    accepts what only it handles (delta rows, integer-like values)."""
    if type(rows) is not list:
        return False
    if not rows:
        return True
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {5}:
        return False
    kinds, ids, offsets, lengths, raws = zip(*rows, strict=True)
    if set(map(type, kinds)) != {int} or not set(kinds) <= _KIND_SET:
        return False
    if set(map(type, ids)) != {bytes} or set(map(len, ids)) != {32}:
        return False
    if set(map(type, offsets)) | set(map(type, lengths)) | set(map(type, raws)) != {int}:
        return False
    if min(offsets) < min_offset or min(lengths) < min_length or min(raws) < 0 or max(raws) > max_raw_length:
        return False
    return end is None or max(map(operator.add, offsets, lengths)) <= end


def _check_version(version: int, sealer: Sealer | None) -> None:
    if version == SEALED_VERSION and sealer is None:
        raise DowngradeError("an encrypted pack in a repository whose config says it is not encrypted: "
                             "the config may have been replaced (downgrade); refusing to read")
    if version == VERSION and sealer is not None:
        raise IntegrityError("a plain pack in an encrypted repository (planted or downgraded)")
    if version not in (VERSION, SEALED_VERSION):
        raise FormatError(f"unsupported pack version {version}")


def entry_fields(item: list[Any]) -> BlobEntry:
    """A pack header's or an index's blob entry, its kind, id and base checked (bounds are the caller's)."""
    if not isinstance(item, list) or len(item) not in (5, 6):
        raise ValueError("a blob entry has 5 or 6 fields")
    kind, blob_id, offset, length, raw_length, *rest = item
    # an integer, not a value equal to one: a float kind (1.0 == 1) broke the index's records
    # (struct.error, not one error line), a boolean kind is not the format
    if not is_int(kind) or kind not in KINDS or not isinstance(blob_id, bytes) or len(blob_id) != 32:
        raise ValueError("bad blob kind or id")
    base = rest[0] if rest else None
    if base is not None and (kind != KIND_DATA or not isinstance(base, bytes) or len(base) != 32 or base == blob_id):
        raise ValueError("bad delta base")
    return BlobEntry(kind, blob_id, offset, length, raw_length, base)


def _entry(item: list[Any], body_end: int, max_raw_length: int) -> BlobEntry:
    entry = entry_fields(item)
    offset, length, raw_length = entry.offset, entry.length, entry.raw_length
    if not all(is_int(n) for n in (offset, length, raw_length)):
        raise ValueError("non-integer blob bounds")
    if offset < _PREAMBLE or length < 1 or offset + length > body_end:
        raise ValueError("blob lies outside the pack body")
    if not 0 <= raw_length <= max_raw_length:
        raise ValueError(f"blob raw length {raw_length} above the maximum {max_raw_length}")
    return entry


def verify_pack_id(pack_id: str, pack: bytes | memoryview) -> None:
    if blake3.blake3(pack).hexdigest() != pack_id:
        raise IntegrityError(f"pack {pack_id[:16]} does not match its name")
