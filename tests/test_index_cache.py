"""The local index table cache (repo/indexcache.py, issue 14): a second open restores the merged
index in one read instead of decoding every index object; index objects added or removed since
are applied incrementally; a damaged, foreign or stale table is never trusted."""

from __future__ import annotations

import os
import threading
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


def test_readers_and_a_second_reload_during_a_rebuild_see_the_whole_table(repo_dir: Path) -> None:
    # a parallel restore meeting a damaged pack: every worker that misses reloads. The first
    # rebuild is held inside its fetch of an index object while a reader looks every blob up and
    # a second thread reloads; the reader must still find each blob, and the second reload must
    # wait for the first, not mix its work into the same index (which left an index object listed
    # with its packs not in the table, and a traceback when the table was saved)
    repo, _ = opened(repo_dir)
    keys = [key for key, _ in repo.load_index().blobs()]
    assert repo._table_restored
    in_fetch, release = threading.Event(), threading.Event()
    cached_get = repo._cached_get

    def held(kind: str, name: str) -> bytes:   # the first fetch from now on (on a fan-out thread)
        if kind == layout.INDEX and not in_fetch.is_set():
            in_fetch.set()
            release.wait(10)
        return cached_get(kind, name)

    repo._cached_get = held  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def reload() -> None:
        try:
            repo.reload_index()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    first = threading.Thread(target=reload)
    first.start()
    assert in_fetch.wait(10)
    missing = [key for key in keys if not repo.index.locations(*key)]
    second = threading.Thread(target=reload)
    second.start()
    second.join(0.3)
    release.set()
    first.join(10)
    second.join(10)
    assert missing == [] and failures == []
    assert table_of(repo) == fresh_index(repo_dir)
    again, fetched = opened(repo_dir)
    assert table_of(again) == fresh_index(repo_dir) and fetched == []   # the saved table is whole


def test_a_table_is_never_saved_for_an_index_listing_a_pack_it_does_not_hold(tmp_path: Path) -> None:
    index = MasterIndex()
    index.add_written("ab" * 32, {}, {"cd" * 32}, ())     # listed, its entries never added
    with pytest.raises(RuntimeError, match="never held"), open(tmp_path / "image", "wb") as fh:
        index.write_image(fh)


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


def test_cache_clear_deletes_every_index_table_and_the_next_open_rebuilds_it(repo_dir: Path, tmp_path: Path) -> None:
    """`casstore cache clear` frees the tables too: of a local repository (no other cache folder)
    and of a remote one read through the object cache, with a writer's half-written leftover."""
    import subprocess

    from casstore.client import Repository
    from casstore.remotes.local import LocalRemote
    from casstore.settings import load_settings

    local = open_repo(repo_dir).table_cache.path
    remote = Repository.open_remote(LocalRemote(str(repo_dir)), load_settings({"cache_dir": str(tmp_path / "cache")}))
    remote.load_index()
    leftover = remote.table_cache.path + ".0a1b2c3d.tmp"
    Path(leftover).write_bytes(b"half")
    tables = {local, remote.table_cache.path, leftover}
    assert len(tables) == 3 and all(os.path.exists(p) for p in tables)
    unrelated = tmp_path / "cache" / "notes.txt"      # only tables and cached objects are removed
    unrelated.write_text("x")
    done = subprocess.run(["casstore", "cache", "clear", "--json"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CASSTORE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert '"index_tables": 3' in done.stdout
    assert not any(os.path.exists(p) for p in tables) and unrelated.exists()
    repo, fetched = opened(repo_dir)
    assert table_of(repo) == fresh_index(repo_dir) and len(fetched) == len(objects(repo_dir, "index"))
    assert os.path.exists(local)


def test_a_snapshot_saves_the_table_with_its_own_index_so_the_next_open_decodes_nothing(tmp_path: Path) -> None:
    """The next snapshot of the source restores the table instead of decoding the last snapshot's
    index object (a Python object per blob: most of a no-change snapshot's peak at 100k files)."""
    source = tmp_path / "src"
    source.mkdir()
    for i in range(30):
        (source / f"f{i}").write_bytes(os.urandom(500 + i))
    repo = init_repo(tmp_path / "repo")
    repo.snapshot(str(source))
    (source / "f0").write_bytes(os.urandom(700))
    repo.snapshot(str(source))
    again, fetched = opened(tmp_path / "repo")
    assert table_of(again) == fresh_index(tmp_path / "repo") and len(objects(tmp_path / "repo", "index")) == 2
    assert fetched == []
