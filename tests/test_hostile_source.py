"""A source that changes under the snapshot, and trees deeper than Python's recursion limit (issue 13).

Each race is placed exactly: the builder's listing of the source's top directory is wrapped, and
the swap happens after every entry was listed and statted and before any is opened, which is the
window a hostile local user aims for. A walk that followed the swapped-in symlink, or blocked on
the swapped-in FIFO, fails these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casstore.api.reading import stream_snapshot
from casstore.chunker.fastcdc import FastCDCChunker
from casstore.read.diff import diff_snapshots
from casstore.snapshot.builder import SnapshotBuilder
from tests.helpers import KiB, MiB, det_bytes, init_repo, open_repo, write

ROOT = Path(__file__).resolve().parent.parent
DEPTH = 10_000
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _after_top_listing(monkeypatch, action) -> None:
    """Run `action` once, right after the source's top directory was listed and statted."""
    real = SnapshotBuilder._stat_entries
    done: list[bool] = []

    def listing(self, *args):
        items = real(self, *args)
        if args[-1] == b"" and not done:
            done.append(True)
            action()
        return items

    monkeypatch.setattr(SnapshotBuilder, "_stat_entries", listing)


def test_directory_swapped_for_a_symlink_is_not_followed(tmp_path, monkeypatch):
    source, secret = tmp_path / "data", tmp_path / "secret"
    write(source / "sub" / "plain.txt", b"ordinary")
    write(secret / "plain.txt", b"root-only secret")

    def swap() -> None:
        (source / "sub").rename(tmp_path / "sub.moved")
        (source / "sub").symlink_to(secret, target_is_directory=True)

    _after_top_listing(monkeypatch, swap)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    snap = open_repo(tmp_path / "repo").get(result.id)
    stored = {info.path: snap.read_bytes(info.path) for info in snap.walk() if info.type == "file"}
    assert b"root-only secret" not in stored.values()
    assert result.summary.changed_during_read == 1
    assert any(e.startswith("sub: changed during the snapshot") for e in result.summary.errors)


def test_file_swapped_for_a_symlink_is_not_followed(tmp_path, monkeypatch):
    source = tmp_path / "data"
    write(source / "a.txt", b"ordinary")
    write(tmp_path / "secret.txt", b"root-only secret")

    def swap() -> None:
        (source / "a.txt").unlink()
        (source / "a.txt").symlink_to(tmp_path / "secret.txt")

    _after_top_listing(monkeypatch, swap)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    snap = open_repo(tmp_path / "repo").get(result.id)
    assert [info.path for info in snap.walk()] == []
    assert result.summary.changed_during_read == 1 and result.incomplete


_FIFO_DRIVER = """
import os, sys, json
sys.path.insert(0, sys.argv[3])
from casstore.snapshot.builder import SnapshotBuilder
from tests.helpers import open_repo
source, repo_dir = sys.argv[1], sys.argv[2]
real = SnapshotBuilder._stat_entries
def listing(self, *args):
    items = real(self, *args)
    if args[-1] == b"":
        victim = os.path.join(source, "big.bin")
        os.unlink(victim)
        os.mkfifo(victim)      # nobody will ever write to it: a blocking open never returns
    return items
SnapshotBuilder._stat_entries = listing
result = open_repo(repo_dir).snapshot(source)
print(json.dumps({"id": result.id, "changed": result.summary.changed_during_read, "errors": result.summary.errors}))
"""


