"""Shared pieces of the gc tests: a controllable storage clock, writers that sync, gc to completion.

Grace periods of hours run in milliseconds: the MemoryRemote stamps objects with a FakeClock,
and gc and the writers' Copier take the same clock as their elapsed-time and wall clocks.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from casstore.client import Repository
from casstore.format.config import RepoConfig
from casstore.gc.run import collect_garbage
from casstore.remotes.memory import MemoryRemote
from casstore.settings import load_settings
from casstore.sync.transfer import sync_to_remote
from tests.sync_helpers import KiB, local_repo, make_source, tree_digest

GRACE = 3600.0
SMALL = {"avg_size": 16 * KiB, "pack_size": 128 * KiB, "grace_seconds": GRACE}


class FakeClock:
    """Seconds since the epoch that move only when told to (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Writer:
    """One host: a source folder, its local repository, and the digest of every snapshot taken."""

    def __init__(self, root: Path, host: str, clock: FakeClock, *, seed: int = 1, config: RepoConfig | None = None,
                 big_mib: int = 1):
        self.root, self.host, self.clock = root, host, clock
        self.source = make_source(root / "data", seed=seed, n_json=24, big_mib=big_mib)
        self.repo = local_repo(root / "repo", host=host, config=config or RepoConfig.new(**SMALL),
                               grace_seconds=GRACE, cache_dir=str(root / "cache"))
        self.expected: dict[str, dict] = {}

    def snapshot(self) -> str:
        result = self.repo.snapshot(str(self.source))
        self.expected[result.id] = tree_digest(self.source)
        return result.id

    def sync(self, remote):
        return sync_to_remote(self.repo, remote, clock=self.clock)

    def edit(self, seed: int) -> None:
        """Rewrite a third of the documents and the head of the large file."""
        rng = random.Random(seed)
        for doc in sorted((self.source / "ai_hub").glob("doc_*.json")):
            doc.write_text(json.dumps([rng.random() for _ in range(400)]))
        big = self.source / "market.bin"
        big.write_bytes(rng.randbytes(4096) + big.read_bytes()[4096:])


def remote_repo(remote, root: Path, host: str = "testhost") -> Repository:
    settings = load_settings({"grace_seconds": GRACE, "host": host, "cache_dir": str(root / f"cache-{host}-gc")})
    return Repository.open_remote(remote, settings)


def gc(repo, clock: FakeClock, **kwargs):
    kwargs.setdefault("local_clock", clock)
    return collect_garbage(repo, clock=clock, **kwargs)


def gc_to_completion(repo, clock: FakeClock, max_runs: int = 8) -> list:
    """Run gc a grace period apart until a run has nothing to condemn or sweep."""
    reports = []
    for _ in range(max_runs):
        clock.advance(GRACE + 1)
        reports.append(gc(repo, clock))
        if reports[-1].idle:
            return reports
    raise AssertionError(f"gc did not finish in {max_runs} runs: {[r.as_dict() for r in reports]}")


def stored_bytes(remote) -> int:
    return sum(info.size for info in remote.list(""))


def assert_restorable(repo: Repository, expected: dict[str, dict], out: Path) -> None:
    """check --read-data passes, and every listed snapshot restores exactly as it was taken."""
    report = repo.check(read_data=True)
    assert report.ok, report.as_dict()
    for snapshot_id in repo.snapshot_ids():
        target = out / snapshot_id[:12]
        result = repo.restore(snapshot_id, str(target))
        assert result.ok, snapshot_id
        assert tree_digest(target) == expected[snapshot_id], f"snapshot {snapshot_id[:8]} differs"
        shutil.rmtree(target)


def new_memory_remote(clock: FakeClock) -> MemoryRemote:
    import uuid

    return MemoryRemote(clock=clock, name=uuid.uuid4().hex)


def cli_json(*args: str) -> dict:
    """Run the CLI in-process with --json already among `args`; return the parsed output."""
    from tests.helpers import invoke

    return json.loads(invoke(*args).stdout)
