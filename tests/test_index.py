"""MasterIndex on its compact record table (issue 14): the same answers a dict of locations gives."""

from __future__ import annotations

import os
import random
import sys
import threading
import tracemalloc

import pytest

from casstore.format import index as index_module
from casstore.format.entrylist import EntryList
from casstore.format.index import IndexObject, Location, MasterIndex, check_encoded, encode_index
from casstore.format.pack import KIND_DATA, KIND_TREE, BlobEntry

ORIGIN = {"kind": "writer", "host": "h", "session": "s"}


def pack_name(n: int) -> str:
    return f"{n:064x}"


def entry(blob_id: bytes, offset: int, kind: int = KIND_DATA, length: int = 10, raw: int = 20) -> BlobEntry:
    return BlobEntry(kind, blob_id, offset, length, raw)


def test_a_blob_in_two_packs_has_both_locations_and_a_repeated_listing_counts_once() -> None:
    index, blob = MasterIndex(), os.urandom(32)
    index.add_pack(pack_name(1), [entry(blob, 5)])
    index.add_pack(pack_name(2), [entry(blob, 7)])
    index.add_pack(pack_name(1), [entry(blob, 5)])         # the same location listed again
    assert index.locations(KIND_DATA, blob) == [Location(pack_name(1), 5, 10, 20), Location(pack_name(2), 7, 10, 20)]
    assert len(index) == 1
    assert index.locations(KIND_TREE, blob) == [] and not index.has(KIND_TREE, blob)


def test_a_tree_and_a_chunk_with_the_same_id_stay_apart() -> None:
    index, blob = MasterIndex(), os.urandom(32)
    index.add_pack(pack_name(1), [entry(blob, 5, KIND_DATA), entry(blob, 9, KIND_TREE, raw=3)])
    assert index.locations(KIND_TREE, blob) == [Location(pack_name(1), 9, 10, 3)]
    assert len(index) == 2
    assert sorted(key for key, _ in index.blobs()) == [(KIND_DATA, blob), (KIND_TREE, blob)]


def test_drop_packs_forgets_their_locations_and_blobs_left_without_any() -> None:
    index, shared, only = MasterIndex(), os.urandom(32), os.urandom(32)
    index.add_pack(pack_name(1), [entry(shared, 5), entry(only, 20)])
    index.add_pack(pack_name(2), [entry(shared, 5)])
    index.drop_packs({pack_name(1), pack_name(9)})
    assert index.locations(KIND_DATA, shared) == [Location(pack_name(2), 5, 10, 20)]
    assert not index.has(KIND_DATA, only) and len(index) == 1
    assert index.all_pack_ids() == {pack_name(2)}
    index.add_pack(pack_name(1), [entry(only, 20)])        # a pack id seen before comes back
    assert index.locations(KIND_DATA, only) == [Location(pack_name(1), 20, 10, 20)]


def test_ids_alike_in_their_first_six_bytes_are_told_apart_before_and_after_settling() -> None:
    """Unsettled records are kept in memory by their id's bytes 2-6 only (the rest on disk):
    ids that share those, and the same id of the other kind, must not be taken for each other."""
    prefix = os.urandom(6)
    a, b, absent = (prefix + os.urandom(26) for _ in range(3))
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(a, 5), entry(b, 9, KIND_TREE)])
    index.add_pack(pack_name(2), [entry(a, 7)])
    for _ in range(2):      # unsettled, then settled (len settles)
        assert index.locations(KIND_DATA, a) == [Location(pack_name(1), 5, 10, 20), Location(pack_name(2), 7, 10, 20)]
        assert index.locations(KIND_TREE, b) == [Location(pack_name(1), 9, 10, 20)]
        assert index.has(KIND_TREE, b) and not index.has(KIND_DATA, b) and not index.has(KIND_TREE, a)
        assert not index.has(KIND_DATA, absent) and index.locations(KIND_DATA, absent) == []
        assert len(index) == 2


def test_a_blob_whose_copies_are_all_condemned_counts_as_missing() -> None:
    index, blob, safe = MasterIndex(), os.urandom(32), os.urandom(32)
    index.add_pack(pack_name(1), [entry(blob, 5), entry(safe, 30)])
    index.add_pack(pack_name(2), [entry(safe, 5)])
    index.condemned = {pack_name(1)}
    assert not index.has(KIND_DATA, blob) and index.has(KIND_DATA, safe)
    assert index.locations(KIND_DATA, blob)               # still readable, only not relied on


