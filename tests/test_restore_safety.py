"""Restore never writes outside its target (design 5.7), proven with hostile snapshots.

Trees are built directly with the library (Entry, encode_tree_chain, BlobStore, write_snapshot)
so they can hold what the builder never produces: names `..`, `.`, `/absolute`, `a/b`, NUL.
Symlinked parents are planted in the target before restoring; an existing symlink at a file's
destination must be replaced, never written through. Every test records an `outside` directory
(and the target's parent) before and after, and requires them unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from casstore.client import Repository
from casstore.errors import IntegrityError, RestoreError
from casstore.format.pack import KIND_DATA, parse_header
from casstore.format.tree import Entry, EntryType
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.wrappers import RemoteWrapper
from casstore.restore.restorer import (
    DEFERRED_DIRS,
    EXISTING_SHOWN,
    MAX_BATCHES,
    MAX_DEVICE,
    MAX_ID,
    MAX_LINK_GROUPS,
    MAX_OPEN_DIRS,
    MAX_TIME_NS,
    SMALL_BATCH_FILES,
)
from casstore.settings import load_settings
from tests.helpers import (
    NOW_NS,
    KiB,
    det_bytes,
    dir_entry,
    file_contents,
    file_entry,
    init_repo,
    invoke,
    objects,
    open_repo,
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
    assert result.errors == [f"{os.fsdecode(name)}: unsafe name refused"]
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
        assert result.errors == ["evil: refusing to restore through a symlink or non-directory"]
    assert os.path.islink(target / "evil") and (target / "fine.txt").read_bytes() == b"fine\n"


def test_a_file_in_the_way_of_a_directory_is_refused_and_left_alone(tmp_path, world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(
        lambda store: dir_entry(store, b"sub", [file_entry(store, b"inside.txt", b"x")])))
    write(target / "sub", "a file where the snapshot has a directory")
    result = repo.restore(snapshot_id, str(target), overwrite="always")
    assert result.errors == ["sub: refusing to restore through a symlink or non-directory"]
    assert (target / "sub").read_text() == "a file where the snapshot has a directory"
    assert (target / "good.txt").read_bytes() == b"fine\n"


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


def test_restoring_one_path_through_a_symlinked_parent_raises_an_os_error_saying_why(world):
    """Through the library, restoring a path whose parent in the target is a symlink raises an
    OSError whose errno says why (the kernel's, for a symlink opened as a directory without
    following it: ENOTDIR or ELOOP) and whose text is one line."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"evil", [file_entry(store, b"bait.txt", b"pwned\n")])])
    target.mkdir()
    os.symlink(outside, target / "evil")
    with pytest.raises(OSError) as raised:
        repo.restore(snapshot_id, str(target), path="evil/bait.txt", overwrite="always")
    assert raised.value.errno in (errno.ENOTDIR, errno.ELOOP)
    assert raised.value.strerror == "refusing to restore through a symlink or non-directory"
    assert os.listdir(outside) == ["bait.txt"]


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


