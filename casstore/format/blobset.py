"""A set of (kind, blob id) that costs about 35 bytes a member, not ~150 as a set of tuples.

gc's live set, the blobs a sync must send and the trees a walk has seen hold up to one member per
blob in the repository (issue 14: a million-blob repository's live set was ~150 MB as Python
tuples). Here a member is a 31-byte key (id[2:] + kind) appended to one of 65,536 bytearrays
chosen by the id's first two bytes; membership is a C-speed `find` of the key within its bucket
(about 15 keys at 1M members, 150 at 10M), accepting only hits at key boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_KEY = 31
_BUCKETS = 1 << 16
_KIND_BYTE = [bytes((kind,)) for kind in range(256)]


class BlobSet:
    """With `ordered`, members also iterate in the order they were added (33 more bytes a member):
    a sync uploads blobs in walk order, so each pack holds the blobs of neighbouring files."""

    def __init__(self, members: Iterable[tuple[int, bytes]] = (), *, ordered: bool = False) -> None:
        self._buckets: list[bytearray | None] = [None] * _BUCKETS
        self._len = 0
        self._order = bytearray() if ordered else None    # kind byte + id, per member, as added
        for kind, blob_id in members:
            self.add(kind, blob_id)

    def add(self, kind: int, blob_id: bytes) -> bool:
        """Add (kind, blob_id); True when it was not a member before."""
        b, key = blob_id[0] << 8 | blob_id[1], blob_id[2:] + _KIND_BYTE[kind]
        bucket = self._buckets[b]
        if bucket is None:
            self._buckets[b] = bytearray(key)
        elif _has(bucket, key):
            return False
        else:
            bucket += key
        self._len += 1
        if self._order is not None:
            self._order += _KIND_BYTE[kind] + blob_id
        return True

    def __contains__(self, member: object) -> bool:
        if not isinstance(member, tuple) or len(member) != 2:
            return False
        kind, blob_id = member
        bucket = self._buckets[blob_id[0] << 8 | blob_id[1]]
        return bucket is not None and _has(bucket, blob_id[2:] + _KIND_BYTE[kind])

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Members in the order added when `ordered`, else by bucket (the ids' first two bytes)."""
        if self._order is not None:
            order = self._order
            for at in range(0, len(order), 33):
                yield order[at], bytes(order[at + 1:at + 33])
            return
        for b, bucket in enumerate(self._buckets):
            if bucket is None:
                continue
            prefix = b.to_bytes(2, "big")
            for at in range(0, len(bucket), _KEY):
                yield bucket[at + _KEY - 1], prefix + bytes(bucket[at:at + _KEY - 1])

    def of_kind(self, kind: int) -> Iterator[bytes]:
        """The ids of the members of one kind."""
        return (blob_id for member_kind, blob_id in self if member_kind == kind)


def _has(bucket: bytearray, key: bytes) -> bool:
    at = bucket.find(key)
    while at >= 0:
        if at % _KEY == 0:
            return True
        at = bucket.find(key, at + 1)
    return False
