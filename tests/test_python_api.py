"""The Python API (design 7): casstore.open, Repository.snapshot/snapshots/get/restore/check/stats,
Snapshot.ls/walk/read_bytes/read_json/open/to_dict, and the seed facade `cloud_storage`.

to_dict(): the seed's shape, the clash rules (a directory beats `.json` beats `.jsonl`; losers
keep their full names), `.jsonl` as a list, other files as bytes, unparsable JSON as bytes with a
warning, and laziness measured by counting Repository.read_blob calls.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
from collections.abc import Mapping

import pytest

import casstore
from casstore.client import Repository
from casstore.errors import RepositoryNotFound, SnapshotNotFound
from casstore.format.pack import KIND_DATA, KIND_TREE
from tests.helpers import KiB, MiB, det_bytes, invoke, tree_state, write

BIG = det_bytes(MiB + 12345, "big")


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write(root / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 142, "agents": 7}))
    write(root / "ai_hub" / "shared_knowledge.json", json.dumps({"facts": ["a", "b"]}))
    write(root / "market" / "big.bin", BIG)
    write(root / "market" / "ticks.jsonl", '{"t": 1}\n{"t": 2}\n\n{"t": 3}\n')
    write(root / "readme.txt", "plain text\n")
    return root


@pytest.fixture
def repo(tmp_path, data):
    invoke("init", "--chunk-avg", 64 * KiB)
    opened = casstore.open()
    yield opened
    opened.close()


class ReadCounter:
    """Wraps Repository.read_blob on one repository instance and counts reads per kind."""

    def __init__(self, repo: Repository) -> None:
        self.reads = {KIND_DATA: 0, KIND_TREE: 0}
        real = repo.read_blob

        def counting(kind, blob_id):
            self.reads[kind] += 1
            return real(kind, blob_id)

        repo.read_blob = counting  # type: ignore[method-assign]


# -- opening -----------------------------------------------------------------------------------


def test_open_finds_the_local_repository_or_says_there_is_none(tmp_path, data, monkeypatch):
    with pytest.raises(RepositoryNotFound):
        casstore.open()
    with casstore.open(create=True) as repo:
        assert isinstance(repo, Repository) and repo.snapshots() == []
    monkeypatch.setenv("CASSTORE_REPOSITORY", str(tmp_path / "elsewhere"))
    with pytest.raises(RepositoryNotFound):
        casstore.open()
    casstore.init()
    with casstore.open() as repo:
        assert repo.location == str(tmp_path / "elsewhere")
    with casstore.open(str(tmp_path / ".casstore")) as repo:
        assert repo.location == str(tmp_path / ".casstore")


def test_snapshot_snapshots_get(repo, data):
    first = repo.snapshot()
    assert first.summary.files_total == 5 and not first.incomplete
    write(data / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 150}))
    second = repo.snapshot(tags=("after",))
    third = repo.snapshot(str(data))
    listed = repo.snapshots()
    assert [s.id for s in listed] == [third.id, second.id, first.id]
    assert [s.id for s in repo.snapshots(limit=2)] == [third.id, second.id]
    assert listed[1].manifest.tags == ["after"] and listed[0].manifest.parent == second.id
    assert repo.get().id == repo.get("latest").id == third.id
    assert repo.get(first.id).id == first.id
    assert repo.get(first.id[:8]).id == first.id and repo.get(first.id[:5].upper()).id == first.id
    assert repo.get(first.id).read_json("ai_hub/collective_intelligence.json")["collective_iq"] == 142
    with pytest.raises(SnapshotNotFound):
        repo.get("ffffffffffff")
    with pytest.raises(SnapshotNotFound):
        repo.get("12")
    assert repo.get(first.id).time <= repo.get(second.id).time


def test_ls_walk_read(repo, data):
    snap = repo.get(repo.snapshot().id)
    assert snap.ls() == ["ai_hub", "market", "readme.txt"]
    assert snap.ls("ai_hub") == ["collective_intelligence.json", "shared_knowledge.json"]
    assert snap.ls("/market/") == ["big.bin", "ticks.jsonl"]
    walked = {f.path: (f.type, f.size) for f in snap.walk()}
    assert walked["market/big.bin"] == ("file", len(BIG)) and walked["ai_hub"][0] == "dir"
    assert len(walked) == 7
    assert [f.path for f in snap.walk("market")] == ["market/big.bin", "market/ticks.jsonl"]
    assert snap.read_bytes("market/big.bin") == BIG
    assert snap.read_text("readme.txt") == "plain text\n"
    assert snap.read_json("ai_hub/shared_knowledge.json") == {"facts": ["a", "b"]}
    with pytest.raises(FileNotFoundError):
        snap.read_bytes("nope.json")
    with pytest.raises(KeyError):
        snap.read_bytes("ai_hub")


def test_open_seek_and_read_across_chunk_boundaries(repo, data):
    snap = repo.get(repo.snapshot().id)
    assert len(snap.entry("market/big.bin").chunks) > 8
    rng = random.Random(7)
    with snap.open("market/big.bin") as fh:
        assert fh.seekable() and fh.read(100) == BIG[:100]
        for _ in range(60):
            start, length = rng.randrange(len(BIG)), rng.choice([1, 100, 70_000, 300_000])
            fh.seek(start)
            assert fh.tell() == start
            assert fh.read(length) == BIG[start:start + length]
        assert fh.seek(-10, io.SEEK_END) == len(BIG) - 10
        assert fh.read() == BIG[-10:] and fh.read(5) == b""
        fh.seek(1000)
        fh.seek(500, io.SEEK_CUR)
        assert fh.read(10) == BIG[1500:1510]
    counter = ReadCounter(repo)
    with snap.open("market/big.bin") as fh:
        fh.seek(len(BIG) // 2)
        assert fh.read(10) == BIG[len(BIG) // 2:len(BIG) // 2 + 10]
    assert counter.reads[KIND_DATA] <= 2   # streaming: only the chunk under the cursor is fetched


def test_restore_check_stats(repo, data, tmp_path):
    snap = repo.snapshot()
    result = repo.restore(snap.id, str(tmp_path / "out"), verify=True)
    assert result.ok and result.files == 5
    assert tree_state(tmp_path / "out") == tree_state(data)
    report = repo.check(read_data=True)
    assert report.ok and report.blobs_verified > 10
    stats = repo.stats()
    assert stats["snapshots"] == 1 and set(stats["per_source"]) == {"ai_hub", "market", "(top level files)"}


# -- to_dict -----------------------------------------------------------------------------------


def test_to_dict_has_the_seed_shape(repo, data):
    snap = repo.get(repo.snapshot().id)
    doc = snap.to_dict()
    assert isinstance(doc, Mapping)
    assert doc["snapshot_id"] == snap.id and doc["timestamp"] == snap.time.isoformat()
    sources = doc["data_sources"]
    assert sorted(sources) == ["ai_hub", "market", "readme.txt"]
    assert sources["ai_hub"]["collective_intelligence"]["collective_iq"] == 142
    assert sources["market"]["ticks"] == [{"t": 1}, {"t": 2}, {"t": 3}]
    assert sources["market"]["big.bin"] == BIG
    assert sources["readme.txt"] == b"plain text\n"
    assert sources.get("missing", "default") == "default" and "ai_hub" in sources


def test_to_dict_clash_rules(repo, data, tmp_path, caplog):
    clash = data / "clash"
    write(clash / "x" / "inner.json", '{"inner": true}')
    write(clash / "x.json", '{"from": "x.json"}')
    write(clash / "x.jsonl", '{"from": "x.jsonl"}\n')
    write(clash / "y.json", '{"from": "y.json"}')
    write(clash / "y.jsonl", '{"from": "y.jsonl"}\n')
    write(clash / "z.jsonl", '{"n": 1}\n{"n": 2}\n')
    write(clash / "plain", b"a file without extension")
    write(clash / "plain.json", '{"from": "plain.json"}')
    write(clash / "b.json", '{"from": "b.json"}')
    write(clash / "b.jsonl", '{"from": "b.jsonl"}\n')
    write(clash / "b.jsonl.json", '{"from": "b.jsonl.json"}')
    write(clash / "bad.json", "{not json")
    write(clash / "notes.md", "# notes\n")
    snap = repo.get(repo.snapshot().id)
    with caplog.at_level(logging.WARNING):
        d = snap.to_dict()["data_sources"]["clash"].materialize()
    assert d == {
        "x": {"inner": {"inner": True}},                 # the directory wins
        "x.json": {"from": "x.json"},                    # losers keep their full names
        "x.jsonl": [{"from": "x.jsonl"}],
        "y": {"from": "y.json"},                         # .json beats .jsonl
        "y.jsonl": [{"from": "y.jsonl"}],
        "z": [{"n": 1}, {"n": 2}],
        "plain": b"a file without extension",            # a file's own full name is never taken from it
        "plain.json": {"from": "plain.json"},
        "b": {"from": "b.json"},
        "b.jsonl": [{"from": "b.jsonl"}],
        "b.jsonl.json": {"from": "b.jsonl.json"},
        "bad": b"{not json",                             # unparsable: bytes, with a warning
        "notes.md": b"# notes\n",
    }
    assert "clash/bad.json" in caplog.text and "does not parse" in caplog.text


def test_to_dict_keys_a_name_that_is_not_utf8_as_os_fsdecode_names_it(repo, data):
    """Linux names are bytes. A folder or file whose name is not UTF-8 gets the key `os.fsdecode`
    gives (the bytes decoded with surrogateescape, as `os.listdir` names it), so `os.fsencode(key)`
    is the name; the JSON-ready form holds the same str, which `json.dumps` writes as `\\udcXX`."""
    folder = data / os.fsdecode(b"caf\xe9")
    write(folder / os.fsdecode(b"r\xe9sum\xe9.json"), '{"a": 1}')
    write(folder / os.fsdecode(b"raw\xff"), b"bytes")
    snap = repo.get(repo.snapshot().id)
    sources = snap.to_dict()["data_sources"]
    key = os.fsdecode(b"caf\xe9")
    assert {os.fsencode(k) for k in sources} == set(os.listdir(os.fsencode(str(data))))
    assert sources[key].materialize() == {os.fsdecode(b"r\xe9sum\xe9"): {"a": 1}, os.fsdecode(b"raw\xff"): b"bytes"}
    text = json.dumps(snap.to_dict(json_ready=True))
    assert '"caf\\udce9": {"raw\\udcff": {"$file": "caf\\udce9/raw\\udcff", "size": 5}' in text
    assert json.loads(text)["data_sources"][key][os.fsdecode(b"r\xe9sum\xe9")] == {"a": 1}
    assert snap.read_bytes(key + "/" + os.fsdecode(b"raw\xff")) == b"bytes"


def test_to_dict_is_lazy(repo, data):
    for i in range(30):
        write(data / "kb" / f"doc{i}.json", json.dumps({"i": i}))
    snapshot_id = repo.snapshot().id
    reader = casstore.open()
    counter = ReadCounter(reader)
    doc = reader.get(snapshot_id).to_dict()
    assert counter.reads == {KIND_DATA: 0, KIND_TREE: 0}
    sources = doc["data_sources"]
    assert sorted(sources) == ["ai_hub", "kb", "market", "readme.txt"]
    assert counter.reads[KIND_DATA] == 0
    iq = sources["ai_hub"]["collective_intelligence"]["collective_iq"]
    assert iq == 142 and counter.reads[KIND_DATA] == 1
    assert len(sources["kb"]) == 30 and counter.reads[KIND_DATA] == 1   # listing keys reads no file
    assert sources["kb"]["doc7"] == {"i": 7} and counter.reads[KIND_DATA] == 2
    assert sources["kb"]["doc7"] == {"i": 7} and counter.reads[KIND_DATA] == 2   # read once
    before = dict(counter.reads)
    plain = doc.materialize()
    assert type(plain) is dict and type(plain["data_sources"]["kb"]) is dict
    assert plain["data_sources"]["market"]["big.bin"] == BIG
    assert counter.reads[KIND_DATA] > before[KIND_DATA] + 30


# -- the seed facade ---------------------------------------------------------------------------


def test_facade_list_get_create(repo, data):
    from casstore import cloud_storage

    assert cloud_storage.list_backups(limit=5) == []
    created = cloud_storage.create_backup()
    assert created["success"] and re.fullmatch(r"[0-9a-f]{64}", created["backup_id"])
    write(data / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 143}))
    cloud_storage.create_backup()
    backups = cloud_storage.list_backups(limit=1)
    assert len(backups) == 1 and {"backup_id", "timestamp", "size_mb", "files"} <= set(backups[0])
    assert [b["backup_id"] for b in cloud_storage.list_backups(limit=5)][1] == created["backup_id"]
    old = cloud_storage.get_backup(created["backup_id"])
    assert old["data_sources"]["ai_hub"]["collective_intelligence"]["collective_iq"] == 142
    assert cloud_storage.get_backup(backups[0]["backup_id"][:8])["backup_id"] == backups[0]["backup_id"]

