"""Stored once: unchanged data writes nothing, changed data costs about what changed.

- a second snapshot of unchanged data writes no pack and no index (objects under data/ counted);
- a files-cache hit reads 0 bytes, and the cache is not trusted when size, mtime, ctime or inode
  differ, or when the file was touched within RACY_WINDOW_NS of the snapshot's start;
- inserting a few bytes near the start of a multi-MiB file adds one or two 64 KiB-average chunks,
  not the file; unchanged directories keep their tree ids; a copied file adds no data blob.
"""

from __future__ import annotations

import json
import os

import pytest

from casstore.format.pack import KIND_DATA, KIND_TREE
from tests.helpers import (
    KiB,
    MiB,
    age_tree,
    det_bytes,
    init_repo,
    invoke,
    objects,
    open_repo,
    run,
    write,
)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "data"
    write(root / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 150}))
    write(root / "market" / "big.bin", det_bytes(3 * MiB, "big"))
    write(root / "market" / "prices.json", json.dumps([{"t": i, "p": i * 1.5} for i in range(5000)]))
    for i in range(20):
        write(root / "kb" / f"doc{i:02}.json", json.dumps({"doc": i, "text": "lorem ipsum " * (i + 1)}))
    return root


def _snapshot_json(*args) -> dict:
    return json.loads(invoke("snapshot", "--json", *args).stdout)


def test_second_snapshot_of_unchanged_data_writes_no_pack(tmp_path, source):
    run("init", "--chunk-avg", 64 * KiB)
    first = json.loads(run("snapshot", "--json").stdout)
    packs, indexes = objects(".casstore", "data"), objects(".casstore", "index")
    assert packs and indexes and first["blobs_added"] > 40

    second = json.loads(run("snapshot", "--json").stdout)
    assert objects(".casstore", "data") == packs
    assert objects(".casstore", "index") == indexes
    assert second["blobs_added"] == 0 and second["bytes_added_stored"] == 0
    assert len(objects(".casstore", "snapshots")) == 2

    # touching every file (new mtimes, same bytes) forces a re-read but stores no data blob:
    # only tree blobs (which record the new mtimes) are new
    age_tree(source, 7200)
    third = json.loads(run("snapshot", "--json").stdout)
    assert third["bytes_read"] == third["bytes_total"]
    assert third["files_unchanged"] == third["files_total"]
    new_packs = {p.name for p in objects(".casstore", "data")} - {p.name for p in packs}
    kinds = {loc_kind for (loc_kind, _), locs in open_repo(".casstore").load_index().blobs()
             for loc in locs if loc.pack_id in new_packs}
    assert new_packs and kinds == {KIND_TREE}


def test_files_cache_hit_reads_zero_bytes(tmp_path, source, monkeypatch):
    # ctime cannot be set back, so the 2 s racy window is turned off for this test
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    invoke("init", "--chunk-avg", 64 * KiB)
    first = _snapshot_json()
    assert first["bytes_read"] == first["bytes_total"] > 3 * MiB
    second = _snapshot_json()
    assert second["bytes_read"] == 0
    assert second["files_unchanged"] == second["files_total"] == 23


def test_recently_touched_files_are_not_trusted_from_the_cache(tmp_path, source):
    # with the real window, files written a moment ago are read again (same-size rewrites within
    # one timestamp tick would otherwise go unseen)
    invoke("init", "--chunk-avg", 64 * KiB)
    _snapshot_json()
    second = _snapshot_json()
    assert second["bytes_read"] == second["bytes_total"]


