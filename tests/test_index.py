"""MasterIndex on its compact record table (issue 14): the same answers a dict of locations gives."""

from __future__ import annotations

import io
import os
import random
import re
import struct
import sys
import threading
import tracemalloc

import blake3
import msgpack
import pytest

from casstore.errors import FormatError, IntegrityError
from casstore.format import index as index_module
from casstore.format.blobset import BlobSet
from casstore.format.entrylist import EntryList
from casstore.format.index import (
    IndexObject,
    Location,
    MasterIndex,
    add_delta_bases,
    check_encoded,
    decode_index,
    encode_index,
    without_retracted,
)
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
        # has_all is has of every one (a files cache entry's chunks at once)
        assert index.has_all(KIND_DATA, [a, a]) and index.has_all(KIND_TREE, [b]) and index.has_all(KIND_DATA, [])
        assert not index.has_all(KIND_DATA, [a, absent]) and not index.has_all(KIND_DATA, [absent, a])
        assert not index.has_all(KIND_DATA, [a, b]) and not index.has_all(KIND_TREE, [b, a])
        assert len(index) == 2


def test_ids_alike_in_all_but_their_bucket_bytes_or_a_shifted_fingerprint_are_told_apart() -> None:
    """The first two bytes pick a record's bucket and are not stored; bytes 2-6 are its fingerprint.
    An id is looked for in its own bucket only, at a whole fingerprint: never found as a neighbouring
    bucket's id equal in the other 30 bytes, nor as an id whose fingerprint is its own shifted by one."""
    rest, fp_rest = os.urandom(26), os.urandom(26)
    held = [b"\x00\x00\xaa\xbb\xcc\xdd" + rest, b"\x00\x02\xaa\xbb\xcc\xdd" + rest,
            b"\x02\x02\xaa\xbb\xcc\xdd" + rest, b"\x00\xaa\xaa\xbb\xcc\xdd" + rest,
            b"\x00\x05\x22\x33\x44\x55" + fp_rest]
    absent = [b"\x00\x01\xaa\xbb\xcc\xdd" + rest, b"\x01\x02\xaa\xbb\xcc\xdd" + rest,
              b"\x00\x03\xaa\xbb\xcc\xdd" + rest, b"\x00\x05\x11\x22\x33\x44" + fp_rest]
    index = MasterIndex()
    for n, blob_id in enumerate(held):
        index.add_pack(pack_name(n), [entry(blob_id, 5)])
    for _ in range(2):      # unsettled, then settled (len settles)
        for n, blob_id in enumerate(held):
            assert index.locations(KIND_DATA, blob_id) == [Location(pack_name(n), 5, 10, 20)]
        assert index.has_all(KIND_DATA, held)
        for blob_id in absent:
            assert not index.has(KIND_DATA, blob_id) and index.locations(KIND_DATA, blob_id) == []
            assert not index.has_all(KIND_DATA, [blob_id]) and not index.has_all(KIND_DATA, [*held, blob_id])
        assert len(index) == len(held)
    index.add_pack(pack_name(9), [entry(b"\x00\x00" + os.urandom(30), 7)])   # a tail in bucket 0: lookups merge it
    for n, blob_id in enumerate(held):
        assert index.locations(KIND_DATA, blob_id) == [Location(pack_name(n), 5, 10, 20)]
    assert all(index.locations(KIND_DATA, blob_id) == [] for blob_id in absent)


def test_a_blob_whose_copies_are_all_condemned_counts_as_missing() -> None:
    index, blob, safe = MasterIndex(), os.urandom(32), os.urandom(32)
    index.add_pack(pack_name(1), [entry(blob, 5), entry(safe, 30)])
    index.add_pack(pack_name(2), [entry(safe, 5)])
    index.condemned = {pack_name(1)}
    assert not index.has(KIND_DATA, blob) and index.has(KIND_DATA, safe)
    assert index.has_all(KIND_DATA, [safe]) and not index.has_all(KIND_DATA, [safe, blob])
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
        for kind in (KIND_DATA, KIND_TREE):     # has_all of a files cache entry's chunks: all there, or one not
            asked = rng.sample(ids, 30)
            assert index.has_all(kind, asked) == all((kind, blob_id) in model for blob_id in asked)
            present = [blob_id for k, blob_id in model if k == kind][:30]
            assert index.has_all(kind, present) and not index.has_all(kind, [*present, rng.randbytes(32)])
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


@pytest.mark.parametrize("passes", ["one pass", "many passes", "passes smaller than a group"])
def test_settling_dense_tails_in_one_pass_or_many_gives_every_location_once(monkeypatch, passes):
    """Tails as dense as an initial snapshot's are settled group by group from ranges of the spill;
    read in many small passes and reads (as at millions of records), in passes smaller than one
    group's tails (a pass then takes that group whole), or in one, the table holds each location
    once, a repeated listing dropped, beside an earlier table's records."""
    if passes != "one pass":
        small = passes == "passes smaller than a group"     # a group here holds about a dozen records
        monkeypatch.setattr(index_module, "_FEED_RECORDS", 5 if small else 50)
        monkeypatch.setattr(index_module, "_READ_RECORDS", 3 if small else 7)
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


# -- the writer's read-back of its own index (design 5.5): every difference is refused ----------

NOT_AS_ENCODED = "internal error: an index does not decode to what was encoded"

def _two_packs() -> dict[str, list[BlobEntry]]:
    rng = random.Random(19)
    return {pack_name(n): [entry(rng.randbytes(32), i * 30) for i in range(3)] for n in (1, 2)}


def _other_packs_with(change: str) -> dict[str, list[BlobEntry]]:
    packs = _two_packs()
    if change == "an entry moved":
        first = packs[pack_name(1)][0]
        packs[pack_name(1)][0] = entry(first.id, first.offset + 1)
    elif change == "a pack missing":
        del packs[pack_name(2)]
    elif change == "a pack more":
        packs[pack_name(3)] = [entry(bytes(32), 0)]
    elif change == "an entry missing":
        packs[pack_name(2)].pop()
    return packs


@pytest.mark.parametrize("change", ["an entry moved", "a pack missing", "a pack more", "an entry missing"])
def test_an_index_read_back_with_other_entries_than_were_encoded_is_refused(change: str) -> None:
    index_id, stored = encode_index(ORIGIN, _two_packs())
    check_encoded(index_id, stored, ORIGIN, _two_packs(), (), 1 << 20)       # the same: accepted
    with pytest.raises(IntegrityError, match=f"^{NOT_AS_ENCODED}$"):
        check_encoded(index_id, stored, ORIGIN, _other_packs_with(change), (), 1 << 20)


