"""Real data: consecutive published versions of npm data packages, snapshotted in order by
casstore, restic and borg in one run (issue 17).

    python benchmarks/realdata.py                      # 12 versions, writes its section of RESULTS.md
    python benchmarks/realdata.py --versions 3 --no-results   # smoke run

The packages and versions are pinned in `realdata_versions.json` (tarball URL and the registry's
sha512 integrity of each). Tarballs are downloaded once into `--cache` (default
benchmarks/work/realdata-cache, gitignored) and refused unless their sha512 matches. Version i of
the data folder holds version i of every package, one folder per package. Going from one version
to the next rewrites only the files whose bytes changed (and removes the files that went), as a
folder updated in place would be; unchanged files keep their inode and mtime.

Per version each tool snapshots the folder (order rotates per version; page cache evicted
before each command; /usr/bin/time for CPU and peak RSS): wall, CPU, peak RSS, repository size.
Then a no-change snapshot and a restore of the latest, verified byte-identical.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    RAM_FS,
    TOOL_CLASSES,
    TOOLS,
    Casstore,
    evict,
    log,
    machine_info,
    pin_casstore_code,
    restore_location,
    restore_verified,
    rotated,
    run_measured,
    tool_available,
    tree_bytes,
    versions,
    wait_past_racy_window,
)

MiB = 1024 * 1024
PINS = HERE / "realdata_versions.json"
SECTION = "## Real data: consecutive npm releases (issue 17)"
SECTION_END = "<!-- end of the real-data section -->"


class CasstoreChain(Casstore):
    """casstore on the same code in a repository made with `compression.delta` = `chain`."""
    chain = 0

    def init(self) -> None:
        script = ("import sys; from casstore.client import init_repository; "
                  "from casstore.format.config import RepoConfig; from casstore.settings import load_settings; "
                  "init_repository(load_settings({'repository': sys.argv[1]}), "
                  "RepoConfig.new(delta_chain=int(sys.argv[2])))")
        subprocess.run([sys.executable, "-c", script, self.repo, str(self.chain)], env=self.env, cwd=self.cwd,
                       check=True, capture_output=True)


class CasstoreNoDelta(CasstoreChain):
    """No delta blobs (as before issue 17): the baseline the delta targets compare against."""
    name = "casstore-nodelta"


class CasstoreBefore(Casstore):
    """The same venv on another copy of the casstore package (`--before-code`, e.g. `git archive
    <commit> casstore | tar -x -C DIR`): before and after side by side in one run, where peak RSS
    and CPU move with the machine's load."""
    name = "casstore-before"
    code = ""

    def __init__(self, work: Path, rep_tag: str, env: dict) -> None:
        super().__init__(work, rep_tag, env)
        if not os.path.isdir(os.path.join(self.code, "casstore")):
            raise SystemExit(f"casstore-before: --before-code {self.code!r} holds no casstore package")
        self.env["PYTHONPATH"] = self.code


CHAIN_TOOL = "casstore-chain"      # casstore-chainN: chains bounded at N deltas (a variant to compare)


def tool_class(name: str) -> type:
    if name.startswith(CHAIN_TOOL) and name[len(CHAIN_TOOL):].isdigit():
        return type("CasstoreChainN", (CasstoreChain,), {"name": name, "chain": int(name[len(CHAIN_TOOL):])})
    return {**TOOL_CLASSES, CasstoreNoDelta.name: CasstoreNoDelta, CasstoreBefore.name: CasstoreBefore}[name]

# Snapshot.to_dict() of the latest, every file's value read (JSON parsed) and dropped: the read
# path over delta chains; not materialized whole (the icon sets parse to several GiB of objects).
TO_DICT = """
import json, sys, time
from collections.abc import Mapping
import casstore
started = time.perf_counter()
def walk(node):
    return sum(walk(node[k]) if isinstance(node[k], Mapping) else 1 for k in node)
entries = walk(casstore.open(sys.argv[1]).get("latest").to_dict()["data_sources"])
print(json.dumps({"seconds": time.perf_counter() - started, "entries": entries}))
"""


