"""A batch of small files' chunks read a run of a pack at a time (issue 14).

Small files restored in snapshot order name chunks that lie side by side in their packs (the
snapshot wrote them in that order). Reading each alone costs an open, a pread and a close of the
pack and the whole per-blob read path in Python; one read per run of neighbouring blobs costs that
once, and each blob is still decoded and checked against its id. Anything the fast way cannot
vouch for (a delta blob, a pack that cannot be read, bytes that fail their check) is read alone
by the blob store, which tries every copy, re-lists the index and names the error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from casstore.errors import RemoteError
from casstore.format import codec, delta, layout
from casstore.format.index import Location
from casstore.format.pack import KIND_DATA
from casstore.repo.blobstore import BlobStore
from casstore.repo.objectcache import BAD_BYTES

MAX_GAP = 64 * 1024            # bytes of other blobs read and dropped to join two runs into one
MAX_RUN = 8 * 1024 * 1024      # bytes read at once (bounds a worker's memory)

_Wanted = tuple[str, int, Location, bytes]      # pack id, offset, location, blob id


def read_data_blobs(store: BlobStore, blob_ids: Iterable[bytes], *, alone: bool = True) -> dict[bytes, bytes]:
    """The verified plaintext of each data blob, by id. `alone` False (a worker process): the
    blobs the fast way cannot vouch for are left out, for the parent to read (a read alone may
    reload the index, whose table is hashed on threads that a forked process does not have)."""
    ids = list(dict.fromkeys(blob_ids))
    found: dict[bytes, bytes] = {}
    wanted: list[_Wanted] = []
    for blob_id in ids:
        whole = next((loc for loc in store.index.locations(KIND_DATA, blob_id) if loc.base is None), None)
        if whole is not None:
            wanted.append((whole.pack_id, whole.offset, whole, blob_id))
    wanted.sort(key=lambda w: (w[0], w[1]))
    for run in _runs(wanted):
        found.update(_read_run(store, run))
    for blob_id in ids if alone else ():
        if blob_id not in found:
            found[blob_id] = store.read(KIND_DATA, blob_id)
    return found


def _runs(wanted: list[_Wanted]) -> Iterator[list[_Wanted]]:
    """Blobs of one pack close enough to read with one request, in pack order."""
    run: list[_Wanted] = []
    for item in wanted:
        if run:
            start, end = run[0][1], run[-1][1] + run[-1][2].length
            if item[0] != run[0][0] or item[1] - end > MAX_GAP or item[1] + item[2].length - start > MAX_RUN:
                yield run
                run = []
        run.append(item)
    if run:
        yield run


def _read_run(store: BlobStore, run: list[_Wanted]) -> dict[bytes, bytes]:
    pack_id, start = run[0][0], run[0][1]
    end = max(offset + loc.length for _, offset, loc, _ in run)
    try:
        data = memoryview(store.remote.get(layout.pack_key(pack_id), start, end - start, large=True))
    except RemoteError:
        return {}                   # each is read alone, and fails there with its own message
    found = {}
    for _, offset, loc, blob_id in run:
        encoded = data[offset - start:offset - start + loc.length]
        if len(encoded) != loc.length or delta.base_of(encoded) is not None:
            continue
        try:
            found[blob_id] = codec.decode_verified(encoded, loc.raw_length, blob_id, store.sealer, KIND_DATA)
        except BAD_BYTES:
            continue
    return found