@pytest.mark.parametrize("what", ["another origin", "a retraction more", "a retraction less"])
def test_an_index_read_back_with_another_header_than_was_encoded_is_refused(what: str) -> None:
    retracts = ["ab" * 32] if what == "a retraction less" else []
    index_id, stored = encode_index(ORIGIN, _two_packs(), retracts=retracts)
    origin = {**ORIGIN, "host": "other"} if what == "another origin" else ORIGIN
    expected_retracts = ["ab" * 32] if what == "a retraction more" else []
    with pytest.raises(IntegrityError, match=f"^{NOT_AS_ENCODED}$"):
        check_encoded(index_id, stored, origin, _two_packs(), expected_retracts, 1 << 20)


def test_an_index_read_back_with_bytes_after_it_is_refused() -> None:
    _, stored = encode_index(ORIGIN, _two_packs())
    stored += b"\x00"
    with pytest.raises(IntegrityError, match=f"^{NOT_AS_ENCODED}$"):
        check_encoded(blake3.blake3(stored).hexdigest(), stored, ORIGIN, _two_packs(), (), 1 << 20)


def test_an_index_of_delta_and_plain_blobs_reads_back_as_encoded() -> None:
    """Rows of six fields (a delta's base) are checked entry by entry: a read-back must accept them."""
    base = os.urandom(32)
    packs = {pack_name(1): [BlobEntry(KIND_DATA, os.urandom(32), 5, 10, 20, base)],
             pack_name(2): [entry(base, 5), BlobEntry(KIND_DATA, os.urandom(32), 15, 10, 20, base)]}
    index_id, stored = encode_index(ORIGIN, packs)
    check_encoded(index_id, stored, ORIGIN, packs, (), 1 << 20)
    assert decode_index(index_id, stored, 1 << 20).packs == packs


def test_an_index_read_back_under_another_name_or_as_garbage_is_refused() -> None:
    index_id, stored = encode_index(ORIGIN, _two_packs())
    with pytest.raises(IntegrityError, match="^internal error: an index is not named by its bytes$"):
        check_encoded(index_id, stored[:-1] + b"\x01", ORIGIN, _two_packs(), (), 1 << 20)
    garbage = b"\xc1" + stored[1:]
    with pytest.raises(IntegrityError, match="^internal error: an index does not decode: "):
        check_encoded(blake3.blake3(garbage).hexdigest(), garbage, ORIGIN, _two_packs(), (), 1 << 20)


def test_an_index_read_back_with_a_blob_larger_than_a_reader_accepts_is_refused() -> None:
    """What the writer wrote must be what `decode_index` accepts: a raw length beyond the limit
    would make every reader skip the index."""
    packs = {pack_name(1): [entry(os.urandom(32), 0, raw=1000)]}
    index_id, stored = encode_index(ORIGIN, packs)
    check_encoded(index_id, stored, ORIGIN, packs, (), 1000)                  # at the limit: accepted
    with pytest.raises(IntegrityError, match="bad blob bounds"):
        check_encoded(index_id, stored, ORIGIN, packs, (), 999)


@pytest.mark.parametrize("size, accepted", [(64, True), (65, False)])
def test_a_read_back_refuses_a_byte_string_longer_than_readers_accept(size: int, accepted: bool) -> None:
    """Readers refuse a byte string over 64 bytes anywhere in an index (`decode_index`): the
    writer's read-back must refuse what every reader would skip, and accept the longest they take."""
    origin = {**ORIGIN, "session": b"s" * size}
    index_id, stored = encode_index(origin, _two_packs())
    if accepted:
        check_encoded(index_id, stored, origin, _two_packs(), (), 1 << 20)
    else:
        refused = r"^internal error: an index does not decode: 65 exceeds max_bin_len\(64\)$"
        with pytest.raises(IntegrityError, match=refused):
            check_encoded(index_id, stored, origin, _two_packs(), (), 1 << 20)


def test_a_sealed_index_reads_back_with_its_key_and_a_damaged_one_names_the_index() -> None:
    from casstore.format.crypto import MasterKey

    key = MasterKey.generate().sealer
    index_id, stored = encode_index(ORIGIN, _two_packs(), sealer=key)
    check_encoded(index_id, stored, ORIGIN, _two_packs(), (), 1 << 20, key)
    damaged = stored[:-1] + bytes([stored[-1] ^ 1])
    damaged_id = blake3.blake3(damaged).hexdigest()
    with pytest.raises(IntegrityError, match=f"^index {damaged_id[:16]}: authentication failed"):
        check_encoded(damaged_id, damaged, ORIGIN, _two_packs(), (), 1 << 20, key)


# -- decoding damaged indexes: one line naming what is wrong -------------------------------------

def _named(body: bytes) -> tuple[str, bytes]:
    return blake3.blake3(body).hexdigest(), body


def test_an_index_with_bytes_after_its_document_is_corrupt() -> None:
    index_id, stored = encode_index(ORIGIN, _two_packs())
    assert decode_index(index_id, stored, 1 << 20).origin == ORIGIN
    with pytest.raises(FormatError, match=r"corrupt index \w{16}: trailing bytes after the index"):
        decode_index(*_named(stored + msgpack.packb(0)), 1 << 20)


def test_an_index_whose_pack_item_is_not_an_id_and_entries_is_corrupt() -> None:
    good = [pack_name(1), [entry(os.urandom(32), 0).as_list()]]
    for item, accepted in ((good, True), ([*good, "extra"], False), (good[:1], False)):
        body = msgpack.packb({"version": 1, "origin": ORIGIN, "packs": [item], "supersedes": []})
        if accepted:
            assert set(decode_index(*_named(body), 1 << 20).packs) == {pack_name(1)}
        else:
            with pytest.raises(FormatError, match=r"^corrupt index \w{16}: a pack's item is not \[id, entries\]$"):
                decode_index(*_named(body), 1 << 20)


@pytest.mark.parametrize("raw, accepted", [(1000, True), (1001, False)])
def test_an_index_may_list_a_blob_of_exactly_the_maximum_raw_length(raw: int, accepted: bool) -> None:
    packs = {pack_name(1): [entry(b"\x01" * 32, 5, raw=raw)]}
    index_id, stored = encode_index(ORIGIN, packs)
    if accepted:
        assert decode_index(index_id, stored, 1000).packs == packs
    else:
        with pytest.raises(FormatError, match=r"^corrupt index \w{16}: bad blob bounds$"):
            decode_index(index_id, stored, 1000)


