"""The repository core's own promises, as a caller sees them: opening and creating, snapshot
references, listings and their host rule, the JSON a listing gives, damaged objects skipped with a
warning that names them, and the index table cache kept current without needless rewrites."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from casstore.client import Repository
from casstore.errors import RepositoryExists, RepositoryNotFound, SnapshotNotFound
from casstore.format import layout
from casstore.format.config import RepoConfig
from casstore.format.index import decode_index
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.wrappers import CountingRemote
from casstore.settings import load_settings
from tests.helpers import write_snapshot
from tests.sync_helpers import local_repo


def _settings(**overrides):
    return load_settings({"host": "testhost", **overrides})


def test_a_snapshot_reference_needs_at_least_four_hex_digits_in_any_case(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snapshot_id = write_snapshot(repo, lambda store: [])
    assert repo.resolve(snapshot_id[:4]).id == snapshot_id
    assert repo.resolve(snapshot_id[:6].upper()).id == snapshot_id
    for bad in (snapshot_id[:3], snapshot_id[:3] + "g", "zzzz", ""):
        with pytest.raises(SnapshotNotFound, match="is not a snapshot id"):
            repo.resolve(bad)


def test_an_ambiguous_prefix_and_an_unknown_id_are_refused_by_name(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    for name in ("abcd" + "1" * 60, "abcd" + "2" * 60):      # listed names are all resolve compares
        repo.remote.put(layout.snapshot_key(name), b"never decoded")
    with pytest.raises(SnapshotNotFound, match=r"abcd is ambiguous \(2 match\)"):
        repo.resolve("abcd")
    with pytest.raises(SnapshotNotFound, match="no snapshot with id 0123"):
        repo.resolve("0123")


def test_a_listing_says_which_repository_holds_each_snapshot(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snapshot_id = write_snapshot(repo, lambda store: [])
    assert [s.where for s in repo.all_snapshots()] == ["local"]
    assert repo.resolve(snapshot_id[:8]).where == "local"
    remote = Repository.open_remote(repo.remote, _settings())
    assert [s.where for s in remote.all_snapshots()] == ["remote"]
    assert remote.resolve(snapshot_id[:8]).where == "remote"


def test_a_snapshots_json_form_has_every_listed_field(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snapshot_id = write_snapshot(repo, lambda store: [], source="/data", time_ns=1_700_000_000 * 10**9)
    info = repo.resolve(snapshot_id)
    assert info.as_dict() == {
        "id": snapshot_id, "short_id": snapshot_id[:8], "time": info.manifest.time.isoformat(),
        "host": "testhost", "source": "/data", "tags": [], "parent": None, "incomplete": False,
        "summary": {}, "where": "local"}
    assert info.as_dict()["time"].startswith("2023-11-14T22:13:20")


def test_listings_filter_by_source_and_limit_newest_first(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    a1 = write_snapshot(repo, lambda store: [], source="/a", time_ns=10**18)
    b1 = write_snapshot(repo, lambda store: [], source="/b", time_ns=2 * 10**18)
    a2 = write_snapshot(repo, lambda store: [], source="/a", time_ns=3 * 10**18)
    assert [s.id for s in repo.snapshots(source="/a")] == [a2, a1]
    assert [s.id for s in repo.snapshots()] == [a2, b1, a1]
    assert [s.id for s in repo.snapshots(limit=2)] == [a2, b1]
    assert [s.id for s in repo.readable(limit=1)] == [a2]
    # a limit of 0 is no limit, as `casstore list --limit 0` shows every snapshot
    assert [s.id for s in repo.snapshots(limit=0)] == [s.id for s in repo.readable(limit=0)] == [a2, b1, a1]


def test_reads_prefer_this_hosts_snapshots_when_it_has_any(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")      # host "testhost"
    ours = write_snapshot(repo, lambda store: [], host="testhost", time_ns=10**18)
    write_snapshot(repo, lambda store: [], host="other", time_ns=2 * 10**18)
    assert [s.id for s in repo.readable()] == [ours]
    assert repo.resolve("latest").id == ours


def test_a_forgotten_snapshot_is_not_found_again_in_the_same_process(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    snapshot_id = write_snapshot(repo, lambda store: [])
    assert repo.manifest(snapshot_id).host == "testhost"     # read once: the process remembers it
    repo.delete_snapshot(snapshot_id)
    with pytest.raises(SnapshotNotFound, match=f"snapshot {snapshot_id[:8]} not found"):
        repo.manifest(snapshot_id)


def test_opening_where_there_is_no_repository_or_creating_over_one_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(RepositoryNotFound, match=f"no casstore repository at {missing}.*casstore init"):
        Repository.open_local(str(missing), _settings())
    assert not missing.exists()                 # opening never creates a folder
    local_repo(tmp_path / "repo")
    with pytest.raises(RepositoryExists, match="a repository already exists at"):
        Repository.init_local(str(tmp_path / "repo"), _settings())
    remote = MemoryRemote()
    Repository.init_remote(remote, _settings())
    with pytest.raises(RepositoryExists, match=f"a repository already exists at {remote.url}"):
        Repository.init_remote(remote, _settings())


def test_a_new_repository_keeps_the_config_it_is_given_or_the_settings_level(tmp_path: Path) -> None:
    config = RepoConfig.new(avg_size=32 * 1024, compression_level=9)
    remote = MemoryRemote()
    Repository.init_remote(remote, _settings(), config)
    assert Repository.open_remote(remote, _settings()).config.id == config.id
    made = Repository.init_local(str(tmp_path / "repo"), _settings(compression_level=7))
    assert made.config.compression["level"] == 7
    assert Repository.open_local(str(tmp_path / "repo"), _settings()).config.compression["level"] == 7


def test_a_damaged_snapshot_is_skipped_with_a_warning_naming_it(tmp_path: Path, caplog) -> None:
    repo = local_repo(tmp_path / "repo")
    good = write_snapshot(repo, lambda store: [])
    bad = "ee" * 32
    repo.remote.put(layout.snapshot_key(bad), b"not a snapshot")
    with caplog.at_level(logging.WARNING, logger="casstore.repo.core"):
        assert [s.id for s in repo.all_snapshots()] == [good]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipping damaged snapshot {bad[:8]}: ") and "match" in m for m in messages), messages


def test_a_damaged_index_is_skipped_with_a_warning_naming_it(tmp_path: Path, caplog) -> None:
    repo = local_repo(tmp_path / "repo")
    write_snapshot(repo, lambda store: [])
    bad = "dd" * 32
    repo.remote.put(layout.index_key(bad), b"not an index")
    fresh = Repository.open_local(str(tmp_path / "repo"), _settings())
    with caplog.at_level(logging.WARNING, logger="casstore.repo.core"):
        index = fresh.load_index()
    assert bad not in index.index_packs and index.index_packs
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipping damaged index {bad[:16]}: ") and "match" in m for m in messages), messages


def test_a_writers_index_objects_name_their_origin(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo", host="machine-a")
    write_snapshot(repo, lambda store: [], host="machine-a")
    (info,) = repo.remote.list(layout.INDEX_PREFIX)
    index_id = layout.name_of(info.key)
    origin = decode_index(index_id, repo.remote.get(info.key), repo.config.max_blob_size).origin
    assert set(origin) == {"kind", "host", "session"}
    assert origin["kind"] == "writer" and origin["host"] == "machine-a" and len(origin["session"]) == 16


def _counted(repo: Repository) -> CountingRemote:
    """Count the requests a repository makes from now on (its index load makes only lists and index gets)."""
    repo.remote = counting = CountingRemote(repo.remote)
    return counting


def test_the_index_table_cache_follows_new_index_objects_and_is_not_rewritten_for_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "repo")
    repo = local_repo(tmp_path / "repo")
    write_snapshot(repo, lambda store: [])
    first = Repository.open_local(path, _settings())
    first.load_index()                           # builds and saves the table
    table = first.table_cache.path
    saved = os.stat(table).st_mtime_ns
    again = Repository.open_local(path, _settings())
    counted = _counted(again)
    again.load_index()                           # nothing new: the table is used as it is
    assert counted.counts["get"] == 0 and os.stat(table).st_mtime_ns == saved
    elsewhere = Repository.open_local(path, _settings(cache_dir=str(tmp_path / "elsewhere")))
    write_snapshot(elsewhere, lambda store: [], time_ns=2 * 10**18)   # another machine's writer
    third = Repository.open_local(path, _settings())
    counted = _counted(third)
    third.load_index()
    assert counted.counts["get"] == 1                      # only the new one is read, and the table learns it
    fourth = Repository.open_local(path, _settings())
    counted = _counted(fourth)
    fourth.load_index()
    assert counted.counts["get"] == 0


def test_an_empty_repository_has_no_latest_snapshot(tmp_path: Path) -> None:
    repo = local_repo(tmp_path / "repo")
    with pytest.raises(SnapshotNotFound, match=r"no snapshot yet \(take one with `casstore snapshot`\)"):
        repo.resolve("latest")


def test_a_new_repository_without_a_level_setting_compresses_at_zstd_level_3(tmp_path: Path) -> None:
    repo = Repository.init_local(str(tmp_path / "repo"), _settings())
    assert repo.config.compression["level"] == 3


def _cached(cache_dir: Path, repo: Repository, kind: str) -> set[str]:
    folder = cache_dir / repo.config.id / kind
    return set(os.listdir(folder)) if folder.exists() else set()


def test_a_remote_repository_keeps_verified_copies_in_its_own_cache_folder(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"           # CASSTORE_CACHE_DIR (conftest)
    remote = MemoryRemote()
    writer = Repository.init_remote(remote, _settings())
    snapshot_id = write_snapshot(writer, lambda store: [])
    reader = Repository.open_remote(remote, _settings())
    reader.load_index()
    assert reader.resolve(snapshot_id[:8]).id == snapshot_id
    assert _cached(cache_dir, reader, layout.SNAPSHOTS) == {snapshot_id}
    assert _cached(cache_dir, reader, layout.INDEX) == {layout.name_of(i.key) for i in remote.list(layout.INDEX_PREFIX)}
    local = local_repo(tmp_path / "repo")    # a local repository reads its own files: no copies
    write_snapshot(local, lambda store: [])
    local.all_snapshots()
    assert _cached(cache_dir, local, layout.SNAPSHOTS) == set()


def test_a_remote_repositorys_cache_forgets_index_objects_and_snapshots_that_are_gone(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    remote = MemoryRemote()
    writer = Repository.init_remote(remote, _settings())
    snapshot_id = write_snapshot(writer, lambda store: [])
    reader = Repository.open_remote(remote, _settings())
    reader.load_index()
    assert reader.manifest(snapshot_id)
    (index_id,) = _cached(cache_dir, reader, layout.INDEX)
    remote.delete(layout.index_key(index_id))           # consolidated away by gc elsewhere
    Repository.open_remote(remote, _settings()).load_index()
    assert _cached(cache_dir, reader, layout.INDEX) == set()
    reader.delete_snapshot(snapshot_id)
    assert _cached(cache_dir, reader, layout.SNAPSHOTS) == set()


def test_a_snapshot_object_that_matches_its_name_but_does_not_decode_is_not_kept(tmp_path: Path) -> None:
    import blake3
    cache_dir = tmp_path / "cache"
    remote = MemoryRemote()
    Repository.init_remote(remote, _settings())
    junk = b"named by its hash, but no snapshot"
    name = blake3.blake3(junk).hexdigest()
    remote.put(layout.snapshot_key(name), junk)
    reader = Repository.open_remote(remote, _settings())
    assert reader.all_snapshots() == []
    assert _cached(cache_dir, reader, layout.SNAPSHOTS) == set()


def test_an_encrypted_repository_opens_with_the_password_its_settings_carry(tmp_path: Path, monkeypatch) -> None:
    from casstore.repo import keys
    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.delenv("CASSTORE_PASSWORD", raising=False)
    settings = _settings(password="a password given in code, not in the environment")
    config = RepoConfig.new(keys=keys.new_key(settings, "testhost"))
    path = str(tmp_path / "repo")
    snapshot_id = write_snapshot(Repository.init_local(path, settings, config), lambda store: [])
    keys.forget_unlocked()
    try:
        assert Repository.open_local(path, settings).resolve("latest").id == snapshot_id
        keys.forget_unlocked()
        remote = Repository.open_local(path, settings).remote
        keys.forget_unlocked()
        assert Repository.open_remote(remote, settings).resolve("latest").id == snapshot_id
    finally:
        keys.forget_unlocked()


def test_a_plain_config_over_key_slots_is_refused_locally_but_open_remote_leaves_that_to_its_caller(
        tmp_path: Path, monkeypatch) -> None:
    from casstore.errors import DowngradeError
    from casstore.repo import keys
    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    settings = _settings(password="pw for the slots")
    path = tmp_path / "repo"
    plain = Repository.init_local(str(path), settings)
    keys.write_slots(plain.remote, keys.new_key(settings, "testhost"))   # as if the config were replaced
    keys.forget_unlocked()
    with pytest.raises(DowngradeError, match="holds key slots .* refusing to open it"):
        Repository.open_local(str(path), settings)
    assert Repository.open_remote(plain.remote, settings).config.id == plain.config.id
    keys.forget_unlocked()


# -- session 9 (s9core19): promises the full mutation run found untested ----------------------------

def test_opening_a_remote_without_a_repository_or_with_an_unreadable_config_names_it(tmp_path: Path) -> None:
    from casstore.errors import IntegrityError
    remote = MemoryRemote()
    with pytest.raises(RepositoryNotFound, match=f"no casstore repository at {remote.url} "):
        Repository.open_remote(remote, _settings())
    remote.put(layout.CONFIG_KEY, b"not a config")
    with pytest.raises(IntegrityError) as caught:
        Repository.open_remote(remote, _settings())
    assert str(caught.value).startswith("repository config: "), "the one error line names what is damaged"