def test_objects_record_their_packs_origins_and_retractions_and_clear_forgets_them() -> None:
    index, blob = MasterIndex(), os.urandom(32)
    obj = IndexObject(ORIGIN, {pack_name(1): [entry(blob, 5)]}, retracts=["ab" * 32])
    index.add_object("cd" * 32, obj)
    index.add_object("cd" * 32, obj)                      # loading the same object twice is a no-op
    assert index.index_packs == {"cd" * 32: {pack_name(1)}}
    assert index.retracted == {"ab" * 32} and index.index_origins["cd" * 32] == ORIGIN
    index.clear()
    assert len(index) == 0 and not index.has(KIND_DATA, blob) and not index.index_packs
    assert not index.retracted and index.all_pack_ids() == set()


def test_locations_beyond_the_record_fields_are_kept_exactly() -> None:
    index, blob = MasterIndex(), os.urandom(32)
    index.add_pack(pack_name(1), [entry(blob, 1 << 40, raw=1 << 33)])
    index.add_pack(pack_name(2), [entry(blob, 3)])
    wide = Location(pack_name(1), 1 << 40, 10, 1 << 33)
    assert index.locations(KIND_DATA, blob) == [Location(pack_name(2), 3, 10, 20), wide]
    assert len(index) == 1 and index.all_pack_ids() == {pack_name(1), pack_name(2)}
    index.drop_packs({pack_name(2)})
    assert [loc.pack_id for _, locs in index.blobs() for loc in locs] == [pack_name(1)]


def test_random_adds_lookups_and_drops_agree_with_a_dict_of_locations() -> None:
    rng = random.Random(14)
    index = MasterIndex()
    model: dict[tuple[int, bytes], list[Location]] = {}
    ids = [rng.randbytes(32) for _ in range(3000)] + [bytes(31) + b"\x01", b"\xff" * 32]
    for step in range(60):
        pack = pack_name(rng.randrange(40))
        entries = [entry(rng.choice(ids), rng.randrange(1000), rng.choice((KIND_DATA, KIND_TREE)))
                   for _ in range(rng.choice((1, 5, 400)))]
        index.add_pack(pack, entries)
        for e in entries:
            locations = model.setdefault((e.kind, e.id), [])
            if (loc := Location(pack, e.offset, e.length, e.raw_length)) not in locations:
                locations.append(loc)
        if step % 7 == 6:
            gone = {pack_name(rng.randrange(40)) for _ in range(3)}
            index.drop_packs(gone)
            model = {k: kept for k, locs in model.items() if (kept := [x for x in locs if x.pack_id not in gone])}
        for key in rng.sample(sorted(model), min(20, len(model))) + [(KIND_DATA, rng.randbytes(32))]:
            assert sorted(index.locations(*key), key=str) == sorted(model.get(key, []), key=str)
    assert {k: sorted(v, key=str) for k, v in index.blobs()} == {k: sorted(v, key=str) for k, v in model.items()}
    assert len(index) == len(model)
    assert index.all_pack_ids() == {loc.pack_id for locs in model.values() for loc in locs}


def test_lookups_on_worker_threads_while_packs_are_added_see_every_pack_added_before() -> None:
    # the snapshot path: chunk workers call has() while upload threads add packs
    index = MasterIndex()
    added: list[bytes] = []
    failures: list[object] = []
    rng = random.Random(7)
    packs = [(pack_name(n), [entry(rng.randbytes(32), i) for i in range(50)]) for n in range(300)]

    def writer() -> None:
        for pack_id, entries in packs:
            index.add_pack(pack_id, entries)
            added.append(entries[rng.randrange(50)].id)

    def reader() -> None:
        try:
            while len(added) < len(packs):
                for blob_id in added[-20:]:
                    if not index.has(KIND_DATA, blob_id):
                        failures.append(blob_id)
        except Exception as exc:   # a race inside the table surfaces here
            failures.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)        # switch threads often, so an unguarded settle would be caught mid-way
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert len(index) == 300 * 50


