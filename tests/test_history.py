"""History of a file, or of a value inside it, across 200 generated snapshots (issue 16).

Every answer is checked against the brute force the issue names: restore each snapshot and
json.load the file, then keep the snapshots where the value's JSON differs from the one before.
The cost claim (per distinct version, not per snapshot) is checked by counting parses and
data-blob reads.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from casstore.format.pack import KIND_DATA
from casstore.read.history import history
from casstore.read.values import ValueCache
from tests.helpers import invoke
from tests.query_helpers import CI, FLICKER, PRICES, TICKS, generated_history, restored_dirs  # noqa: F401 - the `hist` fixture

COUNT = 200
PATHS = (CI, TICKS, PRICES, FLICKER)
GONE = object()


@pytest.fixture(scope="module")
def restored(hist):
    """Per snapshot (oldest first): {path: json.load of the restored file, or GONE / its text}."""
    return [{path: _load(target / path) for path in PATHS} for target in restored_dirs(hist)]


def _load(file) -> object:
    if not file.exists():
        return GONE
    data = file.read_bytes()
    try:
        if file.name.endswith(".jsonl"):
            return [json.loads(line) for line in data.splitlines() if line.strip()]
        return json.loads(data)
    except ValueError:
        return data.decode()


def _at(value: object, key: str | None) -> object:
    for part in key.split(".") if key else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return GONE
    return value


def brute_rows(hist, restored, path: str, key: str | None) -> list[tuple[str, str, object]]:
    rows, last = [], GONE
    for snapshot_id, files in zip(hist.ids, restored, strict=True):
        value = files[path]
        if key:
            value = _at(value, key) if not isinstance(value, str) else GONE
        same = (value is GONE and last is GONE) or (
            value is not GONE and last is not GONE and json.dumps(value, sort_keys=True) == json.dumps(
                last, sort_keys=True))
        if not same:
            change = "removed" if value is GONE else ("added" if last is GONE else "changed")
            rows.append((snapshot_id, change, None if value is GONE else value))
        last = value
    return rows


CASES = [(CI, "collective_iq"), (CI, None), (CI, "models.alpha.weights.0"), (CI, "models.beta"),
         (TICKS, "-1.p"), (TICKS, "0"), (TICKS, None), (PRICES, "ETH.2"), (PRICES, "meta.src"),
         (FLICKER, "on"), (FLICKER, None), (CI, "no.such.key")]


@pytest.mark.parametrize(("path", "key"), CASES)
def test_history_matches_restoring_every_snapshot(hist, restored, path, key):
    with hist.open() as repo:
        rows = repo.history(path, key)
    assert [(r.snapshot_id, r.change, r.value) for r in rows] == brute_rows(hist, restored, path, key)


def test_restore_reference_is_what_was_written(hist, restored):
    for files, written in zip(restored, hist.contents, strict=True):
        assert files[CI] == json.loads(written[CI])
        assert (files[FLICKER] is GONE) == (FLICKER not in written)


def test_cost_follows_distinct_versions_not_snapshots(hist):
    versions = {c[CI] for c in hist.contents}
    assert len(versions) < COUNT // 4      # the premise: far fewer versions than snapshots
    with hist.open() as repo:
        data_reads = 0
        real = repo.read_blob

        def counting(kind, blob_id):
            nonlocal data_reads
            data_reads += kind == KIND_DATA
            return real(kind, blob_id)

        repo.read_blob = counting  # type: ignore[method-assign]
        cache = ValueCache()
        rows = history(repo, CI, "collective_iq", cache=cache)
    assert cache.parses == len(versions)
    assert data_reads == len(versions)     # each version is one small chunk, read once
    assert len(rows) < len(versions)       # the key changed less often than the file


def test_limit_and_since(hist, restored):
    with hist.open() as repo:
        every = repo.history(CI, "agents")
        assert repo.history(CI, "agents", limit=3) == every[-3:]
        start = repo.get(hist.ids[120]).time
        later = repo.history(CI, "agents", since=start)
    assert later[0].snapshot_id == hist.ids[120] and later[0].change == "added"
    assert [r.snapshot_id for r in later[1:]] == [r.snapshot_id for r in every if r.time > start]
    assert later[0].value == restored[120][CI]["agents"]


def test_cli_json_csv_and_text(hist):
    with hist.open() as repo:
        expected = [r.as_dict() for r in repo.history(CI, "collective_iq")]
    out = invoke("--repo", hist.repo_path, "history", CI, "--key", "collective_iq", "--json").stdout
    assert json.loads(out) == expected
    out = invoke("--repo", hist.repo_path, "history", CI, "-k", "collective_iq", "--csv").stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["snapshot_id"], int(r["value"])) for r in table] == [(e["snapshot_id"], e["value"])
                                                                       for e in expected]
    text = invoke("--repo", hist.repo_path, "history", CI, "-k", "collective_iq", "-n", "2").stdout
    assert [line.split()[2] for line in text.splitlines()[1:3]] == [e["short_id"] for e in expected[-2:]]
    with hist.open() as repo:
        last = repo.get(hist.ids[-1]).time
    recent = invoke("--repo", hist.repo_path, "history", CI, "-k", "agents", "--since", last.isoformat(),
                    "--json").stdout
    assert [r["snapshot_id"] for r in json.loads(recent)] == [hist.ids[-1]]


@pytest.mark.parametrize(("args", "code", "needle"), [
    (("history", "no/such.json"), 1, "not a file in any"),
    (("history", CI, "--key", "a..b"), 2, "bad key path"),
    (("history", CI, "--since", "yesterday-ish"), 2, "not a time"),
    (("history", "/"), 1, "path of a file"),
])
def test_cli_errors_are_one_line(hist, args, code, needle):
    result = invoke("--repo", hist.repo_path, *args, expect=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr
