"""Reused buffers: a buffer is never handed out while something views it, packs built in a
reused buffer have the same layout as packs joined from parts, and a header too large for the
buffer's slack still gives a valid pack."""

from __future__ import annotations

import os

import pytest

from casstore.format import codec
from casstore.format.index import decode_index, encode_index
from casstore.format.pack import KIND_DATA, BlobEntry, PackBuilder, parse_header, verify_pack_id
from casstore.fsio import buffers
from casstore.fsio.buffers import BufferPool


def test_a_viewed_buffer_is_never_handed_out_again(monkeypatch):
    monkeypatch.setattr(buffers, "WAIT_ROUNDS", 2)
    pool = BufferPool(64, keep=2)
    a, b = pool.get(), pool.get()
    first = a.obj
    assert first is not b.obj and len(pool._blocks) == 2
    c = pool.get()                        # both kept ones in use: a new one, not kept
    assert all(c.obj is not block for block in pool._blocks)
    piece = a[10:20]
    del a                                 # a slice still views the buffer
    d = pool.get()
    assert d.obj is not first and d.obj is not b.obj
    del piece, d
    assert pool.get().obj is first        # free again: reused


def _pack(builder: PackBuilder, blobs: list[bytes]) -> tuple[str, bytes]:
    for data in blobs:
        builder.add(codec.blob_id(data), codec.encode(data, 3), len(data))
    pack_id, body = builder.finish()
    return pack_id, bytes(body)


@pytest.mark.parametrize("buffer_size", [None, 1 << 20, 2500])
def test_pack_built_in_a_buffer_parses_like_one_built_from_parts(buffer_size):
    blobs = [os.urandom(300), b"json " * 200, os.urandom(700)]
    buffer = memoryview(bytearray(buffer_size)) if buffer_size else None
    pack_id, body = _pack(PackBuilder(KIND_DATA, buffer), blobs)
    verify_pack_id(pack_id, body)
    entries = parse_header(body, 1 << 20)
    assert [e.id for e in entries] == [codec.blob_id(b) for b in blobs]
    for entry, data in zip(entries, blobs, strict=True):
        encoded = body[entry.offset:entry.offset + entry.length]
        assert codec.decode_verified(encoded, entry.raw_length, entry.id) == data


def test_a_blob_that_does_not_fit_is_refused_not_written_past_the_buffer():
    builder = PackBuilder(KIND_DATA, memoryview(bytearray(100)))
    assert builder.fits(90) and not builder.fits(96)
    with pytest.raises(ValueError, match="^internal error: blob added to a full pack buffer$"):
        builder.add(b"\x00" * 32, b"\x00" + b"x" * 200, 200)


def test_a_blob_that_fills_the_buffer_to_its_last_byte_fits_and_the_pack_still_parses():
    buffer = memoryview(bytearray(100))
    builder = PackBuilder(KIND_DATA, buffer)
    first = b"\x00" + b"a" * 49                      # the preamble is 5 bytes: 45 are left after it
    builder.add(codec.blob_id(b"a" * 49), first, 49)
    assert builder.fits(45) and not builder.fits(46)
    last = b"\x00" + b"b" * 44
    builder.add(codec.blob_id(b"b" * 44), last, 44)
    assert not builder.fits(1)
    pack_id, body = builder.finish()                  # the header no longer fits: framed outside
    verify_pack_id(pack_id, body)
    entries = parse_header(body, 1 << 20)
    assert [bytes(body[e.offset:e.offset + e.length]) for e in entries] == [first, last]


def test_an_entry_given_only_its_five_plain_fields_is_stored_as_a_plain_blob():
    """A sync's journal rebuilds entries from five fields: they are no delta, and an index keeps them."""
    entry = BlobEntry(KIND_DATA, b"\x11" * 32, 5, 10, 10)
    index_id, stored = encode_index({"kind": "writer", "host": "h"}, {"ab" * 32: [entry]})
    assert decode_index(index_id, stored, 1 << 20).packs == {"ab" * 32: [entry]}