@pytest.mark.parametrize("name", ["AB" * 32, "X" * 64, "g" * 64, "ab" * 31 + "a", "ab" * 32 + "a", 5, b"\xab" * 32])
def test_a_pack_or_index_name_that_is_not_64_lowercase_hex_digits_is_corrupt(name) -> None:
    for doc in ({"version": 1, "origin": ORIGIN, "packs": [[name, []]], "supersedes": []},
                {"version": 1, "origin": ORIGIN, "packs": [], "supersedes": [name]}):
        with pytest.raises(FormatError, match=r"^corrupt index \w{16}: bad object id "):
            decode_index(*_named(msgpack.packb(doc)), 1 << 20)


@pytest.mark.parametrize("size, accepted", [(64, True), (65, False)])
def test_an_index_holds_byte_strings_of_at_most_64_bytes_wherever_they_are(size: int, accepted: bool) -> None:
    """Ids are 32 bytes: a longer byte string is refused as it is read, even in a field no check looks at."""
    doc = {"version": 1, "origin": {**ORIGIN, "session": b"s" * size}, "packs": [], "supersedes": []}
    if accepted:
        assert decode_index(*_named(msgpack.packb(doc)), 1 << 20).origin["session"] == b"s" * size
    else:
        with pytest.raises(FormatError, match=r"^corrupt index \w{16}: 65 exceeds max_bin_len\(64\)$"):
            decode_index(*_named(msgpack.packb(doc)), 1 << 20)


