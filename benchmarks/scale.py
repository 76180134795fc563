"""Many small files and a long history: casstore beside restic and borg, wall time and peak RSS.

    python benchmarks/scale.py --files 50000,200000 --history-files 10000 --history 300
    python benchmarks/scale.py --files 2000 --history-files 500 --history 5     # smoke run

The data (generated here, deterministic per seed): JSON documents of 1-4 KB (size uniform in
[--min-bytes, --max-bytes]), --per-dir (100) to a directory, directories two levels deep
(`gNNN/dNNN/`, 100 directories to a group). Each document is one record of mixed fields
(identifiers, timestamps, numbers, short text), so it compresses about as real JSON does.

For each size, each tool (fresh repository and cache) runs: initial snapshot, no-change
snapshot, full restore (into an empty directory; verified against the source afterwards,
outside the timing), and for casstore and restic `check` (structure, no data read); casstore
also `show latest` (the root listing). Every command runs under `/usr/bin/time -v`: wall time
measured around it, user/system time and peak RSS from its report. The page cache is left warm
(the source was just written or read): the numbers compare CPU and system-call work, not the
disk. The history: --history snapshots of a --history-files source with --change of the files
rewritten between two snapshots (the same files for every tool), then restore, check and `show`
of the latest; reported are the median and the last snapshot's time (wall and CPU) and the
largest peak RSS.

`--sources DIR` generates each size once into DIR/<files> (a marker beside it names the parameters)
and reuses it in later runs instead of generating and deleting it (1M files take minutes to write);
`--generate-only` stops after that.

The result goes to benchmarks/work/scale.json and is printed as Markdown tables (--append-results
appends them to RESULTS.md). `--casstore-path DIR` runs casstore from another source tree
(PYTHONPATH), e.g. a `git worktree` of an earlier commit, labelled with --casstore-label.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    RAM_FS,
    Borg,
    Casstore,
    Restic,
    restore_location,
    restore_verified,
    run_measured,
    tool_available,
)

TOOLS = ("casstore", "restic", "borg")
WORDS = ["alpha", "beta", "gamma", "delta", "market", "signal", "model", "agent", "price", "volume", "trend",
         "score", "update", "status", "risk", "asset", "report", "alert", "index", "learning", "data", "source",
         "feature", "weight", "vector", "token"]


# -- data ----------------------------------------------------------------------------------------

def _value_pool(seed: int, count: int = 20_000) -> list[str]:
    rng = random.Random(seed)
    return [json.dumps({"t": rng.randrange(1 << 31), "v": round(rng.gauss(100, 15), 4),
                        "note": " ".join(rng.choices(WORDS, k=rng.randrange(1, 5)))}) for _ in range(count)]


_POOL = _value_pool(0)


def document(rng: random.Random, size: int, serial: int) -> bytes:
    """One JSON record of about `size` bytes (values drawn from a pool: generating 1M files with
    json.dumps per value took most of an hour)."""
    head = json.dumps({"id": f"doc-{serial:08d}", "ts": 1_700_000_000 + rng.randrange(10_000_000),
                       "kind": rng.choice(WORDS), "score": round(rng.random(), 6), "tags": rng.sample(WORDS, 3)})
    values: list[str] = []
    length = len(head) + 14
    while length < size:
        value = _POOL[rng.randrange(len(_POOL))]
        values.append(value)
        length += len(value) + 2
    return (head[:-1] + ', "values": [' + ", ".join(values) + "]}").encode()


def file_path(root: Path, index: int, per_dir: int) -> Path:
    directory = index // per_dir
    return root / f"g{directory // 100:03d}" / f"d{directory % 100:03d}" / f"doc{index % per_dir:04d}.json"


def generate(root: Path, files: int, per_dir: int, sizes: tuple[int, int], seed: int) -> int:
    rng = random.Random(seed)
    total = 0
    for index in range(files):
        path = file_path(root, index, per_dir)
        if index % per_dir == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = document(rng, rng.randint(*sizes), index)
        path.write_bytes(data)
        total += len(data)
    return total


def mutate(root: Path, files: int, per_dir: int, sizes: tuple[int, int], fraction: float, seed: int) -> None:
    """Rewrite `fraction` of the files with new records (their mtimes move 10 s into the past, so
    no tool sees them as racy)."""
    rng = random.Random(seed)
    past = time.time() - 10
    for index in rng.sample(range(files), max(1, int(files * fraction))):
        path = file_path(root, index, per_dir)
        path.write_bytes(document(rng, rng.randint(*sizes), index))
        os.utime(path, (past, past))


def age(root: Path) -> None:
    """Every file 10 s old: casstore re-reads files changed less than 2 s before a snapshot."""
    past = time.time() - 10
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), (past, past))


# -- tools -----------------------------------------------------------------------------------------

def make_tool(name: str, work: Path, tag: str, env: dict, casstore_path: str | None):
    tool = {"casstore": Casstore, "restic": Restic, "borg": Borg}[name](work, tag, env)
    if name == "casstore" and casstore_path:
        # absolute: the tools run in the work folder, where a relative PYTHONPATH names nothing and
        # the venv's own (editable) casstore was imported instead
        tree = os.path.abspath(casstore_path)
        if not os.path.isfile(os.path.join(tree, "casstore", "__init__.py")):
            sys.exit(f"scale.py: --casstore-path {casstore_path} holds no casstore/ package")
        tool.env["PYTHONPATH"] = tree
    return tool


def casstore_extra(tool, what: str) -> dict:
    args = {"check": ["check"], "show": ["show", "latest"]}[what]
    return run_measured([tool.bin, "--repo", tool.repo, *args], tool.env, tool.cwd)


def restic_check(tool) -> dict:
    return run_measured(["restic", "-r", tool.repo, "check", "-q"], tool.env, tool.cwd)


def slim(m: dict) -> dict:
    return {k: round(v, 3) for k, v in m.items() if k in ("wall", "user", "sys", "rss_mib")}


def restore_room(files: int) -> int:
    return files * 4096 * 3 // 2     # a tmpfs file takes at least a page


def restore_measured(tool, args, work: Path, source: Path, files: int) -> dict:
    """Restore into an empty folder (a RAM file system when it has room: see run.restore_location),
    compared with the source unless --no-verify (run.restore_verified)."""
    where = restore_location(args.restore_dir, work, restore_room(files))
    m = restore_verified(tool, str(Path(where["path"]) / f"restore-{tool.name}"), str(source), tool.name,
                         verify=args.verify, strict=True)
    m["restore_fs"] = where["fs"]
    if not args.restore_dir:
        shutil.rmtree(where["path"], ignore_errors=True)
    return m


def fresh_tool(tool_name: str, work: Path, name: str, env: dict, casstore_path):
    """A tool with an empty, newly initialised repository (leftovers of an earlier run removed)."""
    tool = make_tool(tool_name, work, name, env, casstore_path)
    for path in tool.paths():
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(tool.repo), exist_ok=True)   # borg init makes no parent (a history-only run)
    tool.init()
    return tool


def read_steps(tool_name: str, tool) -> dict:
    """The steps beyond snapshot and restore each tool offers: check (casstore, restic), show (casstore)."""
    if tool_name == "casstore":
        return {"check": slim(casstore_extra(tool, "check")), "show": slim(casstore_extra(tool, "show"))}
    if tool_name == "restic":
        return {"check": slim(restic_check(tool))}
    return {}


def prepare_source(files: int, args, work: Path) -> tuple[Path, int]:
    """The source of one size: generated into the work folder (removed after), or with --sources DIR
    generated once into DIR/<files> and reused by later runs (a marker names the parameters)."""
    source = Path(args.sources) / str(files) if args.sources else work / "data"
    marker = source.parent / f"{source.name}.generated"  # beside: not part of the source
    wanted = json.dumps([files, args.per_dir, args.min_bytes, args.max_bytes, args.seed])
    if args.sources and marker.exists() and json.loads(marker.read_text())[0] == json.loads(wanted):
        total = json.loads(marker.read_text())[1]
        log(f"{files} files, {total / 1e6:.0f} MB reused from {source}")
        return source, total
    shutil.rmtree(source, ignore_errors=True)
    started = time.perf_counter()
    total = generate(source, files, args.per_dir, (args.min_bytes, args.max_bytes), args.seed)
    age(source)
    if args.sources:
        marker.write_text(json.dumps([json.loads(wanted), total]))
    log(f"{files} files, {total / 1e6:.0f} MB generated in {time.perf_counter() - started:.0f} s")
    return source, total


def measure_size(name: str, files: int, args, work: Path, env: dict) -> dict:
    source, total = prepare_source(files, args, work)
    results: dict = {"files": files, "bytes": total}
    for tool_name in args.tools:
        tool = fresh_tool(tool_name, work, f"{files}", env, args.casstore_path)
        steps = {"initial": slim(tool.snapshot(str(source))), "nochange": slim(tool.snapshot(str(source))),
                 "restore": slim(restore_measured(tool, args, work, source, files))}
        steps.update(read_steps(tool_name, tool))
        log(f"{files} {label(tool_name, args)}: " + ", ".join(f"{k} {v['wall']:.1f} s/{v['rss_mib']:.0f} MiB"
                                                              for k, v in steps.items()))
        results[label(tool_name, args)] = steps
        for path in tool.paths():
            shutil.rmtree(path, ignore_errors=True)
    if not args.sources:
        shutil.rmtree(source, ignore_errors=True)
    return results


def measure_history(args, work: Path, env: dict) -> dict:
    source = work / "history"
    sizes = (args.min_bytes, args.max_bytes)
    results: dict = {"files": args.history_files, "snapshots": args.history, "change": args.change}
    for tool_name in args.tools:
        shutil.rmtree(source, ignore_errors=True)
        generate(source, args.history_files, args.per_dir, sizes, args.seed)
        age(source)
        tool = fresh_tool(tool_name, work, "history", env, args.casstore_path)
        snaps = []
        for n in range(args.history):
            if n:
                mutate(source, args.history_files, args.per_dir, sizes, args.change, args.seed + n)
            snaps.append(tool.snapshot(str(source)))
        walls = [m["wall"] for m in snaps]
        cpus = [m["cpu"] for m in snaps]
        steps = {"snapshots": {"median": round(statistics.median(walls), 3), "last": round(walls[-1], 3),
                               "total": round(sum(walls), 1), "rss_mib": round(max(m["rss_mib"] for m in snaps), 1),
                               "cpu_median": round(statistics.median(cpus), 3), "cpu_last": round(cpus[-1], 3),
                               "cpu_total": round(sum(cpus), 1)},
                 "restore": slim(restore_measured(tool, args, work, source, args.history_files))}
        steps.update(read_steps(tool_name, tool))
        steps["repo_mib"] = round(dir_bytes(tool.repo) / 2**20, 1)
        log(f"history {label(tool_name, args)}: {steps}")
        results[label(tool_name, args)] = steps
        for path in tool.paths():
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    return results


def dir_bytes(path: str) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(path) for n in names)


def label(tool_name: str, args) -> str:
    return args.casstore_label if tool_name == "casstore" and args.casstore_label else tool_name


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- report ----------------------------------------------------------------------------------------

def cell(m: dict | None) -> str:
    if not m:
        return ""
    return f"{m['wall']:.1f} s / {m['rss_mib']:.0f} MiB (cpu {m['user'] + m['sys']:.1f} s, sys {m['sys']:.1f} s)"


def render(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", "",
             f"Load average at start: {result['load']}; at the end: {result.get('load_end', '?')}. Cells: wall "
             "time / peak RSS (user + system CPU time, system time). Restores went to a "
             f"{result.get('restore_fs', 'disk')} file system.", ""]
    names = result["labels"]
    lines += ["| files | step | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for size in result["sizes"]:
        for step in ("initial", "nochange", "restore", "check", "show"):
            row = [cell(size.get(name, {}).get(step)) for name in names]
            if any(row):
                lines.append(f"| {size['files']:,} | {step} | " + " | ".join(row) + " |")
    history = result.get("history")
    if history:
        lines += ["", f"History: {history['snapshots']} snapshots of {history['files']:,} files, "
                  f"{history['change']:.0%} rewritten between two.", "",
                  "| step | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        snaps = [history.get(name, {}).get("snapshots") for name in names]
        lines.append("| snapshot (median / last / total, peak RSS) | " + " | ".join(
            f"{s['median']:.2f} / {s['last']:.2f} / {s['total']:.0f} s, {s['rss_mib']:.0f} MiB" if s else ""
            for s in snaps) + " |")
        if any(s and "cpu_median" in s for s in snaps):
            lines.append("| snapshot CPU (median / last / total) | " + " | ".join(
                f"{s['cpu_median']:.2f} / {s['cpu_last']:.2f} / {s['cpu_total']:.0f} s" if s and "cpu_median" in s
                else "" for s in snaps) + " |")
        for step in ("restore", "check", "show"):
            row = [cell(history.get(name, {}).get(step)) for name in names]
            if any(row):
                lines.append(f"| {step} | " + " | ".join(row) + " |")
        lines.append("| repository size | " + " | ".join(
            f"{history[name]['repo_mib']:.0f} MiB" if name in history else "" for name in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="50000,200000", help="comma-separated source sizes in files")
    p.add_argument("--per-dir", type=int, default=100)
    p.add_argument("--min-bytes", type=int, default=1024)
    p.add_argument("--max-bytes", type=int, default=4096)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--history", type=int, default=300, help="snapshots in the history (0: none)")
    p.add_argument("--history-files", type=int, default=10000)
    p.add_argument("--change", type=float, default=0.01, help="fraction of files rewritten between snapshots")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--casstore-path", help="run casstore from this source tree (PYTHONPATH)")
    p.add_argument("--casstore-label", default="")
    p.add_argument("--sources", help="generate each size once into DIR/<files> and reuse it in later runs")
    p.add_argument("--generate-only", action="store_true", help="with --sources: generate and stop")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip comparing restores")
    p.add_argument("--restore-dir", default=None,
                   help=f"where restores go (default: a RAM file system at {RAM_FS} when it has room, else under "
                        "--work: a restore on ext4 right after another tool's restored tree was deleted pays "
                        "the kernel's inode allocator, see run.restore_location)")
    p.add_argument("--work", default=str(HERE / "work" / "scale"))
    p.add_argument("--out", default=str(HERE / "work" / "scale.json"))
    p.add_argument("--append-results", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="print the tables of --out again")
    args = p.parse_args()
    if args.report_only:
        print(render(json.loads(Path(args.out).read_text())))
        return
    args.tools = [t for t in args.tools.split(",") if tool_available(t)]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    result: dict = {"command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
                    "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                    "labels": [label(t, args) for t in args.tools], "sizes": [],
                    "restore_fs": restore_location(args.restore_dir, work, restore_room(max(
                        [int(n) for n in args.files.split(",") if n] + [args.history_files])))["fs"]}
    for files in (int(n) for n in args.files.split(",") if n):
        if args.generate_only:
            prepare_source(files, args, work)
            continue
        result["sizes"].append(measure_size("size", files, args, work, env))
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.generate_only:
        return
    if args.history:
        result["history"] = measure_history(args, work, env)
    result["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    Path(args.out).write_text(json.dumps(result, indent=1))
    report = render(result)
    print(report)
    if args.append_results:
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write("\n" + report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
