"""A hostile tree DAG: one subtree referenced twice at each of 60 levels (2**60 paths).

Every walk (Snapshot.walk, restore, check, stats) must stop with an IntegrityError or a reported
error instead of running for ever, and restore must write nothing for the refused part.
"""

from __future__ import annotations

import os

import pytest

from casstore.client import Repository
from casstore.errors import IntegrityError
from casstore.format.pack import KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain
from casstore.settings import load_settings

LEVELS = 60


@pytest.fixture
def hostile(tmp_path):
    repo = Repository.init_local(str(tmp_path / "repo"), load_settings({"host": "h"}))
    repo.load_index()
    store = repo.blob_store()

    def put(body: bytes) -> bytes:
        return store.add(KIND_TREE, body)[0]

    leaf = encode_tree_chain([Entry(b"f", EntryType.FILE, 0o644, 0, 0, 0, 0, 0, [])], put)
    tree = leaf
    for _ in range(LEVELS):
        tree = encode_tree_chain([Entry(name, EntryType.DIR, 0o755, 0, 0, 0, 0, 0, tree) for name in (b"a", b"b")],
                                 put)
    store.flush()
    store.close()
    manifest = SnapshotManifest(time_ns=1, host="h", source="/s", tree=tree,
                                summary={"files_total": 1, "dirs_total": LEVELS})
    snapshot_id, _ = repo.write_snapshot(manifest)
    return Repository.open_local(str(tmp_path / "repo"), load_settings({"host": "h"})), snapshot_id


def test_walk_stops(hostile):
    repo, snapshot_id = hostile
    with pytest.raises(IntegrityError, match="far more entries"):
        sum(1 for _ in repo.get(snapshot_id[:8]).walk())


def test_restore_stops_and_reports(hostile, tmp_path):
    repo, snapshot_id = hostile
    try:
        result = repo.restore(snapshot_id[:8], str(tmp_path / "out"))
        assert not result.ok
    except IntegrityError:
        pass
    written = sum(len(files) for _, _, files in os.walk(tmp_path / "out"))
    assert written < 200_000


def test_check_reports_the_snapshot(hostile):
    repo, snapshot_id = hostile
    report = repo.check()
    assert not report.ok and snapshot_id in report.affected


def test_stats_stops(hostile):
    repo, _ = hostile
    with pytest.raises(IntegrityError):
        repo.stats()
