"""check (design 10), and damaged packs seen by the reads that touch them.

Flipped bits, a truncated pack, a deleted pack: `check` (structure) or `check --read-data` exits
non-zero and names the damaged pack, the snapshots and the files that lose data, exactly those
(computed independently from the index). Reads of damaged data (`casstore cat`, restore,
Snapshot.read_bytes / open / to_dict) fail with IntegrityError, one line on the CLI, and never
return wrong bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casstore.errors import IntegrityError
from casstore.format.pack import KIND_DATA, KIND_TREE
from tests.helpers import (
    KiB,
    assert_one_line_error,
    det_bytes,
    flip_bit,
    init_repo,
    invoke,
    objects,
    open_repo,
    run,
    write,
)

FILES = {"a/one.bin": 400 * KiB, "a/two.bin": 400 * KiB, "b/three.bin": 400 * KiB}


@pytest.fixture
def repo_dir(tmp_path):
    """Two snapshots in a repository with small (256 KiB) packs, so damage hits only some files."""
    source = tmp_path / "data"
    for path, size in FILES.items():
        write(source / path, det_bytes(size, path))
    write(source / "b" / "small.json", json.dumps({"k": "v"}))
    repo = init_repo(tmp_path / ".casstore", pack_size=256 * KiB)
    repo.snapshot(str(source))
    write(source / "c" / "four.bin", det_bytes(300 * KiB, "four"))
    repo.snapshot(str(source))
    assert len(objects(tmp_path / ".casstore", "data")) >= 6
    return tmp_path / ".casstore"


def _files_in_pack(repo_dir: Path, pack_id: str) -> dict[str, set[str]]:
    """Independently: snapshot id -> files with a chunk in `pack_id`."""
    repo = open_repo(repo_dir)
    index = repo.load_index()
    hit: dict[str, set[str]] = {}
    for info in repo.snapshots():
        snap = repo.get(info.id)
        for f in snap.walk():
            if f.type == "file":
                chunks = snap.entry(f.path).chunks
                if any(loc.pack_id == pack_id for c in chunks for loc in index.locations(KIND_DATA, c)):
                    hit.setdefault(info.id, set()).add(f.path)
    return hit


def _pack_and_location(repo_dir: Path, path: str, middle: bool = True):
    """The pack holding one chunk of `path` (its middle chunk, or its first)."""
    repo = open_repo(repo_dir)
    chunks = repo.get("latest").entry(path).chunks
    chunk = chunks[len(chunks) // 2 if middle else 0]
    loc = repo.load_index().locations(KIND_DATA, chunk)[0]
    return repo_dir / "data" / loc.pack_id[:2] / loc.pack_id, loc


def _check_json(*args) -> tuple[int, dict]:
    result = invoke("--repo", ".casstore", "check", "--json", *args, expect=None)
    return result.exit_code, json.loads(result.stdout)


def _affected_paths(report: dict) -> dict[str, set[str]]:
    return {sid: {line.split(": ", 1)[0] for line in lines} for sid, lines in report["affected"].items()}


def test_healthy_repository_checks_clean(repo_dir):
    proc = run("check", "--read-data")
    assert b"no errors found" in proc.stdout
    code, report = _check_json("--read-data")
    assert code == 0 and report["ok"] and report["snapshots"] == 2
    assert report["packs_read"] == report["packs"] == len(objects(repo_dir, "data"))
    assert report["blobs_verified"] == len(open_repo(repo_dir).load_index())


def test_flipped_bits_in_a_data_pack(repo_dir):
    pack, loc = _pack_and_location(repo_dir, "a/two.bin")
    flip_bit(pack, loc.offset + loc.length // 2)
    expected = _files_in_pack(repo_dir, pack.name)
    assert expected and len(expected) == 2 and "a/two.bin" in set.union(*expected.values())

    assert invoke("--repo", repo_dir, "check").exit_code == 0   # structure alone cannot see flipped bits
    proc = run("check", "--read-data", expect=1)
    out = proc.stdout.decode()
    assert f"damaged pack {pack.name[:16]}" in out and "check FAILED" in out
    for snapshot_id, paths in expected.items():
        assert f"snapshot {snapshot_id[:8]} is damaged" in out
        for path in paths:
            assert f"  {path}: " in out
    spared = {"a/one.bin", "a/two.bin", "b/three.bin", "b/small.json", "c/four.bin"} - set.union(*expected.values())
    assert spared and not any(f"  {path}: " in out for path in spared)

    code, report = _check_json("--read-data")
    assert code == 1 and list(report["damaged_packs"]) == [pack.name]
    assert _affected_paths(report) == expected


def test_truncated_pack_is_found_by_the_structure_check(repo_dir):
    pack, _ = _pack_and_location(repo_dir, "b/three.bin")
    expected = _files_in_pack(repo_dir, pack.name)
    os.truncate(pack, pack.stat().st_size // 2)
    code, report = _check_json()
    assert code == 1 and "truncated" in report["damaged_packs"][pack.name]
    assert _affected_paths(report) == expected


def test_deleted_pack_is_found_by_the_structure_check(repo_dir):
    pack, _ = _pack_and_location(repo_dir, "c/four.bin", middle=False)
    expected = _files_in_pack(repo_dir, pack.name)
    pack.unlink()
    proc = run("check", expect=1)
    assert f"damaged pack {pack.name[:16]}: missing" in proc.stdout.decode()
    code, report = _check_json()
    assert _affected_paths(report) == expected
    assert list(expected) == [open_repo(repo_dir).get("latest").id]  # c/ exists only in the second


def test_damaged_tree_pack_affects_every_snapshot(repo_dir):
    repo = open_repo(repo_dir)
    root = repo.get("latest").manifest.tree
    loc = repo.load_index().locations(KIND_TREE, root)[0]
    flip_bit(repo_dir / "data" / loc.pack_id[:2] / loc.pack_id, loc.offset + 1)
    code, report = _check_json("--read-data")
    assert code == 1 and loc.pack_id in report["damaged_packs"]
    latest = open_repo(repo_dir).get("latest").id
    assert any("directory unreadable" in line for line in report["affected"][latest])


def test_reads_of_damaged_data_fail_cleanly_and_never_return_wrong_bytes(repo_dir, tmp_path):
    truth = det_bytes(FILES["a/two.bin"], "a/two.bin")
    pack, loc = _pack_and_location(repo_dir, "a/two.bin")
    flip_bit(pack, loc.offset + loc.length // 2)

    proc = run("cat", "latest", "a/two.bin", expect=None)
    assert_one_line_error(proc, "cannot be read")
    assert len(proc.stdout) < len(truth) and truth.startswith(proc.stdout)

    proc = run("restore", "latest", tmp_path / "out", expect=None)
    assert_one_line_error(proc)
    restored = tmp_path / "out" / "a" / "two.bin"
    assert not restored.exists() or restored.read_bytes() == truth
    leftovers = [n for n in os.listdir(tmp_path / "out" / "a") if n.startswith(".")]
    assert leftovers == []

    snap = open_repo(repo_dir).get("latest")
    with pytest.raises(IntegrityError):
        snap.read_bytes("a/two.bin")
    with pytest.raises(IntegrityError), snap.open("a/two.bin") as fh:
        fh.read()
    with pytest.raises(IntegrityError):
        snap.to_dict()["data_sources"]["a"]["two.bin"]
    # an undamaged file in another pack still reads
    assert snap.read_bytes("b/small.json") == b'{"k": "v"}'


def test_read_data_subset(repo_dir):
    packs = len(objects(repo_dir, "data"))
    code, report = _check_json("--read-data-subset", "50%")
    assert code == 0 and report["packs_read"] == round(packs * 0.5)
    code, report = _check_json("--read-data-subset", "100%")
    assert code == 0 and report["packs_read"] == packs
    for bad in ("0%", "150%", "abc"):
        assert_one_line_error(run("check", "--read-data-subset", bad, expect=None), "read-data-subset")


def test_read_data_subset_finds_damage_when_it_reads_the_pack(repo_dir):
    for pack in objects(repo_dir, "data"):
        flip_bit(pack, 6)
    code, report = _check_json("--read-data-subset", "10%")
    assert code == 1 and len(report["damaged_packs"]) == report["packs_read"] == 1
