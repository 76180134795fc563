"""Fuzzing every decoder of the format (issue 13): pack header, index, tree, snapshot manifest,
config, blob envelope, gc plan.

Three kinds of input per decoder: raw bytes; msgpack of arbitrary nested values (the shape every
object has, so the fuzzer gets past the first parse); and a valid object built with casstore's
own encoders, then mutated (bytes flipped, cut, inserted), which reaches the deep checks. Names
that are content hashes (index, manifest, blob id) are recomputed so the input gets past the name
check. The one property: a decoder returns or raises a CasstoreError subclass; anything else
escaping (TypeError, AttributeError, RecursionError, MemoryError...) fails. Bounded for CI:
max_examples per target, no deadline; the whole file runs in well under a minute.
"""

from __future__ import annotations

import os
import struct

import blake3
import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from casstore.errors import CasstoreError
from casstore.format import codec
from casstore.format.config import RepoConfig
from casstore.format.index import IndexObject, decode_index
from casstore.format.pack import KIND_DATA, MAGIC, PackBuilder, parse_header
from casstore.format.plan import GcPlan, decode_plan
from casstore.format.snapshot import SnapshotManifest, decode_snapshot
from casstore.format.tree import Entry, EntryType, decode_tree, encode_tree_chain

MAX_RAW = 8 * 1024 * 1024
# CI runs 200 examples per target; CASSTORE_FUZZ_EXAMPLES=20000 for a longer local hunt
FUZZ = settings(max_examples=int(os.environ.get("CASSTORE_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], database=None)

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6)
                       | st.dictionaries(st.text(max_size=12) | st.binary(max_size=12), inner, max_size=6),
                       max_leaves=30)
packed = _values.map(lambda v: msgpack.packb(v, use_bin_type=True))


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """`valid` with a few bytes flipped, a piece cut out, or bytes inserted."""
    def mutate(ops: list[tuple[int, int, bytes]]) -> bytes:
        data = bytearray(valid)
        for kind, where, extra in ops:
            at = where % (len(data) + 1)
            if kind == 0 and data:
                data[at % len(data)] ^= extra[0] if extra else 0xFF
            elif kind == 1:
                del data[at:at + len(extra) + 1]
            else:
                data[at:at] = extra
        return bytes(data)

    op = st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8))
    return st.lists(op, min_size=1, max_size=4).map(mutate)


def _decodes_or_refuses(call) -> None:
    try:
        call()
    except CasstoreError:
        pass


# -- valid objects, built with casstore's own encoders ------------------------------------------

_ID = blake3.blake3(b"chunk").digest()


def _valid_tree() -> bytes:
    bodies: list[bytes] = []
    sub = blake3.blake3(b"sub").digest()
    encode_tree_chain([Entry(b"a.json", EntryType.FILE, 0o644, 0, 0, 1, 5, 0, [_ID]),
                       Entry(b"d", EntryType.DIR, 0o755, 0, 0, 1, 0, 0, sub),
                       Entry(b"l", EntryType.SYMLINK, 0o777, 0, 0, 1, 3, 0, b"a.json"),
                       Entry(b"dev", EntryType.CHARDEV, 0o600, 0, 0, 1, 0, 0, 259)],
                      lambda body: bodies.append(body) or blake3.blake3(body).digest())
    return bodies[-1]


def _valid_pack() -> bytes:
    builder = PackBuilder(KIND_DATA)
    for data in (b"first blob", b"second" * 100):
        builder.add(codec.blob_id(data), codec.encode(data, 3), len(data))
    return bytes(builder.finish()[1])


def _valid_index(pack: bytes) -> bytes:
    entries = parse_header(pack, MAX_RAW)
    return IndexObject({"kind": "snapshot"}, {blake3.blake3(pack).hexdigest(): entries}).encode()[1]


def _pack_with_header(header: bytes) -> bytes:
    """A pack whose header is `header` (the trailer is right, so the header parse is reached)."""
    return MAGIC + bytes((1,)) + b"x" * 64 + header + struct.pack("<I", len(header))


VALID_TREE = _valid_tree()
VALID_PACK = _valid_pack()
VALID_INDEX = _valid_index(VALID_PACK)
VALID_MANIFEST = SnapshotManifest(time_ns=1, host="h", source="/s", tree=_ID, tags=["t"],
                                  summary={"files_total": 1}).encode()[1]
VALID_CONFIG = RepoConfig.new(avg_size=64 * 1024).encode()
VALID_PLAN = GcPlan(["ab" * 32], ["cd" * 32], "h").encode()
VALID_BLOB = codec.encode(b"some plaintext " * 20, 3)


# -- one target per decoder -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048) | packed.map(_pack_with_header) | _mutated(VALID_PACK))
def test_fuzz_pack_header(pack):
    _decodes_or_refuses(lambda: parse_header(pack, MAX_RAW))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_INDEX))
def test_fuzz_index(body):
    _decodes_or_refuses(lambda: decode_index(blake3.blake3(body).hexdigest(), body, MAX_RAW))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_TREE))
def test_fuzz_tree(body):
    _decodes_or_refuses(lambda: decode_tree(body))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_MANIFEST))
def test_fuzz_snapshot_manifest(body):
    _decodes_or_refuses(lambda: decode_snapshot(blake3.blake3(body).hexdigest(), body))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_CONFIG))
def test_fuzz_config(body):
    _decodes_or_refuses(lambda: RepoConfig.decode(body))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_PLAN))
# crashes the fuzzer found (AttributeError: a plan that is not a map), kept as regressions
@example(msgpack.packb([1, 2]))
@example(msgpack.packb(7))
@example(msgpack.packb("gc"))
def test_fuzz_gc_plan(body):
    _decodes_or_refuses(lambda: decode_plan(body))


@FUZZ
@given(st.binary(max_size=2048) | packed | _mutated(VALID_BLOB), st.integers(0, MAX_RAW))
def test_fuzz_blob_envelope(encoded, raw_length):
    _decodes_or_refuses(lambda: codec.decode(encoded, raw_length))
    _decodes_or_refuses(lambda: codec.decode_verified(encoded, raw_length, _ID))