def test_include_leaves_directories_that_were_already_in_the_target_even_when_it_matched_nothing_in_them(world):
    """--include removes only the empty shells it made itself: a directory that was in the target
    before, empty or holding someone's files, stays as it was."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"empty", [file_entry(store, b"x.txt", b"x")]),
        dir_entry(store, b"full", [file_entry(store, b"y.txt", b"y")]),
        dir_entry(store, b"new", [file_entry(store, b"z.txt", b"z")]), file_entry(store, b"top.txt", b"t")])
    (target / "empty").mkdir(parents=True)
    write(target / "full" / "mine.txt", "someone's\n")
    result = repo.restore(snapshot_id, str(target), include=("top.txt",))
    assert result.ok and result.files == 1, result.errors
    assert sorted(p.name for p in target.iterdir()) == ["empty", "full", "top.txt"]
    assert os.listdir(target / "empty") == [] and os.listdir(target / "full") == ["mine.txt"]


# -- what a restore refuses, and where the refusal stops (restorer._refusal, the size check, options) ----


def _with_good(build_bad):
    """A snapshot builder: the entry under test beside an ordinary file, which must restore either way."""
    return lambda store: [build_bad(store), file_entry(store, b"good.txt", b"fine\n")]


def _like(entry: Entry, **changes) -> Entry:
    return dataclasses.replace(entry, **changes)


OUT_OF_RANGE = [("mode", -1), ("mode", 0o10000), ("uid", -1), ("uid", MAX_ID + 1), ("gid", -1),
                ("gid", MAX_ID + 1), ("mtime_ns", -MAX_TIME_NS - 1), ("mtime_ns", MAX_TIME_NS + 1)]
AT_THE_EDGE = [("mode", 0), ("mode", 0o7777), ("uid", 0), ("uid", MAX_ID), ("gid", 0), ("gid", MAX_ID),
               ("mtime_ns", -MAX_TIME_NS), ("mtime_ns", MAX_TIME_NS)]


@pytest.mark.parametrize(("field", "value", "refused"), [(f, v, True) for f, v in OUT_OF_RANGE]
                         + [(f, v, False) for f, v in AT_THE_EDGE], ids=lambda v: str(v))
def test_metadata_past_the_platforms_range_is_refused_naming_the_entry_and_at_its_edge_restored(
        world, field, value, refused):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(
        lambda store: _like(file_entry(store, b"meta.txt", b"metadata\n"), **{field: value})))
    result = repo.restore(snapshot_id, str(target))
    if refused:
        assert len(result.errors) == 1 and result.errors[0].startswith("meta.txt: metadata out of range (")
        assert sorted(os.listdir(target)) == ["good.txt"]
    else:
        assert result.ok, result.errors
        assert (target / "meta.txt").read_bytes() == b"metadata\n"


def _device(name: bytes, number: int, kind: EntryType = EntryType.CHARDEV) -> Entry:
    return Entry(name, kind, 0o600, os.getuid(), os.getgid(), NOW_NS, 0, 0, number)


@pytest.mark.parametrize("kind", [EntryType.CHARDEV, EntryType.BLOCKDEV])
def test_a_device_node_is_not_created_without_privileged(world, kind):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(lambda store: _device(b"null", os.makedev(1, 3), kind)))
    result = repo.restore(snapshot_id, str(target))
    assert len(result.errors) == 1 and result.errors[0].startswith("null: device node not created")
    assert sorted(os.listdir(target)) == ["good.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_a_privileged_restore_creates_device_nodes_and_refuses_a_number_out_of_range(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        _device(b"null", os.makedev(1, 3)), _device(b"zero", 0), _device(b"negative", -1),
        _device(b"largest", MAX_DEVICE), _device(b"loop", os.makedev(7, 0), EntryType.BLOCKDEV)])
    result = repo.restore(snapshot_id, str(target), privileged=True)
    # the largest number a tree can hold is not refused here: the kernel decides (Linux: EINVAL)
    assert sorted(result.errors) == ["largest: Invalid argument",
                                     "negative: device number -1 out of range; not restored"]
    st = os.lstat(target / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o600
    assert os.lstat(target / "zero").st_rdev == 0     # the smallest number is a number like any other
    st = os.lstat(target / "loop")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and stat.S_IMODE(st.st_mode) == 0o600
    assert sorted(os.listdir(target)) == ["loop", "null", "zero"]


def test_an_existing_special_file_is_left_and_counted_as_skipped(world):
    repo, outside, target = world
    fifo = Entry(b"pipe", EntryType.FIFO, 0o640, os.getuid(), os.getgid(), NOW_NS, 0)
    snapshot_id = write_snapshot(repo, lambda store: [fifo, _like(fifo, name=b"pipe2")])
    target.mkdir()
    write(target / "pipe", "a file where the snapshot has a pipe")
    os.mkfifo(target / "pipe2", 0o600)
    result = repo.restore(snapshot_id, str(target), overwrite="always")
    assert result.ok and result.skipped == 2
    assert (target / "pipe").read_text() == "a file where the snapshot has a pipe"
    assert stat.S_IMODE(os.lstat(target / "pipe2").st_mode) == 0o600     # left as it was


def _swapped_as_made(make, bait: Path, how: str):
    """`os.mkfifo`/`os.mknod` as another process racing the restore sees it: the node is made, then
    at once replaced by a symlink to `bait` or by a hard link to it (a target others can write to)."""
    def racing(name, *args, dir_fd=None):
        make(name, *args, dir_fd=dir_fd)
        os.unlink(name, dir_fd=dir_fd)
        if how.startswith("symlink"):
            os.symlink(bait, name, dir_fd=dir_fd)
        else:
            os.link(bait, name, dst_dir_fd=dir_fd)
    return racing


@pytest.mark.parametrize("how", ["symlink", "symlink to one of its kind", "hard link", "symlink, without O_PATH"])
@pytest.mark.parametrize("kind", [EntryType.FIFO, EntryType.CHARDEV])
def test_a_special_file_swapped_as_it_is_made_never_changes_the_file_put_in_its_place(world, monkeypatch, kind, how):
    """A FIFO or device node replaced right after it is made, by a symlink or a hard link to a file
    outside, is one error line; that file keeps its mode, owner and time, and the rest restores.
    (Without O_PATH, off Linux, the node's metadata is set by name, never following a symlink.)"""
    if kind is not EntryType.FIFO and os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    if how.endswith("without O_PATH"):
        monkeypatch.delattr(os, "O_PATH")
    repo, outside, target = world
    node = Entry(b"node", kind, 0o4711, 12345, 12346, NOW_NS - 7, 0, 0,
                 *([] if kind is EntryType.FIFO else [os.makedev(1, 3)]))
    snapshot_id = write_snapshot(repo, _with_good(lambda store: node))
    make = "mkfifo" if kind is EntryType.FIFO else "mknod"
    bait = outside / "bait.txt"
    if how == "symlink to one of its kind":      # what the symlink names is a node like the one made
        bait = outside / "bait.node"
        if kind is EntryType.FIFO:
            os.mkfifo(bait, 0o644)
        else:
            os.mknod(bait, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    monkeypatch.setattr(os, make, _swapped_as_made(getattr(os, make), bait, how))
    unchanged = _guard(target.parent.parent)
    before = os.lstat(bait)
    result = repo.restore(snapshot_id, str(target), privileged=True)
    unchanged()
    after = os.lstat(bait)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)
    assert len(result.errors) == 1 and result.errors[0].startswith("node: ")
    if how != "symlink, without O_PATH":     # there the platform's lchmod refuses the symlink, in its words
        assert result.errors == ["node: replaced by something else as it was made; left alone"]
    assert (target / "good.txt").read_bytes() == b"fine\n"


def test_a_symlink_swapped_for_a_hard_link_as_it_is_made_never_stamps_the_file_put_in_its_place(world, monkeypatch):
    """A symlink replaced right after it is made by a hard link to a file outside: its recorded time
    is not set on that file; one error line, and the rest restores."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(lambda store: symlink_entry(b"link", b"good.txt")))
    bait = outside / "bait.txt"
    real_symlink = os.symlink

    def racing(src, name, *args, dir_fd=None, **kwargs):
        real_symlink(src, name, *args, dir_fd=dir_fd, **kwargs)
        if name == b"link":
            os.unlink(name, dir_fd=dir_fd)
            os.link(bait, name, dst_dir_fd=dir_fd)
    monkeypatch.setattr(os, "symlink", racing)
    before = os.lstat(bait)
    result = repo.restore(snapshot_id, str(target))
    assert os.lstat(bait).st_mtime_ns == before.st_mtime_ns != NOW_NS
    assert result.errors == ["link: replaced by something else as it was made; left alone"]
    assert result.symlinks == 0 and (target / "good.txt").read_bytes() == b"fine\n"


def test_without_o_path_a_symlinks_time_is_set_by_name_on_the_symlink_itself(world, monkeypatch):
    """Off Linux (no O_PATH) a symlink's recorded time is set by its name, never following it."""
    monkeypatch.delattr(os, "O_PATH")
    repo, outside, target = world
    bait = outside / "bait.txt"
    snapshot_id = write_snapshot(repo, lambda store: [symlink_entry(b"to_outside", os.fsencode(str(bait))),
                                                      symlink_entry(b"older", b"../x", mtime_ns=NOW_NS - 5)])
    before = os.stat(bait).st_mtime_ns
    result = repo.restore(snapshot_id, str(target))
    assert result.ok and result.symlinks == 2
    assert [os.lstat(target / name).st_mtime_ns for name in ("to_outside", "older")] == [NOW_NS, NOW_NS - 5]
    assert os.stat(bait).st_mtime_ns == before


def test_restoring_one_fifo_swapped_as_it_is_made_raises_an_os_error_saying_so(world, monkeypatch):
    """Restoring that one path, the library raises the error (EEXIST: something else is there now)."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [Entry(b"node", EntryType.FIFO, 0o600, 0, 0, NOW_NS, 0)])
    monkeypatch.setattr(os, "mkfifo", _swapped_as_made(os.mkfifo, outside / "bait.txt", "symlink"))
    with pytest.raises(OSError) as raised:
        repo.restore(snapshot_id, str(target), path="node")
    assert raised.value.errno == errno.EEXIST
    assert raised.value.strerror == "replaced by something else as it was made; left alone"
    assert stat.S_IMODE(os.stat(outside / "bait.txt").st_mode) == 0o644


@pytest.mark.parametrize("o_path", [True, False], ids=["linux", "without O_PATH"])
@pytest.mark.parametrize("privileged", [False, True], ids=["plain", "privileged"])
def test_a_fifo_restores_with_its_recorded_mode_time_and_owner(world, monkeypatch, o_path, privileged):
    """mkfifo applies the umask and stamps the time of the restore: the recorded mode (setuid only
    when privileged) and time are set on the FIFO, and its owner when privileged as root, on a
    platform without O_PATH (set by name) as on Linux."""
    repo, outside, target = world
    fifo = Entry(b"pipe", EntryType.FIFO, 0o4767, 12345, 12346, NOW_NS - 9, 0)
    snapshot_id = write_snapshot(repo, lambda store: [fifo])
    if not o_path:
        monkeypatch.delattr(os, "O_PATH")
    result = repo.restore(snapshot_id, str(target), privileged=privileged)
    assert result.ok, result.errors
    st = os.lstat(target / "pipe")
    as_root = privileged and os.geteuid() == 0
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == (0o4767 if privileged else 0o767)
    assert st.st_mtime_ns == NOW_NS - 9
    assert (st.st_uid, st.st_gid) == ((12345, 12346) if as_root else (os.geteuid(), os.getegid()))


def test_an_unknown_overwrite_mode_is_refused_before_anything_is_written(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, b"f.txt", b"x")])
    with pytest.raises(RestoreError, match="^--overwrite must be one of never, if-changed, always$"):
        repo.restore(snapshot_id, str(target), overwrite="sometimes")
    assert not target.exists()


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_a_file_whose_chunks_do_not_hold_its_recorded_size_is_one_error_and_not_written(world, verify, delta):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        file_entry(store, b"before.txt", b"before\n"),
        _like(file_entry(store, b"liar.txt", b"twelve bytes"), size=12 + delta),
        file_entry(store, b"next.txt", b"after\n")])
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.errors == [f"liar.txt: size recorded as {12 + delta} but its chunks hold 12 bytes "
                             "(corrupt or hostile)"]
    # the files around it are restored
    assert sorted(os.listdir(target)) == ["before.txt", "next.txt"] and result.files == 2


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_name_the_file_system_cannot_hold_is_one_error_naming_it(world, verify):
    repo, outside, target = world
    long_name = b"n" * 300
    snapshot_id = write_snapshot(repo, _with_good(lambda store: file_entry(store, long_name, b"x")))
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.errors == [f"{long_name.decode()}: File name too long"]
    assert sorted(os.listdir(target)) == ["good.txt"] and result.files == 1


@pytest.mark.parametrize("overwrite", ["never", "if-changed", "always"])
@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_directory_in_the_way_of_a_file_is_an_error_and_left_alone(world, overwrite, verify):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(lambda store: file_entry(store, b"f.txt", b"from snapshot")))
    write(target / "f.txt" / "mine.txt", "mine")
    result = repo.restore(snapshot_id, str(target), overwrite=overwrite, verify=verify)
    assert result.errors == ["f.txt: a directory is in the way"] and result.existing == 0
    assert (target / "f.txt" / "mine.txt").read_text() == "mine" and result.files == 1


@pytest.mark.parametrize("existing", [EXISTING_SHOWN, EXISTING_SHOWN + 1])
def test_overwrite_never_counts_every_existing_file_and_names_the_first_ones(world, existing):
    repo, outside, target = world
    names = [f"f{i:02}.txt" for i in range(existing)]
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, n.encode(), b"snapshot") for n in names])
    for name in names:
        write(target / name, "mine")
    result = repo.restore(snapshot_id, str(target))
    assert not result.ok and result.errors == []
    assert result.existing == existing and len(result.existing_paths) == EXISTING_SHOWN
    assert set(result.existing_paths) <= set(names)
    assert all((target / n).read_text() == "mine" for n in names)


def test_restoring_one_path_whose_name_is_unsafe_is_refused_and_writes_nothing(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(lambda store: file_entry(store, b"nul\0byte", b"pwned\n")))
    with pytest.raises(RestoreError, match="is not a path inside the snapshot"):
        repo.restore(snapshot_id, str(target), path="nul\0byte")
    assert not target.exists() or os.listdir(target) == []


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_tree_deeper_than_the_open_descriptor_bound_restores_every_level_with_its_metadata(world, verify):
    """Past MAX_OPEN_DIRS levels the shallow directories' descriptors are closed and reopened
    through `..` (identity checked) to set their modes and times: every level ends as recorded."""
    repo, outside, target = world
    depth = MAX_OPEN_DIRS + 6

    def build(store):
        children: list[Entry] = [file_entry(store, b"bottom.txt", b"the bottom\n", mtime_ns=NOW_NS - 1)]
        for level in reversed(range(depth)):
            children = [dir_entry(store, b"d%d" % level, children, mode=0o750, mtime_ns=NOW_NS - 1000 * level),
                        file_entry(store, b"f%d.txt" % level, b"level %d\n" % level, mtime_ns=NOW_NS - level)]
        return children

    snapshot_id = write_snapshot(repo, build)
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.ok, result.errors[:3]
    assert (result.dirs, result.files) == (depth, depth + 1)
    state = tree_state(target)
    path = b""
    for level in range(depth):
        assert state[path + b"f%d.txt" % level][2] == NOW_NS - level
        path += b"d%d" % level
        assert state[path][:3] == ("dir", 0o750, NOW_NS - 1000 * level), path
        path += b"/"
    assert state[path + b"bottom.txt"][2] == NOW_NS - 1


def test_a_socket_is_never_created_and_an_existing_symlink_is_kept_under_overwrite_never(world):
    repo, outside, target = world
    socket = Entry(b"sock", EntryType.SOCKET, 0o755, os.getuid(), os.getgid(), NOW_NS, 0)
    snapshot_id = write_snapshot(repo, lambda store: [socket, symlink_entry(b"link", b"from snapshot")])
    target.mkdir()
    os.symlink("mine", target / "link")
    result = repo.restore(snapshot_id, str(target))
    assert (result.errors, result.existing, result.existing_paths, result.symlinks) == ([], 1, ["link"], 0)
    assert os.listdir(target) == ["link"] and os.readlink(target / "link") == "mine"


@pytest.mark.parametrize("dry_run", [False, True], ids=["restore", "dry-run"])
def test_a_symlink_whose_target_holds_a_nul_is_one_error_naming_it_and_not_counted(world, dry_run):
    """No file system holds a symlink target with a NUL byte (a hostile tree can): it is one error
    line naming the link and why, it is not counted among the symlinks restored, and the rest restores.
    A dry run, which creates nothing, counts it."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        symlink_entry(b"bad", b"a\0b"), symlink_entry(b"good", b"f.txt"), file_entry(store, b"f.txt", b"x")])
    result = repo.restore(snapshot_id, str(target), dry_run=dry_run)
    if dry_run:
        assert result.ok and (result.symlinks, result.files) == (2, 1)
        return
    assert result.errors == ["bad: symlink: embedded null character in src"]
    assert (result.symlinks, result.files) == (1, 1)
    assert sorted(os.listdir(target)) == ["f.txt", "good"] and os.readlink(target / "good") == "f.txt"


def test_a_dry_run_of_special_files_creates_nothing(world):
    repo, outside, target = world
    fifo = Entry(b"pipe", EntryType.FIFO, 0o640, os.getuid(), os.getgid(), NOW_NS, 0)
    snapshot_id = write_snapshot(repo, lambda store: [fifo, file_entry(store, b"f.txt", b"x")])
    result = repo.restore(snapshot_id, str(target), dry_run=True)
    assert result.ok and result.files == 1 and not target.exists()


def test_many_sibling_directories_of_small_files_each_end_with_their_own_metadata(world):
    """More directories than the restore sets aside while their files are written (DEFERRED_DIRS):
    each is finished, oldest first, with its recorded mode and time, and its files whole."""
    repo, outside, target = world
    count = 3 * DEFERRED_DIRS

    def build(store):
        return [dir_entry(store, b"d%02d" % i, [file_entry(store, b"f%d.txt" % j, b"%d.%d\n" % (i, j))
                                                for j in range(5)],
                          mode=0o700 + i % 8 * 0o10, mtime_ns=NOW_NS - i) for i in range(count)]

    snapshot_id = write_snapshot(repo, build)
    result = repo.restore(snapshot_id, str(target))
    assert result.ok and (result.dirs, result.files) == (count, 5 * count)
    state = tree_state(target)
    for i in range(count):
        assert state[b"d%02d" % i][:3] == ("dir", 0o700 + i % 8 * 0o10, NOW_NS - i)
        assert (target / f"d{i:02}" / "f4.txt").read_bytes() == b"%d.4\n" % i


def _deep_tree(depth: int, bottom: bytes):
    """A chain d0/d1/.../d{depth-1} with `bottom.txt` (holding `bottom`) at its end."""
    def build(store):
        children: list[Entry] = [file_entry(store, b"bottom.txt", bottom)]
        for level in reversed(range(depth)):
            children = [dir_entry(store, b"d%d" % level, children)]
        return children
    return build


def test_a_directory_opened_as_descriptor_0_is_reopened_like_any_other_past_the_descriptor_bound(world):
    """A process started with stdin closed (by cron, a daemon) hands out descriptor 0 like any other:
    a directory the restore opened as 0, closed past MAX_OPEN_DIRS levels and reopened through `..`
    (identity checked), is the same directory, and the whole deep tree restores."""
    repo, outside, target = world
    depth = MAX_OPEN_DIRS + 6
    data = b"0" * 2345         # a length no other write has: the moment the first file is written

    def build(store):
        chain = _deep_tree(depth, b"the bottom\n")(store)
        return [*chain, file_entry(store, b"first.bin", data)]

    snapshot_id = write_snapshot(repo, build)
    stdin = os.dup(0)
    closed: list[int] = []

    def progress(n: int) -> None:
        if n == len(data) and not closed:
            os.close(0)        # from now on the next directory opened is descriptor 0
            closed.append(n)

    try:
        result = repo.restore(snapshot_id, str(target), progress=progress, verify=True)   # the walk writes it
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
    assert closed and result.ok, result.errors[:3]
    assert (result.dirs, result.files) == (depth, 2)
    assert (target / "/".join(f"d{i}" for i in range(depth)) / "bottom.txt").read_bytes() == b"the bottom\n"


def test_a_closed_ancestor_moved_away_during_the_restore_is_reported_and_never_written_through(world):
    """Past MAX_OPEN_DIRS levels an ancestor's descriptor is reopened through `..` only if it is
    still the same directory; one moved out of the chain is reported as moved, once for each
    closed ancestor cut off, and nothing more is written into or through its old place."""
    repo, outside, target = world
    bottom = b"b" * 4321      # a length no other write has: the moment to move a directory
    snapshot_id = write_snapshot(repo, _deep_tree(MAX_OPEN_DIRS + 6, bottom))
    moved: list[int] = []

    def progress(n: int) -> None:
        if n == len(bottom) and not moved:
            os.rename(target / "d0" / "d1" / "d2" / "d3", target / "moved")
            moved.append(n)

    unchanged = _guard(target.parent.parent)
    result = repo.restore(snapshot_id, str(target), verify=True, progress=progress)
    unchanged()
    assert moved and result.files == 1
    assert result.errors == [f"{p}: moved during the restore; the rest of it is skipped"
                             for p in ("d0/d1/d2", "d0/d1", "d0")]
    assert sorted(os.listdir(target)) == ["d0", "moved"] and os.listdir(target / "d0" / "d1" / "d2") == []
    chain = target / "moved" / "/".join(f"d{level}" for level in range(4, MAX_OPEN_DIRS + 6))
    assert (chain / "bottom.txt").read_bytes() == bottom


def test_a_dry_run_of_one_path_creates_nothing_and_counts_it(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _deep_tree(3, b"deep\n"))
    result = repo.restore(snapshot_id, str(target), path="d0/d1/d2/bottom.txt", dry_run=True)
    assert result.ok and (result.files, result.bytes) == (1, 5) and not target.exists()


def test_a_directory_name_the_file_system_cannot_hold_is_one_error_and_its_siblings_restore(world):
    repo, outside, target = world
    long_name = b"d" * 300
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, long_name, [file_entry(store, b"inside.txt", b"x")]),
        file_entry(store, b"good.txt", b"fine\n"),
        dir_entry(store, b"later", [file_entry(store, b"inside.txt", b"y")], mode=0o711, mtime_ns=NOW_NS - 7)])
    result = repo.restore(snapshot_id, str(target))
    assert result.errors == [f"{long_name.decode()}: File name too long"]
    assert sorted(os.listdir(target)) == ["good.txt", "later"] and (result.files, result.dirs) == (2, 1)
    assert (target / "later" / "inside.txt").read_bytes() == b"y"
    assert tree_state(target)[b"later"][:3] == ("dir", 0o711, NOW_NS - 7)


