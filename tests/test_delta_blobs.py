"""Delta blobs (format/delta.py, issue 17): a changed chunk stored against the chunk it replaces.

Real repositories on disk and real snapshots of real files; the remote in the sync test is the
in-process memory remote and moto in server mode (tests/servers.py).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import zstandard

from casstore.client import Repository
from casstore.errors import FormatError, IntegrityError
from casstore.format import codec, delta, layout, zstdprefix
from casstore.format.config import RepoConfig
from casstore.format.index import MasterIndex
from casstore.format.pack import KIND_DATA, PackBuilder
from casstore.gc.retention import apply_retention
from casstore.gc.run import collect_garbage
from casstore.remotes.local import LocalRemote
from casstore.remotes.memory import MemoryRemote
from casstore.repo.blobstore import BlobStore
from casstore.repo.objectcache import ReadPolicy
from casstore.settings import load_settings
from tests.helpers import flip_bit, pack_of
from tests.sync_helpers import KiB, local_repo, tree_digest

ROWS = 12_000


def _write_version(root: Path, version: int) -> None:
    """A minified JSON table of about 700 KB; each version changes a few values, as a data release."""
    rnd = random.Random(7)
    rows = [{"id": i, "name": f"item-{i}", "score": round(rnd.random(), 6), "tags": ["a", "b"][: i % 3]}
            for i in range(ROWS)]
    for v in range(1, version + 1):
        for i in random.Random(v).sample(range(ROWS), 5):
            rows[i]["score"] = v + i / ROWS
    root.mkdir(parents=True, exist_ok=True)
    (root / "table.json").write_text(json.dumps(rows, separators=(",", ":")))


def _repo(tmp_path: Path, chain: int = 8) -> Repository:
    return local_repo(tmp_path / "repo", config=RepoConfig.new(avg_size=64 * KiB, delta_chain=chain))


def _versions(repo: Repository, source: Path, count: int) -> list[str]:
    ids = []
    for v in range(count):
        _write_version(source, v)
        ids.append(repo.snapshot(str(source)).id)
    return ids


def _deltas(repo: Repository) -> dict[bytes, bytes]:
    """Delta blob id -> its base, from the repository's index."""
    index = repo.load_index()
    return {blob_id: loc.base for (kind, blob_id) in index.delta_keys()
            for loc in index.locations(kind, blob_id) if loc.base is not None}


def _restored(repo: Repository, ref: str, out: Path) -> bytes:
    shutil.rmtree(out, ignore_errors=True)
    assert repo.restore(ref, str(out)).ok
    return (out / "table.json").read_bytes()


def test_changed_chunks_are_stored_as_deltas_and_read_back(tmp_path):
    repo, source = _repo(tmp_path), tmp_path / "src"
    first, second = _versions(repo, source, 2)
    deltas = _deltas(repo)
    assert deltas, "a few changed values in a chunk should be stored as a delta"
    summary = repo.get(second).summary
    assert summary["bytes_added_stored"] < summary["bytes_added"] / 8
    assert _restored(repo, "latest", tmp_path / "out") == (source / "table.json").read_bytes()
    table = repo.get(second).to_dict()["data_sources"]["table"]
    assert len(table) == ROWS and table[5] == json.loads((source / "table.json").read_bytes())[5]
    assert repo.check(read_data=True).ok
    # the envelope names the same base as the index
    store = repo.read_blob_ready()
    blob_id, base = next(iter(deltas.items()))
    encoded, _ = store.read_encoded(KIND_DATA, blob_id)
    assert encoded[0] == delta.TAG_DELTA and delta.base_of(encoded) == base


def test_a_repository_without_the_delta_setting_writes_no_delta(tmp_path):
    repo, source = _repo(tmp_path, chain=0), tmp_path / "src"
    _versions(repo, source, 2)
    assert not _deltas(repo)
    assert "delta" in RepoConfig.new().compression and RepoConfig.new().delta_chain == 4
    old = RepoConfig(id="0" * 32, chunker=dict(RepoConfig.new().chunker))   # as decoded from an old config
    assert old.delta_chain == 0


def test_chains_are_bounded_by_the_repository_setting(tmp_path):
    repo, source = _repo(tmp_path, chain=2), tmp_path / "src"
    ids = _versions(repo, source, 7)
    index = repo.load_index()
    depths = [index.delta_depth(KIND_DATA, blob_id, 64) for _, blob_id in index.delta_keys()]
    assert depths and max(depths) == 2      # chains do reach the bound, and no further
    for v, snapshot_id in enumerate(ids):
        _write_version(tmp_path / "expect", v)
        assert _restored(repo, snapshot_id, tmp_path / "out") == (tmp_path / "expect" / "table.json").read_bytes()


