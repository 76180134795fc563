"""Hostile input: packs, indexes, trees and snapshots built by the test to be wrong.

Huge length claims, bad magic, out-of-bounds header lengths, wrong types, duplicate names, a
zstd bomb: each gives a clean casstore error (FormatError or IntegrityError, both CasstoreError),
with the peak Python allocation measured (tracemalloc) so a "huge allocation" fails the test,
and through the CLI one line on stderr, no traceback.
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import blake3
import msgpack
import pytest
import zstandard

from casstore.errors import CasstoreError, DowngradeError, FormatError, IntegrityError
from casstore.format import codec
from casstore.format.config import RepoConfig, encryption_domain
from casstore.format.crypto import SCHEME, MasterKey, slot_info
from casstore.format.index import IndexObject, decode_index
from casstore.format.pack import KIND_DATA, KIND_TREE, MAGIC, PackBuilder, parse_header, verify_pack_id
from casstore.format.plan import decode_plan
from casstore.format.snapshot import SnapshotManifest, decode_snapshot
from casstore.format.tree import EntryType, decode_tree, safe_name
from tests.helpers import (
    NOW_NS,
    MiB,
    assert_one_line_error,
    file_entry,
    init_repo,
    invoke,
    objects,
    open_repo,
    run,
    write,
    write_snapshot,
)

MAX_RAW = 8 * MiB
ALLOWED_PEAK = 4 * MiB
ID = b"\x11" * 32


def _bounded(call, *errors):
    """Run `call`, require one of `errors`, and a small peak allocation while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(errors or (FormatError, IntegrityError)) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOWED_PEAK, f"{peak / MiB:.1f} MiB allocated refusing hostile input"
    assert isinstance(info.value, CasstoreError)
    return info.value


def _pack(blobs: list[list], body: bytes = b"x" * 64, *, magic: bytes = MAGIC, version: int = 1,
          header: bytes | None = None, header_length: int | None = None) -> bytes:
    header = msgpack.packb({"nonce": b"n" * 16, "blobs": blobs}) if header is None else header
    length = len(header) if header_length is None else header_length
    return magic + bytes([version]) + body + header + struct.pack("<I", length)


# -- packs -------------------------------------------------------------------------------------


def test_a_real_pack_parses():
    builder = PackBuilder(KIND_DATA)
    encoded = codec.encode(b"hello" * 100, 3)
    builder.add(codec.blob_id(b"hello" * 100), encoded, 500)
    pack_id, data = builder.finish()
    verify_pack_id(pack_id, data)
    [entry] = parse_header(data, MAX_RAW)
    assert codec.decode_verified(data[entry.offset:entry.offset + entry.length], 500, entry.id) == b"hello" * 100


@pytest.mark.parametrize("case", [
    "bad magic", "bad version", "too short", "header length 2**32-1", "header length past start",
    "huge raw length", "negative raw length", "blob past body", "blob before body", "zero length",
    "blob id str", "short blob id", "unknown kind", "float offset", "header not msgpack",
    "header is a list", "blobs not a list", "entry too short", "huge array claim",
])
def test_hostile_pack_headers_are_format_errors(case):
    ok = [KIND_DATA, ID, 5, 10, 10]
    pack = {
        "bad magic": lambda: _pack([ok], magic=b"PK\x03\x04"),
        "bad version": lambda: _pack([ok], version=9),
        "too short": lambda: MAGIC + b"\x01",
        "header length 2**32-1": lambda: _pack([ok], header_length=2**32 - 1),
        "header length past start": lambda: _pack([ok], header_length=len(_pack([ok])) - 4),
        "huge raw length": lambda: _pack([[KIND_DATA, ID, 5, 10, 2**40]]),
        "negative raw length": lambda: _pack([[KIND_DATA, ID, 5, 10, -1]]),
        "blob past body": lambda: _pack([[KIND_DATA, ID, 5, 10**9, 10]]),
        "blob before body": lambda: _pack([[KIND_DATA, ID, 0, 10, 10]]),
        "zero length": lambda: _pack([[KIND_DATA, ID, 5, 0, 10]]),
        "blob id str": lambda: _pack([[KIND_DATA, "11" * 32, 5, 10, 10]]),
        "short blob id": lambda: _pack([[KIND_DATA, b"\x11" * 8, 5, 10, 10]]),
        "unknown kind": lambda: _pack([[7, ID, 5, 10, 10]]),
        "float offset": lambda: _pack([[KIND_DATA, ID, 5.0, 10, 10]]),
        "header not msgpack": lambda: _pack([], header=b"\xc1\xc1\xc1"),
        "header is a list": lambda: _pack([], header=msgpack.packb([1, 2, 3])),
        "blobs not a list": lambda: _pack([], header=msgpack.packb({"nonce": b"", "blobs": 5})),
        "entry too short": lambda: _pack([[KIND_DATA, ID, 5]]),
        "huge array claim": lambda: _pack([], header=b"\x81\xa5blobs\xdd\x7f\xff\xff\xff"),
    }[case]()
    _bounded(lambda: parse_header(pack, MAX_RAW), FormatError)