def test_a_directory_left_with_its_files_still_being_written_below_a_closed_ancestor_ends_as_recorded(world):
    """The only small files sit shallow (in d6) in a chain deeper than MAX_OPEN_DIRS: when the
    walk leaves d6 its batch may still be in flight, its parent's descriptor was closed, so the
    parent is reopened through `..` to keep d6 aside. Every level still ends as recorded."""
    repo, outside, target = world
    depth, shallow = MAX_OPEN_DIRS + 6, 6

    def build(store):
        children: list[Entry] = []
        for level in reversed(range(depth)):
            files = [file_entry(store, b"f%d.txt" % i, b"%d\n" % i) for i in range(3)] if level == shallow else []
            children = [dir_entry(store, b"d%d" % level, children + files, mode=0o750,
                                  mtime_ns=NOW_NS - 1000 * level)]
        return children

    snapshot_id = write_snapshot(repo, build)
    result = repo.restore(snapshot_id, str(target))
    assert result.ok, result.errors[:3]
    assert (result.dirs, result.files) == (depth, 3)
    state = tree_state(target)
    path = b""
    for level in range(depth):
        path += b"d%d" % level
        assert state[path][:3] == ("dir", 0o750, NOW_NS - 1000 * level), path
        path += b"/"
    shallow_dir = target.joinpath(*(f"d{level}" for level in range(shallow + 1)))
    assert sorted(p.name for p in shallow_dir.iterdir()) == ["d7", "f0.txt", "f1.txt", "f2.txt"]
    assert (shallow_dir / "f2.txt").read_bytes() == b"2\n"