def test_store_seals_a_pack_before_a_blob_that_would_not_fit(tmp_path, monkeypatch):
    from casstore.repo import blobstore as store_module
    from tests.helpers import init_repo

    monkeypatch.setattr(store_module, "PACK_SLACK", 0)
    repo = init_repo(tmp_path / "repo", pack_size=64 * 1024)
    store = repo.blob_store()
    blobs = [os.urandom(40 * 1024) for _ in range(5)]    # two never fit one 64 KiB buffer
    for data in blobs:
        store.add(KIND_DATA, data)
    store.flush()
    store.close()
    assert store.packs_written == 5
    for data in blobs:
        assert store.read(KIND_DATA, codec.blob_id(data)) == data



def test_a_store_lets_its_pack_buffers_go_before_it_writes_the_index(tmp_path, monkeypatch):
    """Issue 14: the index body of a large session is made while nothing else is needed; the pack
    buffers (two of 16 MiB) held until the end were part of that peak."""
    from casstore.repo.blobstore import BlobStore
    from tests.helpers import init_repo

    kept: list[int] = []
    real = BlobStore.write_index

    def write_index(self, kind="writer"):
        kept.append(len(self._pack_buffers._blocks))
        return real(self, kind)

    monkeypatch.setattr(BlobStore, "write_index", write_index)
    repo = init_repo(tmp_path / "repo", pack_size=64 * 1024)
    store = repo.blob_store()
    blobs = [os.urandom(40 * 1024) for _ in range(3)]
    for data in blobs:
        store.add(KIND_DATA, data)
    assert store._pack_buffers is not None and store._pack_buffers._blocks     # in use while adding
    store.flush()
    assert kept == [0]
    store.add(KIND_DATA, os.urandom(1000))                                      # a later pack: a new one
    store.flush()
    store.close()
    for data in blobs:
        assert store.read(KIND_DATA, codec.blob_id(data)) == data

@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("level", [0, 3])
def test_an_encoded_blob_keeps_nothing_of_the_block_it_was_cut_from(encrypted, level):
    """The chunker's blocks are reused once no chunk refers to them: an envelope (sealed or not,
    raw or compressed) must hold its own bytes, not a view into the block (issue 15 seals a raw
    chunk straight from the block, without the copy a plain envelope needs)."""
    from casstore.format.crypto import MasterKey

    sealer = MasterKey.generate().sealer if encrypted else None
    block = bytearray(os.urandom(4096) + b"compressible " * 500)
    chunk = memoryview(block)[:4096] if level == 0 else memoryview(block)[4096:]
    original = bytes(chunk)
    blob_id = codec.blob_id(chunk, sealer)
    parts = codec.encode_verified(chunk, level, blob_id, sealer, KIND_DATA)
    block[:] = bytes(len(block))                  # the block is cut into again
    assert codec.decode_verified(b"".join(parts), len(original), blob_id, sealer, KIND_DATA) == original


@pytest.mark.parametrize("buffer_size", [None, 1 << 20])
def test_a_pack_of_delta_blobs_only_lists_each_blobs_base(buffer_size):
    """A delta decodes only with its base: the header names it, whatever else the pack holds."""
    base = b"".join(b"line %d of the base\n" % i for i in range(5000))
    datas = [base.replace(b"line 7 ", b"LINE 7 "), base.replace(b"line 9", b"LINE 9")]
    base_id = codec.blob_id(base)
    builder = PackBuilder(KIND_DATA, memoryview(bytearray(buffer_size)) if buffer_size else None)
    for data in datas:
        builder.add(codec.blob_id(data), codec.encode_verified(data, 3, codec.blob_id(data), base=(base_id, base)),
                    len(data))
    _pack_id, body = builder.finish()
    entries = parse_header(body, 1 << 20)
    assert [e.base for e in entries] == [base_id, base_id]
    for entry, data in zip(entries, datas, strict=True):
        encoded = body[entry.offset:entry.offset + entry.length]
        assert codec.decode_verified(encoded, entry.raw_length, entry.id, base=base) == data