# -- the data ----------------------------------------------------------------------------------

def load_pins(count: int) -> list[dict]:
    """[{name, versions: [{version, tarball, integrity}]}], each cut to its last `count` versions."""
    packages = json.loads(PINS.read_text())["packages"]
    for package in packages:
        package["versions"] = package["versions"][-count:]
    return packages


def fetch(entry: dict, cache: Path) -> Path:
    """The tarball of one version, downloaded once and checked against its sha512 integrity."""
    algo, _, digest = entry["integrity"].partition("-")
    if algo != "sha512":
        raise SystemExit(f"unexpected integrity {entry['integrity'][:20]}")
    path = cache / Path(entry["tarball"]).name.replace("/", "_")
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        with urllib.request.urlopen(entry["tarball"], timeout=300) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, 4 * MiB)
        part.rename(path)
    actual = base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if actual != digest:
        path.unlink()
        raise SystemExit(f"{path.name}: sha512 does not match the registry's integrity")
    return path


def package_dir(name: str) -> str:
    return name.lstrip("@").replace("/", "__")


def extract(tarball: Path, dest: Path) -> None:
    """The tarball's `package/` folder into `dest` (npm tarballs hold one top folder)."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir()]
    if len(tops) != 1:
        raise SystemExit(f"{tarball.name}: expected one top folder, found {len(tops)}")
    for child in tops[0].iterdir():
        child.rename(dest / child.name)
    tops[0].rmdir()


def update_in_place(new: Path, current: Path) -> dict:
    """Make `current` equal to `new`, writing only files whose bytes differ; counts of what changed."""
    stats = {"changed": 0, "added": 0, "removed": 0, "changed_bytes": 0}
    new_files = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    old_files = {p.relative_to(current) for p in current.rglob("*") if p.is_file()} if current.exists() else set()
    for rel in sorted(old_files - new_files):
        (current / rel).unlink()
        stats["removed"] += 1
    for rel in sorted(new_files):
        src, dst = new / rel, current / rel
        if rel in old_files and filecmp.cmp(src, dst, shallow=False):
            continue
        stats["changed" if rel in old_files else "added"] += 1
        stats["changed_bytes"] += src.stat().st_size
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)   # a fresh mtime, as an update in place would give
    for dirpath, dirnames, filenames in os.walk(current, topdown=False):
        if not dirnames and not filenames and dirpath != str(current):
            os.rmdir(dirpath)
    return stats


def apply_version(packages: list[dict], i: int, cache: Path, source: Path, staging: Path) -> dict:
    """Bring `source` to version `i` of every package; return what changed."""
    shutil.rmtree(staging, ignore_errors=True)
    for package in packages:
        dest = staging / package_dir(package["name"])
        dest.mkdir(parents=True)
        extract(fetch(package["versions"][i], cache), dest)
    stats = update_in_place(staging, source)
    shutil.rmtree(staging, ignore_errors=True)
    stats["versions"] = {p["name"]: p["versions"][i]["version"] for p in packages}
    return stats


def count_files(path: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(path))


# -- the run -----------------------------------------------------------------------------------

def measure(tool, step: str, index: int, source: str, everything: list[str], restore_root: Path) -> dict:
    evict(everything)
    before = tree_bytes(tool.repo)
    if step == "to_dict":
        m = run_measured([sys.executable, "-c", TO_DICT, tool.repo], tool.env, tool.cwd)
        m["entries"] = json.loads(m.pop("stdout").strip().splitlines()[-1])["entries"]
    elif step == "restore":
        m = restore_verified(tool, str(restore_root / tool.name), source, tool.name)
    else:
        m = tool.snapshot(source)
        m.pop("summary", None)
    after = tree_bytes(tool.repo)
    m.pop("stdout", None)
    m.update(step=step, version=index, tool=tool.name, repo_bytes=after, added_bytes=after - before,
             load1=os.getloadavg()[0])
    log(f"    {step:8} v{index + 1:<3} {tool.name:8} wall {m['wall']:6.2f} s cpu {m['cpu']:6.2f} s "
        f"rss {m['rss_mib']:5.0f} MiB repo {after / MiB:8.1f} MiB added {(after - before) / MiB:7.2f} MiB")
    return m


def run(args, work: Path, env: dict, tools: tuple, results: dict) -> None:
    packages = load_pins(args.versions)
    cache = Path(args.cache)
    for package in packages:          # everything fetched and checked before any measurement
        for entry in package["versions"]:
            fetch(entry, cache)
    for sub in ("repos", "cache", "restore", "data", "staging"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)
    source = work / "data" / "packages"
    restore_root = Path(results["restore_dir"]["path"])
    shutil.rmtree(restore_root, ignore_errors=True)
    restore_root.mkdir(parents=True)
    instances = {name: tool_class(name)(work, "real", env) for name in tools}
    for tool in instances.values():
        tool.init()
    everything = [str(source)] + [p for t in instances.values() for p in t.paths()]
    for i in range(args.versions):
        change = apply_version(packages, i, cache, source, work / "staging")
        change.update(bytes=tree_bytes(str(source)), files=count_files(source))
        results["changes"].append(change)
        log(f"version {i + 1}: {change['files']} files, {change['bytes'] / MiB:.1f} MiB; changed "
            f"{change['changed']} ({change['changed_bytes'] / MiB:.1f} MiB), added {change['added']}, "
            f"removed {change['removed']}")
        wait_past_racy_window(time.time())
        for name in rotated(tools, i):
            results["runs"].append(measure(instances[name], "snapshot", i, str(source), everything, restore_root))
    for step in ("nochange", "restore", "to_dict"):
        for name in rotated(tools, 1 if step == "restore" else 0):
            if step == "to_dict" and not name.startswith("casstore"):
                continue
            results["runs"].append(measure(instances[name], step, args.versions - 1, str(source), everything,
                                           restore_root))


# -- the report --------------------------------------------------------------------------------

def fmt_mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def restored_on(results: dict) -> str:
    where = results.get("restore_dir")
    if where is None:        # a run from before the restores' place was recorded: on the disk
        return ""
    return f" Restores into `{where['path']}` ({where['fs']})."


def render(results: dict, title: str | None = None) -> str:
    """One run's tables; under `title` as a subsection, or as the whole section."""
    tools = results["args"]["tools"]
    runs = results["runs"]

    def pick(step: str, tool: str, version: int | None = None) -> dict | None:
        for m in runs:
            if m["step"] == step and m["tool"] == tool and (version is None or m["version"] == version):
                return m
        return None

    out = [title or SECTION, "",
           f"Generated by `benchmarks/realdata.py` on {results['date']}. Command:", "",
           f"    {results['command']}", "",
           f"- casstore {results['versions']['casstore']}; {results['versions']['restic']}; "
           f"{results['versions']['borg']}; 2 shared cores, load average at the start "
           f"{results['load']['start'][0]:.2f}, at the end {results['load']['end'][0]:.2f}.",
           "- Data: " + "; ".join(f"`{p['name']}` {p['first']} → {p['last']}" for p in results["packages"])
           + f" ({results['args']['versions']} consecutive published versions each, npm tarballs checked "
           "against their sha512 integrity, pinned in `benchmarks/realdata_versions.json`). Version i of the "
           "folder holds version i of every package; only files whose bytes changed are rewritten.",
           "- Settings as in the generated-data benchmark: restic repository v2 `--compression auto`, borg "
           "`--encryption none --compression zstd,3`, casstore defaults. Page cache evicted before every command."
           + restored_on(results),
           "", "| version | files | MiB | files changed / added / removed | MiB rewritten | "
           + " | ".join(f"{t} wall / CPU s" for t in tools) + " | " + " | ".join(f"{t} repo MiB" for t in tools)
           + " | " + " | ".join(f"{t} RSS MiB" for t in tools) + " |",
           "|---" * (5 + 3 * len(tools)) + "|"]
    for i, change in enumerate(results["changes"]):
        cells = [str(i + 1), str(change["files"]), fmt_mib(change["bytes"]),
                 f"{change['changed']} / {change['added']} / {change['removed']}", fmt_mib(change["changed_bytes"])]
        snaps = [pick("snapshot", t, i) for t in tools]
        cells += [f"{m['wall']:.2f} / {m['cpu']:.2f}" if m else "-" for m in snaps]
        cells += [fmt_mib(m["repo_bytes"]) if m else "-" for m in snaps]
        cells += [f"{m['rss_mib']:.0f}" if m else "-" for m in snaps]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| step | " + " | ".join(f"{t} wall s / CPU s / RSS MiB" for t in tools) + " |",
            "|---" * (1 + len(tools)) + "|"]
    for step, title in (("nochange", "no-change snapshot"), ("restore", "restore of the latest (verified)"),
                        ("to_dict", "`to_dict()` of the latest, every file read")):
        cells = []
        for t in tools:
            m = pick(step, t)
            ok = "" if step != "restore" or not m else (" ✓" if m.get("verified") else " DIFFERS")
            cells.append(f"{m['wall']:.2f} / {m['cpu']:.2f} / {m['rss_mib']:.0f}{ok}" if m else "-")
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    last = results["args"]["versions"] - 1
    final = {t: pick("snapshot", t, last) for t in tools}
    later = {t: [m["cpu"] for m in runs if m["tool"] == t and m["step"] == "snapshot" and m["version"] > 0]
             for t in tools}
    # to_dict holds parsed JSON (every tool alike): the peaks are of snapshots and restores
    peaks = {t: max(m["rss_mib"] for m in runs if m["tool"] == t and m["step"] != "to_dict") for t in tools}
    out += ["", "Summary: repository after the last version " + ", ".join(
        f"{t} {fmt_mib(final[t]['repo_bytes'])} MiB" for t in tools if final[t]) + "; later versions' snapshot "
        "CPU time " + ", ".join(f"{t} {min(later[t]):.2f}-{max(later[t]):.2f} s" for t in tools if later[t])
        + "; peak RSS over every snapshot and restore " + ", ".join(f"{t} {peaks[t]:.0f} MiB" for t in tools) + ".", ""]
    if "casstore" in tools and CasstoreNoDelta.name in tools:
        out += [delta_ratios(pick, last), ""]
    return "\n".join(out)