def test_gc_keeps_a_base_whose_only_reference_is_a_delta(tmp_path):
    repo, source = _repo(tmp_path), tmp_path / "src"
    _versions(repo, source, 2)
    bases = set(_deltas(repo).values())
    assert len(apply_retention(repo, {"keep_last": 1}).removed) == 1
    collect_garbage(repo)
    repo = Repository.open_local(str(tmp_path / "repo"), load_settings({"host": "testhost"}))
    index = repo.load_index()
    assert all(index.locations(KIND_DATA, base) for base in bases)
    assert _restored(repo, "latest", tmp_path / "out") == (source / "table.json").read_bytes()
    assert repo.check(read_data=True).ok


@pytest.mark.parametrize("remote_fixture", ["memory_remote", "moto_remote"])
def test_sync_carries_the_bases_of_the_snapshots_it_sends(remote_fixture, request, tmp_path):
    remote = request.getfixturevalue(remote_fixture)
    repo, source = _repo(tmp_path), tmp_path / "src"
    _versions(repo, source, 2)
    assert _deltas(repo)
    apply_retention(repo, {"keep_last": 1})      # the bases' own snapshot is not sent
    report = repo.sync(remote)
    assert len(report.snapshots) == 1
    expected = tree_digest(source)
    fresh = Repository.open_remote(remote, load_settings({"cache_dir": str(tmp_path / "fresh-cache")}))
    assert fresh.restore("latest", str(tmp_path / "restored")).ok
    assert tree_digest(tmp_path / "restored") == expected
    assert fresh.check(read_data=True).ok