def test_an_index_claiming_more_items_than_its_bytes_hold_is_refused_before_they_are_allocated() -> None:
    claim = 10_000_000
    head = {"version": 1, "origin": ORIGIN, "packs": []}
    body = b"\x84" + b"".join(map(msgpack.packb, [*(x for kv in head.items() for x in kv), "supersedes"]))
    body += b"\xdd" + struct.pack(">I", claim)            # an array of ten million, and nothing after
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=rf"^corrupt index \w{{16}}: {claim} exceeds max_array_len"):
            decode_index(*_named(body), 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated refusing a 10M-item claim"


def test_an_index_decodes_to_what_was_encoded_with_its_supersessions_and_retractions() -> None:
    supersedes, retracts = ["cd" * 32, "ab" * 32], ["ef" * 32]
    index_id, stored = encode_index({**ORIGIN, "kind": "gc"}, _two_packs(), supersedes, retracts)
    decoded = decode_index(index_id, stored, 1 << 20)
    assert (decoded.origin, decoded.packs) == ({**ORIGIN, "kind": "gc"}, _two_packs())
    assert (decoded.supersedes, decoded.retracts) == (sorted(supersedes), retracts)


def test_an_index_under_another_name_and_one_of_unknown_origin_say_so_in_one_line() -> None:
    index_id, stored = encode_index(ORIGIN, _two_packs())
    wrong = "0" * 64
    with pytest.raises(IntegrityError, match=f"^index {wrong[:16]} does not match its name$"):
        decode_index(wrong, stored, 1 << 20)
    doc = {"version": 1, "origin": {**ORIGIN, "kind": "thief"}, "packs": [], "supersedes": []}
    with pytest.raises(FormatError, match=r"^corrupt index \w{16}: bad origin$"):
        decode_index(*_named(msgpack.packb(doc)), 1 << 20)


def test_an_index_without_supersessions_or_retractions_has_none() -> None:
    """Both fields are optional in the format (DESIGN.md: only gc's indexes supersede)."""
    doc = {"version": 1, "origin": ORIGIN, "packs": [[pack_name(1), [entry(b"\x01" * 32, 5).as_list()]]]}
    decoded = decode_index(*_named(msgpack.packb(doc)), 1 << 20)
    assert (decoded.supersedes, decoded.retracts, list(decoded.packs)) == ([], [], [pack_name(1)])


def test_an_index_of_another_version_says_which() -> None:
    doc = {"version": 2, "origin": ORIGIN, "packs": [], "supersedes": []}
    with pytest.raises(FormatError, match=r"^unsupported index version 2$"):
        decode_index(*_named(msgpack.packb(doc)), 1 << 20)


def test_a_sealed_index_read_without_its_key_or_with_another_names_the_index() -> None:
    from casstore.errors import DowngradeError
    from casstore.format.crypto import MasterKey

    key = MasterKey.generate().sealer
    index_id, stored = encode_index(ORIGIN, _two_packs(), sealer=key)
    assert decode_index(index_id, stored, 1 << 20, key).packs == _two_packs()
    with pytest.raises(IntegrityError, match=f"^index {index_id[:16]}: authentication failed"):
        decode_index(index_id, stored, 1 << 20, MasterKey.generate().sealer)
    with pytest.raises(DowngradeError, match=f"^index {index_id[:16]} is encrypted but"):
        decode_index(index_id, stored, 1 << 20)


def test_an_index_object_encodes_to_what_decodes_back_sealed_or_not() -> None:
    from casstore.format.crypto import MasterKey

    for sealer in (None, MasterKey.generate().sealer):
        written = IndexObject({**ORIGIN, "kind": "gc"}, _two_packs(), ["cd" * 32, "ab" * 32], ["ef" * 32])
        index_id, stored = written.encode(sealer)
        decoded = decode_index(index_id, stored, 1 << 20, sealer)
        assert (decoded.origin, decoded.packs) == (written.origin, written.packs)
        assert (decoded.supersedes, decoded.retracts) == (["ab" * 32, "cd" * 32], ["ef" * 32])


def test_an_index_object_of_an_origin_and_packs_only_is_stored_without_retractions() -> None:
    """DESIGN.md: `retracts` is only there when a writer withdraws an index; `supersedes` always is."""
    written = IndexObject(ORIGIN, _two_packs())
    assert (written.supersedes, written.retracts) == ([], [])
    index_id, stored = written.encode()
    assert list(msgpack.unpackb(stored)) == ["version", "origin", "packs", "supersedes"]
    decoded = decode_index(index_id, stored, 1 << 20)
    assert (decoded.supersedes, decoded.retracts, decoded.packs) == ([], [], _two_packs())


def test_the_index_objects_another_listed_one_retracts_are_left_out() -> None:
    kept, withdrawn, retracting = "aa" * 32, "bb" * 32, "cc" * 32
    objects = {kept: IndexObject(ORIGIN, {}), withdrawn: IndexObject(ORIGIN, _two_packs()),
               retracting: IndexObject(ORIGIN, {}, retracts=[withdrawn, "dd" * 32])}
    assert without_retracted(objects) == {kept: objects[kept], retracting: objects[retracting]}
    assert without_retracted({kept: objects[kept]}) == {kept: objects[kept]}


# -- bookkeeping of index objects -----------------------------------------------------------------

def test_an_index_recorded_twice_keeps_what_it_was_first_recorded_with() -> None:
    index, first = MasterIndex(), "cd" * 32
    index.add_pack(pack_name(1), [entry(os.urandom(32), 0)])
    index.add_written(first, ORIGIN, {pack_name(1)}, [])
    index.add_written(first, {**ORIGIN, "host": "other"}, {pack_name(2)}, ["ab" * 32])
    assert index.index_packs == {first: {pack_name(1)}} and index.index_origins[first] == ORIGIN
    assert index.retracted == set()


def test_a_retracted_index_is_dropped_with_the_blobs_only_it_listed() -> None:
    index, lost, kept = MasterIndex(), os.urandom(32), os.urandom(32)
    old, new = "aa" * 32, "bb" * 32
    index.add_object(old, IndexObject(ORIGIN, {pack_name(1): [entry(lost, 0)], pack_name(2): [entry(kept, 0)]}))
    assert index.drop_retracted() == set() and index.has(KIND_DATA, lost)    # nothing retracts it yet
    index.add_object(new, IndexObject(ORIGIN, {pack_name(2): [entry(kept, 0)]}, retracts=[old]))
    assert index.drop_retracted() == {old}
    assert set(index.index_packs) == {new} and old not in index.index_origins
    assert not index.has(KIND_DATA, lost) and index.has(KIND_DATA, kept)
    assert index.all_pack_ids() == {pack_name(2)}


# -- delta bases -----------------------------------------------------------------------------------

def _delta(blob_id: bytes, base: bytes, offset: int = 0) -> BlobEntry:
    return BlobEntry(KIND_DATA, blob_id, offset, 10, 20, base)


def test_delta_bases_are_reached_through_whole_chains_each_once_after_the_blobs_reached() -> None:
    top, mid, bottom, other = (os.urandom(32) for _ in range(4))
    index = MasterIndex()
    index.add_pack(pack_name(1), [_delta(top, mid), _delta(mid, bottom), _delta(other, bottom), entry(bottom, 0)])
    reached = BlobSet([(KIND_DATA, top), (KIND_DATA, other)], ordered=True)
    add_delta_bases(index, reached)
    order = [blob_id for _, blob_id in reached]
    assert order[:2] == [top, other] and sorted(order[2:]) == sorted([mid, bottom]) and len(order) == 4


def test_delta_bases_that_loop_in_a_damaged_index_are_reached_once_and_the_walk_ends() -> None:
    a, b, c = (os.urandom(32) for _ in range(3))
    index = MasterIndex()
    index.add_pack(pack_name(1), [_delta(a, b), _delta(b, c), _delta(c, a)])
    reached = BlobSet([(KIND_DATA, a)], ordered=True)
    add_delta_bases(index, reached)
    assert [blob_id for _, blob_id in reached] == [a, b, c]


def test_a_delta_whose_base_no_index_lists_is_as_deep_as_the_limit() -> None:
    blob, base, missing = os.urandom(32), os.urandom(32), os.urandom(32)
    index = MasterIndex()
    index.add_pack(pack_name(1), [_delta(blob, base), _delta(base, missing)])
    assert index.delta_depth(KIND_DATA, blob, 64) == 64
    index.add_pack(pack_name(2), [entry(missing, 0)])
    assert index.delta_depth(KIND_DATA, blob, 64) == 2
    assert index.delta_depth(KIND_DATA, blob, 2) == 2 and index.delta_depth(KIND_DATA, blob, 1) == 1


def test_a_delta_listed_twice_has_one_location_and_dropping_one_of_two_packs_keeps_the_other() -> None:
    blob, base = os.urandom(32), os.urandom(32)
    index = MasterIndex()
    index.add_pack(pack_name(1), [_delta(blob, base, 5)])
    index.add_pack(pack_name(1), [_delta(blob, base, 5)])
    index.add_pack(pack_name(2), [_delta(blob, base, 7)])
    assert index.locations(KIND_DATA, blob) == [Location(pack_name(1), 5, 10, 20, base),
                                                Location(pack_name(2), 7, 10, 20, base)]
    index.drop_packs({pack_name(2)})
    assert index.locations(KIND_DATA, blob) == [Location(pack_name(1), 5, 10, 20, base)]
    assert index.delta_bases(KIND_DATA, blob) == {base} and len(index) == 1


# -- fingerprints that match across two records are no hit ----------------------------------------

def test_a_fingerprint_found_across_two_settled_records_is_no_hit() -> None:
    """Lookups scan a bucket's 4-byte fingerprints as one string: `target`'s fingerprint CCDDAABB
    also appears across the records 0000CCDD and AABB0000 (at byte 2), whose record shares the rest
    of target's key, and must not be taken for it; target itself lies further on."""
    bucket, rest = b"\x12\x34", os.urandom(26)
    across, after = bucket + b"\x00\x00\xcc\xdd" + rest, bucket + b"\xaa\xbb\x00\x00" + os.urandom(26)
    target = bucket + b"\xcc\xdd\xaa\xbb" + rest
    without, index = MasterIndex(), MasterIndex()
    for one in (without, index):
        one.add_pack(pack_name(1), [entry(across, 1), entry(after, 2)])
    index.add_pack(pack_name(2), [entry(target, 3)])
    assert len(without) == 2 and len(index) == 3            # len settles the tables
    for _ in ("settled", "with a tail"):
        assert not without.has(KIND_DATA, target) and without.locations(KIND_DATA, target) == []
        assert index.has(KIND_DATA, target)
        assert not without.has_all(KIND_DATA, [after, target]) and index.has_all(KIND_DATA, [after, target])
        assert index.locations(KIND_DATA, target) == [Location(pack_name(2), 3, 10, 20)]
        for one in (without, index):       # an unsettled record in the bucket: the lookup merges both
            one.add_pack(pack_name(3), [entry(bucket + os.urandom(30), 4)])


def test_a_fingerprint_found_across_an_unsettled_records_fields_is_no_hit() -> None:
    """An unsettled record is kept as its fingerprint and its number (0 for the first: four zero
    bytes): an id whose fingerprint is 00000000 is not found in that number, and is found once added."""
    bucket = b"\x56\x78"
    target = bucket + bytes(4) + os.urandom(26)
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(bucket + b"\x01\x02\x03\x04" + os.urandom(26), 1)])
    assert not index.has(KIND_DATA, target) and index.locations(KIND_DATA, target) == []
    index.add_pack(pack_name(2), [entry(target, 2)])
    assert index.has(KIND_DATA, target) and index.locations(KIND_DATA, target) == [Location(pack_name(2), 2, 10, 20)]


