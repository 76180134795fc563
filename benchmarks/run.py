"""casstore beside restic and borg on the same generated data, in one run, on one machine.

    python benchmarks/run.py --scale 1.0 --reps 3      # the real thing (writes benchmarks/RESULTS.md)
    python benchmarks/run.py --quick                   # smoke run: --scale 0.05 --reps 1

Per repetition, from a fresh copy of the generated data and fresh repositories, each tool runs
each step (tools alternate: the order rotates per step and repetition): initial snapshot,
incremental after a day of change, no-change snapshot, insert-only, full restore (verified
byte-identical). Before every measured command the source, every repository and every tool cache
are evicted from the page cache (fsync, then posix_fadvise DONTNEED). Each command runs under
`/usr/bin/time -v` for CPU time and peak RSS; wall time is measured around it. Also measured: the
cold read of the source (the floor), `casstore --help`, `Snapshot.to_dict().materialize()` beside
`json.load` of the same files, casstore at 1 MiB, 256 KiB and 64 KiB average chunk sizes, and
(`--sync`, on by default) `casstore sync` of the initial, the incremental and a no-change snapshot
to moto and SeaweedFS started on loopback through tests/servers.py.

The casstore code is copied into the work directory at the start and run from there
(PYTHONPATH), so edits to the tree during a run do not mix versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
import mutate  # noqa: E402

MiB = 1024 * 1024
TOOLS = ("casstore", "restic", "borg")
STEPS = ("initial", "incremental", "nochange", "insert", "restore")
STEP_TITLES = {"initial": "Initial snapshot", "incremental": "Incremental after a day of change",
               "nochange": "No-change snapshot", "insert": "Insert-only (a few bytes near the start of a large file)",
               "restore": "Full restore (verified byte-identical)"}
CHUNK_SIZES = (1024 * 1024, 256 * 1024, 64 * 1024)
RACY_WINDOW_S = 2.5   # casstore re-reads files changed < 2 s before a snapshot; real changes are older


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- measuring ---------------------------------------------------------------------------------

def run_measured(cmd: list[str], env: dict, cwd: str | None = None) -> dict:
    """Run `cmd` under /usr/bin/time -v; wall from here, CPU and peak RSS from time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as tf:
        time_file = tf.name
    try:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", time_file, *cmd], env=env, cwd=cwd,
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        with open(time_file) as fh:
            report = fh.read()
    finally:
        os.unlink(time_file)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")

    def field(label: str) -> float:
        m = re.search(rf"{re.escape(label)}: ([0-9.]+)", report)
        return float(m.group(1)) if m else float("nan")

    user, system = field("User time (seconds)"), field("System time (seconds)")
    return {"wall": wall, "user": user, "sys": system, "cpu": user + system,
            "rss_mib": field("Maximum resident set size (kbytes)") / 1024, "stdout": proc.stdout}


def evict(paths: list[str]) -> None:
    """Drop every file under `paths` from the page cache: fsync (so no page stays dirty), then DONTNEED."""
    for top in paths:
        if not os.path.exists(top):
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)


def tree_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def cold_read(path: str) -> tuple[float, float, int]:
    """(seconds to stat every file, seconds to read every file, bytes) after eviction."""
    evict([path])
    started = time.perf_counter()
    files = []
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            os.lstat(full)
            files.append(full)
    stat_seconds = time.perf_counter() - started
    evict([path])
    total = 0
    buffer = bytearray(4 * MiB)
    started = time.perf_counter()
    for full in files:
        with open(full, "rb", buffering=0) as fh:
            while n := fh.readinto(buffer):
                total += n
    return stat_seconds, time.perf_counter() - started, total


def compare_trees(a: str, b: str) -> str | None:
    """None when the two trees hold the same names and byte-identical files, else the first difference."""
    def listing(root: str) -> tuple[set, set]:
        files, dirs = set(), set()
        for dirpath, dirnames, names in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            dirs.update(os.path.normpath(os.path.join(rel, d)) for d in dirnames)
            files.update(os.path.normpath(os.path.join(rel, n)) for n in names)
        return files, dirs

    files_a, dirs_a = listing(a)
    files_b, dirs_b = listing(b)
    if dirs_a != dirs_b:
        return f"directories differ: {sorted(dirs_a ^ dirs_b)[:5]}"
    if files_a != files_b:
        return f"files differ: {sorted(files_a ^ files_b)[:5]}"
    for rel in sorted(files_a):
        pa, pb = os.path.join(a, rel), os.path.join(b, rel)
        if os.path.getsize(pa) != os.path.getsize(pb):
            return f"{rel}: sizes differ"
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            while True:
                x, y = fa.read(8 * MiB), fb.read(8 * MiB)
                if x != y:
                    return f"{rel}: contents differ"
                if not x:
                    break
    return None



def restore_verified(tool: Tool, target: str, source: str, name: str, *, verify: bool = True,
                     strict: bool = False) -> dict:
    """The tool's measured restore of its latest snapshot into a fresh `target`, compared with the
    source afterwards unless not `verify` (outside the timing: m["verified"]; a difference is
    logged, or raised if `strict`); the restored copy is removed again. Used by scale.py too."""
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    m, restored = tool.restore(target, source)
    problem = compare_trees(source, restored) if verify else None
    m["verified"] = problem is None if verify else None
    shutil.rmtree(target, ignore_errors=True)
    if problem:
        if strict:
            raise RuntimeError(f"{name} restore differs: {problem}")
        log(f"    !! {name} restore differs: {problem}")
    return m

# -- the tools ---------------------------------------------------------------------------------

class Tool:
    name = ""

    def __init__(self, work: Path, rep_tag: str, env: dict) -> None:
        self.repo = str(work / "repos" / f"{self.name}-{rep_tag}")
        self.cache = str(work / "cache" / f"{self.name}-{rep_tag}")
        self.env = dict(env)
        self.cwd = str(work)
        self.snapshots = 0

    def paths(self) -> list[str]:
        return [self.repo, self.cache]

    def init(self) -> None:
        raise NotImplementedError

    def snapshot(self, source: str) -> dict:
        raise NotImplementedError

    def restore(self, target: str, source: str) -> tuple[dict, str]:
        """Restore the latest snapshot into `target`; return the measurement and the restored source root."""
        raise NotImplementedError


