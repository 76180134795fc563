"""Property tests (hypothesis): the codec, the chunker, retention, restore's path safety, the sync plan.

Each property is stated on the public behaviour, so it holds whatever the implementation looks like
inside. Example counts are bounded so the file runs in well under a minute on a loaded machine.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from casstore.chunker import FastCDCChunker, FixedChunker
from casstore.errors import CasstoreError, DowngradeError, FormatError, IntegrityError
from casstore.format import codec, delta
from casstore.format.crypto import MasterKey
from casstore.format.pack import KIND_DATA, KIND_TREE
from casstore.format.snapshot import SnapshotManifest, manifest_text
from casstore.gc.retention import BUCKETS, RetentionPolicy, decide
from casstore.repo.core import SnapshotInfo

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- codec -------------------------------------------------------------------------------------

blobs = st.one_of(st.binary(max_size=600), st.builds(lambda s, n: s * n, st.binary(min_size=1, max_size=8),
                                                     st.integers(1, 200)))
levels = st.sampled_from([0, 1, 3, 9])


@FAST
@given(data=blobs, level=levels)
def test_codec_round_trips(data: bytes, level: int) -> None:
    blob_id = codec.blob_id(data)
    encoded = codec.encode(data, level)
    assert codec.decode_verified(encoded, len(data), blob_id) == data
    tag, payload = codec.encode_verified(data, level, blob_id)
    assert tag + payload == encoded
    assert len(encoded) <= len(data) + 1          # a blob that does not shrink is stored raw


def _decodes_to_original_or_fails(envelope: bytes, data: bytes) -> None:
    try:
        decoded = codec.decode_verified(envelope, len(data), codec.blob_id(data))
    except CasstoreError:
        return
    # zstd may ignore a bit (a window-size hint): accepted only if the plaintext is exactly right
    assert decoded == data


@FAST
@given(data=blobs, level=levels)
def test_codec_refuses_every_truncation(data: bytes, level: int) -> None:
    encoded = codec.encode(data, level)
    for cut in range(len(encoded)):
        with pytest.raises(CasstoreError):
            codec.decode_verified(encoded[:cut], len(data), codec.blob_id(data))


@FAST
@given(data=blobs, level=levels)
def test_codec_never_returns_wrong_data_after_a_bit_flip(data: bytes, level: int) -> None:
    encoded = codec.encode(data, level)
    for bit in range(min(len(encoded) * 8, 800)):
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        if bit < 8 or encoded[0] == codec.TAG_RAW:
            with pytest.raises(CasstoreError):     # the tag, or raw bytes checked by their hash
                codec.decode_verified(bytes(flipped), len(data), codec.blob_id(data))
        else:
            _decodes_to_original_or_fails(bytes(flipped), data)


@FAST
@given(data=st.binary(min_size=1, max_size=300), wrong=st.integers(-3, 3))
def test_codec_refuses_a_wrong_raw_length(data: bytes, wrong: int) -> None:
    assume(wrong != 0 and len(data) + wrong >= 0)
    for level in (0, 3):
        encoded = codec.encode(data * 4, level)
        with pytest.raises(CasstoreError):
            codec.decode(encoded, len(data) * 4 + wrong)


def test_codec_refuses_an_empty_envelope_and_unknown_tags() -> None:
    for envelope in (b"", b"\x02abc", b"\x03abc", b"\x04abc", b"\xffabc"):
        with pytest.raises(CasstoreError):
            codec.decode(envelope, 3)
    assert not codec.is_sealed(b"")                 # an empty envelope (a torn cache file) is not a seal
    assert [codec.is_sealed(bytes([tag])) for tag in range(5)] == [False, False, True, True, False]


@given(st.binary(max_size=40))
def test_a_source_path_is_stored_in_a_manifest_with_each_byte_that_is_not_utf8_escaped(raw: bytes) -> None:
    """A path as Python names it (a byte that is not UTF-8 is a lone surrogate) is stored as text
    msgpack can hold: its UTF-8 unchanged, every other byte as `\\xNN`, the way the CLI prints it."""
    stored = manifest_text(os.fsdecode(raw))
    assert stored == raw.decode("utf-8", "backslashreplace")


def test_a_text_holding_a_surrogate_no_path_decodes_to_is_stored_escaped() -> None:
    assert manifest_text("café ✓") == "café ✓"
    assert manifest_text("a\ud800b") == "a\\ud800b"           # not a surrogateescape byte: escaped as itself
    assert manifest_text("caf\udce9\ud800") == "caf\\udce9\\ud800"


SEALER = MasterKey.generate().sealer


def _text(size: int, seed: int = 7) -> bytes:
    """Compressible text of about `size` bytes: words of a small alphabet (zstd's levels differ on it)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


@pytest.mark.parametrize("size", [codec.VERIFY_PIECE + 1, 3 * codec.VERIFY_PIECE + 17])
@pytest.mark.parametrize("encrypted", [False, True])
def test_a_blob_larger_than_one_verify_piece_is_verified_and_round_trips(size, encrypted) -> None:
    """Verification on write decodes a large blob in pieces; every byte still counts."""
    sealer = MasterKey.generate().sealer if encrypted else None
    data = _text(size)
    blob_id = codec.blob_id(data, sealer)
    encoded = b"".join(codec.encode_verified(data, 3, blob_id, sealer))
    assert codec.decode_verified(encoded, size, blob_id, sealer) == data     # kind defaults to data both ways
    assert codec.decode(encoded, size, sealer, expected_id=blob_id) == data


@pytest.mark.parametrize("size", [100, 2 * codec.VERIFY_PIECE])
def test_a_blob_that_does_not_decode_to_its_id_is_refused_on_write_naming_it(size) -> None:
    data = _text(size)
    wrong = codec.blob_id(data + b"x")
    with pytest.raises(IntegrityError) as info:
        codec.encode_verified(data, 3, wrong)
    assert str(info.value) == f"blob {wrong.hex()[:16]} does not survive its own encoding"


@pytest.mark.parametrize("level", [1, 3, 9])
def test_a_blob_whose_zstd_frame_is_as_long_as_itself_is_stored_raw(level) -> None:
    """The boundary of "a blob that does not shrink is stored raw": 17 bytes whose frame is 17 bytes
    are stored raw, 18 bytes whose frame is 17 are stored compressed, by every encoder."""
    tie, shrinks = b"x" + bytes(16), b"x" + bytes(17)
    assert [len(zstandard.ZstdCompressor(level=level).compress(d)) for d in (tie, shrinks)] == [17, 17]
    ids = [codec.blob_id(tie), codec.blob_id(shrinks)]
    raw, zstd = bytes([codec.TAG_RAW]), bytes([codec.TAG_ZSTD])
    assert [codec.encode(d, level)[:1] for d in (tie, shrinks)] == [raw, zstd]
    assert [codec.encode_verified(d, level, i)[0] for d, i in zip((tie, shrinks), ids, strict=True)] == [raw, zstd]
    assert [tag for tag, _payload in codec.encode_verified_many([tie, shrinks], level, ids)] == [raw, zstd]
    sealed = [codec.encode_verified(d, level, codec.blob_id(d, SEALER), SEALER)[0][:1] for d in (tie, shrinks)]
    assert sealed == [bytes([codec.TAG_RAW | codec.TAG_SEALED]), bytes([codec.TAG_ZSTD | codec.TAG_SEALED])]


def test_a_higher_compression_level_stores_text_smaller() -> None:
    data = _text(400_000)
    sizes = [len(codec.encode(data, level)) for level in (1, 3, 19)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3, sizes


@pytest.mark.parametrize("level", [0, 3])
def test_encoding_many_small_blobs_round_trips_at_every_level(level) -> None:
    datas = [b"x", _text(300, seed=1), os.urandom(200), _text(5000, seed=2)]
    ids = [codec.blob_id(d) for d in datas]
    encoded = codec.encode_verified_many(datas, level, ids)
    assert [codec.decode_verified(b"".join(e), len(d), i) for e, d, i in zip(encoded, datas, ids, strict=True)] \
        == datas
    if level == 0:                                      # no compression asked: every blob stored raw
        assert [tag for tag, _payload in encoded] == [bytes([codec.TAG_RAW])] * len(datas)
    assert codec.encode_verified_many([], level, []) == []


def test_a_batch_blob_that_does_not_decode_to_its_id_is_refused_naming_it() -> None:
    datas = [_text(3000, seed=5), _text(4000, seed=6)]
    wrong = codec.blob_id(b"another file")
    with pytest.raises(IntegrityError) as info:
        codec.encode_verified_many(datas, 3, [codec.blob_id(datas[0]), wrong])
    assert str(info.value) == f"blob {wrong.hex()[:16]} does not survive its own encoding"


def test_a_delta_against_a_similar_base_round_trips_with_the_base_and_is_much_smaller() -> None:
    base = _text(300_000, seed=3)
    data = base[:150_000] + b"an edit in the middle" + base[150_000:]
    data_id, base_id = codec.blob_id(data), codec.blob_id(base)
    for level in (1, 3, 19):
        tag, frame = codec.encode_verified(data, level, data_id, base=(base_id, base))
        envelope = tag + frame
        assert delta.base_of(envelope) == base_id
        assert len(envelope) < len(codec.encode(data, level)) // 50
        assert codec.decode_verified(envelope, len(data), data_id, base=base) == data


@pytest.mark.parametrize("level", [1, 3, 9])
@pytest.mark.parametrize("size", [5000, 100_000])
def test_a_blob_with_a_base_is_stored_as_the_smaller_of_its_delta_and_its_whole_encoding(level, size) -> None:
    base, data = random.Random(size).randbytes(100_000), _text(size, seed=4)
    base_id, data_id = codec.blob_id(base), codec.blob_id(data)
    whole = len(codec.encode(data, level))
    as_delta = sum(map(len, delta.encode_parts(data, level, base_id, base)))
    encoded = b"".join(codec.encode_verified(data, level, data_id, base=(base_id, base)))
    assert len(encoded) == min(whole, as_delta) and (delta.base_of(encoded) is not None) == (as_delta < whole)


def test_a_level_0_repository_stores_a_blob_with_a_base_raw_not_as_a_delta() -> None:
    base = _text(300_000, seed=3)
    data = base[:150_000] + b"an edit in the middle" + base[150_000:]
    encoded = codec.encode_verified(data, 0, codec.blob_id(data), base=(codec.blob_id(base), base))
    assert encoded == (bytes([codec.TAG_RAW]), data)


@pytest.mark.parametrize("zeros, kept", [(7580, "delta"), (7579, "whole")])
def test_a_delta_of_at_most_1_64_of_the_blob_is_kept_even_where_the_whole_blob_is_smaller(zeros, kept) -> None:
    """The documented shortcut (DESIGN.md, delta blobs): a delta frame at most 1/64 of the plaintext
    is kept without compressing the blob whole; one byte over, the smaller of the two is kept. Here
    7,680 bytes have a delta frame of 120 bytes (exactly 1/64) and compress whole to 121, less than
    the delta's 153 with its tag; 7,679 bytes (1/64 is 119) keep the whole one."""
    base = random.Random(99).randbytes(4096)
    data = random.Random(100).randbytes(100) + bytes(zeros)
    base_id, data_id = codec.blob_id(base), codec.blob_id(data)
    delta_tag, frame = delta.encode_parts(data, 3, base_id, base)
    whole = codec.encode(data, 3)
    assert (len(frame), len(data) // 64) == ((120, 120) if kept == "delta" else (120, 119))
    assert len(whole) < len(delta_tag) + len(frame)
    encoded = b"".join(codec.encode_verified(data, 3, data_id, base=(base_id, base)))
    assert encoded == (delta_tag + frame if kept == "delta" else whole)
    assert codec.decode_verified(encoded, len(data), data_id, base=base) == data


@pytest.mark.parametrize("level", [1, 3])
def test_a_blob_with_a_base_is_never_stored_larger_than_without_one(level) -> None:
    """Against an unrelated base the delta is larger than the blob compressed whole: the whole one is kept."""
    base, data = os.urandom(100_000), _text(5000, seed=4)
    data_id = codec.blob_id(data)
    encoded = codec.encode_verified(data, level, data_id, base=(codec.blob_id(base), base))
    assert b"".join(encoded) == codec.encode(data, level)
    assert codec.decode_verified(b"".join(encoded), len(data), data_id) == data


def test_a_plain_blob_in_an_encrypted_repository_is_refused_naming_it() -> None:
    data = b"planted" * 10
    blob_id = codec.blob_id(data)
    with pytest.raises(IntegrityError) as info:
        codec.decode_verified(codec.encode(data, 3), len(data), blob_id, MasterKey.generate().sealer)
    assert str(info.value) == f"blob {blob_id.hex()[:16]} is not sealed in an encrypted repository"


def test_a_sealed_blob_opens_only_as_the_kind_it_was_sealed_as_and_a_tampered_one_is_named() -> None:
    sealer = MasterKey.generate().sealer
    data = _text(5000, seed=8)
    blob_id = codec.blob_id(data, sealer)
    for kind, other in ((KIND_TREE, KIND_DATA), (KIND_DATA, KIND_TREE)):
        encoded = b"".join(codec.encode_verified(data, 3, blob_id, sealer, kind))
        assert codec.decode_verified(encoded, len(data), blob_id, sealer, kind) == data
        with pytest.raises(IntegrityError):
            codec.decode_verified(encoded, len(data), blob_id, sealer, other)
    tampered = bytearray(encoded)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError) as info:
        codec.decode_verified(bytes(tampered), len(data), blob_id, sealer, KIND_TREE)
    assert str(info.value).startswith(f"blob {blob_id.hex()[:16]}: authentication failed")


def test_an_empty_or_corrupt_envelope_error_says_what_is_wrong() -> None:
    with pytest.raises(FormatError) as empty:
        codec.decode(b"", 3)
    assert str(empty.value) == "empty blob envelope"
    data = _text(5000, seed=9)
    encoded = bytearray(codec.encode(data, 3))
    encoded[len(encoded) // 2:] = bytes(len(encoded) - len(encoded) // 2)    # the frame's second half zeroed
    with pytest.raises(IntegrityError) as corrupt:
        codec.decode(bytes(encoded), len(data))
    assert str(corrupt.value).startswith("corrupt zstd blob: ") and len(str(corrupt.value)) > 20


def test_a_zstd_frame_that_does_not_declare_its_size_decodes_within_the_raw_length() -> None:
    """Any zstd writer's frame reads back (casstore's own declare their size): bounded by the raw length."""
    data = _text(5000, seed=10)
    frame = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data)
    assert codec.decode_verified(bytes([codec.TAG_ZSTD]) + frame, len(data), codec.blob_id(data)) == data


def test_hostile_envelope_errors_say_what_is_wrong() -> None:
    data = _text(5000, seed=11)
    encoded = codec.encode(data, 3)
    with pytest.raises(IntegrityError) as wrong_size:
        codec.decode(encoded, len(data) + 1)
    assert str(wrong_size.value) == f"zstd frame declares {len(data)} bytes, index says {len(data) + 1}"
    with pytest.raises(IntegrityError) as not_zstd:
        codec.decode(bytes([codec.TAG_ZSTD]) + b"not a zstd frame", 100)
    assert str(not_zstd.value).startswith("corrupt zstd blob: ") and len(str(not_zstd.value)) > 20
    with pytest.raises(FormatError) as no_base:
        codec.decode(b"".join(delta.encode_parts(data, 3, codec.blob_id(b"base"), b"base")), len(data))
    assert str(no_base.value) == "a delta blob cannot be decoded without its base"
    with pytest.raises(FormatError) as unknown:
        codec.decode(b"\x05abc", 3)
    assert str(unknown.value) == "unknown blob tag 0x05"
    with pytest.raises(IntegrityError) as short_raw:
        codec.decode(b"\x00abc", 4)
    assert str(short_raw.value) == "blob decodes to 3 bytes, index says 4"
    sealed = b"".join(codec.encode_verified(data, 3, codec.blob_id(data, SEALER), SEALER))
    with pytest.raises(DowngradeError) as downgraded:
        codec.decode(sealed, len(data))
    assert str(downgraded.value) == ("an encrypted blob in a repository whose config says it is not encrypted: "
                                     "the config may have been replaced (downgrade); refusing to read")


def test_a_blob_that_decodes_to_other_bytes_is_refused_naming_it_by_its_first_16_hex_digits() -> None:
    wrong = codec.blob_id(b"what the index says")
    with pytest.raises(IntegrityError) as info:
        codec.decode_verified(codec.encode(b"what is stored", 3), 14, wrong)
    assert str(info.value) == f"blob {wrong.hex()[:16]} does not match its id"


# -- chunker -----------------------------------------------------------------------------------

MIN, AVG, MAX = 64, 256, 1024
SEED = 0x5EED


def _cutter() -> FastCDCChunker:
    return FastCDCChunker(MIN, AVG, MAX, SEED)


def _cuts(data: bytes) -> list[bytes]:
    return [bytes(c) for c in _cutter().chunks(io.BytesIO(data))]


def _offsets(pieces: list[bytes]) -> list[int]:
    out, at = [], 0
    for p in pieces:
        at += len(p)
        out.append(at)
    return out


inputs = st.one_of(
    st.builds(lambda seed, n: random.Random(seed).randbytes(n), st.integers(0, 2**32), st.integers(0, 40_000)),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.integers(0, 20_000)),   # no content to cut on
    st.binary(max_size=3000),
)


@FAST
@given(data=inputs)
def test_chunks_reassemble_respect_bounds_and_are_deterministic(data: bytes) -> None:
    pieces = _cuts(data)
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= MAX for p in pieces)
    assert all(len(p) >= MIN for p in pieces[:-1])
    assert len(pieces) <= len(data) // MIN + 1        # bounded work: never more pieces than this
    assert _cuts(data) == pieces


