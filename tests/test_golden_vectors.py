"""Golden format vectors: fixed bytes of every stored object kind (tests/golden/*.bin).

Each vector decodes to the values written here, field by field, and the encoder given those
values (and the fixed nonce) produces the very same bytes. A format change must change these
files on purpose, with DESIGN.md: regenerate with `python -m tests.golden.make_vectors` and
update the values below; never edit the values to make a failing run pass.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import blake3
import msgpack
import pytest

from casstore.errors import DowngradeError, FormatError
from casstore.format import codec
from casstore.format.config import RepoConfig
from casstore.format.index import IndexObject, decode_index
from casstore.format.pack import KIND_DATA, PackBuilder, parse_header
from casstore.format.plan import GcPlan, decode_plan
from casstore.format.snapshot import SnapshotManifest, decode_snapshot
from casstore.format.tree import MAX_TREE_BYTES, Entry, EntryType, decode_tree, encode_tree_chain

GOLDEN = Path(__file__).parent / "golden"
MAX_RAW = 8 << 20
NONCE = bytes(range(16))
RAW_BLOB = b"golden raw blob\n"
ZSTD_BLOB = b"casstore golden vector " * 40
RAW_ID = "26ad4bfc8455b216a647a94a39e44f19e272e6888d710adfa19ff7d919303da9"
ZSTD_ID = "e165e87794d2e4f804ec891b992e191604b6329fddf0830423f1b6d5e5d7e5ee"
PACK_ID = "66a1b11ae8dd46a09205e96ae1382af8c6e34943f5963d60c7ea7355afbe400e"
INDEX_ID = "67cb787431056cd59e426dbb5f2d384688e4cde4f69119445c70a01f86e20d21"
TREE_ID = "9e49f6f945052370ce25c2711c4d7428fb67e9fce9800d7e422a8022a6f75f04"
SNAPSHOT_ID = "77e6de94a3b0c54590703f08f6c43982493ca0fe34f78e52f00d6059341af0f7"


def _vector(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def test_config_vector() -> None:
    body = _vector("config.bin")
    config = RepoConfig.decode(body)
    assert config.version == 1
    assert config.id == "0123456789abcdef0123456789abcdef"
    assert config.chunker == {"algorithm": "fastcdc-2020", "min_size": 65536, "avg_size": 262144,
                              "max_size": 2097152, "normalization": 1, "seed": 0x5EED5EED}
    assert config.pack_size == 16 * 1024 * 1024
    assert config.compression == {"algorithm": "zstd", "level": 3}
    assert config.encryption is None
    assert config.grace_seconds == 24 * 3600
    assert config.max_blob_size == 8 * 1024 * 1024
    again = RepoConfig(id="0123456789abcdef0123456789abcdef", chunker=dict(config.chunker))
    assert again.encode() == body


def test_pack_vector() -> None:
    pack = _vector("pack.bin")
    assert blake3.blake3(pack).hexdigest() == PACK_ID
    assert pack[:5] == b"CASP\x01"
    (header_length,) = struct.unpack("<I", pack[-4:])
    assert header_length == 112
    header = msgpack.unpackb(pack[-4 - header_length:-4])
    assert header["nonce"] == NONCE
    entries = parse_header(pack, MAX_RAW)
    assert [(e.kind, e.id.hex(), e.offset, e.length, e.raw_length) for e in entries] == [
        (KIND_DATA, RAW_ID, 5, 17, 16),
        (KIND_DATA, ZSTD_ID, 22, 41, 920),
    ]
    raw, packed = (pack[e.offset:e.offset + e.length] for e in entries)
    assert raw[0] == codec.TAG_RAW and raw[1:] == RAW_BLOB
    assert packed[0] == codec.TAG_ZSTD
    assert codec.decode_verified(raw, 16, bytes.fromhex(RAW_ID)) == RAW_BLOB
    assert codec.decode_verified(packed, 920, bytes.fromhex(ZSTD_ID)) == ZSTD_BLOB


def test_pack_vector_reencodes(monkeypatch: pytest.MonkeyPatch) -> None:
    pack = _vector("pack.bin")
    builder = PackBuilder(KIND_DATA)
    for e in parse_header(pack, MAX_RAW):
        builder.add(e.id, pack[e.offset:e.offset + e.length], e.raw_length)
    monkeypatch.setattr(os, "urandom", lambda n: NONCE[:n])
    pack_id, again = builder.finish()
    assert (pack_id, bytes(again)) == (PACK_ID, pack)


def test_pack_of_another_version_is_refused() -> None:
    pack = bytearray(_vector("pack.bin"))
    pack[4] = 3
    with pytest.raises(FormatError, match="unsupported pack version 3"):
        parse_header(bytes(pack), MAX_RAW)
    pack[4] = 2   # the encrypted pack version: under a plain config, a downgrade
    with pytest.raises(DowngradeError, match="downgrade"):
        parse_header(bytes(pack), MAX_RAW)


def test_index_vector() -> None:
    body = _vector("index.bin")
    index = decode_index(INDEX_ID, body, MAX_RAW)
    assert index.origin == {"kind": "writer", "host": "golden-host", "session": "golden-session"}
    assert list(index.packs) == [PACK_ID]
    assert [(e.kind, e.id.hex(), e.offset, e.length, e.raw_length) for e in index.packs[PACK_ID]] == [
        (KIND_DATA, RAW_ID, 5, 17, 16),
        (KIND_DATA, ZSTD_ID, 22, 41, 920),
    ]
    assert index.supersedes == ["ab" * 32]
    assert index.retracts == []
    assert msgpack.unpackb(body)["version"] == 1
    again = IndexObject(dict(index.origin), {PACK_ID: list(index.packs[PACK_ID])}, supersedes=["ab" * 32])
    assert again.encode() == (INDEX_ID, body)


def _tree_entries() -> list[Entry]:
    return [
        Entry(b"link", EntryType.SYMLINK, 0o120777, 0, 0, 1_700_000_002_000_000_000, 9, 0, b"notes.txt"),
        Entry(b"notes.txt", EntryType.FILE, 0o100644, 1000, 1000, 1_700_000_000_123_456_789, 920, 0,
              [bytes.fromhex(ZSTD_ID)]),
        Entry(b"pipe", EntryType.FIFO, 0o10600, 0, 0, 1_700_000_003_000_000_000, 0, 0, None),
        Entry(b"sub", EntryType.DIR, 0o40755, 1000, 1000, 1_700_000_001_000_000_000, 0, 0, b"\x11" * 32),
    ]


def test_tree_page_vector() -> None:
    body = _vector("tree.bin")
    assert codec.blob_id(body).hex() == TREE_ID
    entries, next_id = decode_tree(body)
    assert next_id is None
    assert entries == _tree_entries()     # sorted by name bytes, every field as written
    assert msgpack.unpackb(body)["v"] == 1
    pages: list[bytes] = []
    root = encode_tree_chain(reversed(_tree_entries()), lambda b: pages.append(b) or codec.blob_id(b))
    assert (root.hex(), pages) == (TREE_ID, [body])


def test_snapshot_vector() -> None:
    body = _vector("snapshot.bin")
    m = decode_snapshot(SNAPSHOT_ID, body)
    assert m.time_ns == 1_700_000_100_000_000_000
    assert m.host == "golden-host"
    assert m.source == "/data/golden"
    assert m.tree == b"\x22" * 32
    assert m.tags == ["alpha", "nightly"]
    assert m.parent == "cd" * 32
    assert m.incomplete is False
    assert m.summary == {"files_total": 3, "bytes_total": 945, "duration_ms": 12}
    assert m.version == 1
    again = SnapshotManifest(time_ns=m.time_ns, host="golden-host", source="/data/golden", tree=b"\x22" * 32,
                             tags=["nightly", "alpha"], parent="cd" * 32,
                             summary={"files_total": 3, "bytes_total": 945, "duration_ms": 12})
    assert again.encode() == (SNAPSHOT_ID, body)


def test_gc_plan_vector() -> None:
    body = _vector("plan.bin")
    plan = decode_plan(body)
    assert plan.version == 1
    assert plan.host == "golden-host"
    assert plan.condemned_packs == ["0a" * 32, "ef" * 32]
    assert plan.superseded_indexes == ["12" * 32]
    again = GcPlan(condemned_packs=["ef" * 32, "0a" * 32], superseded_indexes=["12" * 32], host="golden-host")
    assert again.encode() == body


# -- tree paging at its boundary: MAX_TREE_BYTES is part of the format (identical directories on
# every host must split at the same points, or they stop deduplicating)

def _file_entry(name: bytes) -> Entry:
    return Entry(name, EntryType.FILE, 0o100644, 0, 0, 0, 0, 0, [])


def _entry_of_packed_size(first: bytes, size: int) -> Entry:
    probe = len(msgpack.packb(_file_entry(first + b"x" * 70000).as_list())) - 70001
    return _file_entry(first + b"x" * (size - probe - 1))


def _pages(entries: list[Entry]) -> list[dict]:
    stored: dict[bytes, bytes] = {}

    def store(body: bytes) -> bytes:
        stored[codec.blob_id(body)] = body
        return codec.blob_id(body)

    pages, next_id = [], encode_tree_chain(entries, store)
    while next_id is not None:
        page = msgpack.unpackb(stored[next_id])
        pages.append(page)
        next_id = page["next"]
    return pages


def test_tree_paging_limit_is_two_mebibytes() -> None:
    assert MAX_TREE_BYTES == 2 * 1024 * 1024


def test_a_directory_of_exactly_the_page_limit_is_one_page() -> None:
    a = _entry_of_packed_size(b"a", 1024 * 1024)
    b = _entry_of_packed_size(b"b", MAX_TREE_BYTES - 1024 * 1024)
    assert len(msgpack.packb(a.as_list())) + len(msgpack.packb(b.as_list())) == MAX_TREE_BYTES
    pages = _pages([b, a])
    assert [[e[0][:1] for e in p["entries"]] for p in pages] == [[b"a", b"b"]]


def test_a_directory_one_byte_over_the_page_limit_is_a_chain_of_two() -> None:
    a = _entry_of_packed_size(b"a", 1024 * 1024)
    b = _entry_of_packed_size(b"b", MAX_TREE_BYTES - 1024 * 1024 + 1)
    pages = _pages([b, a])
    assert [[e[0][:1] for e in p["entries"]] for p in pages] == [[b"a"], [b"b"]]
    assert pages[-1]["next"] is None
    entries = [e for p in pages for e in p["entries"]]
    assert entries == [a.as_list(), b.as_list()]


def test_a_later_page_of_exactly_the_page_limit_is_one_page_too() -> None:
    # the limit holds page by page: a page after a break counts from zero, like the first
    a = _entry_of_packed_size(b"a", 1536 * 1024)
    b = _entry_of_packed_size(b"b", 1024 * 1024)
    c = _entry_of_packed_size(b"c", MAX_TREE_BYTES - 1024 * 1024)
    pages = _pages([c, b, a])
    assert [[e[0][:1] for e in p["entries"]] for p in pages] == [[b"a"], [b"b", b"c"]]


def test_a_first_page_of_exactly_the_page_limit_is_one_page_of_a_chain() -> None:
    # the first page counts from zero too: a directory over the limit whose first entries fill it exactly
    a = _entry_of_packed_size(b"a", 1024 * 1024)
    b = _entry_of_packed_size(b"b", MAX_TREE_BYTES - 1024 * 1024)
    c = _entry_of_packed_size(b"c", 1024)
    pages = _pages([c, b, a])
    assert [[e[0][:1] for e in p["entries"]] for p in pages] == [[b"a", b"b"], [b"c"]]


def test_a_chain_of_pages_reads_back_page_by_page_to_every_entry_in_order() -> None:
    stored: dict[bytes, bytes] = {}

    def store(body: bytes) -> bytes:
        stored[codec.blob_id(body)] = body
        return codec.blob_id(body)

    third = [_entry_of_packed_size(name, 800 * 1024) for name in (b"a", b"b", b"c")]
    next_id: bytes | None = encode_tree_chain(reversed(third), store)
    read: list[Entry] = []
    while next_id is not None:
        entries, next_id = decode_tree(stored[next_id])
        read += entries
    assert len(stored) == 2 and read == third


def test_every_page_of_a_long_directory_stays_within_the_page_limit() -> None:
    third = [_entry_of_packed_size(name, 800 * 1024) for name in (b"a", b"b", b"c")]   # two fit, three do not
    pages = _pages(list(reversed(third)))
    assert [[e[0][:1] for e in p["entries"]] for p in pages] == [[b"a", b"b"], [b"c"]]
    assert all(len(msgpack.packb(p["entries"])) <= MAX_TREE_BYTES for p in pages)


# -- delta blobs (tag 0x04, issue 17) ----------------------------------------------------------

DELTA_BASE_ID = "bd481c86fb9f4b2e412856e099b86763e8de7ed4110e7496ddbd46b9e8de7de8"
DELTA_ID = "b19698854a02befa6437f52408a3580ade3f7dba39656982fb8400641595d6f7"
DELTA_PACK_ID = "21b8e44ea3876192904db1ceafd9629e56edc7a4b395d5a929e62f15e1d34235"
DELTA_INDEX_ID = "8d96d1510f8f0aead4aa545058b48d6b19727d2a5787eb9381857469fcc7f77a"


def test_delta_config_vector() -> None:
    body = _vector("config-delta.bin")
    config = RepoConfig.decode(body)
    assert config.compression == {"algorithm": "zstd", "level": 3, "delta": 8} and config.delta_chain == 8
    assert RepoConfig.decode(_vector("config.bin")).delta_chain == 0     # made before delta blobs: none written


def test_delta_pack_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.golden.make_vectors import DELTA_BASE, DELTA_BLOB

    pack = _vector("pack-delta.bin")
    assert blake3.blake3(pack).hexdigest() == DELTA_PACK_ID
    (header_length,) = struct.unpack("<I", pack[-4:])
    header = msgpack.unpackb(pack[-4 - header_length:-4])
    assert header["blobs"][1][5] == bytes.fromhex(DELTA_BASE_ID) and len(header["blobs"][0]) == 5
    entries = parse_header(pack, MAX_RAW)
    assert [(e.id.hex(), e.offset, e.length, e.raw_length, e.base and e.base.hex()) for e in entries] == [
        (DELTA_BASE_ID, 5, 1062, 2048, None),
        (DELTA_ID, 1067, 56, 2048, DELTA_BASE_ID),
    ]
    whole, delta_env = (pack[e.offset:e.offset + e.length] for e in entries)
    assert delta_env[0] == 0x04 and delta_env[1:33] == bytes.fromhex(DELTA_BASE_ID)
    base = codec.decode_verified(whole, 2048, bytes.fromhex(DELTA_BASE_ID))
    assert base == DELTA_BASE
    assert codec.decode_verified(delta_env, 2048, bytes.fromhex(DELTA_ID), base=base) == DELTA_BLOB
    builder = PackBuilder(KIND_DATA)
    for e in entries:
        builder.add(e.id, pack[e.offset:e.offset + e.length], e.raw_length)
    monkeypatch.setattr(os, "urandom", lambda n: NONCE[:n])
    assert builder.finish() == (DELTA_PACK_ID, pack)


def test_delta_index_vector() -> None:
    index = decode_index(DELTA_INDEX_ID, _vector("index-delta.bin"), MAX_RAW)
    (entries,) = index.packs.values()
    assert [e.base and e.base.hex() for e in entries] == [None, DELTA_BASE_ID]
    assert index.encode() == (DELTA_INDEX_ID, _vector("index-delta.bin"))


# -- the encrypted format ------------------------------------------------------------------------

def _golden_key():
    from casstore.format.crypto import MasterKey

    return MasterKey(bytes(range(32)), bytes(range(100, 116)))


def test_encrypted_vectors_decode_with_the_key_and_re_encode_byte_identical() -> None:
    from casstore.format.crypto import SCHEME, open_slot, slot_info
    from casstore.format.plan import decode_plan
    from tests.golden.make_vectors import encrypted_vectors

    key = _golden_key()
    sealer = key.sealer
    config = RepoConfig.decode(_vector("enc-config.bin"), key)
    assert config.encryption == {"scheme": SCHEME, "domain": "6465666768696a6b6c6d6e6f70717273"}
    assert config.id == "0123456789abcdef0123456789abcdef" and config.chunker["seed"] == key.chunker_seed()
    assert config.chunker["min_size"] == 65536 and config.grace_seconds == 24 * 3600
    public = msgpack.unpackb(_vector("enc-config.bin"))
    assert set(public) == {"version", "id", "encryption"}          # no chunker, seed or sizes in the clear

    pack = _vector("enc-pack.bin")
    assert pack[:5] == b"CASP\x02"
    entries = parse_header(pack, MAX_RAW, sealer)
    blobs = [codec.decode_verified(pack[e.offset:e.offset + e.length], e.raw_length, e.id, sealer, KIND_DATA)
             for e in entries]
    assert blobs == [RAW_BLOB, ZSTD_BLOB]
    assert [pack[e.offset] for e in entries] == [0x02, 0x03]       # sealed raw, sealed zstd
    assert [e.id for e in entries] == [codec.blob_id(b, sealer) for b in blobs]
    assert entries[0].id.hex() != RAW_ID                           # keyed: not the plain id

    index_body = _vector("enc-index.bin")
    index = decode_index(blake3.blake3(index_body).hexdigest(), index_body, MAX_RAW, sealer)
    assert index.packs == {blake3.blake3(pack).hexdigest(): entries}
    snapshot_body = _vector("enc-snapshot.bin")
    manifest = decode_snapshot(blake3.blake3(snapshot_body).hexdigest(), snapshot_body, sealer)
    assert (manifest.host, manifest.source, manifest.tree) == ("golden-host", "/data/golden", b"\x22" * 32)
    plan = decode_plan(_vector("enc-plan.bin"), "gc/20261204t120000z-0123456789ab", sealer)
    assert plan.condemned_packs == ["ef" * 32]
    slot = _vector("enc-keyslot.bin")
    assert open_slot("5107" * 8, slot, b"golden password") == (key.secret, key.domain)
    assert slot_info("5107" * 8, slot).kdf == {"algorithm": "argon2id", "iterations": 1, "memory_kib": 64,
                                                "lanes": 1}
    for name, body in encrypted_vectors().items():
        assert body == _vector(name), f"{name} no longer encodes to its golden bytes"
    for name in ("enc-index.bin", "enc-snapshot.bin", "enc-plan.bin"):
        with pytest.raises(DowngradeError):                        # read under a plain config
            decode_plan(_vector(name)) if "plan" in name else decode_snapshot(
                blake3.blake3(_vector(name)).hexdigest(), _vector(name))