def test_same_size_rewrite_with_restored_mtime_is_detected(tmp_path, source, monkeypatch):
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    invoke("init", "--chunk-avg", 64 * KiB)
    _snapshot_json()
    doc = source / "kb" / "doc03.json"
    st = doc.stat()
    original = doc.read_bytes()
    with open(doc, "r+b") as fh:                 # same inode, same size, mtime put back: only ctime moves
        fh.write(original.upper())
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (doc.stat().st_size, doc.stat().st_mtime_ns, doc.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    second = _snapshot_json()
    assert second["files_changed"] == 1 and second["bytes_read"] == len(original)
    assert open_repo(".casstore").get(second["id"]).read_bytes("kb/doc03.json") == original.upper()


def test_replaced_file_with_same_size_and_mtime_is_detected(tmp_path, source, monkeypatch):
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    invoke("init", "--chunk-avg", 64 * KiB)
    _snapshot_json()
    doc = source / "kb" / "doc05.json"
    st = doc.stat()
    replacement = source / "kb" / ".tmp"
    replacement.write_bytes(doc.read_bytes().replace(b"lorem", b"LOREM"))
    os.utime(replacement, ns=(st.st_mtime_ns, st.st_mtime_ns))
    os.rename(replacement, doc)                    # new inode
    second = _snapshot_json()
    assert second["files_changed"] == 1
    assert b"LOREM" in open_repo(".casstore").get(second["id"]).read_bytes("kb/doc05.json")


def test_insert_near_start_of_large_file_adds_about_one_chunk(tmp_path):
    big = write(tmp_path / "data" / "big.bin", det_bytes(4 * MiB, "insert"))
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(tmp_path / "data"))
    old_chunks = open_repo(tmp_path / "repo").get(first.id).entry("big.bin").chunks
    assert len(old_chunks) > 30  # 4 MiB at 64 KiB average

    content = big.read_bytes()
    big.write_bytes(content[:5000] + b"INSERTED" + content[5000:])
    second = repo.snapshot(str(tmp_path / "data"))
    new_chunks = open_repo(tmp_path / "repo").get(second.id).entry("big.bin").chunks
    added = set(new_chunks) - set(old_chunks)
    assert 1 <= len(added) <= 2, f"{len(added)} new chunks for an 8-byte insert"
    data_added = sum(repo.index.locations(KIND_DATA, c)[0].raw_length for c in added)
    assert data_added < 1 * MiB and second.summary.bytes_added < 1 * MiB
    assert second.summary.files_changed == 1
    assert open_repo(tmp_path / "repo").get(second.id).read_bytes("big.bin") == big.read_bytes()


def test_append_to_large_file_and_copy_of_file_cost_little(tmp_path):
    big = write(tmp_path / "data" / "a" / "big.bin", det_bytes(2 * MiB, "append"))
    write(tmp_path / "data" / "b" / "other.txt", "unchanged directory\n")
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(tmp_path / "data"))
    with open(big, "ab") as fh:
        fh.write(b"tail " * 100)
    write(tmp_path / "data" / "a" / "copy.bin", det_bytes(2 * MiB, "append"))
    second = repo.snapshot(str(tmp_path / "data"))
    reader = open_repo(tmp_path / "repo")
    one, two = reader.get(first.id), reader.get(second.id)
    added = set(two.entry("a/big.bin").chunks) - set(one.entry("a/big.bin").chunks)
    assert 1 <= len(added) <= 2
    assert set(two.entry("a/copy.bin").chunks) <= set(one.entry("a/big.bin").chunks)
    assert second.summary.bytes_added < 1 * MiB
    # the untouched directory is the very same tree blob in both snapshots
    assert one.entry("b").subtree == two.entry("b").subtree
    assert one.entry("a").subtree != two.entry("a").subtree


def test_parent_is_the_previous_snapshot_of_the_source_noted_or_found(tmp_path, source, monkeypatch):
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    assert first.manifest.parent is None
    scans = []
    real = type(repo).snapshots
    monkeypatch.setattr(type(repo), "snapshots", lambda self, *a, **k: scans.append(1) or real(self, *a, **k))
    second = repo.snapshot(str(source))
    assert second.manifest.parent == first.id and scans == []      # the local note, one stat
    (tmp_path / "repo" / "snapshots" / second.id).unlink()          # as `forget` would
    third = repo.snapshot(str(source))
    assert third.manifest.parent == first.id and scans == [1]      # noted one gone: found by scanning
    monkeypatch.setenv("CASSTORE_HOST", "another-host")
    other = open_repo(tmp_path / "repo").snapshot(str(source))
    assert other.manifest.parent is None                           # another host's note is not used
