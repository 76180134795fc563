"""BlobSet (format/blobset.py, issue 14): the set semantics of a set of (kind, id) tuples."""

from __future__ import annotations

import random

from casstore.format.blobset import BlobSet
from casstore.format.pack import KIND_DATA, KIND_TREE


def test_random_adds_and_lookups_agree_with_a_set_of_tuples() -> None:
    rng = random.Random(14)
    # ids sharing their first two bytes (one bucket) and ids whose bytes could match a key off a boundary
    ids = [rng.randbytes(32) for _ in range(4000)] + [b"\x00\x01" + rng.randbytes(30) for _ in range(300)]
    ids += [b"\x07\x07" + bytes([i]) * 30 for i in range(8)]
    members, model = BlobSet(), set()
    for _ in range(12000):
        key = (rng.choice((KIND_DATA, KIND_TREE)), rng.choice(ids))
        assert members.add(*key) == (key not in model)
        model.add(key)
        probe = (rng.choice((KIND_DATA, KIND_TREE)), rng.choice(ids))
        assert (probe in members) == (probe in model)
    assert len(members) == len(model) and set(members) == model
    assert set(members.of_kind(KIND_TREE)) == {blob_id for kind, blob_id in model if kind == KIND_TREE}
    assert (KIND_DATA, rng.randbytes(32)) not in members and "not a key" not in members


def test_a_key_found_across_two_members_is_not_a_member() -> None:
    first, second = b"\x05\x05" + b"A" * 30, b"\x05\x05" + b"B" * 30
    members = BlobSet([(1, first), (1, second)])
    # keys are id[2:] + kind, stored side by side: "A"*30 1 "B"*30 1; this member's key is the
    # 31 bytes from offset 16 of that run, a hit of `find` that is not at a key boundary
    straddling = (ord("B"), b"\x05\x05" + b"A" * 14 + b"\x01" + b"B" * 15)
    assert (1, first) in members and (1, second) in members
    assert straddling not in members
    assert members.add(*straddling) and straddling in members and len(members) == 3


def test_an_ordered_set_iterates_in_the_order_members_were_first_added() -> None:
    rng = random.Random(3)
    added = [(rng.choice((KIND_DATA, KIND_TREE)), rng.randbytes(32)) for _ in range(500)]
    members = BlobSet(ordered=True)
    for key in added + added[::7]:                     # repeats keep their first place
        members.add(*key)
    assert list(members) == added and len(members) == 500