class Casstore(Tool):
    name = "casstore"

    def __init__(self, work: Path, rep_tag: str, env: dict, chunk_avg: int | None = None) -> None:
        super().__init__(work, rep_tag, env)
        self.chunk_avg = chunk_avg
        self.env.update(CASSTORE_CACHE_DIR=self.cache, CASSTORE_HOST="bench")
        self.bin = casstore_bin()

    def init(self) -> None:
        extra = ["--chunk-avg", str(self.chunk_avg)] if self.chunk_avg else []
        subprocess.run([self.bin, "--repo", self.repo, "init", *extra], env=self.env, cwd=self.cwd, check=True,
                       capture_output=True)

    def snapshot(self, source: str) -> dict:
        m = run_measured([self.bin, "--repo", self.repo, "snapshot", source, "--json"], self.env, self.cwd)
        m["summary"] = json.loads(m.pop("stdout"))
        return m

    def restore(self, target: str, source: str) -> tuple[dict, str]:
        m = run_measured([self.bin, "--repo", self.repo, "restore", "latest", target], self.env, self.cwd)
        return m, target

    def sync(self, remote: str, server_env: dict) -> dict:
        """`casstore sync --remote URL --json` with the S3 server's settings; the report in m["report"]."""
        env = {k: v for k, v in self.env.items() if not k.startswith(("AWS_", "CASSTORE_REMOTE", "CLOUD_"))}
        env.update(server_env)
        m = run_measured([self.bin, "--repo", self.repo, "sync", "--remote", remote, "--json"], env, self.cwd)
        m["report"] = json.loads(m.pop("stdout"))
        return m


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, rep_tag: str, env: dict) -> None:
        super().__init__(work, rep_tag, env)
        self.env.setdefault("RESTIC_PASSWORD", "casstore-benchmark")
        self.env["RESTIC_CACHE_DIR"] = self.cache
        self.compression = restic_has_compression()

    def init(self) -> None:
        extra = ["--repository-version", "2"] if self.compression else []
        subprocess.run(["restic", "-r", self.repo, "init", "-q", *extra], env=self.env, cwd=self.cwd, check=True,
                       capture_output=True)

    def snapshot(self, source: str) -> dict:
        extra = ["--compression", "auto"] if self.compression else []
        return run_measured(["restic", "-r", self.repo, "backup", "-q", "--host", "bench", *extra, source],
                            self.env, self.cwd)

    def restore(self, target: str, source: str) -> tuple[dict, str]:
        m = run_measured(["restic", "-r", self.repo, "restore", "latest", "-q", "--target", target],
                         self.env, self.cwd)
        return m, os.path.join(target, source.lstrip("/"))


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, rep_tag: str, env: dict) -> None:
        super().__init__(work, rep_tag, env)
        self.env.update(BORG_BASE_DIR=self.cache, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        self.env.pop("BORG_PASSPHRASE", None)

    def init(self) -> None:
        subprocess.run(["borg", "init", "--encryption", "none", self.repo], env=self.env, cwd=self.cwd, check=True,
                       capture_output=True)

    def snapshot(self, source: str) -> dict:
        self.snapshots += 1
        return run_measured(["borg", "create", "--compression", "zstd,3", f"{self.repo}::snap-{self.snapshots}",
                             source], self.env, self.cwd)

    def restore(self, target: str, source: str) -> tuple[dict, str]:
        os.makedirs(target, exist_ok=True)
        m = run_measured(["borg", "extract", f"{self.repo}::snap-{self.snapshots}"], self.env, target)
        return m, os.path.join(target, source.lstrip("/"))


TOOL_CLASSES = {"casstore": Casstore, "restic": Restic, "borg": Borg}


def casstore_bin() -> str:
    candidate = Path(sys.executable).parent / "casstore"
    return str(candidate) if candidate.exists() else (shutil.which("casstore") or "casstore")


def restic_has_compression() -> bool:
    try:
        out = subprocess.run(["restic", "backup", "--help"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "--compression" in out


def tool_available(name: str) -> bool:
    return name == "casstore" or shutil.which(name) is not None


# -- environment and versions ------------------------------------------------------------------

def machine_info(work: Path) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as fh:
            kib = int(next(line.split()[1] for line in fh if line.startswith("MemTotal")))
            memory = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    fs = ""
    try:
        best = ""
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if str(work).startswith(parts[1]) and len(parts[1]) >= len(best):
                    best, fs = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "memory": memory, "cpu": model, "kernel": platform.release(),
            "filesystem": fs, "python": platform.python_version()}


def versions(env: dict) -> dict:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "not installed"

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "casstore"], capture_output=True,
                           text=True).stdout.strip()
    libs = out([sys.executable, "-c", "import blake3, zstandard, msgpack, pyfastcdc, importlib.metadata as m; "
                "print(', '.join(f'{n} {m.version(n)}' for n in ('blake3', 'zstandard', 'msgpack', 'pyfastcdc')))"])
    weed = Path(sysconfig.get_path("scripts")) / "weed"
    sync_servers = (out([sys.executable, "-c", "import moto, boto3; print(f'moto {moto.__version__} (client boto3 "
                         "{boto3.__version__})')"]) + "; SeaweedFS `weed version`: "
                    + out([str(weed) if weed.exists() else "weed", "version"]))
    concurrency = out([sys.executable, "-c", "from casstore.settings import load_settings; "
                       "print(load_settings(dotenv_path='/nonexistent/.env').upload_concurrency)"])
    return {"casstore": f"{out([casstore_bin(), '--version'])} (git {git}{', uncommitted changes' if dirty else ''})",
            "casstore_libs": libs, "restic": out(["restic", "version"]), "borg": out(["borg", "--version"]),
            "sync_servers": sync_servers, "upload_concurrency": concurrency,
            "time": "GNU time " + out(["dpkg-query", "-W", "-f", "${Version}", "time"])}


def pin_casstore_code(work: Path, env: dict) -> dict:
    """Copy casstore/ into the work dir and point PYTHONPATH at it, so a run sees one version."""
    code = work / "code"
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(ROOT / "casstore", code / "casstore", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(code)], check=True)  # no first-run compile
    env = dict(env)
    env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- the steps ---------------------------------------------------------------------------------

