"""Reads that need one path read only the trees on it, and walks over many snapshots read each
distinct tree once (issue 14): counted tree reads on hand-built repositories, not timings."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from casstore.client import Repository
from casstore.format import layout
from casstore.format.index import IndexObject
from casstore.format.pack import KIND_DATA, KIND_TREE, BlobEntry
from casstore.format.tree import Entry, EntryType
from casstore.read import reader
from casstore.remotes.local import LocalRemote
from casstore.repo.core import RepoCore
from tests.helpers import dir_entry, file_entry, init_repo, invoke, open_repo, write_snapshot

DEPTH, WIDTH = 8, 30


def deep_and_wide(store: object) -> list[Entry]:
    """30 directories of 4 files each beside a chain d0/d1/.../d7/target.json."""
    wide = [dir_entry(store, f"w{i:02}".encode(), [file_entry(store, f"f{j}".encode(), os.urandom(50))
                                                   for j in range(4)]) for i in range(WIDTH)]
    chain = [file_entry(store, b"target.json", json.dumps({"answer": 42}).encode()),
             file_entry(store, b"other", b"x")]
    for level in reversed(range(DEPTH)):
        chain = [dir_entry(store, f"d{level}".encode(), chain)]
    return wide + chain


def count_tree_reads(repo: RepoCore) -> list[bytes]:
    """Record every tree blob the repository reads from now on."""
    reads: list[bytes] = []
    read_blob = repo.read_blob

    def counting(kind: int, blob_id: bytes) -> bytes:
        if kind == KIND_TREE:
            reads.append(blob_id)
        return read_blob(kind, blob_id)

    repo.read_blob = counting  # type: ignore[method-assign]
    return reads


CHAIN = "/".join(f"d{level}" for level in range(DEPTH))


def test_cat_ls_and_one_dict_key_read_only_the_trees_on_their_path(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write_snapshot(repo, deep_and_wide)

    def reads_of(action: Callable[[object], object]) -> int:
        fresh = open_repo(tmp_path / "repo")
        reads = count_tree_reads(fresh)
        action(fresh.get("latest", all_hosts=True))
        return len(reads)

    assert reads_of(lambda s: s.read_bytes(f"{CHAIN}/target.json")) == DEPTH + 1       # root + 8 directories
    assert reads_of(lambda s: s.ls("d0/d1")) == 3
    assert reads_of(lambda s: s.children("d0/d1")) == 3
    assert [i.path for i in open_repo(tmp_path / "repo").get("latest", all_hosts=True).children("d0/d1")] \
        == ["d0/d1/d2"]
    assert reads_of(lambda s: s.children("")) == 1                                      # `show`: one level
    key = lambda s: _dict_at(s.to_dict()["data_sources"], CHAIN.split("/"))["target"]  # noqa: E731
    assert reads_of(key) == DEPTH + 1
    assert reads_of(lambda s: list(s.walk())) == 1 + WIDTH + DEPTH                      # a walk reads them all


def _dict_at(mapping: object, parts: list[str]) -> object:
    for part in parts:
        mapping = mapping[part]  # type: ignore[index]
    return mapping


def test_show_and_cat_on_the_command_line_read_only_the_trees_on_their_path(tmp_path: Path, monkeypatch) -> None:
    repo = init_repo(tmp_path / "repo")
    write_snapshot(repo, deep_and_wide)
    loads: list[bytes] = []
    real = reader.load_tree_chain

    def counting(read_tree: Callable[[bytes], bytes], tree_id: bytes) -> list[Entry]:
        loads.append(tree_id)
        return real(read_tree, tree_id)

    monkeypatch.setattr(reader, "load_tree_chain", counting)
    where = ("--repo", str(tmp_path / "repo"))
    shown = invoke("show", "latest", "--all-hosts", *where, "--json")
    assert len(json.loads(shown.stdout)["entries"]) == WIDTH + 1 and len(loads) == 1     # the root only
    loads.clear()
    invoke("show", "latest", "d0/d1", "--all-hosts", *where)
    assert len(loads) == 3
    loads.clear()
    assert json.loads(invoke("cat", "latest", f"{CHAIN}/target.json", "--all-hosts", *where).stdout) == {"answer": 42}
    assert len(loads) == DEPTH + 1


def fifty_sharing_snapshots(repo: RepoCore) -> None:
    """50 snapshots of 4 directories of 3 subdirectories; each snapshot changes one file."""
    for k in range(50):
        def build(store: object, k: int = k) -> list[Entry]:
            def content(t: int, s: int) -> bytes:
                return f"{t}{s}{k if (t, s) == (k % 4, k % 3) else ''}".encode()
            return [dir_entry(store, f"top{t}".encode(), [
                dir_entry(store, f"sub{s}".encode(), [file_entry(store, b"f", content(t, s))]) for s in range(3)])
                for t in range(4)]
        write_snapshot(repo, build, time_ns=1_700_000_000_000_000_000 + k)



def fifty_sharing_snapshots_reopened(tmp_path: Path) -> tuple[Repository, int, list[bytes]]:
    """The 50 snapshots, then the repository opened afresh: (it, its distinct tree count, the tree
    reads recorded from now on)."""
    fifty_sharing_snapshots(init_repo(tmp_path / "repo"))
    fresh = open_repo(tmp_path / "repo")
    distinct = sum(1 for (kind, _), _ in fresh.load_index().blobs() if kind == KIND_TREE)
    return fresh, distinct, count_tree_reads(fresh)

def test_check_reads_each_distinct_tree_once_over_50_snapshots(tmp_path: Path) -> None:
    fresh, distinct, reads = fifty_sharing_snapshots_reopened(tmp_path)
    report = fresh.check()
    assert report.ok and report.snapshots == 50
    assert len(reads) == len(set(reads)) == distinct < 50 * 17       # 17 trees a snapshot


def test_a_first_sync_of_50_snapshots_reads_each_distinct_tree_once(tmp_path: Path) -> None:
    fresh, distinct, reads = fifty_sharing_snapshots_reopened(tmp_path)
    report = fresh.sync(LocalRemote(str(tmp_path / "remote")))
    assert len(report.snapshots) == 50
    assert len(reads) == len(set(reads)) == distinct


def test_a_problem_in_a_shared_tree_is_reported_in_every_snapshot_under_its_own_path(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    lost = Entry(b"lost.bin", EntryType.FILE, 0o644, os.getuid(), os.getgid(), 0, 10, 0, [os.urandom(32)])

    def shared(store: object) -> Entry:
        return dir_entry(store, b"shared", [lost, file_entry(store, b"fine", b"ok")])

    first = write_snapshot(repo, lambda store: [shared(store)], time_ns=1)
    second = write_snapshot(repo, lambda store: [dir_entry(store, b"y", [shared(store)])], time_ns=2)
    fresh = open_repo(tmp_path / "repo")
    reads = count_tree_reads(fresh)
    report = fresh.check()
    assert report.affected == {first: ["shared/lost.bin: 1 of 1 chunks missing or damaged"],
                               second: ["y/shared/lost.bin: 1 of 1 chunks missing or damaged"]}
    # the first root and y hold the same entry, so they are one tree: read once, like shared
    assert len(reads) == len(set(reads)) == 3


def test_reading_one_key_holds_the_index_compactly(tmp_path: Path) -> None:
    """A repository whose index lists 100,000 blobs: reading one key of a fresh open (the local
    index table warm) must not build a Python object per blob (the dict index took ~400 bytes a blob)."""
    repo = init_repo(tmp_path / "repo")
    write_snapshot(repo, deep_and_wide)
    blobs = 100_000
    for part in range(10):      # index objects listing blobs of packs nobody reads: they only take room
        packs = {os.urandom(32).hex(): [BlobEntry(KIND_DATA, os.urandom(32), 9 + i * 100, 100, 200)
                                        for i in range(500)] for _ in range(blobs // 5000)}
        index_id, body = IndexObject({"kind": "writer", "host": "h", "session": str(part)}, packs).encode()
        repo.remote.put(layout.index_key(index_id), body)
    assert len(open_repo(tmp_path / "repo").load_index()) > blobs     # and the table is saved

    gc.collect()
    tracemalloc.start()
    try:
        snap = open_repo(tmp_path / "repo").get("latest", all_hosts=True)
        value = _dict_at(snap.to_dict()["data_sources"], CHAIN.split("/"))["target"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == {"answer": 42}
    print(f"peak {peak / blobs:.0f} bytes per indexed blob")
    assert peak < 100 * blobs, f"{peak / blobs:.0f} bytes per indexed blob"


def test_a_restore_holds_at_most_the_cap_of_decoded_trees_and_restores_everything(tmp_path: Path, monkeypatch) -> None:
    """A reader keeps decoded trees only up to TREE_CACHE_ENTRIES (a 1M-file restore kept every
    tree: 512 MiB); beyond it trees are read again, and the restore is still whole."""
    repo = init_repo(tmp_path / "repo")
    write_snapshot(repo, deep_and_wide)
    monkeypatch.setattr(reader, "TREE_CACHE_ENTRIES", 10)
    held: list[int] = []
    tree = reader.Snapshot.tree

    def watched(self: reader.Snapshot, tree_id: bytes) -> list[Entry]:
        entries = tree(self, tree_id)
        held.append(sum(map(len, self._trees.values())))
        return entries

    monkeypatch.setattr(reader.Snapshot, "tree", watched)
    fresh = open_repo(tmp_path / "repo")
    reads = count_tree_reads(fresh)
    fresh.restore("latest", str(tmp_path / "out"), all_hosts=True)
    assert max(held) <= 10
    assert len(reads) > 1 + WIDTH + DEPTH          # read again past the cap (the budget's walk, then the restore)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([f"w{i:02}" for i in range(WIDTH)] + ["d0"])
    assert json.loads((tmp_path / "out" / CHAIN / "target.json").read_text()) == {"answer": 42}
    assert all(len(list((tmp_path / "out" / f"w{i:02}").iterdir())) == 4 for i in range(WIDTH))
