"""A generated history for the query tests (history, value diff, find, fsspec): N snapshots of a
changing folder, taken by the real snapshot builder, with the folder's content at each one kept
so a test can also check its brute-force reference against what was written."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import casstore
from casstore.client import Repository
from casstore.read.reader import PathNotFound

HOST = "testhost"
CI = "ai_hub/collective_intelligence.json"
TICKS = "market/ticks.jsonl"
PRICES = "market/prices.json"
FLICKER = "ai_hub/flicker.json"       # present only in some snapshots
NOTES = "notes.txt"                   # changes in every snapshot, so every root tree is new


@dataclass
class History:
    repo_path: Path
    cache_dir: Path
    ids: list[str] = field(default_factory=list)            # oldest first
    contents: list[dict[str, bytes]] = field(default_factory=list)

    def open(self) -> Repository:
        return casstore.open(str(self.repo_path), host=HOST, cache_dir=str(self.cache_dir))


def _folder(i: int, rng: random.Random, state: dict) -> dict[str, bytes]:
    """The folder at step i: collective_iq changes every 10th step (and sometimes reverts), the
    file around it every 5th, ticks.jsonl mostly grows, prices.json is rewritten now and then."""
    if i % 5 == 0:
        state["agents"] = state.get("agents", 3) + 1
    if i % 10 == 0:
        state["iq"] = state.get("prev_iq", 100) if i % 30 == 0 and i else 100 + i // 10 * 3
        state["prev_iq"] = 100 + i // 10 * 3
    ci = {"collective_iq": state["iq"], "agents": state["agents"], "accuracy": round(0.5 + (i // 5) / 1000, 3),
          "models": {"alpha": {"weights": [i // 20, 1, 2]}, "beta": {"on": i // 40 % 2 == 0}}}
    if i % 7 == 0:
        state.setdefault("ticks", []).append({"t": i, "p": rng.randint(1, 99)})
    if i % 47 == 46:
        state["ticks"] = state["ticks"][:-1]          # the tail removed
    if i % 61 == 60:
        state["ticks"][0] = {"t": -1, "p": 0}         # a change in the middle
    prices = {"BTC": 100 + i // 25, "ETH": [1, 2, i // 50], "meta": {"src": "x" if i < 100 else "y"}}
    files = {CI: json.dumps(ci).encode(), TICKS: b"".join(json.dumps(t).encode() + b"\n" for t in state["ticks"]),
             PRICES: json.dumps(prices, indent=1).encode(), NOTES: f"step {i}\n".encode(),
             "deep/a/b/c/leaf.json": b'{"fixed": true}', "deep/a/other.bin": b"\x00\x01"}
    if 40 <= i < 90 or i >= 150:
        files[FLICKER] = json.dumps({"on": i}).encode() if i < 150 else b"not json {"
    return files


def make_history(root: Path, count: int) -> History:
    repo_path, source = root / "repo", root / "data"
    hist = History(repo_path, root / "cache")
    repo = casstore.init(str(repo_path), host=HOST, cache_dir=str(hist.cache_dir))
    rng, state = random.Random(16), {}
    try:
        for i in range(count):
            files = _folder(i, rng, state)
            _write_changes(source, hist.contents[-1] if hist.contents else {}, files)
            hist.ids.append(repo.snapshot(str(source)).id)
            hist.contents.append(files)
    finally:
        repo.close()
    return hist


def _write_changes(source: Path, before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Write only what changed, as a program would: unchanged files keep their mtime, so their
    directories keep their tree ids across snapshots."""
    for rel in before.keys() - after.keys():
        (source / rel).unlink()
    for rel, data in after.items():
        if before.get(rel) != data:
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_bytes(data)


def restored_json(repo: Repository, snapshot_id: str, path: str, target: Path) -> object:
    """The brute force: restore the one file, then json.load it (None when it is not there or not JSON)."""
    shutil.rmtree(target, ignore_errors=True)
    try:
        repo.restore(snapshot_id, str(target), path=path)
    except PathNotFound:
        return MISSING_FILE
    data = (target / path).read_bytes()
    try:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in data.splitlines() if line.strip()]
        return json.loads(data)
    except ValueError:
        return NOT_JSON


MISSING_FILE = object()
NOT_JSON = object()


_BUILT: dict[str, History] = {}


@pytest.fixture(scope="session", name="hist")
def generated_history(tmp_path_factory) -> History:
    """200 snapshots, read-only, built once per session and shared by the query test modules
    (each module that imports this fixture gets its own copy of it, hence the module-level cache)."""
    if "hist" not in _BUILT:
        _BUILT["hist"] = make_history(tmp_path_factory.mktemp("history"), 200)
    return _BUILT["hist"]


def restored_dirs(hist: History) -> list[Path]:
    """The brute force's raw material: every snapshot restored into its own directory (once per session)."""
    if "restored" not in _RESTORED:
        root = hist.repo_path.parent / "restored"
        with hist.open() as repo:
            for n, snapshot_id in enumerate(hist.ids):
                repo.restore(snapshot_id, str(root / str(n)))
        _RESTORED["restored"] = [root / str(n) for n in range(len(hist.ids))]
    return _RESTORED["restored"]


_RESTORED: dict[str, list[Path]] = {}