@SLOW
@given(data=inputs)
def test_cutting_a_file_cuts_where_the_stream_cutter_does(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            pieces = [bytes(p) for p in list(_cutter().chunks_of_fd(fd))]
        finally:
            os.close(fd)
    assert pieces == _cuts(data)


@FAST
@given(seed=st.integers(0, 2**32), where=st.floats(0, 1), inserted=st.binary(min_size=1, max_size=100))
def test_boundaries_resynchronise_after_an_insert(seed: int, where: float, inserted: bytes) -> None:
    data = random.Random(seed).randbytes(40_000)
    at = int(where * 20_000)
    changed = data[:at] + inserted + data[at:]
    old, new = _offsets(_cuts(data)), set(_offsets(_cuts(changed)))
    # every cut well past the insert is found again, shifted by the inserted length
    later = [o + len(inserted) for o in old if o >= at + 16 * MAX]
    assert later and all(o in new for o in later)
    # and every cut before the insert's chunk is unchanged
    assert all(o in new for o in old if o <= at - MAX)


@FAST
@given(size=st.integers(1, 500), data=st.binary(max_size=3000))
def test_fixed_chunker_cuts_every_size_bytes(size: int, data: bytes) -> None:
    pieces = [bytes(p) for p in FixedChunker(size).chunks(io.BytesIO(data))]
    assert b"".join(pieces) == data
    assert all(len(p) == size for p in pieces[:-1])
    assert not pieces or 0 < len(pieces[-1]) <= size


# -- retention ---------------------------------------------------------------------------------

HOUR_NS = 3600 * 10**9


def _info(i: int, time_ns: int, incomplete: bool, tags: list[str]) -> SnapshotInfo:
    m = SnapshotManifest(time_ns=time_ns, host="h", source="/s", tree=b"\0" * 32, tags=tags, incomplete=incomplete)
    return SnapshotInfo(f"{i:064x}", m)


snapshot_lists = st.lists(
    st.tuples(st.integers(0, 24 * 400), st.booleans(), st.lists(st.sampled_from(["a", "b"]), max_size=2)),
    max_size=30,
).map(lambda rows: [_info(i, 1_600_000_000 * 10**9 + h * HOUR_NS, inc and i % 3 == 0, tags)
                    for i, (h, inc, tags) in enumerate(rows)])

policies = st.builds(
    RetentionPolicy, last=st.integers(0, 6), hourly=st.integers(0, 4), daily=st.integers(0, 4),
    weekly=st.integers(0, 3), monthly=st.integers(0, 3), yearly=st.integers(0, 2),
    within=st.sampled_from([0.0, 3600.0, 86400.0 * 3]), tags=st.sampled_from([(), ("a",), ("a", "b")]))


def _kept(snapshots: list[SnapshotInfo], policy: RetentionPolicy) -> set[str]:
    return {d.snapshot.id for g in decide(snapshots, policy) for d in g.keep}


@FAST
@given(snapshots=snapshot_lists, n=st.integers(1, 8))
def test_keep_last_n_keeps_exactly_the_n_newest_complete(snapshots: list[SnapshotInfo], n: int) -> None:
    complete = sorted((s for s in snapshots if not s.manifest.incomplete),
                      key=lambda s: (s.manifest.time_ns, s.id), reverse=True)
    newest_complete = complete[0].manifest.time_ns if complete else None
    newer_incomplete = {s.id for s in snapshots if s.manifest.incomplete
                        and (newest_complete is None or s.manifest.time_ns > newest_complete)}
    assert _kept(snapshots, RetentionPolicy(last=n)) == {s.id for s in complete[:n]} | newer_incomplete


@FAST
@given(snapshots=snapshot_lists, policy=policies)
def test_a_policy_keeps_the_union_of_its_rules(snapshots: list[SnapshotInfo], policy: RetentionPolicy) -> None:
    assume(not policy.empty)
    singles = [RetentionPolicy(**{name: getattr(policy, name)}) for name in ("last", *BUCKETS, "within", "tags")
               if getattr(policy, name)]
    assert _kept(snapshots, policy) == set().union(*(_kept(snapshots, p) for p in singles))


@FAST
@given(snapshots=snapshot_lists, n=st.integers(1, 5))
def test_daily_keeps_the_newest_of_each_of_the_n_newest_days(snapshots: list[SnapshotInfo], n: int) -> None:
    complete = [s for s in snapshots if not s.manifest.incomplete]
    by_day: dict[str, SnapshotInfo] = {}
    for s in sorted(complete, key=lambda s: (s.manifest.time_ns, s.id)):
        by_day[datetime.fromtimestamp(s.manifest.time_ns / 1e9, UTC).strftime("%Y-%m-%d")] = s
    expected = {by_day[day].id for day in sorted(by_day, reverse=True)[:n]}
    kept_complete = _kept(snapshots, RetentionPolicy(daily=n)) & {s.id for s in complete}
    assert kept_complete == expected


@FAST
@given(snapshots=snapshot_lists, hours=st.integers(1, 100))
def test_within_keeps_exactly_the_snapshots_up_to_that_age(snapshots: list[SnapshotInfo], hours: int) -> None:
    assume(snapshots)
    newest = max(s.manifest.time_ns for s in snapshots)
    within = {s.id for s in snapshots if s.manifest.time_ns >= newest - hours * HOUR_NS}
    kept = _kept(snapshots, RetentionPolicy(within=hours * 3600.0))
    assert within <= kept
    assert kept - within <= {s.id for s in snapshots if s.manifest.incomplete}


# -- restore: no generated name escapes the target ---------------------------------------------

name_parts = st.sampled_from([b"..", b".", b"/", b"a", b"b", b"\0", b"\\", b"..\\", b"x/..", b"/.."])
names = st.lists(name_parts, min_size=1, max_size=4).map(b"".join)


@SLOW
@given(top=st.lists(names, min_size=1, max_size=4, unique=True), inner=st.lists(names, max_size=3, unique=True))
def test_no_generated_name_escapes_the_restore_target(tmp_path: Path, top: list[bytes], inner: list[bytes]) -> None:
    from tests.helpers import dir_entry, file_entry, init_repo, tree_state, write_snapshot

    work = Path(tempfile.mkdtemp(dir=tmp_path))
    (work / "outside").mkdir()
    (work / "outside" / "bait").write_bytes(b"bait\n")
    (work / "box").mkdir()
    repo = init_repo(work / "repo")
    target = work / "box" / "target"

    def build(store):
        entries = [file_entry(store, name, b"payload " + name) for name in top]
        if inner:
            entries.append(dir_entry(store, b"inner-dir", [file_entry(store, n, b"deep") for n in inner]))
        return entries

    snapshot_id = write_snapshot(repo, build)
    before = sorted(os.listdir(work)), tree_state(work / "outside")
    repo.restore(snapshot_id, str(target))
    assert (sorted(os.listdir(work)), tree_state(work / "outside")) == before
    real_target = os.path.realpath(target)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            assert os.path.realpath(os.path.join(root, name)).startswith(real_target + os.sep)
    safe = {n for n in top if n not in (b".", b"..") and b"/" not in n and b"\0" not in n}
    assert {os.fsencode(n) for n in os.listdir(target)} - {b"inner-dir"} == safe
    shutil.rmtree(work)