def test_file_swapped_for_a_fifo_does_not_hang_the_snapshot(tmp_path):
    source = tmp_path / "data"
    write(source / "big.bin", det_bytes(256 * KiB, "big"))
    write(source / "other.txt", b"kept")
    init_repo(tmp_path / "repo")
    try:
        proc = subprocess.run([sys.executable, "-c", _FIFO_DRIVER, str(source), str(tmp_path / "repo"), str(ROOT)],
                              capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the snapshot blocked on a FIFO swapped in for a listed file")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["changed"] == 1 and any(e.startswith("big.bin: changed") for e in report["errors"])
    assert open_repo(tmp_path / "repo").get(report["id"]).ls() == ["other.txt"]


def test_file_growing_while_read_records_the_bytes_it_stored(tmp_path, monkeypatch):
    source = tmp_path / "data"
    grow = write(source / "grow.bin", det_bytes(2 * MiB, "grow"))
    real = FastCDCChunker.chunks_of_fd

    def growing(self, fd, read_ahead=0):
        yield from real(self, fd, read_ahead)
        with open(grow, "ab") as fh:    # after the reader saw the end, before it looks again
            fh.write(det_bytes(64 * KiB, fh.tell()))

    monkeypatch.setattr(FastCDCChunker, "chunks_of_fd", growing)
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    snap = open_repo(tmp_path / "repo").get(result.id)
    entry = snap.entry("grow.bin")
    stored = snap.read_bytes("grow.bin")
    assert entry.size == len(stored)
    assert stored == grow.read_bytes()[:len(stored)]
    assert result.summary.changed_during_read == 1
    assert open_repo(tmp_path / "repo").check().ok


# -- a 10,000-level tree -------------------------------------------------------------------------


def _make_deep(root: Path, depth: int, leaf: bytes) -> None:
    """root/d/d/.../d/leaf, built through descriptors (the path is far longer than PATH_MAX)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, _DIR)
    try:
        for _ in range(depth):
            try:
                os.mkdir("d", dir_fd=fd)
            except FileExistsError:
                pass
            child = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("leaf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        os.write(out, leaf)
        os.close(out)
    finally:
        os.close(fd)


def _read_deep(root: Path) -> tuple[int, bytes | None]:
    """(levels of `d` below root, the leaf's bytes or None)."""
    fd, depth = os.open(root, _DIR), 0
    try:
        while "d" in os.listdir(fd):
            child = os.open("d", _DIR, dir_fd=fd)
            os.close(fd)
            fd, depth = child, depth + 1
        if "leaf" not in os.listdir(fd):
            return depth, None
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        try:
            return depth, os.read(leaf, 1 << 20)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def _remove_deep(root: Path) -> None:
    """Remove a tree too deep for shutil.rmtree (which recurses)."""
    if not root.exists():
        return
    fd, depth = os.open(root, _DIR), 0
    while "d" in os.listdir(fd):
        child = os.open("d", _DIR, dir_fd=fd)
        os.close(fd)
        fd, depth = child, depth + 1
    for _ in range(depth):
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
        parent = os.open("..", _DIR, dir_fd=fd)
        os.close(fd)
        fd = parent
        os.rmdir("d", dir_fd=fd)
    os.close(fd)


@pytest.fixture
def deep(tmp_path):
    roots = [tmp_path / "data", tmp_path / "out"]
    yield roots
    for root in roots:
        _remove_deep(root)


def test_a_10000_level_tree_round_trips(tmp_path, deep):
    source, out = deep
    _make_deep(source, DEPTH, b"first")
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    assert first.summary.dirs_total == DEPTH + 1 and not first.summary.errors

    result = repo.restore(first.id, str(out))
    assert result.ok and result.dirs == DEPTH and result.files == 1
    assert _read_deep(out) == (DEPTH, b"first")
    assert repo.check().ok

    snap = open_repo(tmp_path / "repo").get(first.id)
    level = snap.to_dict()["data_sources"].materialize()
    for _ in range(DEPTH):
        level = level["d"]
    assert level == {"leaf": b"first"}
    assert sum(1 for _ in snap.walk()) == DEPTH + 1

    streamed = b"".join(stream_snapshot(snap, None, "", whole=True))
    # the header, data_sources, DEPTH directories and the leaf's file reference
    assert streamed.count(b"{") == DEPTH + 3 and streamed.endswith(b"}" * (DEPTH + 3))
    assert b'{"$file": "' + b"d/" * DEPTH + b'leaf"' in streamed

    _make_deep(source, DEPTH, b"second")
    second = repo.snapshot(str(source))
    changes = diff_snapshots(snap, open_repo(tmp_path / "repo").get(second.id))
    assert [(c.kind, c.path) for c in changes] == [("modified", "d/" * DEPTH + "leaf")]


# -- sparse files ----------------------------------------------------------------------------------


def test_a_sparse_file_restores_sparse(tmp_path):
    source = tmp_path / "data"
    source.mkdir()
    size = 64 * MiB
    with open(source / "disk.img", "wb") as fh:   # data at both ends, a hole of ~64 MiB between
        fh.write(det_bytes(8 * KiB, "head"))
        fh.seek(size - 8 * KiB)
        fh.write(det_bytes(8 * KiB, "tail"))
    write(source / "zeros.bin", bytes(3 * MiB) + b"end")     # zero runs in a dense file become holes too
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    restored = tmp_path / "out"
    assert repo.restore(result.id, str(restored)).ok
    for name in ("disk.img", "zeros.bin"):
        assert (restored / name).read_bytes() == (source / name).read_bytes()
    allocated = os.stat(restored / "disk.img").st_blocks * 512
    assert os.stat(restored / "disk.img").st_size == size and allocated < 4 * MiB, allocated


def test_a_file_ending_in_zeros_keeps_its_length(tmp_path):
    source = tmp_path / "data"
    write(source / "tail.bin", det_bytes(100 * KiB, "x") + bytes(2 * MiB))
    repo = init_repo(tmp_path / "repo")
    result = repo.snapshot(str(source))
    assert repo.restore(result.id, str(tmp_path / "out"), verify=True).ok
    assert (tmp_path / "out" / "tail.bin").read_bytes() == (source / "tail.bin").read_bytes()
