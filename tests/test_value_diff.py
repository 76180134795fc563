"""The value diff (`casstore diff A B [PATH] --values`, diff_snapshot_values, GET /api/cloud/diff),
checked against a reference computed from restored files with json, on pairs of snapshots from a
generated history; and a large JSON Lines file whose unchanged head is never parsed."""

from __future__ import annotations

import json
import random

import pytest

from casstore.format.pack import KIND_DATA
from casstore.read.jsondiff import diff_file_values, diff_snapshot_values, diff_values
from tests.helpers import KiB, invoke
from tests.query_helpers import CI, FLICKER, NOTES, PRICES, TICKS, generated_history, restored_dirs  # noqa: F401 - the `hist` fixture

COUNT = 200


def reference(a: object, b: object, at: tuple = ()) -> set[tuple]:
    """(op, path, old, new) by plain recursion: objects by key, arrays by index."""
    if isinstance(a, dict) and isinstance(b, dict):
        pairs = [(k, a.get(k, ...), b.get(k, ...)) for k in a.keys() | b.keys()]
    elif isinstance(a, list) and isinstance(b, list):
        pairs = [(i, a[i] if i < len(a) else ..., b[i] if i < len(b) else ...) for i in range(max(len(a), len(b)))]
    else:
        return set() if json.dumps(a) == json.dumps(b) else {("changed", at, json.dumps(a), json.dumps(b))}
    found: set[tuple] = set()
    for k, x, y in pairs:
        if x is ...:
            found.add(("added", (*at, k), "null", json.dumps(y)))
        elif y is ...:
            found.add(("removed", (*at, k), json.dumps(x), "null"))
        else:
            found |= reference(x, y, (*at, k))
    return found


def jsonl_reference(a: list, b: list) -> set[tuple]:
    if len(b) > len(a) and b[:len(a)] == a:
        return {("appended", (i,), "null", json.dumps(r)) for i, r in enumerate(b[len(a):], len(a))}
    if len(a) > len(b) and a[:len(b)] == b:
        return {("truncated", (i,), json.dumps(r), "null") for i, r in enumerate(a[len(b):], len(b))}
    return reference(a, b)


def as_set(changes: list[dict]) -> set[tuple]:
    return {(c["op"], tuple(c["path"]), json.dumps(c["old"]), json.dumps(c["new"])) for c in changes}


def restored(target) -> dict[str, object]:
    out = {}
    for path in (CI, PRICES, TICKS, FLICKER):
        if (target / path).exists():
            data = (target / path).read_bytes()
            try:
                out[path] = ([json.loads(line) for line in data.splitlines() if line.strip()]
                             if path.endswith(".jsonl") else json.loads(data))
            except ValueError:
                out[path] = data.decode()      # the flicker file is not JSON in later snapshots
    return out


PAIRS = [(0, 1), (4, 5), (9, 10), (0, 119), (45, 46), (46, 47), (55, 56), (59, 61), (30, 31), (39, 40),
         (85, 95), (119, 0)] + [tuple(random.Random(n).sample(range(COUNT), 2)) for n in range(12)]


@pytest.mark.parametrize(("i", "j"), PAIRS)
def test_value_diff_matches_restored_json(hist, i, j):
    dirs = restored_dirs(hist)
    before, after = restored(dirs[i]), restored(dirs[j])
    with hist.open() as repo:
        diffs = {d.path: d for d in diff_snapshot_values(repo.get(hist.ids[i]), repo.get(hist.ids[j]))}
    for path in (CI, PRICES, TICKS):
        expected = (jsonl_reference if path == TICKS else reference)(before[path], after[path])
        got = as_set(diffs[path].changes) if path in diffs else set()
        assert got == expected, path
    if (FLICKER in before) != (FLICKER in after):
        status = "added" if FLICKER in after else "removed"
        assert diffs[FLICKER].status == status
        assert diffs[FLICKER].changes[0]["old" if status == "removed" else "new"] == (before | after)[FLICKER]


