"""Two (or more) casstore versions on the 2,020-file benchmark's steps, in one sitting, sides alternated.

    python benchmarks/versions.py --data PRISTINE --work DIR --rounds 5 --out ab.jsonl \\
        s2=/path/to/casstore-of-session-2 main=/path/to/casstore-of-main

Why: a ratio against restic or borg measured in one sitting moves with the machine (borg's own
no-change took 0.39 s in session 2's run and 0.35 s in session 11's), so "the ratios do not get worse"
(issue 14) is shown by running the old and the new casstore side by side: in one sitting, a version
faster on a step has the lower ratio against any tool on that step.

Each round: a fresh copy of PRISTINE (made by `generate.py --scale 1.0`) and a fresh repository and
cache per side; steps initial, incremental (`mutate.py day`), no change, insert (`mutate.py insert`),
restore, each version running the step on its own copy; before each command its data, repository and
cache are evicted from the page cache; the order of the sides rotates per round and step. Each command
runs under /usr/bin/time (wall, user, sys, peak RSS), one JSON line per command in --out; the medians
are printed as a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import mutate
from run import evict

STEPS = ("initial", "incremental", "nochange", "insert", "restore")
SETTLE = 2.5        # seconds between a change and the next snapshot, so mtimes are not "racy"


def measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", *cmd], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    wall, user, sys_, rss = proc.stderr.strip().splitlines()[-1].split()
    return {"wall": float(wall), "user": float(user), "sys": float(sys_), "cpu": float(user) + float(sys_),
            "rss_mib": int(rss) / 1024}


def command(exe: str, work: Path, step: str) -> list[str]:
    if step == "restore":
        shutil.rmtree(work / "restore", ignore_errors=True)
        (work / "restore").mkdir()
        return [exe, "--repo", str(work / "repo"), "restore", "latest", str(work / "restore")]
    return [exe, "--repo", str(work / "repo"), "snapshot", str(work / "data"), "--json"]


def one_round(r: int, sides: dict[str, str], pristine: Path, base: Path, out) -> None:
    work = {name: base / f"w-{name}" for name in sides}
    envs = {}
    for name, w in work.items():
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(pristine), str(w / "data")], check=True)
        envs[name] = dict(os.environ, CASSTORE_CACHE_DIR=str(w / "cache"), CASSTORE_HOST="bench")
        subprocess.run([sides[name], "--repo", str(w / "repo"), "init"], env=envs[name], check=True,
                       capture_output=True)
    changed = time.time()
    for i, step in enumerate(STEPS):
        if step in ("incremental", "insert"):
            for w in work.values():
                (mutate.day_of_change if step == "incremental" else mutate.insert_only)(str(w / "data"))
            changed = time.time()
        time.sleep(max(0.0, changed + SETTLE - time.time()))
        names = list(sides)
        k = (r + i) % len(names)
        for name in names[k:] + names[:k]:
            w = work[name]
            evict([str(w / "data"), str(w / "repo"), str(w / "cache")])
            m = measured(command(sides[name], w, step), envs[name])
            m.update(round=r, step=step, side=name, load=os.getloadavg()[0])
            out.write(json.dumps(m) + "\n")
            out.flush()
            print(f"r{r} {step:11} {name:6} wall {m['wall']:6.2f} cpu {m['cpu']:6.2f} rss {m['rss_mib']:.0f}",
                  flush=True)
    for w in work.values():
        shutil.rmtree(w, ignore_errors=True)


def table(path: Path, names: list[str]) -> str:
    wall: dict[tuple[str, str], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in path.read_text().splitlines():
        m = json.loads(line)
        wall[m["step"], m["side"]].append(m["wall"])
        cpu[m["step"], m["side"]].append(m["cpu"])
    first, rows = names[0], []
    for step in STEPS:
        cells = []
        for name in names:
            w, c = statistics.median(wall[step, name]), statistics.median(cpu[step, name])
            ratio = "" if name == first else f" ({w / statistics.median(wall[step, first]):.2f}x)"
            cells.append(f"{w:.2f} s{ratio}, cpu {c:.2f} s")
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join([f"| step | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, required=True, help="pristine data (generate.py --scale 1.0)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("sides", nargs="+", help="NAME=EXECUTABLE, the first one the reference")
    args = parser.parse_args()
    sides = dict(side.split("=", 1) for side in args.sides)
    with args.out.open("a") as out:
        for r in range(args.rounds):
            one_round(r, sides, args.data, args.work, out)
    print(table(args.out, list(sides)))


if __name__ == "__main__":
    main()
