"""A pack header's rows: what a reader accepts, and the rows a writer compares a pack with.

A header of plain rows is checked column by column (a pack of small files has tens of thousands of
rows), anything else entry by entry. Whichever check decides, a header is accepted only when every
row is a blob entry of the format (DESIGN.md: kind, 32-byte id, integer bounds inside the body, raw
length within the maximum), and a refusal is one FormatError line. These headers are hostile in
the ways a column check could let through: one wrong type or length among valid rows, a bound one
past its limit while the others are small.
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from casstore.errors import FormatError
from casstore.format import codec
from casstore.format.crypto import MasterKey
from casstore.format.pack import (
    KIND_DATA,
    KIND_TREE,
    MAGIC,
    BlobEntry,
    PackBuilder,
    entry_rows,
    header_rows,
    parse_header,
)

MAX_RAW = 1 << 20
ID = b"\x11" * 32
BODY = 64                       # the hostile packs' body: offsets 5..68 lie inside it
GOOD = [KIND_DATA, ID, 5, 10, 10]


def _pack(header: dict) -> bytes:
    packed = msgpack.packb(header)
    return MAGIC + b"\x01" + b"x" * BODY + packed + struct.pack("<I", len(packed))


def _refused(rows, reason: str) -> None:
    """A header with these rows is one FormatError line naming `reason`, by both readers."""
    pack = _pack({"nonce": b"n" * 16, "blobs": rows})
    for read in (parse_header, header_rows):
        with pytest.raises(FormatError) as info:
            read(pack, MAX_RAW)
        assert str(info.value) == f"corrupt pack header: {reason}"


@pytest.mark.parametrize("blobs", [None, 0, False, 7])
def test_a_header_whose_blobs_are_not_a_list_is_refused(blobs):
    pack = _pack({"nonce": b"n" * 16, "blobs": blobs})
    for read in (parse_header, header_rows):
        with pytest.raises(FormatError, match="^corrupt pack header: "):
            read(pack, MAX_RAW)


@pytest.mark.parametrize("bad_id", ["a" * 32, b"\x22" * 31, b"\x22" * 33, [0] * 32],
                         ids=["str of 32", "31 bytes", "33 bytes", "list of 32"])
@pytest.mark.parametrize("where", ["alone", "among valid rows"])
def test_a_blob_id_that_is_not_32_bytes_is_refused(bad_id, where):
    row = [KIND_DATA, bad_id, 5, 10, 10]
    _refused([row] if where == "alone" else [GOOD, row, GOOD], "bad blob kind or id")


@pytest.mark.parametrize("bad_kind", [[1], 2, -1, b"\x00", "data", 1.0, 0.0, True])
def test_a_blob_kind_that_is_not_data_or_tree_is_refused(bad_kind):
    _refused([GOOD, [bad_kind, ID, 5, 10, 10]], "bad blob kind or id")


@pytest.mark.parametrize("row", [[KIND_DATA, ID, 5.0, 10, 10], [KIND_DATA, ID, 5, 10.0, 10],
                                 [KIND_DATA, ID, 5, 10, 10.0], [KIND_DATA, ID, 5, 10, 10.5],
                                 [KIND_DATA, ID, 5, 10, "10"], [KIND_DATA, ID, 5, b"\x0a", 10]],
                         ids=["float offset", "float length", "float raw length", "fractional raw length",
                              "str raw length", "bytes length"])
@pytest.mark.parametrize("where", ["alone", "among valid rows"])
def test_blob_bounds_that_are_not_integers_are_refused(row, where):
    _refused([row] if where == "alone" else [GOOD, row], "non-integer blob bounds")


@pytest.mark.parametrize("row", [[KIND_DATA, ID, 5, BODY + 1, 3], [KIND_DATA, ID, 5, 10**9, 0],
                                 [KIND_DATA, ID, BODY + 5, 1, 1], [KIND_DATA, ID, 4, 1, 1],
                                 [KIND_DATA, ID, 1, 10**9, 5]],
                         ids=["one byte past the body", "far past the body", "starts past the body",
                              "starts in the preamble", "in the preamble and past the body"])
def test_a_blob_outside_the_pack_body_is_refused_whatever_its_raw_length(row):
    """Small raw lengths: the body bound alone must refuse these."""
    _refused([GOOD, row], "blob lies outside the pack body")
    _refused([row], "blob lies outside the pack body")


@pytest.mark.parametrize("row", [7, "abcde", {"a": 1}, [KIND_DATA, ID, 5, 10]],
                         ids=["an integer", "a string of 5", "a map", "4 fields"])
def test_a_row_that_is_not_a_blob_entry_says_so(row):
    _refused([GOOD, row], "a blob entry has 5 or 6 fields")


def test_blob_entries_that_fill_the_body_exactly_are_accepted():
    rows = [[KIND_DATA, ID, 5, 1, 0], [KIND_TREE, b"\x22" * 32, 6, BODY - 1, MAX_RAW]]
    pack = _pack({"nonce": b"n" * 16, "blobs": rows})
    assert header_rows(pack, MAX_RAW) == rows
    assert parse_header(pack, MAX_RAW) == [BlobEntry(*row) for row in rows]


def _delta_pack(sealer=None) -> tuple[bytes, list[BlobEntry]]:
    """A pack of two delta blobs against one base (a plain pack) or of two plain blobs (sealed)."""
    base = b"".join(b"line %d of the base\n" % i for i in range(3000))
    base_id = codec.blob_id(base)
    builder = PackBuilder(KIND_DATA, sealer=sealer)
    for data in (base.replace(b"line 7 ", b"LINE 7 "), base.replace(b"line 9", b"LINE 9")):
        blob_id = codec.blob_id(data, sealer)
        builder.add(blob_id, codec.encode_verified(data, 3, blob_id, sealer,
                                                   base=None if sealer else (base_id, base)), len(data))
    _pack_id, body = builder.finish()
    return bytes(body), builder.entries


def test_a_pack_of_delta_blobs_reads_back_as_the_rows_written_each_with_its_base():
    """The store's read-back compares these rows: a pack of deltas must match what was put in."""
    body, entries = _delta_pack()
    assert all(e.base is not None for e in entries)
    written = entry_rows(entries)
    assert written == [[e.kind, e.id, e.offset, e.length, e.raw_length, e.base] for e in entries]
    assert header_rows(body, MAX_RAW) == written