def test_a_corrupt_base_is_detected_by_check_and_restore(tmp_path):
    repo, source = _repo(tmp_path), tmp_path / "src"
    first, second = _versions(repo, source, 2)
    deltas = _deltas(repo)
    base = next(iter(deltas.values()))
    loc = repo.load_index().locations(KIND_DATA, base)[0]
    flip_bit(pack_of(repo, KIND_DATA, base), loc.offset + loc.length // 2)
    repo = Repository.open_local(str(tmp_path / "repo"), load_settings({"host": "testhost"}))
    report = repo.check(read_data=True)
    assert not report.ok
    assert any("delta base" in e for e in report.errors)      # the delta, named for its base
    assert report.damaged_packs                                # the base's pack, named damaged
    assert "table.json" in " ".join(report.affected.get(second, []))
    with pytest.raises(IntegrityError, match="delta base .* cannot be read: .*corrupt in storage"):
        repo.restore(second, str(tmp_path / "out"))


def test_a_delta_decodes_only_with_its_own_base():
    base = json.dumps([{"k": i, "v": i * 3} for i in range(3000)]).encode()
    data = base.replace(b'"v": 300,', b'"v": 301,')
    base_id, data_id = codec.blob_id(base), codec.blob_id(data)
    tag, frame = codec.encode_verified(data, 3, data_id, base=(base_id, base))
    envelope = tag + frame
    assert delta.base_of(envelope) == base_id and len(envelope) < len(codec.encode(data, 3)) / 4
    assert codec.decode_verified(envelope, len(data), data_id, base=base) == data
    with pytest.raises(IntegrityError):
        codec.decode_verified(envelope, len(data), data_id, base=base[:-1] + b"]]")
    with pytest.raises(Exception, match="without its base"):
        codec.decode(envelope, len(data))


def test_the_chunk_is_compressed_whole_only_when_its_delta_may_not_be_smaller(monkeypatch):
    """A delta under 1/64 of its chunk is kept without the whole compression to compare with
    (issue 17: a third of a delta's CPU); any other is kept only when smaller than the whole."""
    whole_calls: list[int] = []
    encode_whole = codec.encode_parts
    monkeypatch.setattr(codec, "encode_parts", lambda data, level: whole_calls.append(len(data))
                        or encode_whole(data, level))
    base = json.dumps([{"k": i, "v": i * 3} for i in range(30000)]).encode()
    edited = base.replace(b'"v": 300,', b'"v": 301,')
    tag, _ = codec.encode_verified(edited, 3, codec.blob_id(edited), base=(codec.blob_id(base), base))
    assert delta.base_of(tag) == codec.blob_id(base) and whole_calls == []
    noise = random.Random(1).randbytes(len(base))       # shares nothing with the chunk
    tag, payload = codec.encode_verified(base, 3, codec.blob_id(base), base=(codec.blob_id(noise), noise))
    assert whole_calls == [len(base)]
    assert delta.base_of(tag) is None and tag + payload == codec.encode(base, 3)


def test_a_delta_chain_that_loops_is_refused_not_followed_forever():
    a, b = codec.blob_id(b"a"), codec.blob_id(b"b")
    builder = PackBuilder(KIND_DATA)
    builder.add(a, bytes((delta.TAG_DELTA,)) + b + b"junk frame", 10)
    builder.add(b, bytes((delta.TAG_DELTA,)) + a + b"junk frame", 10)
    pack_id, data = builder.finish()
    assert [e.base for e in builder.entries] == [b, a]
    remote = MemoryRemote()
    remote.put(layout.pack_key(pack_id), bytes(data))
    index = MasterIndex()
    index.add_pack(pack_id, builder.entries)
    assert index.delta_depth(KIND_DATA, a, 64) == 64
    store = BlobStore(remote, RepoConfig.new(), index, origin={})
    with pytest.raises(IntegrityError, match="delta chain longer than"):
        store.read(KIND_DATA, a)


def test_the_http_api_serves_a_file_stored_as_deltas(tmp_path):
    import httpx

    from tests.test_api import running_server

    source = tmp_path / "src"
    settings = load_settings({"repository": str(tmp_path / "repo"), "source": str(source), "host": "testhost",
                              "cache_dir": str(tmp_path / "cache")}, environ={}, dotenv_path=str(tmp_path / "no.env"))
    repo = Repository.init_local(str(tmp_path / "repo"), settings, RepoConfig.new(avg_size=64 * KiB))
    ids = _versions(repo, source, 2)
    assert _deltas(repo)
    repo.close()
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.get(f"/api/cloud/backup/{ids[1]}/file", params={"path": "table.json"})
        assert response.status_code == 200 and response.content == (source / "table.json").read_bytes()


# -- reading a chain: its lower levels are decoded for the blob above, whose hash covers them ----

class _ReadsCounted(MemoryRemote):
    """Counts range reads per (key, offset); `damage` maps one to a function of the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[tuple[str, int], int] = {}
        self.damage: dict[tuple[str, int], object] = {}

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self.reads[key, offset] = self.reads.get((key, offset), 0) + 1
        data = super()._get(key, offset, length, large=large)
        hurt = self.damage.get((key, offset))
        return hurt(data) if callable(hurt) else data


def _chain(remote: MemoryRemote) -> tuple[BlobStore, dict[str, tuple[bytes, bytes]], str, list]:
    """Blobs `base` (stored raw: a damaged byte still decodes, to the wrong plaintext), `mid` (a delta
    on base) and `top` (a delta on mid) in one pack: (store, name -> (id, plaintext), pack id, its
    entries)."""
    rnd = random.Random(3)
    base = json.dumps([{"k": i, "v": rnd.random()} for i in range(4000)]).encode()
    mid = base.replace(b'"k": 17,', b'"k": 71,')
    top = mid.replace(b'"k": 900,', b'"k": 909,')
    blobs = {name: (codec.blob_id(data), data) for name, data in (("base", base), ("mid", mid), ("top", top))}
    builder = PackBuilder(KIND_DATA)
    builder.add(blobs["base"][0], b"\x00" + base, len(base))
    for name, below in (("mid", "base"), ("top", "mid")):
        blob_id, data = blobs[name]
        builder.add(blob_id, codec.encode_verified(data, 3, blob_id, base=blobs[below]), len(data))
    pack_id, data = builder.finish()
    remote.put(layout.pack_key(pack_id), bytes(data))
    index = MasterIndex()
    index.add_pack(pack_id, builder.entries)
    assert index.delta_depth(KIND_DATA, blobs["top"][0], 64) == 2
    store = BlobStore(remote, RepoConfig.new(), index, origin={}, read_policy=ReadPolicy(sleep=lambda s: None))
    return store, blobs, pack_id, builder.entries


def _offset(store: BlobStore, blob_id: bytes) -> int:
    return store.index.locations(KIND_DATA, blob_id)[0].offset


def _flip_one_byte(data: bytes) -> bytes:
    return data[:100] + bytes((data[100] ^ 0x20,)) + data[101:]


def test_a_chain_level_damaged_in_transit_is_read_again_and_the_blob_above_reads_right():
    remote = _ReadsCounted()
    store, blobs, pack_id, _ = _chain(remote)
    key = layout.pack_key(pack_id)
    once = iter([True])
    remote.damage[key, _offset(store, blobs["base"][0])] = lambda data: _flip_one_byte(data) if next(once, False) \
        else data
    assert store.read(KIND_DATA, blobs["top"][0]) == blobs["top"][1]
    assert remote.reads[key, _offset(store, blobs["base"][0])] == 2      # the damaged answer, then a good one
    assert store.base_plaintext(blobs["mid"][0]) == blobs["mid"][1]      # what the chain left cached is right


def test_a_chain_level_damaged_in_storage_is_one_error_naming_that_base():
    remote = _ReadsCounted()
    store, blobs, pack_id, _ = _chain(remote)
    key = layout.pack_key(pack_id)
    remote.damage[key, _offset(store, blobs["base"][0])] = _flip_one_byte
    with pytest.raises(delta.BaseUnreadable, match=f"delta base {blobs['base'][0].hex()[:16]} cannot be read: "
                                                   ".*corrupt in storage"):
        store.read(KIND_DATA, blobs["top"][0])
    # the blobs above the broken base are not fetched again for its fault
    assert remote.reads[key, _offset(store, blobs["top"][0])] == 1
    assert remote.reads[key, _offset(store, blobs["mid"][0])] <= 2
    with pytest.raises(delta.BaseUnreadable):
        store.base_plaintext(blobs["mid"][0])        # never handed out to a writer unverified


def test_a_chain_whose_base_is_missing_is_one_error_naming_it():
    store, blobs, pack_id, entries = _chain(_ReadsCounted())
    base_id = blobs["base"][0]
    store.index = MasterIndex()
    store.index.add_pack(pack_id, [e for e in entries if e.id != base_id])
    with pytest.raises(delta.BaseUnreadable,
                       match=f"delta base {base_id.hex()[:16]} cannot be read: .*not in any index"):
        store.read(KIND_DATA, blobs["top"][0])


def test_many_deltas_on_one_base_restore_right_and_read_the_base_once_or_so(tmp_path, monkeypatch):
    """Identical files changed each its own way: every changed chunk is a delta on the one chunk
    they shared, whose plaintext the restore decodes once per thread at most, not once a delta."""
    repo, source, copies = _repo(tmp_path), tmp_path / "src", 6
    _write_version(source, 0)
    table = (source / "table.json").read_bytes()
    for i in range(copies):
        (source / f"copy{i}.json").write_bytes(table)
    repo.snapshot(str(source))
    for i in range(copies):
        (source / f"copy{i}.json").write_bytes(table.replace(b'"id":6000,', b'"id":%d,' % (60000 + i)))
    repo.snapshot(str(source))
    shared = {}
    for blob_id, base in _deltas(repo).items():
        shared.setdefault(base, []).append(blob_id)
    base, on_it = max(shared.items(), key=lambda item: len(item[1]))
    assert len(on_it) == copies
    loc = repo.load_index().locations(KIND_DATA, base)[0]
    reads: list[int] = []
    get_range = LocalRemote._get_range

    def counted(self, key: str, offset: int, length: int) -> bytes:
        if key.endswith(loc.pack_id):
            reads.append(offset)
        return get_range(self, key, offset, length)

    monkeypatch.setattr(LocalRemote, "_get_range", counted)
    repo = Repository.open_local(str(tmp_path / "repo"), load_settings({"host": "testhost"}))
    assert repo.restore("latest", str(tmp_path / "out")).ok
    assert tree_digest(tmp_path / "out") == tree_digest(source)
    assert 1 <= reads.count(loc.offset) <= 2          # one per restore thread at most, not one per delta


# -- the two ways a delta is made and read: libzstd's prefix (format/zstdprefix.py), python-zstandard

def _edited_table() -> tuple[bytes, bytes]:
    base = json.dumps([{"k": i, "v": i * 3} for i in range(20_000)], separators=(",", ":")).encode()
    data = base.replace(b'"v":300}', b'"v":301}').replace(b'"v":30000}', b'"v":7}')
    assert data != base
    return base, data


@pytest.fixture
def without_libzstd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstdprefix, "native", lambda: None)


def test_a_delta_made_by_libzstd_reads_back_without_it_and_the_other_way(monkeypatch):
    if zstdprefix.native() is None:
        pytest.skip("no libzstd on this machine: only python-zstandard makes and reads deltas here")
    base, data = _edited_table()
    whole = len(codec.encode(data, 3))
    native = delta.encode_parts(data, 3, codec.blob_id(base), base)[1]
    monkeypatch.setattr(zstdprefix, "native", lambda: None)
    assert delta.decode_frame(native, len(data), base) == data
    fallback = delta.encode_parts(data, 3, codec.blob_id(base), base)[1]
    monkeypatch.undo()
    assert delta.decode_frame(fallback, len(data), base) == data
    assert len(native) < whole / 100 and len(fallback) < whole / 100


@pytest.mark.parametrize("how", ["bytes", "views", "writable views"])
def test_a_delta_is_small_whatever_buffers_hold_the_chunk_and_its_base(how):
    base, data = _edited_table()
    wrap = {"bytes": bytes, "views": memoryview, "writable views": lambda b: memoryview(bytearray(b))}[how]
    frame = delta.encode_parts(wrap(data), 3, codec.blob_id(base), wrap(base))[1]
    assert len(frame) < len(data) / 1000
    assert delta.decode_frame(wrap(frame), len(data), wrap(base)) == data


def test_a_chunk_against_the_very_buffer_it_is_in_still_finds_its_runs():
    """libzstd drops a prefix that overlaps the input; the chunk's own bytes as its base still
    make a delta of a few bytes."""
    base, _ = _edited_table()
    assert len(delta.encode_parts(base, 3, codec.blob_id(base), base)[1]) < 100
    view = memoryview(bytearray(base))
    assert len(delta.encode_parts(view[10:], 3, b"\0" * 32, view[:-10])[1]) < 200


@pytest.mark.parametrize("native", [True, False])
def test_a_damaged_or_mis_sized_delta_frame_is_an_integrity_error(native, monkeypatch):
    if not native:
        monkeypatch.setattr(zstdprefix, "native", lambda: None)
    elif zstdprefix.native() is None:
        pytest.skip("no libzstd on this machine")
    base, data = _edited_table()
    frame = delta.encode_parts(data, 3, codec.blob_id(base), base)[1]
    with pytest.raises(IntegrityError):
        delta.decode_frame(frame, len(data) + 1, base)
    with pytest.raises(IntegrityError):
        delta.decode_frame(frame[:-3], len(data), base)
    with pytest.raises(IntegrityError):
        delta.decode_frame(b"\x28\xb5\x2f\xfd" + bytes(40), len(data), base)


def test_snapshots_without_libzstd_store_deltas_that_read_back(tmp_path, without_libzstd):
    repo, source = _repo(tmp_path), tmp_path / "src"
    _versions(repo, source, 3)
    assert _deltas(repo)
    assert _restored(repo, "latest", tmp_path / "out") == (source / "table.json").read_bytes()


def _libzstd(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deltas made and read through libzstd (native) or python-zstandard alone."""
    if not native:
        monkeypatch.setattr(zstdprefix, "native", lambda: None)
    elif zstdprefix.native() is None:
        pytest.skip("no libzstd on this machine")


@pytest.mark.parametrize("level, native", [(3, True), (3, False), (9, False)])
def test_check_finds_a_delta_frame_of_the_wrong_size_or_corrupt_without_its_base(level, native, monkeypatch):
    _libzstd(native, monkeypatch)
    base, data = _edited_table()
    envelope = b"".join(delta.encode_parts(data, level, codec.blob_id(base), base))
    delta.check_frame(envelope, len(data))                  # a sound frame declares its size
    with pytest.raises(IntegrityError) as wrong:
        delta.check_frame(envelope, len(data) + 1)
    assert str(wrong.value) == f"delta frame declares {len(data)} bytes, index says {len(data) + 1}"
    with pytest.raises(IntegrityError) as corrupt:
        delta.check_frame(envelope[:1 + delta.ID_LENGTH] + b"not a zstd frame", len(data))
    assert str(corrupt.value).startswith("corrupt delta blob: ") and len(str(corrupt.value)) > 20


def _unsized_frame(data: bytes, base: bytes, **params) -> bytes:
    """A frame against `base` as any zstd writer may make it: no declared size (streamed)."""
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    if "compression_params" not in params:
        params["write_content_size"] = False
    compressor = zstandard.ZstdCompressor(dict_data=dictionary, **params).compressobj()
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("native", [True, False])
def test_a_delta_frame_error_says_what_is_wrong_and_an_unsized_frame_decodes_within_the_raw_length(native,
                                                                                                  monkeypatch):
    _libzstd(native, monkeypatch)
    base, data = _edited_table()
    frame = delta.encode_parts(data, 3, codec.blob_id(base), base)[1]
    with pytest.raises(IntegrityError) as declared:
        delta.decode_frame(frame, len(data) + 1, base)
    assert str(declared.value) == f"zstd frame declares {len(data)} bytes, index says {len(data) + 1}"
    with pytest.raises(IntegrityError) as corrupt:
        delta.decode_frame(b"\x28\xb5\x2f\xfd" + bytes(40), len(data), base)
    assert str(corrupt.value).startswith("corrupt delta blob: ") and len(str(corrupt.value)) > 20
    unsized = _unsized_frame(data, base)
    assert zstandard.get_frame_parameters(unsized).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert delta.decode_frame(unsized, len(data), base) == data
    with pytest.raises(IntegrityError) as longer:
        delta.decode_frame(unsized, len(data) + 1, base)
    if not native:      # libzstd refuses a short output itself ("corrupt delta blob: ...")
        assert str(longer.value) == f"delta blob decodes to {len(data)} bytes, index says {len(data) + 1}"


def test_without_libzstd_a_frame_that_asks_for_a_window_past_2_27_is_refused(without_libzstd):
    """python-zstandard streams a frame without a declared size through a window of the size the
    frame asks for: a hostile 2**28 (256 MiB) is refused, 2**27 (what casstore writes at most) read."""
    base = b"base " * 100
    for window_log, readable in ((27, True), (28, False)):
        frame = _unsized_frame(b"hello " * 10, base, compression_params=zstandard.ZstdCompressionParameters(
            window_log=window_log, write_content_size=False))
        assert zstandard.get_frame_parameters(frame).window_size == 2**window_log
        if readable:
            assert delta.decode_frame(frame, 60, base) == b"hello " * 10
        else:
            with pytest.raises(IntegrityError, match="corrupt delta blob: .*too much memory"):
                delta.decode_frame(frame, 60, base)


def test_a_delta_envelope_too_short_for_its_base_id_or_frame_is_refused_saying_so():
    with pytest.raises(FormatError) as no_id:
        delta.base_of(b"\x04" + bytes(31))
    assert str(no_id.value) == "delta blob envelope too short for its base id"
    with pytest.raises(IntegrityError) as no_frame:
        codec.decode(b"\x04" + bytes(32), 10, base=b"base")
    assert str(no_frame.value) == "delta blob too short"


# python-zstandard alone finds only 70% of the runs of a 3 MiB base at level 9 (917,747 bytes), and 80% of
# a 5 MiB one at level 3 (1,048,994 bytes): its tables index too little of a large dictionary, where libzstd's
# long-distance matching finds them all
@pytest.mark.parametrize("level, native, mib", [(3, True, 5), (9, True, 5), (3, False, 3)])
def test_a_delta_finds_runs_a_whole_large_base_back(level, native, mib, monkeypatch):
    """The frame's window reaches over the whole base from the end of the chunk: random bytes with
    two edits, against the same bytes before them, are a delta of a few hundred bytes (a window of
    zstd's own size for the level, 2 MiB at level 3, 4 MiB at 9, would find no run 3 or 5 MiB back)."""
    _libzstd(native, monkeypatch)
    base = random.Random(5).randbytes(mib * 1024 * KiB)
    data = bytearray(base)
    data[100:110], data[2_000_000:2_000_005] = b"0123456789", b"abcde"
    frame = delta.encode_parts(bytes(data), level, codec.blob_id(base), base)[1]
    assert len(frame) < len(data) // 1000
    assert delta.decode_frame(frame, len(data), base) == data


def test_a_base_that_begins_like_a_zstd_dictionary_is_still_its_raw_content(without_libzstd):
    """A chunk is any bytes: one that starts with zstd's dictionary magic is still a raw base."""
    table, data = _edited_table()
    base = b"\x37\xa4\x30\xec" + table
    frame = delta.encode_parts(data, 3, codec.blob_id(base), base)[1]
    assert len(frame) < len(data) // 100
    assert delta.decode_frame(frame, len(data), base) == data