def rotated(items: tuple, k: int) -> tuple:
    k %= len(items)
    return items[k:] + items[:k]


def wait_past_racy_window(since: float) -> None:
    remaining = since + RACY_WINDOW_S - time.time()
    if remaining > 0:
        time.sleep(remaining)


def fresh_source(work: Path, pristine: Path) -> str:
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    subprocess.run(["cp", "-a", str(pristine), str(data)], check=True)
    return str(data)


def reset_dirs(work: Path) -> None:
    for sub in ("repos", "cache", "restore"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)


def main_reps(args, work: Path, pristine: Path, env: dict, tools: tuple, results: dict) -> dict[str, Tool]:
    last: dict[str, Tool] = {}
    for rep in range(args.reps):
        log(f"repetition {rep + 1}/{args.reps}")
        reset_dirs(work)
        source = fresh_source(work, pristine)
        stat_s, read_s, nbytes = cold_read(source)
        results["floor"].append({"rep": rep, "stat_walk_s": stat_s, "cold_read_s": read_s, "bytes": nbytes})
        log(f"  cold stat walk {stat_s:.3f} s, cold read {read_s:.2f} s ({nbytes / read_s / MiB:.0f} MiB/s)")
        instances = {name: TOOL_CLASSES[name](work, f"r{rep}", env) for name in tools}
        for tool in instances.values():
            tool.init()
        everything = [source] + [p for t in instances.values() for p in t.paths()]
        changed_at = time.time()
        for step_index, step in enumerate(STEPS):
            if step == "incremental":
                results["mutations"]["day"] = mutate.day_of_change(source)
                log(f"  day of change: {results['mutations']['day']}")
                changed_at = time.time()
            elif step == "insert":
                results["mutations"]["insert"] = mutate.insert_only(source)
                log(f"  insert-only: {results['mutations']['insert']}")
                changed_at = time.time()
            wait_past_racy_window(changed_at)
            for name in rotated(tools, rep + step_index):
                tool = instances[name]
                evict(everything)
                before = tree_bytes(tool.repo)
                if step == "restore":
                    m = restore_verified(tool, str(work / "restore" / name), source, name)
                else:
                    m = tool.snapshot(source)
                after = tree_bytes(tool.repo)
                m.update(rep=rep, step=step, tool=name, repo_bytes=after, added_bytes=after - before,
                         load1=os.getloadavg()[0])
                m.pop("stdout", None)
                results["runs"].append(m)
                log(f"    {step:11} {name:8} wall {m['wall']:7.2f} s  cpu {m['cpu']:7.2f} s  "
                    f"rss {m['rss_mib']:6.0f} MiB  repo {after / MiB:8.1f} MiB  "
                    f"added {(after - before) / MiB:8.2f} MiB")
        last = instances
    return last


def measure_help(env: dict, results: dict, runs: int = 11) -> None:
    bin_ = casstore_bin()
    subprocess.run([bin_, "--help"], env=env, capture_output=True, check=True)  # warm the disk cache
    for label, cmd in (("casstore --help", [bin_, "--help"]), ("python -c pass", [sys.executable, "-c", "pass"])):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        results["help"][label] = times
    log(f"casstore --help median {statistics.median(results['help']['casstore --help']):.3f} s")


MATERIALIZE = """
import json, sys, time
import casstore
started = time.perf_counter()
data = casstore.open(sys.argv[1]).get("latest").to_dict().materialize()
seconds = time.perf_counter() - started
def count(d):
    return sum(count(v) if isinstance(v, dict) else 1 for v in d.values())
print(json.dumps({"seconds": seconds, "entries": count(data["data_sources"])}))
"""

JSON_LOAD = """
import json, os, sys, time
started = time.perf_counter()
root = sys.argv[1]
tree = {}
for dirpath, dirnames, names in os.walk(root):
    dirnames.sort()
    node = tree
    rel = os.path.relpath(dirpath, root)
    for part in ([] if rel == "." else rel.split(os.sep)):
        node = node.setdefault(part, {})
    for name in sorted(names):
        with open(os.path.join(dirpath, name), "rb") as fh:
            if name.endswith(".json"):
                node[name[:-5]] = json.load(fh)
            elif name.endswith(".jsonl"):
                node[name[:-6]] = [json.loads(line) for line in fh if line.strip()]
            else:
                node[name] = fh.read()
seconds = time.perf_counter() - started
def count(d):
    return sum(count(v) if isinstance(v, dict) else 1 for v in d.values())
print(json.dumps({"seconds": seconds, "entries": count(tree)}))
"""


def measure_materialize(tool: Casstore, source: str, env: dict, results: dict) -> None:
    env = dict(tool.env)
    for label, script, arg, paths in (("json.load of the files", JSON_LOAD, source, [source]),
                                      ("Snapshot.to_dict().materialize()", MATERIALIZE, tool.repo,
                                       [tool.repo, tool.cache])):
        evict(paths)
        m = run_measured([sys.executable, "-c", script, arg], env, tool.cwd)
        inner = json.loads(m.pop("stdout").strip().splitlines()[-1])
        m.update(inner_seconds=inner["seconds"], entries=inner["entries"])
        results["materialize"][label] = m
        log(f"{label}: wall {m['wall']:.2f} s, rss {m['rss_mib']:.0f} MiB, {inner['entries']} entries")