def _hard_linked_twice(repo, data: bytes) -> str:
    """A snapshot of one file with two names, a/first and b/second (hard links: link group 7)."""
    def build(store):
        first = _like(file_entry(store, b"first", data), link=7)
        return [dir_entry(store, b"a", [first]), dir_entry(store, b"b", [_like(first, name=b"second")])]

    return write_snapshot(repo, build)


def test_a_hard_link_whose_first_copy_vanished_during_the_restore_is_restored_as_a_copy(world):
    repo, outside, target = world
    data = b"l" * 5432         # a length no other write has: the moment the first copy is written

    snapshot_id = _hard_linked_twice(repo, data)
    removed: list[int] = []

    def progress(n: int) -> None:
        if n == len(data) and not removed:
            os.unlink(target / "a" / "first")     # someone else removes it as soon as it exists
            removed.append(n)

    result = repo.restore(snapshot_id, str(target), progress=progress)
    assert removed and result.ok and result.files == 2
    assert (target / "b" / "second").read_bytes() == data and os.stat(target / "b" / "second").st_nlink == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_hard_link_group_whose_first_copy_vanished_restores_its_other_names_and_holds_nothing_open(world, verify):
    """A group of three names whose first copy is removed as soon as it is written: the other two
    restore whole (as copies), and once the restore returns it holds no descriptor below the target."""
    repo, outside, target = world
    data = b"v" * 4321         # a length no other write has: the moment the first copy is written

    def build(store):
        first = _like(file_entry(store, b"first", data), link=9)
        return [dir_entry(store, b"a", [first, file_entry(store, b"plain.txt", b"p")]),
                dir_entry(store, b"b", [_like(first, name=b"second"), file_entry(store, b"plain.txt", b"q")]),
                dir_entry(store, b"c", [_like(first, name=b"third")])]

    snapshot_id = write_snapshot(repo, build)
    removed: list[int] = []

    def progress(n: int) -> None:
        if n == len(data) and not removed:
            os.unlink(target / "a" / "first")
            removed.append(n)

    result = repo.restore(snapshot_id, str(target), progress=progress, verify=verify)
    assert removed and result.ok and result.files == 5
    assert (target / "b" / "second").read_bytes() == data and (target / "c" / "third").read_bytes() == data
    assert _open_below(target) == []