# -- a table image whose digest holds but whose parts disagree ------------------------------------

def _image_parts(index: MasterIndex) -> tuple[bytes, dict, list[int], bytes, bytes]:
    """(magic, header, bucket starts, fingerprints, rests) of the index's image, as laid out by `write_image`."""
    out = io.BytesIO()
    index.write_image(out)
    image = out.getvalue()
    at = image.index(b"\n") + 1
    size = int.from_bytes(image[at:at + 8], "little")
    header = msgpack.unpackb(image[at + 8:at + 8 + size])
    at += 8 + size
    starts = list(struct.unpack_from(f"<{(1 << 16) + 1}I", image, at))
    at += 4 * len(starts)
    records = header["records"]
    return image[:image.index(b"\n") + 1], header, starts, image[at:at + 4 * records], image[at + 4 * records:-32]


def _image(magic: bytes, header: dict, starts: list[int], fps: bytes, rests: bytes) -> bytes:
    """An image of these parts, with its digest right: only its consistency can refuse it."""
    packed = msgpack.packb(header)
    body = magic + len(packed).to_bytes(8, "little") + packed + struct.pack(f"<{len(starts)}I", *starts) + fps + rests
    return body + blake3.blake3(body).digest()


def _inconsistent(damage: str, magic: bytes, header: dict, starts: list[int], fps: bytes, rests: bytes) -> bytes:
    if damage == "the first bucket starts past record 0":
        starts = [1, *starts[1:]]
    elif damage == "a bucket starts after the next":
        b = next(b for b in range(1, 1 << 16) if starts[b + 1] > starts[b])       # a bucket with records
        starts = [*starts[:b], starts[b + 1] + 1, *starts[b + 1:]]
    elif damage == "a bucket starts after the next but not after the one after":
        b = next(b for b in range(1, 1 << 16) if starts[b + 2] > starts[b + 1] > starts[b])   # two in a row
        starts = [*starts[:b], starts[b + 1] + 1, *starts[b + 1:]]
    elif damage == "more records than the buckets end at":
        header = {**header, "records": header["records"] + 1}
        fps, rests = fps + bytes(4), rests + bytes(42)
    elif damage == "a pack without its count":
        header = {**header, "packs": [*header["packs"], pack_name(9)]}
    return _image(magic, header, starts, fps, rests)


@pytest.mark.parametrize("damage", ["the first bucket starts past record 0", "a bucket starts after the next",
                                    "a bucket starts after the next but not after the one after",
                                    "more records than the buckets end at", "a pack without its count"])
def test_a_table_image_whose_parts_disagree_is_refused_and_replaces_nothing(damage: str) -> None:
    rng = random.Random(9)
    source = MasterIndex()
    # blobs in bucket 0 (so its records start at 0 and the next bucket's later) and elsewhere
    in_bucket_0 = entry(bytes(2) + rng.randbytes(30), 0)
    side_by_side = [entry(b"\x50" + bytes([n]) + rng.randbytes(30), 9) for n in (1, 2, 2)]   # buckets in a row
    source.add_pack(pack_name(1), [in_bucket_0, *side_by_side, *(entry(rng.randbytes(32), i) for i in range(5))])
    parts = _image_parts(source)
    loaded = MasterIndex()
    loaded.read_image(io.BytesIO(_image(*parts)))           # rebuilt unchanged: accepted
    assert sorted(loaded.blobs()) == sorted(source.blobs())
    kept = os.urandom(32)
    loaded.add_pack(pack_name(2), [entry(kept, 0)])
    with pytest.raises(FormatError, match="corrupt index table image: inconsistent table image"):
        loaded.read_image(io.BytesIO(_inconsistent(damage, *parts)))
    assert loaded.locations(KIND_DATA, kept) == [Location(pack_name(2), 0, 10, 20)]


def test_the_image_of_an_empty_index_restores_an_empty_index() -> None:
    """A new repository's table: no records is a consistent table, the boundary of the checks above."""
    out, loaded = io.BytesIO(), MasterIndex()
    MasterIndex().write_image(out)
    loaded.add_pack(pack_name(1), [entry(os.urandom(32), 0)])
    loaded.read_image(io.BytesIO(out.getvalue()))
    assert len(loaded) == 0 and list(loaded.blobs()) == [] and loaded.all_pack_ids() == set()


def test_a_table_image_round_trips_on_a_big_endian_machine_and_leaves_the_index_as_it_was(monkeypatch) -> None:
    """The image is little-endian whatever the machine: on a big-endian one its numbers are swapped
    on the way out and back on the way in (simulated here: this machine is little-endian), and the
    index written out keeps answering from its own, unswapped, table."""
    rng = random.Random(11)
    entries = [entry(rng.randbytes(32), i * 7) for i in range(50)]
    source = MasterIndex()
    source.add_pack(pack_name(1), entries)
    source.add_pack(pack_name(2), entries[:5])
    expected = sorted(source.blobs())
    monkeypatch.setattr(sys, "byteorder", "big")
    out, loaded = io.BytesIO(), MasterIndex()
    source.write_image(out)
    loaded.read_image(io.BytesIO(out.getvalue()))
    assert sorted(loaded.blobs()) == expected and sorted(source.blobs()) == expected
    assert all(source.locations(KIND_DATA, e.id) == loaded.locations(KIND_DATA, e.id) for e in entries)
    assert loaded.all_pack_ids() == {pack_name(1), pack_name(2)}


