"""Every read path against every hostile repository of tests/hostile_repos.py (issue 13, cases 7-10).

Each case runs in its own process under a 3 GiB address-space limit and a 120 s timeout (the
stated budget; each takes a few seconds), so a walk that never ends or a MemoryError shows as a
failure here instead of hanging the suite. Every path must end with a clear casstore error or a
correct result; nothing else may escape, and the API never answers 200 with a short or invalid
body (the driver parses every 200 and compares every download with its Content-Length).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIME_BUDGET = 120


def _run(case: str, work: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CASSTORE_CACHE_DIR": str(work / "cache")}
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.hostile_repos", case, str(work)], capture_output=True,
                              env=env, cwd=work, timeout=TIME_BUDGET)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the read paths did not end within {TIME_BUDGET} s")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    outcomes = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    crashes = {path: outcome for path, outcome in outcomes.items() if outcome.startswith("crash")}
    assert not crashes, f"{case}: {crashes}"
    return outcomes


_RESULTS: dict[str, tuple[dict[str, str], Path]] = {}


@pytest.fixture
def outcomes(tmp_path_factory):
    """case -> (path -> outcome, its work folder); each case runs once per session, when first asked."""
    class Lazy:
        def __getitem__(self, case: str) -> tuple[dict[str, str], Path]:
            if case not in _RESULTS:
                work = tmp_path_factory.mktemp(case)
                _RESULTS[case] = (_run(case, work), work)
            return _RESULTS[case]

    return Lazy()


@pytest.mark.parametrize("case", ["dag", "dag_lying_summary"])
def test_a_tree_dag_is_refused_by_every_walk_and_reported_by_check(outcomes, case):
    out, work = outcomes[case]
    far_more = "far more entries than it records"
    for path in ("restore", "to_dict", "diff", "stats"):
        assert out[path].startswith("error IntegrityError") and far_more in out[path], (path, out[path])
    assert out["check"].startswith("ok+errors") and "far more than the snapshot records" in out["check"]
    assert out["api"].startswith("http 500") and far_more in out["api"]
    assert out["sync"] == "ok"                           # copying reads each distinct tree once
    assert not (work / "restored").exists() or not any((work / "restored").iterdir())   # refused up front


def test_one_chunk_named_thousands_of_times_is_refused_not_allocated(outcomes):
    out, _ = outcomes["chunk_reuse"]
    far_more = "far more bytes than it records"
    assert out["restore"].startswith("ok+errors") and "zeros.json" in out["restore"] and far_more in out["restore"]
    assert out["to_dict"].startswith("error IntegrityError") and far_more in out["to_dict"]
    assert out["api"].startswith("http 500")
    assert out["api_file"] == "http small.json 200, zeros.json 500"


def test_a_size_the_chunks_do_not_hold_is_reported_everywhere(outcomes):
    out, work = outcomes["size_lie"]
    assert "grown.json: size recorded as 10 but its chunks hold 8000 bytes" in out["check"]
    assert "grown.json: size recorded as 10" in out["restore"]
    assert out["to_dict"].startswith("error IntegrityError") and out["api"].startswith("http 500")
    assert out["api_file"] == "http fine.json 200, grown.json 500"
    assert (work / "restored" / "fine.json").read_bytes() == b'{"ok": true}'


def test_out_of_range_metadata_fails_one_file_each_and_restore_goes_on(outcomes):
    out, work = outcomes["huge_metadata"]
    errors = json.loads(out["restore"].removeprefix("ok+errors "))
    assert [e.split(":")[0] for e in errors] == ["b.txt", "c.txt", "d"]
    assert all("metadata out of range" in e for e in errors)
    assert sorted(os.listdir(work / "restored")) == ["a.txt", "e.txt"]
    assert (work / "restored" / "e.txt").read_bytes() == b"last"
    assert out["to_dict"].startswith("ok") and out["api"].startswith("http 200")


def test_privileged_entries_are_not_planted_by_default(outcomes):
    out, work = outcomes["privileged"]
    assert json.loads(out["restore"].removeprefix("ok+errors ")) == [
        "null: device node not created (restore with --privileged as root to create device nodes)"]
    restored = work / "restored"
    assert sorted(os.listdir(restored)) == ["suid", "theirs.txt"]
    suid = os.lstat(restored / "suid")
    assert stat.S_IMODE(suid.st_mode) == 0o777 and suid.st_uid == os.geteuid()     # no setuid/setgid bits
    assert os.lstat(restored / "theirs.txt").st_uid == os.geteuid()                  # not chowned away


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes and chowning needs root")
def test_privileged_restore_as_root_recreates_what_was_recorded(tmp_path):
    from tests.helpers import open_repo
    from tests.hostile_repos import build

    snapshot_id = build("privileged", str(tmp_path / "repo"))
    result = open_repo(tmp_path / "repo").restore(snapshot_id, str(tmp_path / "out"), privileged=True)
    assert result.ok, result.errors
    assert stat.S_IMODE(os.lstat(tmp_path / "out" / "suid").st_mode) == 0o6777
    assert stat.S_ISCHR(os.lstat(tmp_path / "out" / "null").st_mode)
    assert os.lstat(tmp_path / "out" / "theirs.txt").st_uid == 4242


def test_json_nested_too_deep_falls_back_to_bytes(outcomes):
    out, work = outcomes["deep_json"]
    assert json.loads(out["to_dict"].removeprefix("ok ")) == {"deep": "<200000 bytes>", "fine": {"ok": True}}
    assert out["api"].startswith("http 200") and out["restore"] == "ok"
    assert (work / "restored" / "deep.json").stat().st_size == 200_000


def test_unsafe_names_are_refused_by_restore_and_reported_by_check(outcomes):
    out, work = outcomes["unsafe_names"]
    assert json.loads(out["restore"].removeprefix("ok+errors ")) == ["..: unsafe name refused",
                                                                     "a/../../b: unsafe name refused"]
    assert "..: unsafe name" in out["check"] and "a/../../b: unsafe name" in out["check"]
    assert os.listdir(work / "restored") == ["ok.txt"] and not (work / "b").exists()


def test_a_config_outside_the_formats_range_is_refused_at_open(outcomes):
    out, _ = outcomes["huge_config"]
    for path, outcome in out.items():
        if path == "api":
            assert outcome.startswith("http 500") and "outside the format's range" in outcome, (path, outcome)
        else:
            assert outcome.startswith("error ") and "chunker max_size 1099511627776 is outside the format's range" \
                in outcome, (path, outcome)