def test_at_most_max_link_groups_are_restored_as_links_and_the_rest_as_copies(world):
    """Each hard-link group restored as links keeps the first copy's directory open until the end,
    so at most MAX_LINK_GROUPS groups are; the second names of later groups are whole copies."""
    repo, outside, target = world
    groups = MAX_LINK_GROUPS + 1

    def build(store):
        firsts = [_like(file_entry(store, b"g%04d" % i, b"%d\n" % i), link=i + 1) for i in range(groups)]
        return [dir_entry(store, b"a", firsts), dir_entry(store, b"b", firsts)]

    snapshot_id = write_snapshot(repo, build)
    result = repo.restore(snapshot_id, str(target))
    assert result.ok and result.files == 2 * groups
    second = sorted((target / "b").iterdir())
    assert [p.read_bytes() for p in second] == [b"%d\n" % i for i in range(groups)]
    linked = [p.name for p in second if p.stat().st_nlink == 2]
    assert linked == [f"g{i:04d}" for i in range(MAX_LINK_GROUPS)]


# -- faults the file system raises part way (session 10: the error paths the full mutation run reaches) --


@contextlib.contextmanager
def _immutable(path: Path):
    """`path` made immutable (chattr +i: even root cannot create in it or change its metadata)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
        pytest.skip("the file system or this process cannot make a directory immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


@pytest.mark.parametrize("privileged", [False, True], ids=["plain", "privileged"])
@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_directory_that_refuses_its_files_and_its_metadata_is_one_error_each_and_the_rest_restores(
        world, verify, privileged):
    """An existing directory nothing may change (immutable): the file that replaces an existing
    one, the new file and the directory's own mode and time are each one error naming it; the
    existing file is left as it was and the rest of the snapshot restores. Restoring its owner as
    root (privileged) is best effort: refused too, it adds no error of its own."""
    if privileged and os.geteuid() != 0:
        pytest.skip("setting another owner needs root")
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, _with_good(lambda store: dir_entry(store, b"locked", [
        file_entry(store, b"existing.txt", b"from the snapshot"), file_entry(store, b"new.txt", b"new"),
        file_entry(store, b"newer.txt", b"newer")], mode=0o700, mtime_ns=NOW_NS - 5)))
    write(target / "locked" / "existing.txt", "mine")
    with _immutable(target / "locked"):
        result = repo.restore(snapshot_id, str(target), overwrite="always", verify=verify, privileged=privileged)
    assert result.errors == ["locked/existing.txt: Operation not permitted", "locked/new.txt: Operation not permitted",
                             "locked/newer.txt: Operation not permitted", "locked: Operation not permitted"]
    assert (result.files, result.dirs) == (1, 1) and (target / "good.txt").read_bytes() == b"fine\n"
    assert os.listdir(target / "locked") == ["existing.txt"]
    assert (target / "locked" / "existing.txt").read_text() == "mine"


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """This process (the restore's threads with it) may not grow a file past `limit` bytes: a
    write past it fails with EFBIG ("File too large"), as on a full or quota-bound disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # the error, not the signal that kills by default
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_file_the_disk_refuses_part_way_is_one_error_and_leaves_nothing_of_it(world, verify):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        file_entry(store, b"a.txt", b"before\n"), file_entry(store, b"big.bin", det_bytes(100 * KiB, "big")),
        file_entry(store, b"z.txt", b"after\n")])
    with _file_size_limit(64 * KiB):
        result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.errors == ["big.bin: File too large"]
    assert sorted(os.listdir(target)) == ["a.txt", "z.txt"] and result.files == 2


def test_a_set_aside_directory_moved_out_of_its_closed_parent_is_reported_and_the_rest_skipped(world):
    """d6 holds the only small files of a chain deeper than MAX_OPEN_DIRS, so it is set aside (its
    files still being written) when the walk leaves it, and its parent's descriptor was closed:
    d6 was moved out of that parent meanwhile, so the parent cannot be reopened through d6's
    `..`. Each closed ancestor cut off is reported once; d6 ends whole where it now is."""
    repo, outside, target = world
    depth, shallow = MAX_OPEN_DIRS + 6, 6
    bottom = b"m" * 6543        # a length no other write has: the moment to move d6 (a linked file: the walk writes it)

    def build(store):
        children: list[Entry] = [_like(file_entry(store, b"bottom", bottom), link=9)]
        for level in reversed(range(depth)):
            files = [file_entry(store, b"f%d.txt" % i, b"%d\n" % i) for i in range(3)] if level == shallow else []
            children = [dir_entry(store, b"d%d" % level, children + files, mode=0o750)]
        return children

    snapshot_id = write_snapshot(repo, build)
    chain = [f"d{level}" for level in range(depth)]
    moved: list[int] = []

    def progress(n: int) -> None:
        if n == len(bottom) and not moved:
            os.rename(target.joinpath(*chain[:shallow + 1]), target / "moved")
            moved.append(n)

    unchanged = _guard(target.parent.parent)
    result = repo.restore(snapshot_id, str(target), progress=progress)
    unchanged()
    assert moved
    assert result.errors == ["/".join(chain[:level]) + ": moved during the restore; the rest of it is skipped"
                             for level in range(shallow, 0, -1)]
    assert os.listdir(target.joinpath(*chain[:shallow])) == []       # nothing written into its old place
    assert sorted(os.listdir(target / "moved")) == ["d7", "f0.txt", "f1.txt", "f2.txt"]
    assert (target / "moved" / "f2.txt").read_bytes() == b"2\n" and result.files == 4
    assert (target / "moved").joinpath(*chain[shallow + 1:], "bottom").read_bytes() == bottom


