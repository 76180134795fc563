"""History of one JSON key over many snapshots: `casstore history` beside the brute force
(restore the file and json.load it, per snapshot) and beside `restic dump` per snapshot.

    python benchmarks/history_bench.py                       # 1,000 snapshots, the file changes 30 times
    python benchmarks/history_bench.py --snapshots 200 --no-restic      # a quick look
    python benchmarks/history_bench.py --append-results      # also append the table to RESULTS.md

The folder holds ai_hub/collective_intelligence.json (about 60 KB: collective_iq and arrays a
parser must walk), a small ticks.jsonl appended at every step and a notes file that changes at
every step, so every snapshot is a new one. collective_intelligence.json changes at `--changes`
evenly spaced steps; collective_iq changes at each of them. Every measured method must give the
same change points, checked before anything is reported. Wall times are medians of `--reps`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CI = "ai_hub/collective_intelligence.json"
KEY = "collective_iq"
RESTIC_PASSWORD = "casstore-benchmark"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def document(version: int) -> bytes:
    patterns = [{"id": i, "w": (i * 7919 + version) % 1000 / 1000, "tags": ["a", "b", "c"]} for i in range(900)]
    doc = {KEY: 100 + version * 3, "accuracy": round(0.7 + version / 1000, 4), "agents": 12, "patterns": patterns}
    return json.dumps(doc, indent=1).encode()


def generate(work: Path, snapshots: int, changes: int, restic: bool) -> None:
    """Take `snapshots` snapshots of a changing folder with casstore (and restic)."""
    import casstore

    source = work / "data"
    (source / "ai_hub").mkdir(parents=True)
    (source / "market").mkdir()
    change_at = {round(i * snapshots / changes) for i in range(changes)}
    repo = casstore.init(str(work / "casstore"), host="bench", cache_dir=str(work / "cache"))
    if restic:
        _restic(work, "init")
    version = -1
    for step in range(snapshots):
        if step in change_at:
            version += 1
            (source / CI).write_bytes(document(version))
        with open(source / "market" / "ticks.jsonl", "a") as fh:
            fh.write(json.dumps({"t": step, "p": step % 97}) + "\n")
        (source / "notes.txt").write_text(f"step {step}\n")
        repo.snapshot(str(source))
        if restic:
            _restic(work, "backup", "--host", "bench", "-q", str(source))
        if step % 100 == 99:
            log(f"  {step + 1} snapshots")
    repo.close()


def _restic(work: Path, *args: str) -> str:
    env = {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    return subprocess.run(["restic", "-r", str(work / "restic"), *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def change_points(values: list[tuple[str, object]]) -> list[object]:
    points, last = [], object()
    for _id, value in values:
        if value != last:
            points.append(value)
        last = value
    return points


def casstore_history(work: Path) -> list[object]:
    """The CLI, as a user runs it, in a fresh process with a fresh cache."""
    shutil.rmtree(work / "cache-history", ignore_errors=True)
    env = {**os.environ, "CASSTORE_HOST": "bench", "CASSTORE_CACHE_DIR": str(work / "cache-history")}
    out = subprocess.run([sys.executable, "-m", "casstore.cli.main", "--repo", str(work / "casstore"), "history", CI,
                          "--key", KEY, "--json"], env=env, check=True, capture_output=True, text=True).stdout
    return [row["value"] for row in json.loads(out)]


def casstore_history_in_process(work: Path) -> list[object]:
    """Repository.history, opened afresh in this process (as the brute force below is)."""
    import casstore

    shutil.rmtree(work / "cache-history", ignore_errors=True)
    with casstore.open(str(work / "casstore"), host="bench", cache_dir=str(work / "cache-history")) as repo:
        return [row.value for row in repo.history(CI, KEY)]


def brute_force(work: Path) -> list[object]:
    """Restore the file from every snapshot and json.load it (in one process: no start-up cost counted)."""
    import casstore

    target = work / "restored"
    values = []
    with casstore.open(str(work / "casstore"), host="bench", cache_dir=str(work / "cache")) as repo:
        for info in reversed(repo.snapshots()):
            shutil.rmtree(target, ignore_errors=True)
            repo.restore(info.id, str(target), path=CI)
            with open(target / CI) as fh:
                values.append((info.id, json.load(fh)[KEY]))
    return change_points(values)


def restic_dump(work: Path) -> list[object]:
    listing = json.loads(_restic(work, "snapshots", "--json"))
    values = []
    for snap in sorted(listing, key=lambda s: s["time"]):
        body = _restic(work, "dump", snap["id"], str(work / "data" / CI))
        values.append((snap["id"], json.loads(body)[KEY]))
    return change_points(values)


def timed(fn, work: Path, reps: int) -> tuple[float, list[object]]:
    times, result = [], []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn(work)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    parser.add_argument("--append-results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.restic and not shutil.which("restic"):
        sys.exit("restic is not installed (apt-get install restic), or pass --no-restic")
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="history-bench-"))
    try:
        log(f"generating {args.snapshots} snapshots in {work}")
        generate(work, args.snapshots, args.changes, args.restic)
        rows = []
        log("casstore history")
        history_s, expected = timed(casstore_history, work, args.reps)
        rows.append(("`casstore history PATH --key collective_iq` (one process)", history_s))
        inproc_s, found = timed(casstore_history_in_process, work, args.reps)
        rows.append(("`repo.history(PATH, key=...)` in Python", inproc_s))
        assert found == expected, "the CLI and the Python API disagree"
        log("brute force")
        brute_s, brute = timed(brute_force, work, args.reps)
        rows.append(("restore + `json.load` per snapshot (one Python process)", brute_s))
        assert brute == expected, "brute force and history disagree"
        if args.restic:
            log("restic dump")
            restic_s, dumped = timed(restic_dump, work, 1)
            rows.append(("`restic dump` + `json.loads` per snapshot", restic_s))
            assert dumped == expected, "restic and history disagree"
        report = render(args, rows, len(expected), os.getloadavg()[0])
        print(report)
        if args.append_results:
            with open(HERE / "RESULTS.md", "a") as fh:
                fh.write("\n" + report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(args: argparse.Namespace, rows: list[tuple[str, float]], points: int, load: float) -> str:
    brute = next(seconds for name, seconds in rows if name.startswith("restore"))
    lines = ["## History of one key (issue 16)\n",
             f"Generated by `benchmarks/history_bench.py` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Command:\n",
             f"    python benchmarks/history_bench.py --snapshots {args.snapshots} --changes {args.changes} "
             f"--reps {args.reps}{'' if args.restic else ' --no-restic'}\n",
             f"{args.snapshots} snapshots; `{CI}` (about {len(document(0)) // 1000} KB) changed "
             f"{args.changes} times, giving {points} change points, identical for every method. Load average at "
             f"the end: {load:.2f} (2 shared cores, other work running). Medians of {args.reps} (restic: 1 run). "
             "Target (issue 16): casstore's time at most 1/20 of the brute force's.\n",
             "| method | wall | time / brute force's |", "|---|---|---|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.2f} s | {seconds / brute:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