@pytest.mark.parametrize("buffer_size", [None, 3000])
def test_a_batch_added_at_once_fills_packs_as_blobs_added_one_by_one(buffer_size):
    """`add_many` (a batch of small files' blobs) stops where `add` would start a new pack: at the
    size limit, or at a blob the buffer has no room for; an empty pack refuses a blob too large.
    Envelopes come in parts (tag, payload): each blob's stored bytes are its parts back to back."""
    blobs = [os.urandom(n) for n in (300, 900, 40, 1200, 700, 5, 800, 600)] + [b"squeeze " * 100]
    encoded = [(codec.blob_id(data), codec.encode_verified(data, 3, codec.blob_id(data)), len(data)) for data in blobs]
    assert all(len(parts) == 2 for _id, parts, _raw in encoded)

    def packs(add_batch: bool) -> list[list[tuple[BlobEntry, bytes]]]:
        done, at = [], 0

        def finish(builder: PackBuilder) -> list[tuple[BlobEntry, bytes]]:
            body = bytes(builder.finish()[1])
            return [(e, body[e.offset:e.offset + e.length]) for e in parse_header(body, 1 << 20)]

        builder = PackBuilder(KIND_DATA, memoryview(bytearray(buffer_size)) if buffer_size else None)
        while at < len(encoded):
            if add_batch:
                at = builder.add_many(encoded, at, 2000)
            else:
                blob_id, parts, raw = encoded[at]
                if builder.fits(sum(map(len, parts))) and builder.size < 2000:
                    builder.add(blob_id, parts, raw)
                    at += 1
            if at < len(encoded) and (builder.size >= 2000 or not builder.fits(sum(map(len, encoded[at][1])))):
                done.append(finish(builder))
                builder = PackBuilder(KIND_DATA, memoryview(bytearray(buffer_size)) if buffer_size else None)
        return [*done, finish(builder)]

    one_by_one = packs(False)
    assert len(one_by_one) > 1 and packs(True) == one_by_one
    stored = [blob for pack in one_by_one for blob in pack]
    assert [codec.decode_verified(body, e.raw_length, e.id) for e, body in stored] == blobs
    with pytest.raises(ValueError, match="^internal error: blob added to a full pack buffer$"):
        PackBuilder(KIND_DATA, memoryview(bytearray(100))).add_many([(bytes(32), (b"\x00", b"x" * 200), 200)], 0, 1000)


@pytest.mark.parametrize("buffer_size", [None, 25])
def test_a_batch_fills_a_buffer_to_its_last_byte_and_stops_once_the_pack_reaches_its_limit(buffer_size):
    """Three 10-byte envelopes after the 5-byte preamble: a 25-byte buffer holds exactly two, and a
    pack that reached its 25-byte limit exactly is full (a blob is added only under the limit)."""
    blobs = [(bytes([i]) * 32, (b"\x00", bytes([i]) * 9), 9) for i in range(3)]
    builder = PackBuilder(KIND_DATA, memoryview(bytearray(buffer_size)) if buffer_size else None)
    assert builder.add_many(blobs, 0, 25) == 2 and builder.size == 25
    _pack_id, body = builder.finish()
    entries = parse_header(bytes(body), 1 << 20)
    assert [bytes(body[e.offset:e.offset + e.length]) for e in entries] == [b"\x00" + bytes([i]) * 9 for i in (0, 1)]
    builder = PackBuilder(KIND_DATA, memoryview(bytearray(buffer_size)) if buffer_size else None)
    assert builder.add_many(blobs, 1, 1000) == 3          # from the second blob on: two fit