def _open_below(root: Path) -> list[str]:
    """What this process holds open below `root` (its descriptors, from /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue        # the listing's own descriptor, closed by now
        if where == str(root) or where.startswith(f"{root}/"):
            held.append(where)
    return held


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("packs", ["kept", "deleted"])
def test_a_restore_that_ends_or_fails_part_way_holds_nothing_of_the_target_open(world, packs):
    """The directories being walked, those set aside while their small files are written and each
    batch keep a descriptor: once the restore returns, or fails part way down when their data
    cannot be read, none is left open."""
    repo, outside, target = world
    count = DEFERRED_DIRS + 3
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"p", [
        dir_entry(store, b"d%02d" % i, [file_entry(store, b"f%d.txt" % j, b"%d.%d\n" % (i, j)) for j in range(3)])
        for i in range(count)])])
    if packs == "deleted":
        for pack in objects(target.parent.parent / "repo", "data"):     # the file data's; the trees' stay
            if parse_header(pack.read_bytes(), 1 << 24)[0].kind == KIND_DATA:
                pack.unlink()
        with pytest.raises(IntegrityError, match="^data blob .* cannot be read"):
            repo.restore(snapshot_id, str(target))
        assert os.listdir(target)      # it failed part way: its first directories were made
    else:
        result = repo.restore(snapshot_id, str(target))
        assert result.ok and (result.dirs, result.files) == (count + 1, 3 * count)
    assert _open_below(target) == []


class _SlowPacks(RemoteWrapper):
    """A remote whose reads of the packs in `slow` wait until `failing` is set, then a second more:
    what a small-file batch reads is still being read when the restore fails."""

    slow: set[str] = set()
    failing = threading.Event()

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        if key in self.slow:
            self.failing.wait(10)
            time.sleep(1)
        return super()._get(key, offset, length, large=large)


def test_a_restore_that_fails_returns_only_once_nothing_of_it_is_left_writing(world):
    """A restore that fails while a batch of small files is being written returns (raises) only once
    that batch is done: no thread of the restore is left writing below a directory whose
    descriptor it has closed (a descriptor number the process may reuse for anything)."""
    repo, outside, target = world
    repo_dir = target.parent.parent / "repo"
    small = b"a small file\n"
    write_snapshot(repo, lambda store: [file_entry(store, b"small.txt", small)])
    _SlowPacks.slow = {str(p.relative_to(repo_dir)) for p in objects(repo_dir, "data")}
    _SlowPacks.failing = threading.Event()
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"d", [
        file_entry(store, b"small.txt", small),
        _like(file_entry(store, b"walked.bin", b"w" * 3333), link=5)])])   # a hard link: the walk writes it

    def progress(n: int) -> None:
        if n == 3333:
            _SlowPacks.failing.set()
            raise RuntimeError("the disk went away")

    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="^the disk went away$"):
        open_repo(repo_dir, remote_wrapper=_SlowPacks).restore(snapshot_id, str(target), progress=progress)
    assert [t.name for t in threading.enumerate() if t not in before and t.is_alive()] == []
    assert _open_below(target) == []


def test_a_repository_on_a_remote_restores_its_small_files_read_through_the_blob_store(tmp_path):
    repo = Repository.init_remote(MemoryRemote(), load_settings({"host": "testhost"}))
    contents = {b"f%02d.txt" % i: b"small file %d\n" % i * (i + 1) for i in range(40)}
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"d", [file_entry(store, name, data) for name, data in contents.items()])])
    result = repo.restore(snapshot_id, str(tmp_path / "out"))
    assert result.ok and result.files == len(contents)
    assert {os.fsencode(p.name): p.read_bytes() for p in (tmp_path / "out" / "d").iterdir()} == contents


@pytest.mark.parametrize(("how", "error"), [("append", "restored file is longer than the snapshot says"),
                                             ("overwrite", "restored content does not verify")])
def test_verify_reports_a_file_changed_while_it_was_restored_and_leaves_nothing_of_it(world, how, error):
    """--verify reads back what was written: a file someone appended to meanwhile is longer than
    the snapshot says, one someone wrote into no longer matches its chunks; either is one error
    naming it, and it is removed; its siblings restore."""
    repo, outside, target = world
    data = b"g" * 7654         # a length no other write has: the moment the file's bytes are written
    snapshot_id = write_snapshot(repo, _with_good(lambda store: file_entry(store, b"changed.bin", data)))
    changed: list[int] = []

    def progress(n: int) -> None:
        if n == len(data) and not changed:
            with open(target / "changed.bin", "ab" if how == "append" else "r+b") as other:
                other.write(b"written by someone else")
            changed.append(n)

    result = repo.restore(snapshot_id, str(target), verify=True, progress=progress)
    assert changed and result.errors == [f"changed.bin: {error}"]
    assert os.listdir(target) == ["good.txt"] and result.files == 1


@pytest.mark.parametrize("privileged", [False, True], ids=["plain", "privileged"])
@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_recorded_owners_are_restored_only_by_a_privileged_restore(world, privileged, verify):
    """The recorded owner and group of files, directories and special files are set only when
    restoring with --privileged (as root); otherwise what is made belongs to whoever restores."""
    if privileged and os.geteuid() != 0:
        pytest.skip("setting another owner needs root")
    repo, outside, target = world
    fifo = Entry(b"pipe", EntryType.FIFO, 0o640, 12347, 12348, NOW_NS, 0)
    snapshot_id = write_snapshot(repo, lambda store: [_like(dir_entry(store, b"d", [
        _like(file_entry(store, b"f.txt", b"owned\n"), uid=12345, gid=12346), fifo]), uid=12343, gid=12344)])
    result = repo.restore(snapshot_id, str(target), privileged=privileged, verify=verify)
    assert result.ok, result.errors
    owners = {name: (os.lstat(target / name).st_uid, os.lstat(target / name).st_gid)
              for name in ("d", "d/f.txt", "d/pipe")}
    mine = (os.geteuid(), os.getegid())
    assert owners == ({"d": (12343, 12344), "d/f.txt": (12345, 12346), "d/pipe": (12347, 12348)} if privileged
                      else dict.fromkeys(owners, mine))


def test_restoring_one_directory_names_and_selects_what_is_below_it_by_its_path_in_the_snapshot(world):
    """`--path a/b` restores a/b below the target; the patterns and the error lines of what lies
    below it use the entries' paths in the snapshot (a/b/...), as a whole restore does."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"a", [dir_entry(store, b"b", [
        file_entry(store, b"keep.txt", b"kept\n"), file_entry(store, b"skip.txt", b"skipped\n"),
        _like(file_entry(store, b"meta.txt", b"x"), uid=-1), file_entry(store, b"z.txt", b"after\n")])])])
    result = repo.restore(snapshot_id, str(target), path="a/b", exclude=("a/b/skip.txt",))
    assert len(result.errors) == 1 and result.errors[0].startswith("a/b/meta.txt: metadata out of range (")
    assert sorted(os.listdir(target / "a" / "b")) == ["keep.txt", "z.txt"] and (result.files, result.dirs) == (2, 1)