def delta_ratios(pick, last: int) -> str:
    """casstore with deltas over the same code without (issue 17's 'not above 1.2x today')."""
    def ratio(step: str, key: str, versions: range | None = None) -> str:
        pairs = [(pick(step, "casstore", v), pick(step, CasstoreNoDelta.name, v)) for v in (versions or [None])]
        pairs = [(a, b) for a, b in pairs if a and b]
        per = [a[key] / b[key] for a, b in pairs if b[key]]
        total = sum(a[key] for a, _ in pairs) / max(sum(b[key] for _, b in pairs), 1e-9)
        return f"{total:.2f}x" + (f" ({min(per):.2f}-{max(per):.2f}x per version)" if len(per) > 1 else "")
    later = range(1, last + 1)
    return ("Deltas over no deltas (same code, same run): later snapshots wall " + ratio("snapshot", "wall", later)
            + ", CPU " + ratio("snapshot", "cpu", later) + "; restore wall " + ratio("restore", "wall") + ", CPU "
            + ratio("restore", "cpu") + "; `to_dict` reads wall " + ratio("to_dict", "wall") + ", CPU "
            + ratio("to_dict", "cpu") + ".")


def _git(results: dict) -> str:
    text = results["versions"]["casstore"]
    return text.split("(git ", 1)[1].rstrip(")") if "(git " in text else text