def test_one_file_path_and_directory_path(hist):
    with hist.open() as repo:
        old, new = repo.get(hist.ids[0]), repo.get(hist.ids[COUNT - 1])
        one = diff_file_values(old, new, CI)
        below = diff_snapshot_values(old, new, "market")
    assert one.path == CI and one.status == "modified"
    assert {d.path for d in below} == {PRICES, TICKS}


def test_cli_values_json_and_text(hist):
    a, b = hist.ids[9], hist.ids[10]
    out = json.loads(invoke("--repo", hist.repo_path, "diff", a, b, CI, "--values", "--json").stdout)
    with hist.open() as repo:
        assert out == [diff_file_values(repo.get(a), repo.get(b), CI).as_dict()]
    text = invoke("--repo", hist.repo_path, "diff", a, b, "--values").stdout
    assert "M collective_iq: 100 -> 103" in text
    plain = invoke("--repo", hist.repo_path, "diff", hist.ids[0], hist.ids[-1], "market").stdout
    lines = plain.splitlines()
    assert len(lines) > 1 and all(" market/" in line for line in lines[:-1]) and CI not in plain


def test_cli_values_on_a_file_that_is_not_json(hist):
    result = invoke("--repo", hist.repo_path, "diff", hist.ids[0], hist.ids[-1], NOTES, "--values",
                    expect=2)
    assert "does not parse as JSON" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_diff_values_of_plain_documents():
    assert diff_values({"a": [1, 2], "b": {"c": 1}}, {"a": [1, 3, 4], "b": {}}) == [
        {"op": "changed", "key": "a.1", "path": ["a", 1], "old": 2, "new": 3},
        {"op": "added", "key": "a.2", "path": ["a", 2], "old": None, "new": 4},
        {"op": "removed", "key": "b.c", "path": ["b", "c"], "old": 1, "new": None}]
    assert diff_values(1, 1.0)[0]["op"] == "changed" and diff_values(True, 1) != []
    deep: object = 0
    for _ in range(800):      # as deep as json.loads itself goes
        deep = [deep]
    assert [c["key"] for c in diff_values(deep, [[1]])] == ["0.0"]


def test_large_jsonl_tail_is_diffed_without_parsing_the_head(tmp_path, monkeypatch):
    invoke("init", "--chunk-avg", 64 * KiB)
    records = [{"n": i, "pad": "x" * (i % 50)} for i in range(100000)]
    log = tmp_path / "data" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    first = invoke("snapshot", "data", "--json").stdout
    with log.open("a") as fh:
        fh.write("".join(json.dumps({"n": n, "new": True}) + "\n" for n in range(5)))
    second = invoke("snapshot", "data", "--json").stdout
    a, b = json.loads(first)["id"], json.loads(second)["id"]

    parsed = 0
    real = json.loads

    def counting(*args, **kwargs):
        nonlocal parsed
        parsed += 1
        return real(*args, **kwargs)

    import casstore

    with casstore.open() as repo:
        old, new = repo.get(a), repo.get(b)
        monkeypatch.setattr(json, "loads", counting)
        diff = diff_file_values(old, new, "log.jsonl")
        monkeypatch.undo()
        before, after = old.entry("log.jsonl").chunks, new.entry("log.jsonl").chunks
        shared = next((i for i, (x, y) in enumerate(zip(before, after, strict=False)) if x != y), len(before))
        tail_lines = sum(repo.read_blob(KIND_DATA, c).count(b"\n") for c in before[shared:]) + 1
    assert [c["op"] for c in diff.changes] == ["appended"] * 5
    assert [c["path"] for c in diff.changes] == [[len(records) + n] for n in range(5)]
    assert [c["new"] for c in diff.changes] == [{"n": n, "new": True} for n in range(5)]
    # only the records from the first chunk that differs are parsed, in each version
    assert tail_lines < len(records) // 5 and parsed <= 2 * tail_lines + 5


def test_repository_front_gives_the_same_structure(hist):
    with hist.open() as repo:
        a, b = hist.ids[3], hist.ids[33]
        assert [d.as_dict() for d in repo.diff_values(a, b, "market")] == [
            d.as_dict() for d in diff_snapshot_values(repo.get(a), repo.get(b), "market")]