def test_an_exclude_pattern_for_directories_leaves_files_of_that_name(world):
    """A pattern ending in `/` (gitignore) names directories only: `cache/` excludes every directory
    called cache, never a file called cache."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"a", [dir_entry(store, b"cache", [file_entry(store, b"c.bin", b"c")]),
                                file_entry(store, b"x.txt", b"x")]),
        dir_entry(store, b"b", [file_entry(store, b"cache", b"a file called cache\n")])])
    result = repo.restore(snapshot_id, str(target), exclude=("cache/",))
    assert result.ok and (result.files, result.dirs) == (2, 2)
    assert sorted(os.listdir(target / "a")) == ["x.txt"]
    assert (target / "b" / "cache").read_bytes() == b"a file called cache\n"


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_progress_counts_every_byte_restored_once(world, verify):
    """The progress callback is told each file's bytes as they are written, by the batches or the
    walk: its sum is the restore's byte count, the sum of the files' sizes."""
    repo, outside, target = world
    sizes = [0, 1, 4096, 70_000, 1 << 20]
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"d%d" % i, [file_entry(store, b"f%d" % j, det_bytes(size + j, seed=i)) for j in range(3)])
        for i, size in enumerate(sizes)])
    told: list[int] = []
    result = repo.restore(snapshot_id, str(target), verify=verify, progress=told.append)
    expected = sum(3 * size + 3 for size in sizes)
    assert result.ok and result.bytes == expected and sum(told) == expected


def test_a_directory_is_private_to_the_restore_until_its_recorded_mode_is_set(world):
    """While its files are being written a new directory is open to nobody else (0o700), whatever its
    recorded mode: another user cannot reach a file through it before the restore has set both."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"open", [
        file_entry(store, b"f.bin", b"f" * 3210)], mode=0o755), dir_entry(store, b"shut", [], mode=0o700)])
    seen: list[int] = []

    def progress(n: int) -> None:
        if n == 3210:
            seen.append(stat.S_IMODE(os.stat(target / "open").st_mode))

    result = repo.restore(snapshot_id, str(target), verify=True, progress=progress)   # the walk writes f.bin
    assert result.ok and seen == [0o700]
    assert stat.S_IMODE(os.stat(target / "open").st_mode) == 0o755


def test_a_snapshot_past_the_budgets_floor_restores_when_its_summary_declares_it(world):
    """Without a summary a walk may visit 100,000 entries (a hostile DAG's bound); a snapshot whose
    summary declares more files restores them all (a dry run: the trees are what is walked)."""
    repo, outside, target = world
    count = 100_001

    def build(store):
        one = file_entry(store, b"x", b"x")
        return [dataclasses.replace(one, name=b"f%06d" % i) for i in range(count)]

    snapshot_id = write_snapshot(repo, build, summary={"files_total": count, "dirs_total": 0, "bytes_total": count})
    result = repo.restore(snapshot_id, str(target), dry_run=True)
    assert result.ok and result.files == count


@pytest.mark.parametrize("path", ["", "a/b"])
def test_a_tree_whose_walk_would_never_end_is_refused_before_anything_is_written(world, path):
    """One subtree referenced twice at each of 60 levels (2**60 paths; the snapshot records none):
    the restore, whole or of one directory in it, is refused before it creates anything."""
    repo, outside, target = world

    def build(store):
        children = [file_entry(store, b"f", b"leaf\n")]
        for _ in range(60):
            children = [dir_entry(store, b"a", children), dir_entry(store, b"b", children)]
        return children

    snapshot_id = write_snapshot(repo, build)
    with pytest.raises(IntegrityError, match=r"far more entries than it records \(\d+ to walk; corrupt or hostile\)"):
        repo.restore(snapshot_id, str(target), path=path)
    assert not target.exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["restore", "dry-run"])
def test_restore_json_reports_each_count_under_its_name(world, dry_run):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        file_entry(store, b"f.txt", b"12345"), symlink_entry(b"link", b"f.txt"), dir_entry(store, b"d", [])])
    out = invoke("--repo", target.parent.parent / "repo", "restore", snapshot_id[:8], target, "--json",
                 *(["--dry-run"] if dry_run else []))
    assert json.loads(out.stdout) == {"files": 1, "dirs": 1, "symlinks": 1, "bytes": 5, "skipped": 0,
                                      "dry_run": dry_run, "errors": [], "existing": 0, "existing_paths": [],
                                      "ok": True}


def test_a_first_copy_replaced_by_a_symlink_during_the_restore_never_links_what_it_points_at(world):
    """The second name of a hard-linked file is linked to the first copy restored; a first copy
    swapped for a symlink to a file outside meanwhile is never followed: the outside file gains
    no name inside the target."""
    repo, outside, target = world
    data = b"s" * 5678         # a length no other write has: the moment the first copy is written

    snapshot_id = _hard_linked_twice(repo, data)
    swapped: list[int] = []

    def progress(n: int) -> None:
        if n == len(data) and not swapped:
            os.unlink(target / "a" / "first")
            os.symlink(outside / "bait.txt", target / "a" / "first")
            swapped.append(n)

    unchanged = _guard(target.parent.parent)
    result = repo.restore(snapshot_id, str(target), progress=progress)
    unchanged()
    assert swapped and result.ok and result.files == 2
    assert os.lstat(target / "b" / "second").st_ino != os.stat(outside / "bait.txt").st_ino
    assert os.stat(outside / "bait.txt").st_nlink == 1


def test_overwrite_if_changed_counts_every_unchanged_file_it_skips(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, b"%d.txt" % i, b"same") for i in range(3)])
    for i in range(3):
        write(target / f"{i}.txt", "same", mtime_ns=NOW_NS)
    write(target / "2.txt", "edit", mtime_ns=NOW_NS - 1)
    result = repo.restore(snapshot_id, str(target), overwrite="if-changed")
    assert result.ok and (result.skipped, result.files) == (2, 1)