def test_a_table_may_be_cached_only_while_it_holds_exactly_what_its_index_objects_list() -> None:
    """`from_objects_only` (the condition to save the table, repo/indexcache.py): a writer's pack no
    index lists yet makes it false; that pack dropped again, or listed by the index the writer
    wrote, makes it true; a listed pack dropped (the table no longer what the objects say) makes it
    false for good."""
    index, listed = MasterIndex(), pack_name(1)
    index.add_object("aa" * 32, IndexObject(ORIGIN, {listed: [entry(os.urandom(32), 0)]}))
    assert index.from_objects_only
    index.add_pack(pack_name(2), [entry(os.urandom(32), 0)])
    index.add_pack(pack_name(3), [entry(os.urandom(32), 0)])
    assert not index.from_objects_only
    index.drop_packs({pack_name(3)})
    assert not index.from_objects_only                     # pack 2 is still the writer's alone
    index.drop_packs({pack_name(2)})
    assert index.from_objects_only                         # back to what the index object lists
    index.add_pack(pack_name(4), [entry(os.urandom(32), 0)])
    index.add_pack(pack_name(5), [entry(os.urandom(32), 0)])
    index.add_written("bb" * 32, ORIGIN, {pack_name(4)}, [])
    assert not index.from_objects_only                     # the writer's index lists pack 4, not 5
    index.add_written("cc" * 32, ORIGIN, {pack_name(5)}, [])
    assert index.from_objects_only
    index.drop_packs({listed})
    assert not index.from_objects_only
    index.clear()                                          # a reload starts over from the objects
    index.add_object("aa" * 32, IndexObject(ORIGIN, {listed: [entry(os.urandom(32), 0)]}))
    assert index.from_objects_only


def test_an_index_is_untouched_until_something_is_added_and_again_once_cleared() -> None:
    index = MasterIndex()
    assert index.untouched()
    index.add_written("aa" * 32, ORIGIN, set(), [])       # an index object of no packs
    assert not index.untouched()
    index.clear()
    assert index.untouched()
    index.add_pack(pack_name(1), [entry(os.urandom(32), 0)])
    assert not index.untouched()


def test_a_blob_with_several_copies_is_told_apart_from_ids_differing_only_in_their_bucket_or_fingerprint() -> None:
    """Settled records keep an id without its first two bytes (its bucket): the copies of `a` (in two
    packs) are followed either by `next_bucket` (a's id in the following bucket) or by `other_fp` (a's
    id but for bytes 2-6, sorted after it in a's bucket); neither adds a location to a's."""
    rest = os.urandom(26)
    a = b"\x20\x01" + b"\x00\x00\x00\x01" + rest
    for follower in (b"\x20\x02" + a[2:], b"\x20\x01" + b"\xff\xff\xff\xff" + rest):
        index = MasterIndex()
        index.add_pack(pack_name(1), [entry(a, 1), entry(follower, 3)])
        index.add_pack(pack_name(2), [entry(a, 2)])
        assert len(index) == 2                              # settled
        assert index.locations(KIND_DATA, a) == [Location(pack_name(1), 1, 10, 20), Location(pack_name(2), 2, 10, 20)]
        assert index.locations(KIND_DATA, follower) == [Location(pack_name(1), 3, 10, 20)]


# -- the table against a model, through every path a record takes --------------------------------

Model = dict[tuple[int, bytes], set[Location]]       # (kind, id) -> every location of the blob


def _model_add(model: Model, pack_id: str, entries: list[BlobEntry]) -> None:
    for e in entries:
        model.setdefault((e.kind, e.id), set()).add(Location(pack_id, e.offset, e.length, e.raw_length, e.base))


def _model_drop(model: Model, gone: set[str]) -> Model:
    return {key: kept for key, locs in model.items() if (kept := {loc for loc in locs if loc.pack_id not in gone})}


def _agrees(index: MasterIndex, model: Model, absent: list[tuple[int, bytes]]) -> None:
    """Every lookup, the blobs, the count and the packs answer as the model does; a blob's
    locations are each listed once."""
    for key, locs in model.items():
        found = index.locations(*key)
        assert len(found) == len(locs) and set(found) == locs, key
        assert index.has(*key)
    for key in absent:
        assert index.locations(*key) == [] and not index.has(*key), key
    assert {key: set(locs) for key, locs in index.blobs()} == model
    assert sum(1 for _ in index.blobs()) == len(model) == len(index)
    assert index.all_pack_ids() == {loc.pack_id for locs in model.values() for loc in locs}
    assert index.delta_keys() == {key for key, locs in model.items() if any(loc.base is not None for loc in locs)}


def _alike_ids(rng: random.Random) -> list[bytes]:
    """Ids that share what a lookup compares first: a bucket (bytes 0-1), a fingerprint (bytes 2-5),
    everything but the bucket; and the first and the last bucket, at their table's ends."""
    ids = [rng.randbytes(32) for _ in range(150)]
    for one in ids[:12]:
        ids += [one[:2] + rng.randbytes(30), one[:6] + rng.randbytes(26), rng.randbytes(2) + one[2:],
                one[:2] + one[5:1:-1] + one[6:]]
    return ids + [bytes(32), bytes(31) + b"\x01", b"\xff" * 32, b"\xff" * 31 + b"\xfe"]


def _entries(rng: random.Random, ids: list[bytes], n: int) -> list[BlobEntry]:
    return [BlobEntry(rng.choice((KIND_DATA, KIND_TREE)), rng.choice(ids), rng.randrange(1 << 20),
                      rng.randrange(1, 1 << 16), rng.randrange(1, 1 << 17)) for _ in range(n)]