def test_pack_name_verifies_its_content():
    builder = PackBuilder(KIND_DATA)
    builder.add(ID, b"\x00abc", 3)
    pack_id, data = builder.finish()
    with pytest.raises(IntegrityError):
        verify_pack_id(pack_id, data[:-1] + bytes([data[-1] ^ 1]))



# The error line a user sees names what is wrong with the pack: the text is behaviour, so each is
# compared whole (a word changed, or its case, is a different line).
@pytest.mark.parametrize("pack, line", [
    (_pack([[KIND_DATA, ID, 5]]), "corrupt pack header: a blob entry has 5 or 6 fields"),
    (_pack(["abcde"]), "corrupt pack header: a blob entry has 5 or 6 fields"),
    (_pack([[7, ID, 5, 10, 10]]), "corrupt pack header: bad blob kind or id"),
    (_pack([[KIND_DATA, ID, 5, 10, 10, b"\x22" * 31]]), "corrupt pack header: bad delta base"),
    (_pack([[KIND_DATA, ID, 5, 10, 10, 5]]), "corrupt pack header: bad delta base"),
    (_pack([[KIND_DATA, ID, 5, 10, 10, ID]]), "corrupt pack header: bad delta base"),         # its own base
    (_pack([[KIND_TREE, ID, 5, 10, 10, b"\x22" * 32]]), "corrupt pack header: bad delta base"),  # trees have none
    (_pack([[KIND_DATA, ID, 5.0, 10, 10]]), "corrupt pack header: non-integer blob bounds"),
    # msgpack's `true` decodes as Python's True, an int equal to 1: never a length, offset or raw length
    (_pack([[KIND_DATA, ID, 5, True, 10]]), "corrupt pack header: non-integer blob bounds"),
    (_pack([[KIND_DATA, ID, True, 10, 10]]), "corrupt pack header: non-integer blob bounds"),
    (_pack([[KIND_DATA, ID, 5, 10, True]]), "corrupt pack header: non-integer blob bounds"),
    (_pack([[KIND_DATA, ID, 5, 10**9, 10]]), "corrupt pack header: blob lies outside the pack body"),
    (_pack([[KIND_DATA, ID, 5, 0, 10]]), "corrupt pack header: blob lies outside the pack body"),
    (_pack([[KIND_DATA, ID, 5, 10, 2**40]]),
     f"corrupt pack header: blob raw length {2**40} above the maximum {MAX_RAW}"),
    (_pack([], header=msgpack.packb({"blobs": []}) + b"\x00"), "corrupt pack header: unpack(b) received extra data."),
    (_pack([], header=b"\xc1"), "corrupt pack header: not msgpack (a byte that starts no msgpack value)"),
    (_pack([], header=b"\x81\xa5blobs" + b"\x91" * 2000),
     "corrupt pack header: msgpack nested too deeply"),
    (_pack([[KIND_DATA, ID, 5, 10, 10]], magic=b"PK\x03\x04"), "not a casstore pack (bad magic)"),
    (MAGIC + b"\x01", "not a casstore pack (bad magic)"),         # too short to hold a trailer
    (_pack([], header_length=2**32 - 1), "pack header length out of bounds"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_hostile_pack_error_says_what_is_wrong(pack, line):
    error = _bounded(lambda: parse_header(pack, MAX_RAW), FormatError)
    assert str(error) == line


def test_a_pack_header_may_begin_right_after_the_preamble():
    """An empty body is within bounds: the header's start is the preamble's end, exactly."""
    assert parse_header(_pack([], body=b""), MAX_RAW) == []


def test_the_smallest_framed_pack_with_an_empty_header_is_a_corrupt_header_not_bad_magic():
    error = _bounded(lambda: parse_header(MAGIC + b"\x01" + struct.pack("<I", 0), MAX_RAW), FormatError)
    assert str(error).startswith("corrupt pack header: ")


@pytest.mark.parametrize("length, raw_length", [(1, 0), (1, MAX_RAW), (64, 1)])
def test_blob_bounds_at_their_limits_are_accepted(length, raw_length):
    """The smallest envelope (a tag alone), an empty blob and a blob of the maximum size all parse."""
    [entry] = parse_header(_pack([[KIND_DATA, ID, 5, length, raw_length]]), MAX_RAW)
    assert (entry.offset, entry.length, entry.raw_length) == (5, length, raw_length)


def test_a_blob_of_one_byte_past_the_maximum_raw_length_is_refused():
    error = _bounded(lambda: parse_header(_pack([[KIND_DATA, ID, 5, 10, MAX_RAW + 1]]), MAX_RAW), FormatError)
    assert str(error) == f"corrupt pack header: blob raw length {MAX_RAW + 1} above the maximum {MAX_RAW}"


@pytest.mark.parametrize("size, accepted", [(64, True), (65, False)])
def test_a_pack_header_holds_byte_strings_of_at_most_64_bytes(size, accepted):
    """Ids are 32 bytes and the nonce 16: a longer byte string in a header is refused before it is kept."""
    pack = _pack([], header=msgpack.packb({"nonce": b"n" * size, "blobs": []}))
    if accepted:
        assert parse_header(pack, MAX_RAW) == []
    else:
        error = _bounded(lambda: parse_header(pack, MAX_RAW), FormatError)
        assert str(error) == "corrupt pack header: 65 exceeds max_bin_len(64)"


def test_a_pack_header_of_more_than_ten_million_entries_is_refused_before_they_are_built():
    count = 10_000_001
    header = (b"\x82\xa5nonce\xc4\x10" + b"n" * 16 + b"\xa5blobs\xdd" + struct.pack(">I", count)
              + b"\xc0" * count)
    pack = _pack([], header=header)
    error = _bounded(lambda: parse_header(pack, MAX_RAW), FormatError)
    assert str(error) == f"corrupt pack header: {count} exceeds max_array_len(10000000)"


def test_a_sealed_pack_header_that_was_tampered_with_is_named_in_the_error():
    sealer = MasterKey.generate().sealer
    builder = PackBuilder(KIND_DATA, sealer=sealer)
    builder.add(ID, codec.encode_verified(b"hello", 3, codec.blob_id(b"hello", sealer), sealer), 5)
    _pack_id, data = builder.finish()
    tampered = bytearray(data)
    tampered[-10] ^= 1          # a byte of the sealed header
    with pytest.raises(IntegrityError) as info:
        parse_header(bytes(tampered), MAX_RAW, sealer)
    assert str(info.value).startswith("pack header: authentication failed")


def test_a_pack_of_the_other_encryption_state_is_refused_saying_why():
    plain = _pack([[KIND_DATA, ID, 5, 10, 10]])
    with pytest.raises(IntegrityError) as planted:
        parse_header(plain, MAX_RAW, MasterKey.generate().sealer)
    assert str(planted.value) == "a plain pack in an encrypted repository (planted or downgraded)"
    with pytest.raises(DowngradeError) as downgraded:
        parse_header(_pack([[KIND_DATA, ID, 5, 10, 10]], version=2), MAX_RAW)
    assert str(downgraded.value) == ("an encrypted pack in a repository whose config says it is not encrypted: "
                                     "the config may have been replaced (downgrade); refusing to read")


def test_a_pack_that_does_not_match_its_name_is_named_by_its_first_16_hex_digits():
    builder = PackBuilder(KIND_DATA)
    builder.add(ID, b"\x00abc", 3)
    pack_id, data = builder.finish()
    with pytest.raises(IntegrityError) as info:
        verify_pack_id(pack_id, bytes(data[:-1]) + bytes([data[-1] ^ 1]))
    assert str(info.value) == f"pack {pack_id[:16]} does not match its name"


# -- blob envelopes ----------------------------------------------------------------------------


def _zstd_bomb(claimed: int) -> bytes:
    """A small zstd frame that decompresses to `claimed` zero bytes (content size in the header)."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj(size=claimed)
    block = b"\0" * MiB
    frame = b"".join(compressor.compress(block) for _ in range(claimed // MiB)) + compressor.flush()
    return bytes([codec.TAG_ZSTD]) + frame


def test_zstd_frame_without_content_size_is_bounded_by_the_raw_length():
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=False)
    bomb = bytes([codec.TAG_ZSTD]) + compressor.compress(b"\0" * (64 * MiB))
    assert len(bomb) < 64 * 1024
    _bounded(lambda: codec.decode(bomb, 1000), IntegrityError)


def test_zstd_bomb_with_content_size_is_refused_before_allocating():
    bomb = _zstd_bomb(64 * MiB)
    assert len(bomb) < 64 * 1024
    _bounded(lambda: codec.decode(bomb, 1000), IntegrityError, FormatError)


@pytest.mark.parametrize("encoded,raw_length", [
    (b"", 0), (b"\x07abc", 3), (b"\x02secret", 6), (b"\x00abcd", 3), (b"\x00ab", 3), (b"\x01not zstd", 8),
], ids=["empty", "unknown tag", "encrypted tag", "raw too long", "raw too short", "corrupt zstd"])
def test_bad_blob_envelopes(encoded, raw_length):
    # a sealed tag under a plain config is a downgrade (issue 15): refused as such, never decoded
    _bounded(lambda: codec.decode(encoded, raw_length), FormatError, IntegrityError, DowngradeError)


def test_blob_that_decodes_to_other_bytes_is_an_integrity_error():
    _bounded(lambda: codec.decode_verified(b"\x00abc", 3, ID), IntegrityError)


# -- indexes -----------------------------------------------------------------------------------


def _index_body(doc) -> tuple[str, bytes]:
    body = msgpack.packb(doc)
    return blake3.blake3(body).hexdigest(), body


GOOD_PACK = "ab" * 32
GOOD_ENTRY = [KIND_DATA, ID, 5, 10, 10]


def _index(packs=None, **changes) -> dict:
    doc = {"version": 1, "origin": {"kind": "writer", "host": "h", "session": "s"},
           "packs": [[GOOD_PACK, [GOOD_ENTRY]]] if packs is None else packs, "supersedes": []}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("doc", [
    _index(version=2), _index(origin="writer"), _index(origin={"kind": "thief"}), _index(packs=5),
    _index(packs=[["not-hex", [GOOD_ENTRY]]]), _index(packs=[[GOOD_PACK, [[KIND_DATA, ID, 5, 10]]]]),
    _index(packs=[[GOOD_PACK, [[KIND_DATA, b"\x11" * 31, 5, 10, 10]]]]),
    _index(packs=[[GOOD_PACK, [[9, ID, 5, 10, 10]]]]), _index(packs=[[GOOD_PACK, [[1.0, ID, 5, 10, 10]]]]),
    _index(packs=[[GOOD_PACK, [[True, ID, 5, 10, 10]]]]), _index(packs=[[GOOD_PACK, [[KIND_DATA, ID, -5, 10, 10]]]]),
    _index(packs=[[GOOD_PACK, [[KIND_DATA, ID, 5, "10", 10]]]]),
    _index(packs=[[GOOD_PACK, [[KIND_DATA, ID, 5, True, 10]]]]),
    _index(packs=[[GOOD_PACK, [[KIND_DATA, ID, 5, 10, 2**40]]]]), _index(supersedes=["zz"]),
    [1, 2, 3], "just a string", {"version": 1},
], ids=["version", "origin str", "origin kind", "packs int", "pack id", "short entry", "short id", "kind",
        "float kind", "boolean kind", "negative offset", "str length", "boolean length",
        "huge raw length", "supersedes", "a list",
        "a string", "no fields"])
def test_hostile_indexes_are_format_errors(doc):
    index_id, body = _index_body(doc)
    _bounded(lambda: decode_index(index_id, body, MAX_RAW), FormatError)


def test_index_with_huge_bin_claim_and_wrong_name():
    body = b"\x81\xa4data\xc6\x7f\xff\xff\xff" + b"x" * 10   # bin32 claiming 2 GiB
    _bounded(lambda: decode_index(blake3.blake3(body).hexdigest(), body, MAX_RAW), FormatError)
    index_id, good = _index_body(_index())
    decode_index(index_id, good, MAX_RAW)
    _bounded(lambda: decode_index(index_id, good + b"\x00", MAX_RAW), IntegrityError)


# -- trees -------------------------------------------------------------------------------------


def _tree(entries, **changes) -> bytes:
    doc = {"v": 1, "entries": entries, "next": None}
    doc.update(changes)
    return msgpack.packb(doc)


def _file(name=b"f", **changes) -> list:
    fields = {"name": name, "type": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime": NOW_NS, "size": 3,
              "link": 0, "content": [ID]}
    fields.update(changes)
    return list(fields.values())


@pytest.mark.parametrize("body", [
    _tree([_file(b"same"), _file(b"same")]), _tree([_file("str-name")]), _tree([_file(b"")]),
    _tree([_file(type="weird")]), _tree([_file(mode="0755")]), _tree([_file(size=-1)]),
    _tree([_file(mtime=1.5)]), _tree([_file(content=ID)]), _tree([_file(content=[b"short"])]),
    _tree([_file(type="dir", content=[ID])]), _tree([_file(type="symlink", content=5)]),
    _tree([_file(type="fifo", content=b"x")]), _tree([_file()[:5]]), _tree([_file()], next=b"short"),
    _tree([_file()], v=2), _tree(5), msgpack.packb([1, 2]), b"\xc1", b"\xdd\x7f\xff\xff\xff",
    _tree([_file(size=True)]), _tree([_file(mode=True)]), _tree([_file(type="chardev", content=True)]),
], ids=["duplicate names", "str name", "empty name", "unknown type", "str mode", "negative size",
        "float mtime", "file content id", "short chunk id", "dir content list", "symlink target int",
        "fifo content", "short entry", "bad next", "version", "entries int", "a list", "not msgpack",
        "huge array claim", "boolean size", "boolean mode", "boolean device number"])
def test_hostile_trees_are_format_errors(body):
    _bounded(lambda: decode_tree(body), FormatError)


@pytest.mark.parametrize(("body", "reason"), [
    (_tree([_file()], v=2), "unsupported tree version 2"),
    (_tree([_file()], next=b"short"), "corrupt tree: bad next tree id"),
    (_tree([_file(type="socket", content=5)]), "entry b'f': bad content for a socket"),
    (_tree([_file(type="blockdev", content=None)]), "entry b'f': bad content for a blockdev"),
    (_tree([_file(mode="0755")]), "entry b'f': bad integer field"),
    (_tree([_file(b"")]), "corrupt tree: entry name must be non-empty bytes"),
    (_tree([_file(b"same"), _file(b"same")]), "corrupt tree: duplicate entry name"),
], ids=["version", "next", "socket content", "blockdev content", "str mode", "empty name", "duplicate names"])
def test_a_hostile_tree_error_says_what_is_wrong(body, reason):
    with pytest.raises(FormatError) as caught:
        decode_tree(body)
    assert str(caught.value).endswith(reason)


@pytest.mark.parametrize(("stored", "content"), [
    ("fifo", None), ("socket", None), ("chardev", 0x0501), ("blockdev", 0x0801), ("symlink", b"target"),
])
def test_each_special_entry_type_reads_back_from_its_stored_name(stored, content):
    # the stored type names are the format (DESIGN.md): a tree written by any casstore reads back the same
    (entry,), _next = decode_tree(_tree([_file(b"dev", type=stored, size=0, content=content)]))
    assert entry.type is EntryType(stored) and entry.type.value == stored and entry.content == content


@pytest.mark.parametrize("name", [b"", b".", b"..", b"/", b"a/b", b"../x", b"a\0b"])
def test_a_name_that_could_leave_its_directory_or_be_cut_short_is_unsafe(name):
    assert not safe_name(name)


@pytest.mark.parametrize("name", [b"a", b"...", b".hidden", b"a b", b"\\", b"\xff\xfe"])
def test_any_other_name_is_safe(name):
    assert safe_name(name)


def test_duplicate_names_in_a_stored_tree_are_reported_everywhere(tmp_path):
    repo = init_repo(tmp_path / ".casstore")

    def build(store):
        good = file_entry(store, b"dup", b"first")
        body = _tree([good.as_list(), good.as_list()])
        subtree = store.add(KIND_TREE, body)[0]
        return [file_entry(store, b"fine.txt", b"fine"),
                type(good)(b"sub", good.type.DIR, 0o755, 0, 0, NOW_NS, 0, 0, subtree)]

    snapshot_id = write_snapshot(repo, build)
    with pytest.raises(FormatError, match="duplicate"):
        open_repo(tmp_path / ".casstore").get(snapshot_id).ls("sub")
    assert_one_line_error(run("ls", snapshot_id[:8], "sub", expect=None), "duplicate")
    proc = run("restore", snapshot_id[:8], tmp_path / "out", expect=None)
    assert_one_line_error(proc, "duplicate")
    result = invoke("check", "--read-data", expect=1)
    assert "sub: directory unreadable" in result.stdout and "duplicate" in result.stdout


# -- snapshot manifests and the config ---------------------------------------------------------


def _manifest_body(doc) -> tuple[str, bytes]:
    body = msgpack.packb(doc)
    return blake3.blake3(body).hexdigest(), body


GOOD_MANIFEST = {"time_ns": NOW_NS, "host": "h", "source": "/s", "tree": ID, "tags": [], "parent": None,
                 "incomplete": False, "summary": {}, "version": 1}


@pytest.mark.parametrize("changes", [
    {"version": 2}, {"tree": "11" * 32}, {"tree": b"short"}, {"time_ns": 1.5}, {"summary": []},
    {"unknown_field": 1}, {"time_ns": None},
], ids=["version", "tree str", "tree short", "float time", "summary list", "unknown field", "no time"])
def test_hostile_snapshot_manifests_are_format_errors(changes):
    snapshot_id, body = _manifest_body({**GOOD_MANIFEST, **changes})
    _bounded(lambda: decode_snapshot(snapshot_id, body), FormatError)


def test_snapshot_manifest_must_match_its_name():
    snapshot_id, body = SnapshotManifest(NOW_NS, "h", "/s", ID).encode()
    decode_snapshot(snapshot_id, body)
    _bounded(lambda: decode_snapshot(snapshot_id, body.replace(b"/s", b"/t")), IntegrityError)


@pytest.mark.parametrize("doc", [
    [1, 2, 3], {**GOOD_MANIFEST, "tags": 5}, {**GOOD_MANIFEST, "host": None}, {**GOOD_MANIFEST, "parent": 7},
], ids=["a list", "tags int", "host none", "parent int"])
def test_hostile_snapshot_manifest_types(doc):
    snapshot_id, body = _manifest_body(doc)
    _bounded(lambda: decode_snapshot(snapshot_id, body), FormatError)


def test_hostile_snapshot_object_in_a_repository_is_skipped_by_readers(tmp_path):
    write(tmp_path / "data" / "a.txt", "a\n")
    run("snapshot")
    snapshot_id, body = _manifest_body({**GOOD_MANIFEST, "tree": b"short"})
    (tmp_path / ".casstore" / "snapshots" / snapshot_id).write_bytes(body)
    listed = json.loads(run("list", "--json").stdout)
    assert len(listed) == 1
    assert_one_line_error(run("show", snapshot_id[:8], expect=None), "corrupt snapshot")
    assert f"snapshot {snapshot_id[:8]}" in invoke("check", expect=1).stdout


@pytest.mark.parametrize("body", [
    b"\xc1garbage", msgpack.packb({"version": 99}),
    msgpack.packb({"version": 1, "id": "x", "chunker": {"algorithm": "nope"}}),
    msgpack.packb([1]),
], ids=["not msgpack", "version", "chunker", "a list"])
def test_corrupt_config_is_one_line_error(tmp_path, body):
    init_repo(tmp_path / ".casstore")
    with pytest.raises(FormatError):
        RepoConfig.decode(body)
    (tmp_path / ".casstore" / "config").write_bytes(body)
    assert_one_line_error(run("list", expect=None), "repository")


def _config_with(**changes) -> bytes:
    """A plain repository config as stored, with fields (or, for `chunker`/`compression`, keys) changed."""
    doc = msgpack.unpackb(RepoConfig.new(avg_size=64 * 1024).encode())
    for name, value in changes.items():
        doc[name] = {**doc[name], **value} if isinstance(value, dict) else value
    return msgpack.packb(doc)


@pytest.mark.parametrize("changes", [
    {"compression": {"algorithm": "lz4"}}, {"compression": {"delta": 65}}, {"compression": {"delta": -1}},
    {"compression": {"delta": "4"}}, {"chunker": {"max_size": 64 * MiB + 1}},
    {"chunker": {"max_size": 32 * 1024}}, {"pack_size": 1024 * MiB + 1}, {"pack_size": 4 * 1024 - 1},
    {"compression": {"level": True}}, {"compression": {"delta": True}}, {"chunker": {"seed": True}},
], ids=["compression lz4", "delta 65", "delta -1", "delta str", "max_size over range", "max_size below avg",
        "pack_size over range", "pack_size under range", "boolean level", "boolean delta", "boolean seed"])
def test_a_config_outside_the_formats_ranges_is_refused(changes):
    _bounded(lambda: RepoConfig.decode(_config_with(**changes)), FormatError)


@pytest.mark.parametrize("changes", [
    {"compression": {"delta": 0}}, {"compression": {"delta": 64}}, {"chunker": {"max_size": 64 * MiB}},
    {"pack_size": 1024 * MiB}, {"pack_size": 4 * 1024}, {"compression": {"level": -(1 << 17)}},
    {"compression": {"level": 22}}, {"grace_seconds": 10},
], ids=["delta 0", "delta 64", "max_size at range", "pack_size at max", "pack_size at min", "level at min",
        "level at max", "grace at min"])
def test_a_config_at_the_edges_of_the_formats_ranges_reads_back(changes):
    body = _config_with(**changes)
    assert RepoConfig.decode(body).encode() == body


@pytest.mark.parametrize("encryption", [
    {"scheme": "xchacha-v9", "domain": "ab" * 16}, {"scheme": "xchacha-v9"}, ["scheme"],
    {"scheme": SCHEME, "domain": "AB" * 16}, {"scheme": SCHEME, "domain": "ab" * 15},
], ids=["unknown scheme", "unknown scheme no domain", "a list", "domain upper case", "domain short"])
def test_an_encrypted_config_of_an_unknown_scheme_or_bad_domain_is_refused_before_unlocking(encryption):
    body = msgpack.packb({"version": 1, "id": "ab" * 16, "encryption": encryption})
    _bounded(lambda: encryption_domain(body), FormatError)
    _bounded(lambda: RepoConfig.decode(body), FormatError)


# -- hostile objects stored in a repository ----------------------------------------------------


def test_pack_with_bad_magic_stored_under_its_own_name_is_reported_by_check(tmp_path):
    write(tmp_path / "data" / "a.bin", b"payload " * 1000)
    run("init", "--chunk-avg", 65536)
    run("snapshot")
    repo = open_repo(tmp_path / ".casstore")
    index = repo.load_index()
    [data_pack] = [p for p in objects(tmp_path / ".casstore", "data")
                   if any(loc.pack_id == p.name for (kind, _), locs in index.blobs() for loc in locs
                          if kind == KIND_DATA)]
    forged = b"XXXX" + data_pack.read_bytes()[4:]
    forged_id = blake3.blake3(forged).hexdigest()
    repo.remote.put(f"data/{forged_id[:2]}/{forged_id}", forged)
    entries = parse_header(data_pack.read_bytes(), MAX_RAW)
    index_id, body = IndexObject({"kind": "writer", "host": "forger", "session": "x"}, {forged_id: entries}).encode()
    repo.remote.put(f"index/{index_id}", body)
    result = invoke("check", "--read-data", "--json", expect=1)
    report = json.loads(result.stdout)
    assert "bad magic" in report["damaged_packs"][forged_id]
    assert report["affected"] == {}   # every blob still has a good copy in the original pack
    assert open_repo(tmp_path / ".casstore").get("latest").read_bytes("a.bin") == b"payload " * 1000


def test_index_claiming_a_huge_raw_length_is_skipped_and_reported(tmp_path):
    write(tmp_path / "data" / "a.txt", "a\n")
    run("snapshot")
    index_id, body = _index_body(_index(packs=[[GOOD_PACK, [[KIND_DATA, ID, 5, 10, 2**40]]]]))
    (tmp_path / ".casstore" / "index" / index_id).write_bytes(body)
    assert open_repo(tmp_path / ".casstore").get("latest").read_bytes("a.txt") == b"a\n"
    result = invoke("check", expect=1)
    assert f"index {index_id[:16]}" in result.stdout


@pytest.mark.parametrize(("doc", "reason"), [
    ([1, 2, 3], "not a map"),
    ({**GOOD_MANIFEST, "tree": b"short"}, "bad root tree id"),
    ({**GOOD_MANIFEST, "time_ns": "now"}, "time_ns must be an integer"),
    ({**GOOD_MANIFEST, "host": None}, "host and source must be strings"),
    ({**GOOD_MANIFEST, "tags": ["a", 5]}, "tags must be a list of strings"),
    ({**GOOD_MANIFEST, "parent": 7}, "parent must be a snapshot id"),
    ({**GOOD_MANIFEST, "incomplete": "yes"}, "bad incomplete flag or summary"),
], ids=["a list", "tree", "time", "host", "tags", "parent", "incomplete"])
def test_a_hostile_snapshot_manifest_error_names_the_snapshot_and_what_is_wrong(doc, reason):
    snapshot_id, body = _manifest_body(doc)
    with pytest.raises(FormatError) as caught:
        decode_snapshot(snapshot_id, body)
    assert str(caught.value) == f"corrupt snapshot {snapshot_id[:8]}: {reason}"


def test_a_snapshot_of_a_newer_format_version_is_refused_naming_that_version():
    snapshot_id, body = _manifest_body({**GOOD_MANIFEST, "version": 99})
    with pytest.raises(FormatError, match="unsupported snapshot version 99$"):   # so the user knows to upgrade
        decode_snapshot(snapshot_id, body)


def test_a_snapshot_whose_bytes_do_not_match_its_name_is_refused_naming_it():
    snapshot_id, body = _manifest_body(GOOD_MANIFEST)
    with pytest.raises(IntegrityError, match=f"snapshot {snapshot_id[:8]} does not match its name"):
        decode_snapshot(snapshot_id, body + b"\0")


# -- gc plans ------------------------------------------------------------------------------------

GOOD_PLAN = {"version": 1, "condemned_packs": ["ab" * 32], "superseded_indexes": [], "host": "h"}


@pytest.mark.parametrize(("doc", "reason"), [
    ([1, 2], "corrupt gc plan: not a map"),
    ({**GOOD_PLAN, "version": 9}, "unsupported gc plan version 9"),
    ({**GOOD_PLAN, "condemned_packs": "ab"}, "corrupt gc plan: object names must be a list of strings"),
    ({**GOOD_PLAN, "superseded_indexes": [5]}, "corrupt gc plan: object names must be a list of strings"),
], ids=["a list", "version", "names a string", "names not strings"])
def test_a_hostile_gc_plan_error_says_what_is_wrong(doc, reason):
    with pytest.raises(FormatError) as caught:
        decode_plan(msgpack.packb(doc), "gc/plan-x")
    assert str(caught.value) == reason


def test_a_gc_plan_without_a_host_reads_with_an_empty_host():
    plan = decode_plan(msgpack.packb({k: v for k, v in GOOD_PLAN.items() if k != "host"}))
    assert plan.host == "" and plan.condemned_packs == ["ab" * 32]


# -- bytes that are not msgpack: one clear reason from every decoder ----------------------------

def _index_image_with_a_header_that_is_not_msgpack() -> bytes:
    import io

    from casstore.format.index import MasterIndex

    out = io.BytesIO()
    MasterIndex().write_image(out)
    image = bytearray(out.getvalue())
    image[image.index(b"\n") + 1 + 8] = 0xC1       # the first byte of the msgpack header, after its length
    return bytes(image)


def _read_image(image: bytes) -> None:
    import io

    from casstore.format.index import MasterIndex

    MasterIndex().read_image(io.BytesIO(image))


NOT_MSGPACK, TOO_DEEP = b"\xc1", b"\x91" * 5000 + b"\x00"


@pytest.mark.parametrize(("decode", "what"), [
    (lambda body: decode_tree(body), "corrupt tree"),
    (lambda body: decode_plan(body), "corrupt gc plan"),
    (lambda body: decode_snapshot(blake3.blake3(body).hexdigest(), body), "corrupt snapshot"),
    # the index reader takes its map header first (a wrong one has its own message): the bytes are its first key
    (lambda body: decode_index(blake3.blake3(b"\x81" + body).hexdigest(), b"\x81" + body, MAX_RAW), "corrupt index"),
    (lambda body: RepoConfig.decode(body), "corrupt repository config"),
    (lambda body: encryption_domain(body), "corrupt repository config"),
    (lambda body: slot_info("ab" * 8, body), "corrupt key slot abababab"),
], ids=["tree", "gc plan", "snapshot", "index", "config", "config domain", "key slot"])
@pytest.mark.parametrize(("body", "reason"), [
    (NOT_MSGPACK, "not msgpack (a byte that starts no msgpack value)"), (TOO_DEEP, "msgpack nested too deeply"),
], ids=["not msgpack", "nested too deeply"])
def test_bytes_msgpack_rejects_are_refused_with_a_reason_by_every_decoder(decode, what, body, reason):
    with pytest.raises(FormatError) as refused:
        decode(body)
    assert str(refused.value).startswith(what) and str(refused.value).endswith(reason), str(refused.value)


def test_an_index_table_image_whose_header_is_not_msgpack_is_refused_with_a_reason():
    with pytest.raises(FormatError, match="corrupt index table image: not msgpack"):
        _read_image(_index_image_with_a_header_that_is_not_msgpack())


def test_a_corrupt_index_is_named_by_its_first_16_hex_digits():
    body = b"\x81" + NOT_MSGPACK
    index_id = blake3.blake3(body).hexdigest()
    with pytest.raises(FormatError) as refused:
        decode_index(index_id, body, MAX_RAW)
    assert str(refused.value).startswith(f"corrupt index {index_id[:16]}: ")