def test_rows_of_plain_and_delta_entries_keep_their_order_and_bases():
    plain = BlobEntry(KIND_DATA, b"\x01" * 32, 5, 10, 10)
    with_base = BlobEntry(KIND_DATA, b"\x02" * 32, 15, 10, 10, b"\x03" * 32)
    assert entry_rows([with_base]) == [[KIND_DATA, b"\x02" * 32, 15, 10, 10, b"\x03" * 32]]
    assert entry_rows([plain, with_base, plain]) == [plain.as_list(), with_base.as_list(), plain.as_list()]
    assert entry_rows([]) == []


def test_a_sealed_pack_reads_back_as_the_rows_written_with_its_key():
    sealer = MasterKey.generate().sealer
    body, entries = _delta_pack(sealer)
    assert header_rows(body, MAX_RAW, sealer) == entry_rows(entries)


@pytest.mark.parametrize("base", [[], [b"\x33" * 32]], ids=["plain rows", "delta rows"])
def test_blob_bounds_at_their_limits_are_accepted_and_one_past_them_refused(base):
    """Each bound met exactly (a raw length of 0 and of the maximum, a length of 1, the body filled)
    is accepted and one past it refused, by the column check (plain rows) and the entry-by-entry
    one (a header holding delta rows) alike."""
    rows = [[KIND_DATA, ID, 5, 1, 0, *base], [KIND_DATA, b"\x22" * 32, 6, BODY - 1, MAX_RAW, *base]]
    pack = _pack({"nonce": b"n" * 16, "blobs": rows})
    assert header_rows(pack, MAX_RAW) == rows
    assert parse_header(pack, MAX_RAW) == [BlobEntry(*row) for row in rows]
    _refused([[KIND_DATA, ID, 5, 0, 0, *base]], "blob lies outside the pack body")
    _refused([[KIND_DATA, ID, 5, BODY + 1, 0, *base]], "blob lies outside the pack body")
    _refused([[KIND_DATA, ID, 5, 1, -1, *base]], f"blob raw length -1 above the maximum {MAX_RAW}")
    _refused([[KIND_DATA, ID, 5, 1, MAX_RAW + 1, *base]], f"blob raw length {MAX_RAW + 1} above the maximum {MAX_RAW}")