def test_dropping_a_few_packs_and_dropping_many_give_what_a_fresh_index_of_the_rest_gives() -> None:
    # a few packs are found by scanning for their numbers, many by a pass over every record
    rng = random.Random(41)
    packs = {pack_name(n): [entry(rng.randbytes(32), i * 10) for i in range(200)] for n in range(60)}
    shared = rng.randbytes(32)
    for n in range(0, 60, 3):                  # one blob in every third pack too
        packs[pack_name(n)].append(entry(shared, 5000))
    for gone in ({pack_name(n) for n in (1, 2, 30)}, {pack_name(n) for n in range(40)}):
        index, expected = MasterIndex(), MasterIndex()
        for pack_id, entries in packs.items():
            index.add_pack(pack_id, entries)
            if pack_id not in gone:
                expected.add_pack(pack_id, entries)
        len(index)                             # settled: the drop works on the table, not the tails
        index.drop_packs(gone)
        assert list(index.blobs()) == list(expected.blobs()) and len(index) == len(expected)
        assert index.all_pack_ids() == set(packs) - gone


@pytest.mark.parametrize("passes", ["one pass", "many passes"])
def test_settling_dense_tails_in_one_pass_or_many_gives_every_location_once(monkeypatch, passes):
    """Tails as dense as an initial snapshot's are settled group by group from ranges of the spill;
    read in many small passes and reads (as at millions of records) or in one, the table holds each
    location once, a repeated listing dropped, beside an earlier table's records."""
    if passes == "many passes":
        monkeypatch.setattr(index_module, "_FEED_RECORDS", 50)
        monkeypatch.setattr(index_module, "_READ_RECORDS", 7)
    rng = random.Random(5)
    index = MasterIndex()
    first = [entry(rng.randbytes(32), i) for i in range(300)]
    index.add_pack(pack_name(0), first)
    assert len(index) == 300                            # settled: an earlier table
    later = [entry(rng.randbytes(32), i, rng.choice((KIND_DATA, KIND_TREE))) for i in range(3000)]
    index.add_pack(pack_name(1), later)
    index.add_pack(pack_name(1), later[:100])           # a repeated listing: no second location
    index.add_pack(pack_name(2), first[:50])            # a second copy of earlier blobs
    model = {(e.kind, e.id): [Location(pack_name(0), e.offset, e.length, e.raw_length)] for e in first}
    for e in first[:50]:
        model[e.kind, e.id].append(Location(pack_name(2), e.offset, e.length, e.raw_length))
    for e in later:
        model[e.kind, e.id] = [Location(pack_name(1), e.offset, e.length, e.raw_length)]
    assert len(index) == len(model)
    assert {k: sorted(v, key=str) for k, v in index.blobs()} == {k: sorted(v, key=str) for k, v in model.items()}
    assert all(index.has(*key) for key in model) and not index.has(KIND_DATA, rng.randbytes(32))


def test_settling_writes_the_table_in_place_without_a_second_copy():
    """Issue 14: settling joined one piece per bucket at the end, holding the table twice over (255
    bytes a record at 20k, the peak of `check` and of a snapshot saving its table); written in place
    it allocates the table once (46 bytes a record) plus the bucket starts, and the tails' records
    read back from their spill in passes of at most 2^16 records (48 bytes a record, and 40 for its
    place in the spill's order: all of them at 20k; one `pread` a record was most of the settle's
    time). A second copy of the table would add another 130 bytes a record or more."""
    rng, n = random.Random(3), 20_000
    index = MasterIndex()
    for p in range(n // 500):
        index.add_pack(f"{p:064x}", [BlobEntry(KIND_DATA, rng.randbytes(32), i * 100, 90, 200) for i in range(500)])
    probe = BlobEntry(KIND_DATA, rng.randbytes(32), 0, 90, 200)
    index.add_pack("f" * 64, [probe])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert len(index) == n + 1          # settles
        per_record = (tracemalloc.get_traced_memory()[1] - before) / n
    finally:
        tracemalloc.stop()
    assert per_record < 230, per_record
    assert index.locations(KIND_DATA, probe.id) == [Location("f" * 64, 0, 90, 200)]


def test_encoding_an_index_holds_its_body_once():
    """Issue 14: the body was built in a bytearray and copied into bytes, twice its size at once at
    the end of a snapshot (2.4 times the body at the peak); now the buffer is handed over."""
    rng, n = random.Random(4), 20_000
    packs = {f"{p:064x}": EntryList([BlobEntry(KIND_DATA, rng.randbytes(32), i * 100, 90, 200) for i in range(500)])
             for p in range(n // 500)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index_id, body = encode_index({"kind": "writer"}, packs)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 1.7 * len(body), (peak, len(body))   # 2.4 times before, 1.4 now (growth slack)
    check_encoded(index_id, body, {"kind": "writer"}, packs, (), 1 << 20)
