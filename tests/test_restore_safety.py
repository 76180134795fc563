"""Restore never writes outside its target (design 5.7), proven with hostile snapshots.

Trees are built directly with the library (Entry, encode_tree_chain, BlobStore, write_snapshot)
so they can hold what the builder never produces: names `..`, `.`, `/absolute`, `a/b`, NUL.
Symlinked parents are planted in the target before restoring; an existing symlink at a file's
destination must be replaced, never written through. Every test records an `outside` directory
(and the target's parent) before and after, and requires them unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casstore.errors import RestoreError
from tests.helpers import (
    NOW_NS,
    dir_entry,
    file_contents,
    file_entry,
    init_repo,
    invoke,
    run,
    symlink_entry,
    tree_state,
    write,
    write_snapshot,
)


@pytest.fixture
def world(tmp_path):
    """A repository, an `outside` directory with a bait file, and an empty restore target."""
    outside = tmp_path / "outside"
    write(outside / "bait.txt", "must never change\n")
    (tmp_path / "box").mkdir()
    target = tmp_path / "box" / "target"
    repo = init_repo(tmp_path / "repo")
    repo.load_index()   # casstore's own cache folder (the saved index table) exists before any guard
    return repo, outside, target


def _guard(tmp_path: Path):
    """Snapshot what lies outside the target; return a function asserting it is unchanged."""
    before_outside = tree_state(tmp_path / "outside")
    before_box = sorted(os.listdir(tmp_path / "box"))
    before_root = sorted(os.listdir(tmp_path))
    bait = file_contents(tmp_path / "outside")

    def unchanged() -> None:
        assert tree_state(tmp_path / "outside") == before_outside
        assert file_contents(tmp_path / "outside") == bait
        assert sorted(os.listdir(tmp_path / "box")) in (before_box, sorted(before_box + ["target"]))
        assert sorted(os.listdir(tmp_path)) == before_root
    return unchanged


HOSTILE_NAMES = [b"..", b".", b"a/b", b"../escape", b"nul\0byte", b"/abs"]


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: n.decode(errors="replace").replace("\0", "NUL"))
def test_hostile_names_are_refused(tmp_path, world, name, kind):
    repo, outside, target = world
    if name == b"/abs":
        name = os.fsencode(str(outside / "abs_written"))

    def build(store):
        bad = {"file": lambda: file_entry(store, name, b"pwned\n"),
               "dir": lambda: dir_entry(store, name, [file_entry(store, b"bait.txt", b"pwned\n")]),
               "symlink": lambda: symlink_entry(name, os.fsencode(str(outside)))}[kind]()
        return [bad, file_entry(store, b"good.txt", b"fine\n")]

    snapshot_id = write_snapshot(repo, build)
    unchanged = _guard(tmp_path)
    result = repo.restore(snapshot_id, str(target))
    unchanged()
    assert any("unsafe name refused" in e for e in result.errors), result.errors
    assert not result.ok
    # the safe sibling is restored, nothing else is
    assert sorted(os.listdir(target)) == ["good.txt"]


def test_hostile_names_through_the_cli_exit_non_zero(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"..", [dir_entry(store, b"outside", [file_entry(store, b"bait.txt", b"pwned\n")])]),
        file_entry(store, b"ok.txt", b"ok\n")])
    unchanged = _guard(tmp_path)
    proc = run("--repo", tmp_path / "repo", "restore", snapshot_id[:8], target, "--overwrite", "always", expect=1)
    unchanged()
    assert b"unsafe name refused" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert os.listdir(target) == ["ok.txt"]


def test_symlinked_parent_in_target_is_not_followed(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"evil", [file_entry(store, b"bait.txt", b"pwned\n"), file_entry(store, b"new.txt", b"x")]),
        file_entry(store, b"fine.txt", b"fine\n")])
    target.mkdir()
    os.symlink(outside, target / "evil")
    unchanged = _guard(tmp_path)
    for overwrite in ("never", "if-changed", "always"):
        result = repo.restore(snapshot_id, str(target), overwrite=overwrite)
        unchanged()
        assert any(e.startswith("evil:") for e in result.errors), result.errors
    assert os.path.islink(target / "evil") and (target / "fine.txt").read_bytes() == b"fine\n"


def test_symlink_restored_by_one_snapshot_is_not_a_parent_for_the_next(tmp_path, world):
    """Restore A (evil -> outside), then B (evil/ a directory) into the same target."""
    repo, outside, target = world
    first = write_snapshot(repo, lambda store: [symlink_entry(b"evil", os.fsencode(str(outside)))])
    second = write_snapshot(repo, lambda store: [dir_entry(store, b"evil", [file_entry(store, b"bait.txt", b"pwn")])])
    unchanged = _guard(tmp_path)
    assert repo.restore(first, str(target)).ok
    assert os.readlink(target / "evil") == str(outside)
    result = repo.restore(second, str(target), overwrite="always")
    unchanged()
    assert not result.ok


@pytest.mark.parametrize("overwrite", ["never", "if-changed", "always"])
def test_existing_symlink_at_file_destination_is_replaced_not_followed(tmp_path, world, overwrite):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, b"config.json", b'{"restored": true}')])
    target.mkdir()
    os.symlink(outside / "bait.txt", target / "config.json")
    unchanged = _guard(tmp_path)
    result = repo.restore(snapshot_id, str(target), overwrite=overwrite)
    unchanged()
    if overwrite == "never":
        assert not result.ok and os.path.islink(target / "config.json")
    else:
        assert result.ok, result.errors
        assert not os.path.islink(target / "config.json")
        assert (target / "config.json").read_bytes() == b'{"restored": true}'


def test_existing_symlink_at_symlink_or_dir_destination(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        symlink_entry(b"link", b"elsewhere"),
        dir_entry(store, b"sub", [file_entry(store, b"bait.txt", b"pwned")])])
    target.mkdir()
    os.symlink(outside, target / "link")
    os.symlink(outside, target / "sub")
    unchanged = _guard(tmp_path)
    result = repo.restore(snapshot_id, str(target), overwrite="always")
    unchanged()
    assert os.readlink(target / "link") == "elsewhere"
    assert any(e.startswith("sub:") for e in result.errors)


def test_restore_path_option_cannot_climb_out_of_the_target(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"outside", [file_entry(store, b"bait.txt", b"pwned\n")]),
        file_entry(store, b"top.txt", b"top\n")])
    (target / "a" / "b").mkdir(parents=True)
    unchanged = _guard(tmp_path)
    for path in ("../../outside/bait.txt", "a/../../../outside", "../top.txt", "/../../top.txt"):
        try:
            repo.restore(snapshot_id, str(target / "a" / "b"), path=path, overwrite="always")
        except (RestoreError, OSError):
            pass
        unchanged()
    assert file_contents(target) == {os.path.join("a", "b", "outside", "bait.txt"): b"pwned\n",
                                     os.path.join("a", "b", "top.txt"): b"top\n"}


def test_restore_path_through_symlinked_parent_is_refused(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"evil", [file_entry(store, b"bait.txt", b"pwned\n")])])
    target.mkdir()
    os.symlink(outside, target / "evil")
    unchanged = _guard(tmp_path)
    proc = run("--repo", tmp_path / "repo", "restore", snapshot_id[:8], target, "--path", "evil/bait.txt",
               "--overwrite", "always", expect=None)
    unchanged()
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr


def test_absolute_symlink_targets_are_restored_as_links_only(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        symlink_entry(b"to_outside", os.fsencode(str(outside / "bait.txt"))),
        symlink_entry(b"to_parent", b"../../outside")])
    unchanged = _guard(tmp_path)
    result = repo.restore(snapshot_id, str(target), overwrite="always", verify=True)
    unchanged()
    assert result.ok and result.symlinks == 2
    assert os.readlink(target / "to_outside") == str(outside / "bait.txt")
    assert os.lstat(target / "to_parent").st_mtime_ns == NOW_NS


def test_overwrite_never_refuses_and_if_changed_skips(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, b"f.txt", b"from snapshot")])
    write(target / "f.txt", "local edit", mtime_ns=NOW_NS)
    assert not repo.restore(snapshot_id, str(target)).ok
    assert (target / "f.txt").read_bytes() == b"local edit"
    write(target / "f.txt", b"same size len", mtime_ns=NOW_NS)   # same size and mtime: "unchanged"
    result = repo.restore(snapshot_id, str(target), overwrite="if-changed")
    assert result.skipped == 1 and (target / "f.txt").read_bytes() == b"same size len"
    assert repo.restore(snapshot_id, str(target), overwrite="always").ok
    assert (target / "f.txt").read_bytes() == b"from snapshot"
    assert invoke("--repo", tmp_path / "repo", "restore", snapshot_id[:8], target, "--overwrite", "bogus",
                  expect=2).exit_code == 2


def test_include_leaves_no_empty_directories_for_what_it_did_not_match(tmp_path):
    import casstore

    (tmp_path / "data" / "keep" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "skip" / "deeper").mkdir(parents=True)
    (tmp_path / "data" / "keep" / "deep" / "a.json").write_text("{}")
    (tmp_path / "data" / "skip" / "deeper" / "b.json").write_text("{}")
    (tmp_path / "data" / "empty").mkdir()
    repo = casstore.open(str(tmp_path / "repo"), create=True)
    repo.snapshot(str(tmp_path / "data"))
    result = repo.restore("latest", str(tmp_path / "out"), include=("keep/**/*.json",))
    assert result.ok and result.files == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep"]
    assert (tmp_path / "out" / "keep" / "deep" / "a.json").read_text() == "{}"