def test_the_table_answers_as_a_dict_of_locations_unsettled_settled_dropped_and_restored_from_its_image() -> None:
    """One scenario through every path a record takes: added to an empty table (dense tails), to a
    settled one (a few records in a few buckets), listed twice, as a second copy, as a location
    too wide for a record or a delta; looked up before and after settling; a few packs dropped
    (found by scanning) and many (a pass over every record); the table saved as an image and
    restored, then added to and dropped from again. The answers are always a dict's."""
    rng = random.Random(1914)
    ids = _alike_ids(rng)
    absent = [(KIND_DATA, bytes(31) + b"\x02"), (KIND_TREE, b"\xff" * 32), (KIND_DATA, ids[0][:2] + bytes(30))]
    model: Model = {}
    index = MasterIndex()
    for n in range(40):                              # an initial snapshot's packs: dense tails
        entries = _entries(rng, ids, 12)
        if n % 5 == 0:
            entries += entries[:3]                   # listed twice within a pack
        index.add_pack(pack_name(n), entries)
        _model_add(model, pack_name(n), entries)
    index.add_pack(pack_name(3), _entries(random.Random(3), ids, 12)[:4])   # a pack's listing repeated
    _model_add(model, pack_name(3), _entries(random.Random(3), ids, 12)[:4])
    absent = [key for key in absent if key not in model]
    _agrees(index, model, absent)                    # the tails, then settled (len, blobs)
    _agrees(index, model, absent)
    wide = [BlobEntry(KIND_DATA, ids[1], 1 << 32, 10, 20), BlobEntry(KIND_TREE, ids[2], 5, 1 << 32, 1 << 33),
            BlobEntry(KIND_DATA, ids[3], 7, 10, 20, ids[4]), BlobEntry(KIND_DATA, rng.randbytes(32), 8, 9, 10, ids[5])]
    for n in (40, 41):                               # a few records into a settled table, and wide ones
        entries = _entries(rng, ids, 6) + wide
        index.add_pack(pack_name(n), entries)
        _model_add(model, pack_name(n), entries)
    _agrees(index, model, absent)
    for gone in ({pack_name(1), pack_name(40)}, {pack_name(n) for n in range(2, 38)}):
        index.drop_packs(gone)
        model = _model_drop(model, gone)
        _agrees(index, model, absent)
    index.add_object("ab" * 32, IndexObject(ORIGIN, {pack_name(38): [], pack_name(41): []}, retracts=["cd" * 32]))
    image = io.BytesIO()
    index.write_image(image)
    restored = MasterIndex()
    restored.read_image(io.BytesIO(image.getvalue()))
    _agrees(restored, model, absent)
    assert (restored.index_packs, restored.index_origins, restored.retracted) == (
        {"ab" * 32: {pack_name(38), pack_name(41)}}, {"ab" * 32: ORIGIN}, {"cd" * 32})
    for n in (2, 50):                                # a dropped pack back, and a new one, after the image
        entries = _entries(rng, ids, 30)
        restored.add_pack(pack_name(n), entries)
        _model_add(model, pack_name(n), entries)
    _agrees(restored, model, absent)
    restored.drop_packs({pack_name(38)})
    _agrees(restored, _model_drop(model, {pack_name(38)}), absent)


# -- bookkeeping a caller relies on --------------------------------------------------------------

def test_a_new_index_condemns_no_pack() -> None:
    """Callers combine `condemned` with their own pack sets (the copier: `packs & condemned`)."""
    assert {pack_name(1)} & MasterIndex().condemned == set()


def test_an_index_that_adopts_a_rebuilt_one_answers_as_it_does_and_keeps_its_condemned_packs() -> None:
    """A reload after a miss (`RepoCore.reload_index`) builds a new index beside the one in use and
    swaps its contents in: lookups, objects, retractions and the cache condition all follow."""
    old_blob, new_blob = os.urandom(32), os.urandom(32)
    index, rebuilt = MasterIndex(), MasterIndex()
    index.add_pack(pack_name(1), [entry(old_blob, 0)])            # a writer's pack: not cacheable
    index.condemned = {pack_name(2)}
    rebuilt.add_object("aa" * 32, IndexObject(ORIGIN, {pack_name(2): [entry(new_blob, 5)]}, retracts=["bb" * 32]))
    index.adopt(rebuilt)
    assert index.locations(KIND_DATA, new_blob) == [Location(pack_name(2), 5, 10, 20)]
    assert not index.has(KIND_DATA, new_blob)                      # its only pack is still condemned
    assert index.locations(KIND_DATA, old_blob) == [] and len(index) == 1
    assert (index.index_packs, index.index_origins, index.retracted) == (
        {"aa" * 32: {pack_name(2)}}, {"aa" * 32: ORIGIN}, {"bb" * 32})
    assert index.from_objects_only


def test_removing_index_objects_forgets_the_loaded_ones_and_ignores_those_never_loaded() -> None:
    index, blob = MasterIndex(), os.urandom(32)
    index.add_object("aa" * 32, IndexObject(ORIGIN, {pack_name(1): [entry(blob, 0)]}))
    index.remove_objects({"aa" * 32, "ff" * 32})
    assert (index.index_packs, index.index_origins) == ({}, {}) and not index.has(KIND_DATA, blob)
    index.remove_objects({"ee" * 32})
    assert len(index) == 0


def test_a_delta_with_copies_against_two_bases_is_as_deep_as_its_shortest_chain() -> None:
    """Every base of every copy counts: one base leads to a whole blob in one more step, the other
    to a base no index lists. Whichever the bases are looked at in, the depth is 2 (many random ids:
    a set's order varies with them)."""
    for _ in range(20):
        blob, dead_end, whole_side, missing, whole = (os.urandom(32) for _ in range(5))
        index = MasterIndex()
        index.add_pack(pack_name(1), [_delta(blob, dead_end), _delta(blob, whole_side, 40),
                                      _delta(dead_end, missing), _delta(whole_side, whole), entry(whole, 80)])
        assert index.delta_depth(KIND_DATA, blob, 64) == 2


def test_a_table_built_from_index_objects_alone_round_trips_through_its_image() -> None:
    """The image of a table every pack of which an index object lists (what a cache saves)."""
    rng = random.Random(23)
    source = MasterIndex()
    source.add_object("aa" * 32, IndexObject(ORIGIN, {pack_name(1): [entry(rng.randbytes(32), i) for i in range(9)],
                                                      pack_name(2): [entry(rng.randbytes(32), 0)]}))
    out, loaded = io.BytesIO(), MasterIndex()
    source.write_image(out)
    loaded.read_image(io.BytesIO(out.getvalue()))
    assert sorted(loaded.blobs()) == sorted(source.blobs()) and loaded.index_packs == source.index_packs
    assert loaded.index_origins == {"aa" * 32: ORIGIN} and loaded.from_objects_only


def test_a_table_whose_index_lists_a_pack_it_never_held_is_not_saved_and_says_which() -> None:
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(os.urandom(32), 0)])
    index.add_written("ab" * 32, ORIGIN, {pack_name(1), pack_name(3), pack_name(2)}, [])
    with pytest.raises(RuntimeError, match=re.escape(
            f"index {'ab' * 8} lists packs the index table never held: {[pack_name(2), pack_name(3)]}") + "$"):
        index.write_image(io.BytesIO())


@pytest.mark.parametrize("damage, message", [
    ("another file", "not an index table image"),
    ("cut in its header", "index table image is truncated"),
    ("cut in its records", "index table image is truncated"),
    ("a byte changed", "index table image does not match its digest"),
    ("a byte more", "index table image does not match its digest")])
