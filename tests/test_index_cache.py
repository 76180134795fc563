"""The local index table cache (repo/indexcache.py, issue 14): a second open restores the merged
index in one read instead of decoding every index object; index objects added or removed since
are applied incrementally; a damaged, foreign or stale table is never trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casstore.format import layout
from casstore.format.index import IndexObject, MasterIndex, decode_index
from casstore.format.pack import KIND_DATA
from casstore.repo.core import RepoCore
from tests.helpers import file_entry, init_repo, objects, open_repo, write_snapshot


def snapshot_of(repo: RepoCore, tag: str, files: int = 5) -> str:
    return write_snapshot(repo, lambda store: [file_entry(store, f"{tag}{i}".encode(), os.urandom(300 + i))
                                               for i in range(files)])


def fresh_index(repo_dir: Path) -> dict:
    """Every (kind, id) -> sorted locations, decoded from the index objects listed now (no cache)."""
    index = MasterIndex()
    for path in objects(repo_dir, "index"):
        index.add_object(path.name, decode_index(path.name, path.read_bytes(), 1 << 30))
    return {key: sorted(locs) for key, locs in index.blobs()}


def table_of(repo: RepoCore) -> dict:
    return {key: sorted(locs) for key, locs in repo.load_index().blobs()}


def opened(repo_dir: Path) -> tuple[RepoCore, list[str]]:
    """The repository opened anew, and a list that records every index object it fetches."""
    repo = open_repo(repo_dir)
    fetched: list[str] = []
    cached_get = repo._cached_get

    def recording(kind: str, name: str) -> bytes:
        if kind == layout.INDEX:
            fetched.append(name)
        return cached_get(kind, name)

    repo._cached_get = recording  # type: ignore[method-assign]
    return repo, fetched


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "repo")
    for tag in "abc":
        snapshot_of(repo, tag)
    repo.load_index()          # writes the table
    return tmp_path / "repo"


def test_a_second_open_restores_the_table_and_fetches_no_index_object(repo_dir: Path) -> None:
    repo, fetched = opened(repo_dir)
    assert os.path.exists(repo.table_cache.path)
    assert table_of(repo) == fresh_index(repo_dir) and len(fresh_index(repo_dir)) >= 15
    assert fetched == []
    some_chunk = next(blob_id for (kind, blob_id) in fresh_index(repo_dir) if kind == KIND_DATA)
    assert repo.read_blob(KIND_DATA, some_chunk)


def test_index_objects_added_or_removed_since_are_applied_incrementally(repo_dir: Path) -> None:
    snapshot_of(open_repo(repo_dir), "d")               # one more index object, the table not updated
    repo, fetched = opened(repo_dir)
    assert table_of(repo) == fresh_index(repo_dir)
    assert len(fetched) == 1                            # only the new one was decoded

    gone = objects(repo_dir, "index")[0]                # an index object vanishes (as gc consolidates)
    gone.unlink()
    repo, fetched = opened(repo_dir)
    assert table_of(repo) == fresh_index(repo_dir) and fetched == []
    repo, fetched = opened(repo_dir)                    # and that state was saved in turn
    assert table_of(repo) == fresh_index(repo_dir) and fetched == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_a_damaged_table_is_rebuilt_from_the_index_objects(repo_dir: Path, damage: str) -> None:
    path = Path(open_repo(repo_dir).table_cache.path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        data = data[:len(data) - 40]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    repo, fetched = opened(repo_dir)
    assert table_of(repo) == fresh_index(repo_dir)
    assert sorted(fetched) == sorted(p.name for p in objects(repo_dir, "index"))   # all decoded again
    again, fetched = opened(repo_dir)                   # and a sound table written back
    assert table_of(again) == fresh_index(repo_dir) and fetched == []


def test_a_table_that_verifies_but_lacks_a_blob_is_rebuilt_on_the_first_miss(repo_dir: Path) -> None:
    # a table saved from an index object that lost a pack (a bug, or an older casstore): its digest is
    # right, its index ids match the listing, and it still must not be believed when a read misses
    repo = open_repo(repo_dir)
    wrong = MasterIndex()
    for path in objects(repo_dir, "index"):
        obj = decode_index(path.name, path.read_bytes(), 1 << 30)
        wrong.add_object(path.name, IndexObject(obj.origin, dict(list(obj.packs.items())[1:])))
    first = objects(repo_dir, "index")[0]
    victim = next(iter(decode_index(first.name, first.read_bytes(), 1 << 30).packs.values()))[0]
    with open(repo.table_cache.path, "wb") as fh:
        wrong.write_image(fh)
    repo, _ = opened(repo_dir)
    assert not repo.load_index().locations(victim.kind, victim.id)
    assert repo.read_blob(victim.kind, victim.id)       # the miss rebuilt the index from its objects
    assert table_of(repo) == fresh_index(repo_dir)


def test_packs_a_writer_has_not_indexed_are_never_saved(repo_dir: Path) -> None:
    repo = open_repo(repo_dir)
    repo.load_index()
    os.unlink(repo.table_cache.path)
    store = repo.blob_store()
    blob_id, _ = store.add(KIND_DATA, os.urandom(500))
    store.wait_uploads()                                 # uploaded, in memory, but in no index object
    assert repo.index.has(KIND_DATA, blob_id) and not repo.index.from_objects_only
    repo.load_index()
    assert not os.path.exists(repo.table_cache.path)    # a table would claim a blob no index lists
    store.flush()                                        # the index object that lists it
    store.close()
    assert repo.index.from_objects_only
    again, _ = opened(repo_dir)
    assert again.load_index().has(KIND_DATA, blob_id)
    assert table_of(again) == fresh_index(repo_dir)