def chunk_comparison(args, work: Path, pristine: Path, env: dict, results: dict) -> None:
    sizes = CHUNK_SIZES
    for rep in range(args.chunk_reps):
        log(f"chunk sizes, repetition {rep + 1}/{args.chunk_reps}")
        reset_dirs(work)
        source = fresh_source(work, pristine)
        instances = {avg: Casstore(work, f"c{avg // 1024}k-r{rep}", env, chunk_avg=avg) for avg in sizes}
        for tool in instances.values():
            tool.init()
        everything = [source] + [p for t in instances.values() for p in t.paths()]
        changed_at = time.time()
        for step_index, step in enumerate(("initial", "incremental")):
            if step == "incremental":
                mutate.day_of_change(source)
                changed_at = time.time()
            wait_past_racy_window(changed_at)
            for avg in rotated(sizes, rep + step_index):
                tool = instances[avg]
                evict(everything)
                before = tree_bytes(tool.repo)
                m = tool.snapshot(source)
                after = tree_bytes(tool.repo)
                summary = m.pop("summary")
                m.update(rep=rep, step=step, chunk_avg=avg, repo_bytes=after, added_bytes=after - before,
                         index_bytes=tree_bytes(os.path.join(tool.repo, "index")),
                         blobs_added=summary.get("blobs_added"))
                results["chunks"].append(m)
                log(f"    {step:11} avg {avg // 1024:5} KiB wall {m['wall']:6.2f} s rss {m['rss_mib']:5.0f} MiB "
                    f"repo {after / MiB:8.1f} MiB added {(after - before) / MiB:7.2f} MiB "
                    f"index {m['index_bytes'] / 1024:8.1f} KiB")


# -- sync to S3 servers on loopback ------------------------------------------------------------

SYNC_SERVERS = ("moto", "seaweedfs")
SYNC_SERVER_TITLES = {"moto": "moto (server mode)", "seaweedfs": "SeaweedFS (`weed mini`, SigV4 credentials on)"}
SYNC_STEPS = ("initial", "incremental", "nochange")
SYNC_STEP_TITLES = {"initial": "initial", "incremental": "incremental (day of change)", "nochange": "nothing new"}
SYNC_PREFIX = "casstore"
NOCHANGE_MAX_REQUESTS = 5
MOTO_REQUEST_LINE = re.compile(r'^\S+ - - \[[^]]*\] "[A-Z]+ ', re.MULTILINE)   # werkzeug's access log


def servers_module():  # noqa: ANN201 - the tests/servers.py module
    """tests/servers.py: the servers start here exactly as the test fixtures start them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests import servers

    return servers


class BenchServer:
    """One S3 server on free loopback ports, with a fresh bucket; stopped by `stop()`."""

    def __init__(self, kind: str, workdir: Path) -> None:
        import secrets

        servers = servers_module()
        self.kind = kind
        if kind == "moto":
            self.server = servers.start_moto(workdir)
            self.s3 = servers.S3Server(self.server.endpoint)
        else:
            access_key, secret_key = f"casstore{secrets.token_hex(4)}", secrets.token_hex(20)
            self.server = servers.start_seaweedfs(workdir, access_key, secret_key)
            self.s3 = servers.S3Server(self.server.endpoint, access_key, secret_key)
        try:
            self.bucket = self.s3.new_bucket()
        except Exception:
            self.server.stop()
            raise
        self.url = f"s3://{self.bucket}/{SYNC_PREFIX}"

    def env(self) -> dict:
        """AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION for the casstore process."""
        return self.s3.env()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (all its threads), from /proc."""
        try:
            with open(f"/proc/{self.server.process.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def http_requests(self) -> int | None:
        """HTTP requests answered so far: moto logs one line per request; SeaweedFS logs none (None)."""
        if self.kind != "moto":
            return None
        try:
            return len(MOTO_REQUEST_LINE.findall(self.server.log.read_text(errors="replace")))
        except OSError:
            return None

    def stop(self) -> None:
        self.server.stop()


def start_sync_servers(root: Path, rep: int, results: dict) -> dict[str, BenchServer]:
    import pytest  # tests/servers.py reports a server that cannot start through pytest.fail

    started = {}
    for kind in SYNC_SERVERS:
        try:
            started[kind] = BenchServer(kind, root / f"{kind}-r{rep}")
        except (Exception, pytest.fail.Exception) as exc:
            message = f"{kind} could not start: {str(exc).strip()[:300]}"
            log(f"  !! {message}")
            results["sync_errors"].append({"rep": rep, "server": kind, "error": message})
    return started


def sync_comparison(args, work: Path, pristine: Path, env: dict, results: dict) -> None:
    """Per repetition: one local casstore repository, synced to a fresh moto and a fresh SeaweedFS
    after the initial snapshot, after the day of change and once more with nothing new."""
    root = work / "servers"
    for rep in range(args.sync_reps):
        log(f"sync, repetition {rep + 1}/{args.sync_reps}")
        reset_dirs(work)
        shutil.rmtree(root, ignore_errors=True)
        source = fresh_source(work, pristine)
        tool = Casstore(work, f"s-r{rep}", env)
        tool.init()
        servers = start_sync_servers(root, rep, results)
        try:
            changed_at = time.time()
            for step_index, step in enumerate(SYNC_STEPS):
                local_added = 0
                if step != "nochange":
                    if step == "incremental":
                        mutate.day_of_change(source)
                        changed_at = time.time()
                    wait_past_racy_window(changed_at)
                    before = tree_bytes(tool.repo)
                    snap = tool.snapshot(source)
                    local_added = tree_bytes(tool.repo) - before
                    log(f"    local {step} snapshot {snap['wall']:.2f} s, added {local_added / MiB:.2f} MiB")
                for kind in rotated(tuple(servers), rep + step_index):
                    server = servers[kind]
                    evict([tool.repo, tool.cache])
                    cpu_before, http_before = server.cpu_seconds(), server.http_requests()
                    m = tool.sync(server.url, server.env())
                    if http_before is not None:
                        time.sleep(0.3)   # the access log line follows the response
                    http_after = server.http_requests()
                    report = m["report"]
                    m.update(rep=rep, step=step, server=kind, local_added_bytes=local_added,
                             server_cpu=server.cpu_seconds() - cpu_before, load1=os.getloadavg()[0],
                             http_requests=None if http_before is None or http_after is None
                             else http_after - http_before)
                    results["sync"].append(m)
                    http = "" if m["http_requests"] is None else f" (HTTP {m['http_requests']})"
                    log(f"    sync {step:11} {kind:9} wall {m['wall']:6.2f} s  cpu {m['cpu']:6.2f} s  server cpu "
                        f"{m['server_cpu']:6.2f} s  rss {m['rss_mib']:5.0f} MiB  requests {report['requests']:4}"
                        f"{http}  uploaded "
                        f"{report['bytes_uploaded'] / MiB:8.2f} MiB in {report['packs_uploaded']} packs")
        finally:
            for server in servers.values():
                server.stop()
            shutil.rmtree(root, ignore_errors=True)


# -- the report --------------------------------------------------------------------------------

ANALYSIS_MARKER = "<!-- Everything below this line is written by hand and kept when run.py rewrites the file. -->"


def med(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows]
    return statistics.median(values) if values else float("nan")


def size_of(rel: str, scale: float) -> str:
    mb = next(mb for path, _kind, _style, mb in generate.LARGE_FILES if path == rel)
    return f"about {mb * scale:.0f} MB" if mb * scale >= 10 else f"about {mb * scale:.1f} MB"


def fmt_load(results: dict, when: str) -> str:
    load = results.get("load", {}).get(when)
    return " / ".join(f"{x:.2f}" for x in load) if load else "-"


def load_range(runs: list[dict]) -> str:
    loads = sorted(r["load1"] for r in runs if "load1" in r)
    if not loads:
        return "-"
    return f"min {loads[0]:.2f}, median {statistics.median(loads):.2f}, max {loads[-1]:.2f}"


def fmt_bytes(n: float) -> str:
    if n != n:
        return "-"
    return f"{n / MiB:.2f} MiB" if abs(n) >= MiB else f"{n / 1024:.1f} KiB"


def fmt_ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}×"