def test_a_damaged_table_image_says_what_is_wrong_in_one_line_and_replaces_nothing(damage: str, message: str) -> None:
    source, blob = MasterIndex(), os.urandom(32)
    source.add_pack(pack_name(1), [entry(blob, 0), entry(os.urandom(32), 1)])
    out = io.BytesIO()
    source.write_image(out)
    image = out.getvalue()
    damaged = {"another file": b"casstore index table 1\n" + image[23:], "cut in its header": image[:30],
               "cut in its records": image[:-40], "a byte changed": image[:-50] + bytes([image[-50] ^ 1]) + image[-49:],
               "a byte more": image + b"\0"}[damage]
    loaded, kept = MasterIndex(), os.urandom(32)
    loaded.add_pack(pack_name(2), [entry(kept, 0)])
    with pytest.raises(FormatError, match=f"^{message}$"):
        loaded.read_image(io.BytesIO(damaged))
    assert loaded.locations(KIND_DATA, kept) == [Location(pack_name(2), 0, 10, 20)] and len(loaded) == 1


def test_a_blob_outside_the_table_counts_once_beside_one_that_differs_from_it_only_in_its_bucket() -> None:
    """A location too wide for a record is counted apart from the table unless the table holds the
    same blob: a record of the same id but for its first two bytes, in the next bucket, is another blob."""
    rest = os.urandom(30)
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(b"\x10\x02" + rest, 1)])
    index.add_pack(pack_name(2), [entry(b"\x10\x01" + rest, 1 << 32)])
    assert len(index) == 2
    index.add_pack(pack_name(3), [entry(b"\x10\x02" + rest, 1 << 33)])     # the table's blob, also wide
    assert len(index) == 2


@pytest.mark.parametrize("tail", ["settled", "with a tail in its bucket"])
def test_a_blob_is_never_found_through_the_same_id_in_a_neighbouring_bucket(tail: str) -> None:
    """Records keep an id without its bucket (its first two bytes): a lookup must stay within the
    bucket, so an id absent from its bucket is not found through the same bytes 2-31 stored in the
    bucket before or after it (also once the scan has passed a record of the same fingerprint), and
    one present gets its own locations only."""
    rest = os.urandom(30)
    before, absent, after = b"\x30\x00" + rest, b"\x30\x01" + rest, b"\x30\x02" + rest
    same_fingerprint = b"\x30\x01" + rest[:4] + os.urandom(26)   # in absent's bucket: scanned past
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(before, 1), entry(after, 2), entry(same_fingerprint, 5)])
    assert len(index) == 3
    if tail != "settled":
        index.add_pack(pack_name(2), [entry(b"\x30\x01" + os.urandom(30), 3), entry(b"\x30\x00" + os.urandom(30), 4)])
    assert not index.has(KIND_DATA, absent) and index.locations(KIND_DATA, absent) == []
    assert index.locations(KIND_DATA, before) == [Location(pack_name(1), 1, 10, 20)]
    assert index.locations(KIND_DATA, after) == [Location(pack_name(1), 2, 10, 20)]


def test_the_first_and_the_last_record_of_the_table_are_found_beside_unsettled_records_of_their_bucket() -> None:
    first, last = bytes(32), b"\xff" * 32
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(first, 1), entry(last, 2)])
    assert len(index) == 2
    index.add_pack(pack_name(2), [entry(bytes(2) + os.urandom(30), 3), entry(b"\xff\xff" + os.urandom(30), 4)])
    assert index.locations(KIND_DATA, first) == [Location(pack_name(1), 1, 10, 20)]
    assert index.locations(KIND_DATA, last) == [Location(pack_name(1), 2, 10, 20)]
    out, loaded = io.BytesIO(), MasterIndex()           # the last bucket's records end the image's table
    index.write_image(out)
    loaded.read_image(io.BytesIO(out.getvalue()))
    assert sorted(loaded.blobs()) == sorted(index.blobs()) and len(loaded) == 4


@pytest.mark.parametrize("tail", ["settled", "with a tail in its bucket"])
def test_a_fingerprint_of_one_repeated_byte_is_found_right_after_a_record_ending_in_that_byte(tail: str) -> None:
    """Fingerprints are scanned as one string: 07070707 also appears one byte before the record
    that holds it when the record before ends in 07; the scan must go on from the next byte."""
    bucket = b"\x40\x04"
    before, target = bucket + b"\x00\x00\x00\x07" + os.urandom(26), bucket + b"\x07" * 4 + os.urandom(26)
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(before, 1), entry(target, 2)])
    assert len(index) == 2
    if tail != "settled":
        index.add_pack(pack_name(2), [entry(bucket + os.urandom(30), 3)])
    assert index.has(KIND_DATA, target) and index.locations(KIND_DATA, target) == [Location(pack_name(1), 2, 10, 20)]


def test_dropping_the_only_pack_of_a_location_too_wide_for_a_record_forgets_the_blob() -> None:
    wide, delta, kept = os.urandom(32), os.urandom(32), os.urandom(32)
    index = MasterIndex()
    index.add_pack(pack_name(1), [entry(wide, 1 << 32), _delta(delta, kept)])
    index.add_pack(pack_name(2), [entry(kept, 0)])
    index.drop_packs({pack_name(1)})
    assert index.locations(KIND_DATA, wide) == [] and not index.has(KIND_DATA, wide)
    assert index.locations(KIND_DATA, delta) == [] and index.delta_keys() == set()
    assert len(index) == 1 and index.all_pack_ids() == {pack_name(2)}


def test_dropping_a_pack_whose_number_the_first_record_starts_with_forgets_its_blobs() -> None:
    """A few dropped packs are found by searching the table for their 3-byte numbers: a match at
    the very start of the table (the first record's id, not a pack field) must not end the search."""
    index, first, dropped = MasterIndex(), bytes(6) + b"\x00\x00\x01" + os.urandom(23), os.urandom(32)
    index.add_pack(pack_name(7), [entry(first, 1)])           # pack number 0
    index.add_pack(pack_name(8), [entry(dropped, 2)])         # pack number 1: 00 00 01
    assert len(index) == 2
    index.drop_packs({pack_name(8)})
    assert index.locations(KIND_DATA, dropped) == [] and not index.has(KIND_DATA, dropped)
    assert index.locations(KIND_DATA, first) == [Location(pack_name(7), 1, 10, 20)] and len(index) == 1
