"""The unchanged sync under request latency (issue 20 item 4): total time against the slowest request.

    python benchmarks/latency_sync.py                     # fixed 2 s, then random 2-10 s (3 seeds)
    python benchmarks/latency_sync.py --append-results    # also append the table to RESULTS.md

A small folder is snapshotted and synced to a memory remote once; then, for each row, snapshotted
again unchanged (a new manifest, no new blob) and synced through `Delayed`, which makes every
request wait first: a fixed delay, or one drawn from 2-10 s by a hash of the seed and the call
(so a run replays whatever the threads' order). Each row is run twice: as built, and with the
first listings not sent ahead (`FIRST_LISTINGS = ()`: the reads one after another, as before
issue 20). Target (issue 20): the sync's total at most 3 times its slowest request.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from casstore.client import Repository  # noqa: E402
from casstore.remotes.base import ObjectInfo, Remote  # noqa: E402
from casstore.remotes.memory import MemoryRemote  # noqa: E402
from casstore.remotes.wrappers import RemoteWrapper  # noqa: E402
from casstore.settings import load_settings  # noqa: E402
from casstore.sync import transfer  # noqa: E402


class Delayed(RemoteWrapper):
    """Every call waits `low`..`high` seconds first (drawn per call from the seed); records each wait."""

    def __init__(self, inner: Remote, low: float, high: float, seed: int) -> None:
        super().__init__(inner)
        self.low, self.high, self.seed = low, high, seed
        self.lock = threading.Lock()
        self.waits: list[tuple[str, float]] = []

    def _wait(self, call: str) -> None:
        digest = hashlib.blake2b(f"{self.seed}|{call}".encode(), digest_size=8).digest()
        seconds = self.low + (self.high - self.low) * int.from_bytes(digest, "big") / 2 ** 64
        with self.lock:
            self.waits.append((call, seconds))
        time.sleep(seconds)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self._wait(f"get {key.split('/')[0]}")
        return self.inner.get(key, offset, length, large=large)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._wait(f"list {prefix}")
        return iter(list(self.inner.list(prefix)))

    def _stat(self, key: str) -> ObjectInfo:
        self._wait(f"stat {key.split('/')[0]}")
        return self.inner.stat(key)

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        self._wait(f"put {key.split('/')[0]}")
        return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)


def make_folder(root: Path) -> None:
    rng = os.urandom
    for i in range(40):
        (root / f"doc_{i:02d}.json").write_bytes(rng(8192).hex().encode())
    (root / "big.bin").write_bytes(rng(2 << 20))


def one_sync(repo: Repository, remote: MemoryRemote, low: float, high: float, seed: int,
             ahead: bool) -> dict:
    repo.snapshot(str(Path(repo.local_dir or "").parent / "data"))
    delayed = Delayed(remote, low, high, seed)
    saved = transfer.FIRST_LISTINGS
    transfer.FIRST_LISTINGS = saved if ahead else ()
    try:
        started = time.perf_counter()
        report = transfer.sync_to_remote(repo, delayed)
        total = time.perf_counter() - started
    finally:
        transfer.FIRST_LISTINGS = saved
    assert len(report.snapshots) == 1 and report.packs_uploaded == 0, "not an unchanged sync"
    slowest = max(w for _, w in delayed.waits)
    return {"requests": len(delayed.waits), "sum": sum(w for _, w in delayed.waits),
            "slowest": slowest, "total": total, "ratio": total / slowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="rows with random 2-10 s delays")
    parser.add_argument("--append-results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "data").mkdir()
        make_folder(base / "data")
        settings = load_settings({"repository": str(base / "repo"), "cache_dir": str(base / "cache"),
                                  "host": "bench"})
        repo = Repository.init_local(str(base / "repo"), settings)
        remote = MemoryRemote(name="latency-bench")
        repo.snapshot(str(base / "data"))
        transfer.sync_to_remote(repo, remote)
        cases = [("fixed 2 s", 2.0, 2.0, 0)] + [(f"random 2-10 s, seed {s}", 2.0, 10.0, s)
                                                 for s in range(1, args.seeds + 1)]
        rows = []
        for name, low, high, seed in cases:
            for ahead in (True, False):
                result = one_sync(repo, remote, low, high, seed, ahead)
                rows.append((name, "reads together (as built)" if ahead else "reads one after another",
                             result))
                print(name, ahead, {k: round(v, 2) for k, v in result.items()}, flush=True)
    table = render(rows, args)
    print(table)
    if args.append_results:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + table)


def render(rows: list[tuple[str, str, dict]], args: argparse.Namespace) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/latency_sync.py" + (f" --seeds {args.seeds}" if args.seeds != 3 else "") \
        + " --append-results"
    lines = ["## Unchanged sync under latency (issue 20)", "",
             f"Generated by `benchmarks/latency_sync.py` on {when}. Command:", "", f"    {command}", "",
             "A memory remote behind a wrapper that delays every request (fixed, or drawn per call from "
             "2-10 s); the sync of an unchanged folder (a new manifest, no new blob). \"one after another\" "
             "is the same code with the first listings not sent ahead (how it was before). "
             "Target: total at most 3 times the slowest request.", "",
             "| delay per request | reads | requests | sum of delays | slowest request | sync total "
             "| total / slowest |",
             "|---|---|---|---|---|---|---|"]
    for name, mode, r in rows:
        lines.append(f"| {name} | {mode} | {r['requests']} | {r['sum']:.1f} s | {r['slowest']:.1f} s | "
                     f"{r['total']:.1f} s | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