def render(results: dict, analysis: str) -> str:
    runs = results["runs"]
    tools = [t for t in TOOLS if any(r["tool"] == t for r in runs)]
    reps = results["args"]["reps"]

    def rows(step: str, tool: str) -> list[dict]:
        return [r for r in runs if r["step"] == step and r["tool"] == tool]

    out = ["# casstore benchmarks", ""]
    out += [f"Generated by `benchmarks/run.py` on {results['date']}. Command:", "",
            f"    {results['command']}", ""]
    m, v, d = results["machine"], results["versions"], results["data"]
    out += ["## Machine and versions", "",
            f"- CPU: {m['cpu']}, {m['nproc']} cores (nproc); memory {m['memory']}; kernel {m['kernel']}",
            f"- file system of the work directory: {m['filesystem']}",
            f"- load average (1, 5, 15 min) at the start {fmt_load(results, 'start')}, at the end "
            f"{fmt_load(results, 'end')}; 1-minute load after each measured command: {load_range(runs)}; whole run "
            f"{results.get('seconds', 0) / 60:.1f} min (this machine is shared: a load above about 1 means other "
            "work competed for the 2 cores)",
            f"- Python {m['python']}; {v['casstore']}; {v['casstore_libs']}",
            f"- {v['restic']}", f"- {v['borg']}", f"- {v['time']}", ""]
    floor = results["floor"]
    day, ins = results.get("mutations", {}).get("day", {}), results.get("mutations", {}).get("insert", {})
    scale = results["args"]["scale"]
    out += ["## Data and method", "",
            f"- `benchmarks/generate.py --scale {results['args']['scale']}`: {d['files']} files, "
            f"{d['bytes'] / 1e6:.0f} MB ({d['bytes'] / MiB:.0f} MiB), generated in {d['seconds']:.1f} s.",
            f"- Steps, each from the state the previous one left: initial snapshot; incremental after a day of "
            f"change (`mutate.py day`: values edited in {day.get('edited', '?')} small files (2%), "
            f"{day.get('appended_bytes', 0) / 1e6:.2f} MB of records appended to `{mutate.DAY_APPEND}` "
            f"({size_of(mutate.DAY_APPEND, scale)}), {day.get('inserted_bytes', '?')} bytes inserted near the start "
            f"of `{mutate.DAY_INSERT}` ({size_of(mutate.DAY_INSERT, scale)}), 10 files added, 5 deleted); no-change "
            f"snapshot; insert-only (`mutate.py insert`: {ins.get('inserted_bytes', '?')} bytes near the start of "
            f"`{mutate.INSERT_ONLY}`, {size_of(mutate.INSERT_ONLY, scale)}); full restore of the latest snapshot "
            "into an empty directory, verified byte-identical.",
            f"- {reps} repetition(s), each from a fresh copy of the data and fresh repositories and caches; the tool "
            "order rotates per step and repetition. Before every measured command the source, every repository and "
            "every tool's cache are evicted from the page cache (fsync, then `posix_fadvise(DONTNEED)`).",
            "- Wall time measured around the command; CPU time (user+sys) and peak RSS from `/usr/bin/time -v`. "
            "Repository bytes are the apparent size of every file in the repository directory; bytes added are the "
            "difference across the step. Tables show medians; ratios are casstore's median over the tool's.",
            "- restic: repository version 2, `--compression auto`, password from `RESTIC_PASSWORD`, own cache dir. "
            "borg: `--encryption none`, `create --compression zstd,3`, own `BORG_BASE_DIR`. casstore: defaults "
            "(1 MiB average chunks, zstd level 3 with min_match 6 and chain_log 15), own `CASSTORE_CACHE_DIR`.",
            f"- Floor: cold read of the whole source after eviction {med(floor, 'cold_read_s'):.2f} s "
            f"({med(floor, 'bytes') / med(floor, 'cold_read_s') / MiB:.0f} MiB/s); cold stat of every file "
            f"{med(floor, 'stat_walk_s') * 1000:.0f} ms (medians).", ""]

    out += ["## Targets (issue 6)", "", *targets_table(results), ""]
    out += ["## Results per step", ""]
    for step in STEPS:
        out += [f"### {STEP_TITLES[step]}", "",
                "| tool | wall s | CPU s | peak RSS MiB | repository MiB | added | casstore/tool wall | "
                "casstore/tool added |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        c = rows(step, "casstore")
        for tool in tools:
            r = rows(step, tool)
            if not r:
                continue
            wall_ratio = med(c, "wall") / med(r, "wall") if c else float("nan")
            added_ratio = (med(c, "added_bytes") / med(r, "added_bytes")
                           if c and med(r, "added_bytes") > 0 else float("nan"))
            note = ""
            if step == "restore" and not all(x.get("verified") for x in r):
                note = " (NOT byte-identical)"
            out.append(f"| {tool}{note} | {med(r, 'wall'):.2f} | {med(r, 'cpu'):.2f} | {med(r, 'rss_mib'):.0f} | "
                       f"{med(r, 'repo_bytes') / MiB:.1f} | {fmt_bytes(med(r, 'added_bytes'))} | "
                       f"{'-' if tool == 'casstore' else fmt_ratio(wall_ratio)} | "
                       f"{'-' if tool == 'casstore' or step == 'restore' else fmt_ratio(added_ratio)} |")
        walls = {t: [f"{x['wall']:.2f}" for x in rows(step, t)] for t in tools}
        out += ["", "Wall times of each repetition: " + "; ".join(f"{t} {', '.join(w)}" for t, w in walls.items()),
                ""]

    help_times = results["help"]
    if help_times:
        out += ["## CLI start", "", "| command | median s | min s |", "|---|---:|---:|"]
        for label, times in help_times.items():
            out.append(f"| `{label}` | {statistics.median(times):.3f} | {min(times):.3f} |")
        out += ["", f"Run {len(help_times.get('casstore --help', []))} times each after one warm-up, through the "
                "console script next to the interpreter (no pyenv shim).", ""]

    mat = results["materialize"]
    if mat:
        out += ["## `Snapshot.to_dict().materialize()` beside `json.load` of the same files", "",
                "The whole latest snapshot (after the insert-only step) into plain dicts, against walking the source "
                "and parsing every `.json` / `.jsonl` file (other files read as bytes). Cold page cache, one run.", "",
                "| | wall s | CPU s | peak RSS MiB | entries |", "|---|---:|---:|---:|---:|"]
        for label, row in mat.items():
            out.append(f"| {label} | {row['wall']:.2f} | {row['cpu']:.2f} | {row['rss_mib']:.0f} | {row['entries']} |")
        out.append("")

    chunks = results["chunks"]
    if chunks:
        creps = results["args"]["chunk_reps"]
        out += ["## Chunk size (design.md section 4, \"Chunking\")", "",
                f"casstore with `init --chunk-avg` 1 MiB (min 256 KiB, max 8 MiB), 256 KiB (64 KiB / 2 MiB) and "
                f"64 KiB (16 KiB / 512 KiB): initial snapshot, then the day of change, incremental snapshot. "
                f"{creps} repetition(s), medians, same eviction as above.", "",
                "| average chunk | initial wall s | incremental wall s | stored MiB after both | incremental added MiB "
                "| index KiB | chunks (initial) | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for avg in CHUNK_SIZES:
            ini = [r for r in chunks if r["chunk_avg"] == avg and r["step"] == "initial"]
            inc = [r for r in chunks if r["chunk_avg"] == avg and r["step"] == "incremental"]
            if not ini:
                continue
            rss = max(max(r["rss_mib"] for r in ini), max((r["rss_mib"] for r in inc), default=0))
            out.append(f"| {avg // 1024} KiB | {med(ini, 'wall'):.2f} | {med(inc, 'wall'):.2f} | "
                       f"{med(inc, 'repo_bytes') / MiB:.1f} | {med(inc, 'added_bytes') / MiB:.2f} | "
                       f"{med(inc, 'index_bytes') / 1024:.0f} | {med(ini, 'blobs_added'):.0f} | {rss:.0f} |")
        out += ["", "Peak RSS is the maximum over both steps and all repetitions.", ""]

    out += sync_section(results)

    out += [f"Raw numbers: `{results.get('results_json', 'benchmarks/results.json')}` "
            "(`python benchmarks/run.py --report-only` re-renders this file from them).", "",
            ANALYSIS_MARKER, analysis.rstrip("\n") if analysis else ""]
    return "\n".join(out).rstrip("\n") + "\n"


def sync_section(results: dict) -> list[str]:
    runs, errors = results.get("sync", []), results.get("sync_errors", [])
    if not runs and not errors:
        return []
    sreps = results["args"].get("sync_reps", 0)
    v = results["versions"]
    out = ["## Sync to S3 servers on loopback (issue 3)", "",
           f"One local casstore repository per repetition (defaults: 1 MiB chunks, 16 MiB packs, "
           f"{v.get('upload_concurrency', 4)} upload threads) is synced with `casstore --repo R sync --remote "
           f"s3://BUCKET/{SYNC_PREFIX} --json` to a fresh bucket on each server: after the initial snapshot, after the "
           "day of change and its incremental snapshot, and once more with nothing new. Each server is started by the "
           "harness through `tests/servers.py` (the test fixtures' code) on free 127.0.0.1 ports, a new one per "
           "repetition; the casstore process gets `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and "
           "`AWS_REGION`. Server order rotates per step and repetition; the local repository and cache are evicted "
           "from the page cache before each sync.", "",
           f"- Servers: {v.get('sync_servers', '-')}.",
           "- **Client and server share the same 2 cores** (and the disk): the server's work (its CPU seconds are "
           "shown) competes with casstore's, and there is no network latency or bandwidth limit. The numbers say how "
           "fast casstore can feed an S3 endpoint on this machine, not what a link to a real cloud gives.",
           "- `requests` is casstore's own count (the JSON report: every remote call made, a paginated `list` counted "
           "once); moto also logs every HTTP request it answers, shown beside it. Throughput is bytes uploaded over "
           "the wall time of the whole command (interpreter start included); `sync s` is the report's own `seconds`. "
           "MB = 10^6 bytes, GB = 10^9 bytes. `uploaded / added` compares the bytes uploaded with the bytes the local "
           "snapshot added to the local repository.",
           f"- {sreps} repetition(s), medians.", ""]
    for error in errors:
        out.append(f"- repetition {error['rep'] + 1}: {error['error']}")
    if errors:
        out.append("")
    out += ["| server | sync | wall s | sync s | CPU s casstore | CPU s server | peak RSS MiB | requests | "
            "HTTP requests (moto log) | packs | uploaded MiB | MB/s | requests per GB | uploaded / added |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in SYNC_SERVERS:
        for step in SYNC_STEPS:
            r = [x for x in runs if x["server"] == kind and x["step"] == step]
            if not r:
                continue
            rep = [dict(x["report"], wall=x["wall"]) for x in r]
            up = med(rep, "bytes_uploaded")
            http = [x["http_requests"] for x in r if x.get("http_requests") is not None]
            added = med(r, "local_added_bytes")
            mbps = statistics.median(x["report"]["bytes_uploaded"] / x["wall"] / 1e6 for x in r)
            per_gb = (statistics.median(x["report"]["requests"] / (x["report"]["bytes_uploaded"] / 1e9) for x in r)
                      if up > 0 else float("nan"))
            out.append(f"| {kind} | {SYNC_STEP_TITLES[step]} | {med(r, 'wall'):.2f} | {med(rep, 'seconds'):.2f} | "
                       f"{med(r, 'cpu'):.2f} | {med(r, 'server_cpu'):.2f} | {med(r, 'rss_mib'):.0f} | "
                       f"{med(rep, 'requests'):.0f} | {statistics.median(http) if http else float('nan'):.0f} | "
                       f"{med(rep, 'packs_uploaded'):.0f} | {up / MiB:.2f} | "
                       f"{'-' if up == 0 else f'{mbps:.1f}'} | {'-' if per_gb != per_gb else f'{per_gb:.0f}'} | "
                       f"{'-' if not added else f'{up / added:.2f}×'} |")
    out = [line.replace("| nan |", "| - |") for line in out]
    walls = {(k, st): [f"{x['wall']:.2f}" for x in runs if x["server"] == k and x["step"] == st]
             for k in SYNC_SERVERS for st in SYNC_STEPS}
    out += ["", "Wall times of each repetition: " + "; ".join(
        f"{k} {SYNC_STEP_TITLES[st]} {', '.join(w)}" for (k, st), w in walls.items() if w), ""]
    nochange = [x for x in runs if x["step"] == "nochange"]
    if nochange:
        counts = {k: sorted(x["report"]["requests"] for x in nochange if x["server"] == k) for k in SYNC_SERVERS}
        http = sorted(x["http_requests"] for x in nochange if x.get("http_requests") is not None)
        out += [f"Sync with nothing new: requests per run {'; '.join(f'{k} {counts[k]}' for k in counts if counts[k])}"
                + (f" (HTTP requests moto answered: {http})" if http else "")
                + f"; bytes uploaded {sorted({x['report']['bytes_uploaded'] for x in nochange})}.", ""]
    return out


def targets_table(results: dict) -> list[str]:
    runs = results["runs"]

    def m(step: str, tool: str, key: str = "wall") -> float:
        rows = [r for r in runs if r["step"] == step and r["tool"] == tool]
        return med(rows, key) if rows else float("nan")

    floor = med(results["floor"], "cold_read_s") if results["floor"] else float("nan")
    lines = ["| step | target | measured | result |", "|---|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    def ratio(step: str, tool: str) -> float:
        return m(step, "casstore") / m(step, tool)

    def row(step: str, target: str, measured: str, ok: bool | None) -> None:
        lines.append(f"| {step} | {target} | {measured} | {verdict(ok)} |")

    def have(*tools: str) -> bool:
        return all(any(r["tool"] == t for r in runs) for t in tools)

    if have("casstore", "borg", "restic"):
        rb, rr = ratio("initial", "borg"), ratio("initial", "restic")
        row("initial snapshot", "≤ 0.8× borg and ≤ 0.5× restic wall",
            f"{m('initial', 'casstore'):.2f} s = {rb:.2f}× borg ({m('initial', 'borg'):.2f} s), {rr:.2f}× restic "
            f"({m('initial', 'restic'):.2f} s); cold read floor {floor:.2f} s", rb <= 0.8 and rr <= 0.5)
        rb = ratio("incremental", "borg")
        ca, ra, ba = (m("incremental", t, "added_bytes") for t in ("casstore", "restic", "borg"))
        row("incremental", "≤ 0.5× borg wall; bytes added ≤ restic's and borg's",
            f"{m('incremental', 'casstore'):.2f} s = {rb:.2f}× borg ({m('incremental', 'borg'):.2f} s); added "
            f"{fmt_bytes(ca)} vs restic {fmt_bytes(ra)}, borg {fmt_bytes(ba)}", rb <= 0.5 and ca <= ra and ca <= ba)
        rb = ratio("nochange", "borg")
        row("no-change snapshot", "≤ 0.3× borg wall",
            f"{m('nochange', 'casstore'):.2f} s = {rb:.2f}× borg ({m('nochange', 'borg'):.2f} s)", rb <= 0.3)
        rb = ratio("restore", "borg")
        verified = all(r.get("verified") for r in runs if r["step"] == "restore" and r["tool"] == "casstore")
        row("full restore", "≤ 0.8× borg wall, byte-identical",
            f"{m('restore', 'casstore'):.2f} s = {rb:.2f}× borg ({m('restore', 'borg'):.2f} s); "
            f"{'byte-identical' if verified else 'NOT byte-identical'}", rb <= 0.8 and verified)
    # every casstore run with the default chunk size counts, the chunk-size comparison's 1 MiB runs included
    default_chunks = [r for r in results["chunks"] if r["chunk_avg"] == CHUNK_SIZES[0]]
    peaks = {step: max((r["rss_mib"] for r in runs + default_chunks if r["step"] == step
                        and r.get("tool", "casstore") == "casstore"), default=0) for step in STEPS}
    worst = max(peaks, key=peaks.get)
    row("peak memory", "≤ 150 MiB in every step",
        f"max {peaks[worst]:.0f} MiB ({worst}); " + ", ".join(f"{s} {p:.0f}" for s, p in peaks.items())
        + (" (maximum over every run, the chunk-size comparison's 1 MiB runs included)" if default_chunks else ""),
        peaks[worst] <= 150)
    help_times = results["help"].get("casstore --help")
    if help_times:
        h = statistics.median(help_times)
        row("`casstore --help`", "< 0.25 s", f"{h:.3f} s median", h < 0.25)
    nochange = [x for x in results.get("sync", []) if x["step"] == "nochange"]
    if nochange:
        worst = max(x["report"]["requests"] for x in nochange)
        per_server = ", ".join(f"{k} {max(x['report']['requests'] for x in nochange if x['server'] == k)}"
                               for k in SYNC_SERVERS if any(x["server"] == k for x in nochange))
        http = [x["http_requests"] for x in nochange if x.get("http_requests") is not None]
        row("sync with nothing new", "≤ 5 requests",
            f"max {worst} request(s) over {len(nochange)} runs ({per_server})"
            + (f"; HTTP requests moto answered: max {max(http)}" if http else ""), worst <= NOCHANGE_MAX_REQUESTS)
    else:
        row("sync with nothing new", "≤ 5 requests", "not measured in this run (`--no-sync`)", None)
    return lines


def write_report(results: dict, output: Path) -> None:
    analysis = ""
    if output.exists():
        text = output.read_text()
        if ANALYSIS_MARKER in text:
            analysis = text.split(ANALYSIS_MARKER, 1)[1].lstrip("\n")
    output.write_text(render(results, analysis))
    log(f"wrote {output}")


# -- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="data size in GB (default 1.0)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the tool comparison (default 3)")
    p.add_argument("--chunk-reps", type=int, default=None, help="repetitions of the chunk-size comparison "
                   "(default: --reps; 0 skips it)")
    p.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True,
                   help="measure casstore sync to moto and SeaweedFS on loopback (default on; --no-sync skips it)")
    p.add_argument("--sync-reps", type=int, default=None, help="repetitions of the sync measurements (default --reps)")
    p.add_argument("--quick", action="store_true", help="smoke run: --scale 0.05 --reps 1, report into the work dir")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of casstore,restic,borg")
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument("--work", default=str(HERE / "work"), help="work directory (default benchmarks/work, gitignored)")
    p.add_argument("--output", default=None, help="report path (default benchmarks/RESULTS.md; quick: work dir)")
    p.add_argument("--results-json", default=None, help="raw results (default benchmarks/results.json; quick: work)")
    p.add_argument("--skip-materialize", action="store_true", help="skip to_dict().materialize() vs json.load")
    p.add_argument("--keep", action="store_true", help="keep the generated data and repositories afterwards")
    p.add_argument("--report-only", action="store_true", help="re-render the report from --results-json")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.reps = 0.05, 1
        args.chunk_reps = 1 if args.chunk_reps is None else args.chunk_reps
    if args.chunk_reps is None:
        args.chunk_reps = args.reps
    if args.sync_reps is None:
        args.sync_reps = args.reps
    if not args.sync:
        args.sync_reps = 0
    quick_dir = Path(args.work)
    args.output = Path(args.output or (quick_dir / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md"))
    args.results_json = Path(args.results_json or (quick_dir / "results-quick.json" if args.quick
                                                   else HERE / "results.json"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report_only:
        write_report(json.loads(args.results_json.read_text()), args.output)
        return
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("/usr/bin/time is missing: apt-get install -y time")
    tools = tuple(t for t in args.tools.split(",") if t)
    missing = [t for t in tools if not tool_available(t)]
    if missing:
        log(f"skipping {', '.join(missing)}: not installed (apt-get install -y restic borgbackup)")
        tools = tuple(t for t in tools if t not in missing)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = pin_casstore_code(work, dict(os.environ))
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command.strip(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "args": {"scale": args.scale, "reps": args.reps, "chunk_reps": args.chunk_reps,
                        "sync_reps": args.sync_reps, "seed": args.seed, "tools": list(tools)},
               "machine": machine_info(work), "versions": versions(env), "runs": [], "floor": [], "help": {},
               "materialize": {}, "chunks": [], "sync": [], "sync_errors": [], "mutations": {}}
    try:
        results["results_json"] = str(args.results_json.resolve().relative_to(ROOT))
    except ValueError:
        results["results_json"] = str(args.results_json)
    results["load"] = {"start": os.getloadavg()}
    started = time.perf_counter()
    pristine = work / f"pristine-{args.scale}-{args.seed}"
    marker = work / f"pristine-{args.scale}-{args.seed}.json"   # outside the data, so no tool sees it
    if not marker.exists():
        shutil.rmtree(pristine, ignore_errors=True)
        log(f"generating {args.scale} GB into {pristine}")
        marker.write_text(json.dumps(generate.generate(str(pristine), args.scale, args.seed, log=log)))
    info = json.loads(marker.read_text())
    results["data"] = info
    try:
        last = main_reps(args, work, pristine, env, tools, results)
        measure_help(env, results)
        if not args.skip_materialize and "casstore" in last:
            measure_materialize(last["casstore"], str(work / "data"), env, results)
        if args.chunk_reps:
            chunk_comparison(args, work, pristine, env, results)
        if args.sync_reps and "casstore" in tools:
            sync_comparison(args, work, pristine, env, results)
    finally:
        results["seconds"] = time.perf_counter() - started
        results["load"]["end"] = os.getloadavg()
        args.results_json.write_text(json.dumps(results, indent=1))
        if results["runs"]:
            write_report(results, args.output)
        if not args.keep:
            for sub in ("data", "repos", "cache", "restore", "servers", pristine.name):
                shutil.rmtree(work / sub, ignore_errors=True)
            marker.unlink(missing_ok=True)
    log(f"done in {results['seconds'] / 60:.1f} min")


# Where the restores go. On ext4 (this machine's disk) a restore that follows the deletion of
# another restored tree (13k files) spends most of its time in the kernel's inode allocator, which
# skips inodes deleted in the last minute or more (`recently_deleted`, 34% of a restore's samples):
# whichever tool restored second paid 2-3x the system time of the first, whatever its own work
# (issue 17: "restore with deltas 2.2x" was that; so were
# scale.py's restores of 200k files, issue 14). A RAM file system has no such memory.
RAM_FS = "/dev/shm"


def restore_location(requested: str | None, work: Path, room: int) -> dict:
    """{"path", "fs"}: `requested`, else a RAM file system when there is one with room, else the work folder."""
    if requested:
        path = Path(requested).resolve()
    elif os.path.isdir(RAM_FS) and shutil.disk_usage(RAM_FS).free >= room:
        path = Path(RAM_FS) / f"casstore-bench-restore-{os.getpid()}"
    else:
        path = work / "restore"
    return {"path": str(path), "fs": fs_type(path)}


def fs_type(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it), from /proc/mounts."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].rstrip("/") + "/"
        if (str(path) + "/").startswith(mount) and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


if __name__ == "__main__":
    main()
