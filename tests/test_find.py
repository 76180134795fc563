"""find (`casstore find PATTERN`, Repository.find) on 200 generated snapshots, checked against
restoring every snapshot and matching the restored paths with fnmatch; and the cost claim: each
distinct tree is read once, however many snapshots share it."""

from __future__ import annotations

import fnmatch
import json
import os

import pytest

from casstore.format.tree import EntryType
from casstore.read.find import find
from casstore.read.reader import Snapshot
from casstore.read.trees import TreeCache
from tests.helpers import invoke
from tests.query_helpers import generated_history, restored_dirs  # noqa: F401 - the `hist` fixture


@pytest.fixture(scope="module")
def restored_paths(hist):
    """Per snapshot id: {(path, type)} of everything a restore writes."""
    found = {}
    for snapshot_id, target in zip(hist.ids, restored_dirs(hist), strict=True):
        paths = set()
        for dirpath, dirnames, filenames in os.walk(target):
            rel = os.path.relpath(dirpath, target)
            for name, kind in [(d, "dir") for d in dirnames] + [(f, "file") for f in filenames]:
                paths.add((name if rel == "." else f"{rel}/{name}", kind))
        found[snapshot_id] = paths
    return found


PATTERNS = ["*.json", "ai_hub", "market/*", "deep/a/*/c", "flicker*", "*.bin", "nothing*", "[mn]*", "*/*/*/*"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_find_matches_the_restored_snapshots(hist, restored_paths, pattern):
    def matches(path: str) -> bool:
        return fnmatch.fnmatchcase(path if "/" in pattern else path.rsplit("/", 1)[-1], pattern)

    expected = {(sid, path, kind) for sid, paths in restored_paths.items() for path, kind in paths if matches(path)}
    with hist.open() as repo:
        found = repo.find(pattern)
    assert {(f.snapshot_id, f.path, f.type) for f in found} == expected
    assert len(found) == len(expected)
    order = [f.snapshot_id for f in found]
    assert order == sorted(order, key=lambda s: hist.ids.index(s), reverse=True)   # newest snapshot first


def test_each_distinct_tree_is_read_once(hist):
    with hist.open() as repo:
        trees = TreeCache(repo)
        find(repo, "*.json", trees=trees)
        distinct, visits = set(), 0
        for info in repo.snapshots():
            snap, stack = Snapshot(repo, info), [info.manifest.tree]
            while stack:
                tree_id = stack.pop()
                distinct.add(tree_id)
                visits += 1
                stack.extend(e.subtree for e in snap.tree(tree_id) if e.type is EntryType.DIR)
    assert trees.reads == len(distinct)
    assert trees.reads * 3 < visits          # the premise: most trees repeat across snapshots


def test_cli_find_text_json_and_path_only(hist):
    rows = json.loads(invoke("--repo", hist.repo_path, "find", "*.jsonl", "--json").stdout)
    assert {r["path"] for r in rows} == {"market/ticks.jsonl"} and len(rows) == len(hist.ids)
    assert invoke("--repo", hist.repo_path, "find", "ai_hub/*.json", "--path-only").stdout.split() == [
        "ai_hub/collective_intelligence.json", "ai_hub/flicker.json"]
    text = invoke("--repo", hist.repo_path, "find", "leaf.json").stdout
    assert text.splitlines()[-1] == f"{len(hist.ids)} matches in {len(hist.ids)} snapshots"
    assert "  deep/a/b/c/leaf.json  15 B" in text


def test_cli_find_without_a_pattern_is_one_line(hist):
    result = invoke("--repo", hist.repo_path, "find", "/", expect=2)
    assert result.stderr.strip().count("\n") == 0 and "give a pattern" in result.stderr