def test_overwrite_if_changed_replaces_a_file_where_the_snapshot_has_a_symlink_even_of_its_size_and_time(world):
    """--overwrite if-changed skips only what is unchanged: a regular file where the snapshot has a
    symlink is replaced by the symlink, even when its size and time are the symlink's."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [symlink_entry(b"link", b"f.txt"),
                                                      file_entry(store, b"f.txt", b"x")])
    write(target / "link", "f.txt", mtime_ns=NOW_NS)     # the symlink's size (5 bytes) and time
    result = repo.restore(snapshot_id, str(target), overwrite="if-changed")
    assert result.ok and (result.skipped, result.symlinks, result.files) == (0, 1, 1)
    assert os.readlink(target / "link") == "f.txt"


def test_restoring_one_symlink_that_exists_names_it_among_the_existing(world):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"d", [symlink_entry(b"link", b"theirs")])])
    write(target / "d" / "mine.txt", "mine")
    os.symlink("mine.txt", target / "d" / "link")
    result = repo.restore(snapshot_id, str(target), path="d/link")
    assert (result.existing, result.existing_paths, result.symlinks) == (1, ["d/link"], 0)
    assert os.readlink(target / "d" / "link") == "mine.txt"


@pytest.mark.parametrize("path", ["", "d\udce9/f\udcff.txt"], ids=["whole", "one path"])
def test_names_that_are_not_utf8_restore_as_the_bytes_recorded_whole_or_by_path(world, path):
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"d\xe9", [file_entry(store, b"f\xff.txt", b"x")])])
    result = repo.restore(snapshot_id, str(target), path=path)
    assert result.ok and result.files == 1
    assert os.listdir(os.fsencode(target)) == [b"d\xe9"]
    assert os.listdir(os.fsencode(target / "d\udce9")) == [b"f\xff.txt"]


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_any_chunk_restores_byte_for_byte_and_only_zeros_become_holes(world, verify):
    repo, outside, target = world
    contents = {b"ones.bin": b"\x01" * 8192, b"zeros.bin": bytes(8192), b"ff.bin": b"\xff" * 4096,
                b"mixed.bin": bytes(4096) + b"\x01" * 4096 + bytes(4096)}
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, n, d) for n, d in contents.items()])
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.ok and result.files == len(contents)
    assert {os.fsencode(p.name): p.read_bytes() for p in target.iterdir()} == contents


def test_a_directory_of_more_small_files_than_batches_in_flight_ends_with_its_own_time(world):
    """More small files in one directory than MAX_BATCHES batches hold: the restore waits for its
    oldest batches while listing it, and sets the directory's time only after the last of its
    files is written (a file created after would move it)."""
    repo, outside, target = world
    count = (MAX_BATCHES + 2) * SMALL_BATCH_FILES
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"d", [
        file_entry(store, b"f%04d" % i, b"%d\n" % i) for i in range(count)], mode=0o750, mtime_ns=NOW_NS - 5)])
    result = repo.restore(snapshot_id, str(target))
    assert result.ok and (result.files, result.dirs) == (count, 1)
    assert tree_state(target)[b"d"][:3] == ("dir", 0o750, NOW_NS - 5)
    assert len(os.listdir(target / "d")) == count


class _ReadsRecorded(RemoteWrapper):
    """A repository's remote that notes the key of every object read."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.read: list[str] = []

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self.read.append(key)
        return super()._get(key, offset, length, large=large)


def test_a_dry_run_reads_the_trees_and_no_file_data(world):
    """A dry run counts what a restore would write from the trees alone: no pack of file data is
    read (on a remote repository each read is a request)."""
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"d%02d" % i, [file_entry(store, b"f%d" % j, b"%d.%d\n" % (i, j) * 100) for j in range(3)])
        for i in range(30)])
    repo_dir = target.parent.parent / "repo"
    data_packs = {str(p.relative_to(repo_dir)) for p in objects(repo_dir, "data")
                  if parse_header(p.read_bytes(), 1 << 24)[0].kind == KIND_DATA}
    recorded = open_repo(repo_dir, remote_wrapper=_ReadsRecorded)
    result = recorded.restore(snapshot_id, str(target), dry_run=True)
    assert result.ok and (result.dirs, result.files) == (30, 90) and not target.exists()
    assert data_packs and recorded.remote.read and not data_packs & set(recorded.remote.read)


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_a_snapshot_whose_trees_outgrow_the_tree_cache_restores_whole(world, monkeypatch, verify):
    """Trees past the reader's cache are decoded again for each directory and dropped after it
    (their entries freed, their memory reused): directories of symlinks and files each restore
    whole, every file from its own chunks."""
    monkeypatch.setattr("casstore.read.reader.TREE_CACHE_ENTRIES", 0)
    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [dir_entry(store, b"d%02d" % i, [
        *(symlink_entry(b"l%d" % k, b"f0") for k in range(20)),
        *(file_entry(store, b"f%d" % k, b"%d-%d." % (i, k) * 3000) for k in range(3))]) for i in range(40)])
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.ok, result.errors[:3]
    assert (result.dirs, result.files, result.symlinks) == (40, 120, 800)
    assert (target / "d39" / "f2").read_bytes() == b"39-2." * 3000


@pytest.mark.parametrize("dry_run", [False, True], ids=["restore", "dry-run"])
def test_a_ctrl_c_while_a_directory_is_listed_ends_the_restore_or_dry_run(world, monkeypatch, dry_run):
    """A Ctrl-C that lands while a directory's entries are being read ends the run (it is raised),
    never taken for that directory's own error and walked past."""
    from casstore.read.reader import Snapshot

    repo, outside, target = world
    snapshot_id = write_snapshot(repo, lambda store: [
        dir_entry(store, b"d", [file_entry(store, b"f.txt", b"f")]), file_entry(store, b"top.txt", b"t")])
    subtree = repo.get(snapshot_id).entry("d").subtree
    read = Snapshot.tree
    asked: list[bytes] = []

    def interrupted(self, tree_id):
        asked.append(tree_id)
        if tree_id == subtree and asked.count(subtree) == 2:     # the walk's read (the first is the size check's)
            raise KeyboardInterrupt
        return read(self, tree_id)

    monkeypatch.setattr(Snapshot, "tree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repo.restore(snapshot_id, str(target), dry_run=dry_run)
    assert asked.count(subtree) == 2


@pytest.mark.parametrize("verify", [False, True], ids=["batched", "walk"])
def test_zero_pages_inside_a_chunk_restore_as_holes_at_the_files_own_page_boundaries(world, verify):
    """A chunk whose run of zeros starts part way into a page (1000 bytes of data, then 12,288 zeros):
    the holes are exactly the file's whole pages of zeros (4096..12288), no more, no less."""
    repo, outside, target = world
    data = b"x" * 1000 + bytes(3 * 4096) + b"y" * 1000
    snapshot_id = write_snapshot(repo, lambda store: [file_entry(store, b"holes.bin", data)])
    result = repo.restore(snapshot_id, str(target), verify=verify)
    assert result.ok and (target / "holes.bin").read_bytes() == data
    fd = os.open(target / "holes.bin", os.O_RDONLY)
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) == len(data):
            pytest.skip("this file system does not report holes (SEEK_HOLE)")
        assert (os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4096, os.SEEK_DATA)) == (4096, 12288)
    finally:
        os.close(fd)