def write_section(text: str, output: Path) -> None:
    """Replace (or append) the real-data section of RESULTS.md, leaving the rest as it is."""
    current = output.read_text() if output.exists() else ""
    block = text.rstrip("\n") + "\n\n" + SECTION_END + "\n"
    if SECTION in current and SECTION_END in current:
        head, rest = current.split(SECTION, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        current = head + block + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    output.write_text(current)
    log(f"wrote the real-data section of {output}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--versions", type=int, default=12, help="versions per package, the latest ones (default 12)")
    p.add_argument("--tools", default=",".join((*TOOLS, CasstoreNoDelta.name)),
                   help="subset of casstore,restic,borg,casstore-nodelta (no deltas),casstore-chainN (chains of N),"
                        "casstore-before (the code in --before-code)")
    p.add_argument("--before-code", default="", help="for casstore-before: a folder holding another casstore/")
    p.add_argument("--work", default=str(HERE / "work" / "realdata"), help="work directory (gitignored)")
    p.add_argument("--cache", default=str(HERE / "work" / "realdata-cache"), help="downloaded tarballs (kept)")
    p.add_argument("--output", default=str(HERE / "RESULTS.md"), help="report whose section is replaced")
    p.add_argument("--results-json", default=None, help="raw results (default benchmarks/realdata-results.json)")
    p.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the data and repositories afterwards")
    p.add_argument("--restore-dir", default=None,
                   help=f"where restores go (default: a RAM file system at {RAM_FS} when it has room, else under "
                        "--work; see restore_location)")
    p.add_argument("--report-only", action="store_true", help="re-render the section from --results-json")
    p.add_argument("--before", default=None, help="with --report-only: an earlier run's results JSON, shown first")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    CasstoreBefore.code = os.path.abspath(args.before_code) if args.before_code else ""
    if args.report_only:
        after = json.loads(Path(args.results_json or HERE / "realdata-results.json").read_text())
        if args.before:
            before = json.loads(Path(args.before).read_text())
            text = "\n".join([SECTION, "", render(before, f"### Before: git {_git(before)}"),
                              render(after, f"### After: git {_git(after)}")])
        else:
            text = render(after)
        write_section(text, Path(args.output))
        return
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("/usr/bin/time is missing: apt-get install -y time")
    tools = tuple(t for t in args.tools.split(",") if t and (t.startswith("casstore") or tool_available(t)))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = pin_casstore_code(work, dict(os.environ))
    command = "python benchmarks/realdata.py " + " ".join(argv if argv is not None else sys.argv[1:])
    packages = load_pins(args.versions)
    results = {"command": command.strip(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "args": {"versions": args.versions, "tools": list(tools)}, "machine": machine_info(work),
               "restore_dir": restore_location(args.restore_dir, work, room=2 * 1024 * MiB),
               "versions": versions(env), "runs": [], "changes": [], "load": {"start": os.getloadavg()},
               "packages": [{"name": p["name"], "first": p["versions"][0]["version"],
                             "last": p["versions"][-1]["version"]} for p in packages]}
    started = time.perf_counter()
    try:
        run(args, work, env, tools, results)
    finally:
        results["seconds"] = time.perf_counter() - started
        results["load"]["end"] = os.getloadavg()
        Path(args.results_json or HERE / "realdata-results.json").write_text(json.dumps(results, indent=1))
        if not args.keep:
            for sub in ("data", "repos", "cache", "restore", "staging", "code"):
                shutil.rmtree(work / sub, ignore_errors=True)
        if not args.restore_dir:
            shutil.rmtree(results["restore_dir"]["path"], ignore_errors=True)
    if not args.no_results:
        write_section(render(results), Path(args.output))
    log(f"done in {results['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
