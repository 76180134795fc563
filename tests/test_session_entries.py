"""A writer's session keeps its packs' entries compactly (issue 14), and the index it writes from
them is the same object, byte for byte, as before: encoded entry by entry, read back entry by entry."""

from __future__ import annotations

import gc
import os
import tracemalloc

import msgpack
import pytest

from casstore.errors import IntegrityError
from casstore.format.config import RepoConfig
from casstore.format.entrylist import EntryList
from casstore.format.index import IndexObject, MasterIndex, check_encoded, decode_index, encode_index
from casstore.format.pack import KIND_DATA, KIND_TREE, BlobEntry
from casstore.format.spill import RecordSpill
from casstore.remotes.memory import MemoryRemote
from casstore.repo.blobstore import BlobStore

ORIGIN = {"kind": "writer", "host": "h", "session": "s"}


def _entries(seed: int, count: int, with_delta: bool = False) -> list[BlobEntry]:
    out, offset = [], 0
    for i in range(count):
        blob_id = bytes([seed % 256, i % 256, i // 256 % 256]) + os.urandom(29)
        length = 100 + i * 37 % 5000 + (1 << 33) * (i == 2)    # one offset and length past 32 bits
        base = os.urandom(32) if with_delta and i % 3 == 0 else None
        kind = KIND_TREE if i % 7 == 0 else KIND_DATA
        base = base if kind == KIND_DATA else None
        out.append(BlobEntry(kind, blob_id, offset, length, min(length * 3, 1 << 20), base))
        offset += length & 0xFFFF     # later offsets stay small: only entry 2 is wide
    return out


def _packs(count: int = 5) -> dict[str, list[BlobEntry]]:
    return {os.urandom(32).hex(): _entries(n, 40, with_delta=n % 2 == 0) for n in range(count)}


@pytest.mark.parametrize("spilled", [False, True])
def test_an_entry_list_gives_back_exactly_the_entries_put_in(spilled):
    spill = RecordSpill() if spilled else None
    entries = _entries(1, 300, with_delta=True)
    EntryList(_entries(2, 10), spill)       # another list before it in the same spill file
    compact = EntryList(entries, spill)
    assert len(compact) == 300 and list(compact) == entries and compact == entries
    assert compact[0] == entries[0] and compact[-1] == entries[-1] and compact[5:8] == entries[5:8]
    assert compact != entries[:-1] and compact != EntryList(entries[1:])
    assert compact == EntryList(entries)     # the same entries, whether in memory or spilled


@pytest.mark.parametrize("retracts", [(), ("ab" * 32,)])
def test_the_streamed_index_is_the_same_bytes_as_the_whole_document_packed(retracts):
    packs = _packs()
    index_id, body = encode_index(ORIGIN, {p: EntryList(e) for p, e in packs.items()}, retracts=retracts)
    whole = msgpack.packb({"version": 1, "origin": ORIGIN,
                           "packs": [[p, [e.as_list() for e in packs[p]]] for p in sorted(packs)],
                           "supersedes": [], **({"retracts": list(retracts)} if retracts else {})})
    assert body == whole
    assert IndexObject(ORIGIN, packs, retracts=list(retracts)).encode() == (index_id, body)
    assert decode_index(index_id, body, 1 << 40).packs == packs
    check_encoded(index_id, body, ORIGIN, packs, retracts, 1 << 40)


def test_the_read_back_finds_any_difference_between_the_index_and_what_was_meant():
    packs = _packs()
    index_id, body = encode_index(ORIGIN, packs)
    first = sorted(packs)[0]
    one_entry_off = {**packs, first: [*packs[first][:-1], BlobEntry(KIND_DATA, b"x" * 32, 0, 1, 1)]}
    variants = [one_entry_off, {p: e for p, e in packs.items() if p != first},
                {**packs, first: packs[first][:-1]}]
    for meant in variants:
        with pytest.raises(IntegrityError):
            check_encoded(index_id, body, ORIGIN, meant, (), 1 << 40)
    with pytest.raises(IntegrityError):
        check_encoded(index_id, body, {**ORIGIN, "kind": "checkpoint"}, packs, (), 1 << 40)
    with pytest.raises(IntegrityError):
        check_encoded(index_id, body, ORIGIN, packs, ("ab" * 32,), 1 << 40)
    trailing = body + b"\xc0"
    with pytest.raises(IntegrityError):
        check_encoded(encode_index(ORIGIN, packs)[0], trailing, ORIGIN, packs, (), 1 << 40)


def test_a_session_holds_its_new_blobs_in_under_120_bytes_each():
    """100k blobs in 400 packs taken into a session: what the store and its index keep per blob in
    memory. As BlobEntry lists it was 380 bytes; as records 189 (57 in the session's records, 46 a
    record in the index table's unsettled tails, plus their per-bucket arrays); with both written
    to temporary files 94: 8 a record in the tails, the rest their per-bucket arrays (65,536 of
    them here, about 6 MiB whatever the count)."""
    store = BlobStore(MemoryRemote(), RepoConfig.new(), MasterIndex(), origin=ORIGIN)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(400):    # each pack's entries made as a pack builder makes them, then let go
            store.adopt_uploaded(os.urandom(32).hex(), _entries(n, 250))
        gc.collect()
        per_blob = (tracemalloc.get_traced_memory()[0] - before) / 100_000
    finally:
        tracemalloc.stop()
    assert per_blob < 120, per_blob
    written = store.write_session_index("checkpoint")
    assert written is not None
    index_id, _ = written
    assert sum(map(len, store.session_indexes[index_id].values())) == 100_000
    assert store.index.from_objects_only   # every adopted pack is now named by the index it wrote
