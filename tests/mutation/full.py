"""The full mutation run (issue 19): EVERY mutant of a core module, accumulated across sessions in a ledger.

    python -m tests.mutation.full --status                       # per module: mutants, recorded, still to run
    nice -n 19 python -m tests.mutation.full casstore/format/codec.py ... [--budget SECONDS] [--workers 2]
    python -m tests.mutation.full --report                       # MUTATION.md's full-run table, from the ledgers
    python -m tests.mutation.full --survivors casstore/gc/repack.py   # the survivors not judged, to work on

It is the CI gate's machinery (tests/mutation/gate.py) on every mutant instead of a sample: mutmut's
mutants named by stable ids (`path::function::line::original -> mutated`), each written into a scratch
copy of the tree, the module's quick test files (gate.CORE) run against it with `-x`, in a subprocess
whose PYTHONPATH puts the scratch copy first. Each result is written at once to the module's ledger,
tests/mutation/ledger/<module>.tsv (committed), so a run stopped anywhere loses at most the mutants in
flight, and the next run, in this session or a later one, on this machine or another, goes on.

What a recorded result stays valid for (anything else is run again; the rule is `_valid`):
- the mutant's id still exists: its module still has that change on that stripped line, in that function;
- the source of the function it is in is unchanged (the `function` column: a hash of that function's
  text), the rule mutmut itself uses. Code changed elsewhere in the module or the package does not
  re-run it;
- a `survived` (or `error`) result is also re-run when the module's test files change (the `tests`
  column: a hash of the files gate.CORE lists for it, and tests/conftest.py): a new test may kill it.
  A `killed` or `timeout` result is kept when the tests change (tests are added far more often than
  they are weakened), and so is a survivor judged equivalent in equivalents.txt: no test can tell an
  equivalent mutant apart, so a new test cannot change its verdict while its function is unchanged
  (session 9: re-running the judged survivors after every test edit cost about 15 CPU s each);
  `--recheck` runs a module's mutants again regardless.
An id that no longer exists is dropped from the ledger when its module next runs.

Cost, and what keeps it down (MUTATION.md has the measurements): by default (`--route fork`) a fork
server per worker (tests/mutation/forkserver.py) imports pytest, hypothesis, casstore and the test
modules once, and forks a child per mutant that swaps the mutated function's code in and runs the
tests with pytest.main; a mutant it cannot swap in exactly (a module constant, a class attribute, a
default argument) runs as `--route subprocess` does, in its own pytest process. Either way plugin
autoloading is off (only hypothesis and pytest-timeout load), and the tests that killed the most
mutants so far run first (tests/mutation/order.py), so a killed mutant usually costs one test. A
mutant gets a wall-clock limit of 4x the module's clean run (at least 60 s, at most 600 s) besides
pytest-timeout's 120 s a test; past it, its process group is killed and it counts as `timeout` (caught).
Run it from a frozen checkout (`git worktree add --detach`), with `--ledger-dir` pointing at the work
tree that commits the ledgers.

Per-mutant test selection (mutmut's rule; `--no-selection` turns it off): before a module's mutants,
recorded runs of its whole selection, unmutated (two, joined; tests/mutation/coverage.py), note which tests
reach each of its functions, in the test process, its threads, the processes the tests start and
their forks. A mutant then runs only the tests that reach its function (killers first, as before); a
mutant whose function no test reaches is recorded `survived` at once, its killer column saying
`unreached: ...` (a real gap, shown as such in the report); what the record cannot tell (a mutant
outside any function, a function run at import or behind a cache) runs the whole selection. The
record is cached (--coverage-cache), keyed by the package's code, the module's tests and the recorder.
A recorded result's validity does not change: selection only leaves out tests that cannot see the
mutant, so the verdict is the whole selection's (an A/B in MUTATION.md checks it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from tests.mutation import coverage
from tests.mutation.forkserver import verdict
from tests.mutation.gate import (
    CORE,
    FORMAT_TESTS,
    PYTEST,
    ROOT,
    Mutant,
    Scratch,
    _mutant,
    _rank,
    load_equivalents,
    mutants_in_functions,
)

LEDGER_DIR = Path(__file__).with_name("ledger")
COLUMNS = ["status", "seconds", "cpu", "commit", "function", "tests", "killer", "id"]
# the modules the full run covers: the gate's (with its test files), and the delta codec (no sample of it in CI)
MODULES: dict[str, list[str]] = {path: tests for path, (_k, tests) in CORE.items()}
MODULES["casstore/format/delta.py"] = [*FORMAT_TESTS, "tests/test_delta_blobs.py"]
MODULES["casstore/format/pack.py"] = [*FORMAT_TESTS, "tests/test_pack_buffers.py", "tests/test_pack_header.py"]
# the config's key slots, sealed config and downgrade refusal are exercised by the encryption tests
# only (session 7: a third of config's mutants survived the format tests alone); 15 s together
MODULES["casstore/format/config.py"] = [*MODULES["casstore/format/config.py"], "tests/test_encryption.py",
                                        "tests/test_encryption_keys.py"]
# gc's use of the repository's key (repack's verification, the consolidated index) is exercised
# only on an encrypted repository, and the sweep's safety net (keep a condemned pack a fresh snapshot
# needs) only by a writer racing gc: one quick test each (under 1 s)
# the copier's protocol side (checkpoints, the re-check, withdrawn indexes, the post-commit
# confirmation, the journal) is exercised by the gc race and sync fault tests, not test_sync.py
# (session 8: 132 of 218 survived test_sync + test_strength); CPU s a file, all passing: 4.9, 4.5, 5.3
MODULES["casstore/sync/copier.py"] = [*MODULES["casstore/sync/copier.py"], "tests/test_gc_writer_protocol.py",
                                      "tests/test_gc_concurrency.py", "tests/test_sync_faults.py"]
# the sync's listing-ahead bookkeeping (what a remote listed since a checkpoint) is exercised by a writer
# racing gc, in the writer protocol tests only (session 9: 3 transfer survivors there)
MODULES["casstore/sync/transfer.py"] = [*MODULES["casstore/sync/transfer.py"], "tests/test_gc_writer_protocol.py"]
GC_ENCRYPTED = "tests/test_encryption.py::test_gc_repacks_an_encrypted_repository_and_the_kept_snapshot_still_restores"
MODULES["casstore/gc/repack.py"] = [*MODULES["casstore/gc/repack.py"], GC_ENCRYPTED]
MODULES["casstore/gc/sweep.py"] = [
    *MODULES["casstore/gc/sweep.py"], GC_ENCRYPTED,
    "tests/test_gc_concurrency.py::test_snapshot_committed_before_the_sweep_keeps_its_condemned_packs"]
# the restore's small-file path (batches to worker processes, packs read in runs) and sparse files,
# and the index's load/reload lock, are tested in their own files only
MODULES["casstore/restore/restorer.py"] = [*MODULES["casstore/restore/restorer.py"], "tests/test_restore_workers.py",
                                           "tests/test_sparse.py"]
MODULES["casstore/repo/core.py"] = [*MODULES["casstore/repo/core.py"], "tests/test_index_cache.py"]
# the snapshot writer's worker processes, excludes, streaming of a huge directory, sparse files and
# files read beside the snapshot have their own test files; 22 CPU s together (session 9), and a
# mutant runs only the tests that reach its function
WRITER_EXTRA = ["tests/test_snapshot_workers.py", "tests/test_excludes.py", "tests/test_streaming_snapshot.py",
                "tests/test_sparse.py", "tests/test_side_reads.py"]
# the builder's errors, races, files cache rule and counters: its own file, run for builder only (session 10);
# a snapshot's removal of a killed run's temp files is tested in test_leftovers.py only (session 11, 0.3 s)
MODULES["casstore/snapshot/builder.py"] = [*MODULES["casstore/snapshot/builder.py"], *WRITER_EXTRA,
                                           "tests/test_builder_edges.py",
                                           "tests/test_leftovers.py::test_the_next_snapshot_removes_old_leftovers"]
# the pipeline's window, its delta threads, its thread count and a failure's end are tested in a file of
# their own (session 10, s10pipe19: 45 of its 47 survivors had no test that could see them)
MODULES["casstore/snapshot/pipeline.py"] = [*MODULES["casstore/snapshot/pipeline.py"], *WRITER_EXTRA,
                                            "tests/test_chunk_pipeline.py"]
# the index's delta entries (a blob stored as a delta against a base) are written and read there only
MODULES["casstore/format/index.py"] = [*MODULES["casstore/format/index.py"], "tests/test_delta_blobs.py"]
CAUGHT = ("killed", "timeout")
# plugin autoloading off: the quick tests need only these two, and start-up CPU halves
PLUGINS = ["-p", "_hypothesis_pytestplugin", "-p", "pytest_timeout", "-p", "tests.mutation.order", "-rfE"]
MIN_LIMIT, MAX_LIMIT = 60.0, 600.0
RECORD_LIMIT = 3600.0       # a recording run: the whole selection once, slowed by the profile hook
# recording runs a module, their records joined: some paths depend on timing (the restorer defers a
# directory only while its small files are still being written), so one run can miss a test's reach
RECORDINGS = 2
UNREACHED = "unreached: no test of the selection calls its function"    # a survivor's killer column
COVERAGE_CACHE = Path(tempfile.gettempdir()) / "casstore-mutation-coverage"
STOP = threading.Event()    # set by SIGINT or SIGTERM: the mutants in flight finish and are recorded, no more start


@dataclass
class Record:
    status: str
    seconds: float        # wall, under whatever load the machine had
    cpu: float            # user + sys of the pytest process and its children (-1: not measured)
    commit: str
    function: str
    tests: str
    killer: str
    id: str

    def line(self) -> str:
        return "\t".join([self.status, f"{self.seconds:.1f}", f"{self.cpu:.1f}", self.commit, self.function, self.tests,
                          self.killer or "-", self.id])


def ledger_path(module: str, ledger_dir: Path = LEDGER_DIR) -> Path:
    return ledger_dir / (module.removesuffix(".py").replace("/", ".") + ".tsv")


def read_ledger(path: Path) -> dict[str, Record]:
    records: dict[str, Record] = {}
    if path.exists():
        for raw in path.read_text().splitlines()[1:]:
            status, seconds, cpu, commit, function, tests, killer, mutant_id = raw.split("\t", 7)
            records[mutant_id] = Record(status, float(seconds), float(cpu), commit, function, tests,
                                        "" if killer == "-" else killer, mutant_id)
    return records


def write_ledger(path: Path, records: dict[str, Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\t".join(COLUMNS) + "\n" + "".join(records[k].line() + "\n" for k in sorted(records))
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    partial.replace(path)     # never a half-written ledger, even when the run is killed


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def tests_digest(module: str, root: Path = ROOT) -> str:
    files = sorted({test.split("::", 1)[0] for test in MODULES[module]} | {"tests/conftest.py"})
    return digest("\n".join(MODULES[module]) + "".join((root / f).read_text() for f in files))


def current(module: str) -> tuple[dict[str, tuple[object, str]], str]:
    """The module's mutants now (id -> (change, function hash)) and its tests' hash."""
    found = mutants_in_functions(module)
    return ({mutant_id: (change, digest(function)) for mutant_id, (change, function) in found.items()},
            tests_digest(module))


def _valid(record: Record, function: str | None, tests: str, judged: Collection[str] = ()) -> bool:
    if function is None or record.function != function:
        return False
    return (record.status in CAUGHT or record.tests == tests
            or (record.status == "survived" and record.id in judged))


def head_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "casstore", "tests"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


class Outcome(NamedTuple):
    status: str
    seconds: float
    cpu: float
    killer: str     # the first failing test of a killed mutant


class Runner(Scratch):
    """A scratch copy that runs one mutant against its module's tests, killers first."""

    def __init__(self, name: str, speedups: bool = True, route: str = "fork") -> None:
        super().__init__()
        self.order = self.dir / f"order-{name}.txt"
        self.times = self.dir / f"time-{name}.txt"
        self.out = self.dir / f"out-{name}.txt"
        self.select = self.dir / f"select-{name}.txt"   # the tests a mutant runs (absent: the module's whole selection)
        self.speedups = speedups    # off: every plugin loads and the tests keep their order (to measure both)
        self.route = route          # "fork": tests/mutation/forkserver.py; "subprocess": a pytest process a mutant
        self.server: subprocess.Popen[str] | None = None
        self.routes: Counter[str] = Counter()   # how the mutants of the module ran (fork, or why not)
        self.last_route = "subproc"     # the route the last mutant took (the log shows it)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(self.dir), "CASSTORE_EXPLORE_WORKERS": "1",
               "CASSTORE_MUTATION_SELECT": str(self.select)}
        if self.speedups:
            env |= {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "CASSTORE_MUTATION_ORDER": str(self.order)}
        return env

    def _args(self, module: str) -> list[str]:
        # one base temp folder per slot, which pytest empties at each session's start: by default each
        # mutant's session left its own under /tmp/pytest-of-<user> (the 1,400 of session 7 held 62 GB and
        # SeaweedFS then refused writes in the next full suite)
        return [*PYTEST, f"--basetemp={self.dir / ('tmp-' + self.order.stem)}",
                *(PLUGINS if self.speedups else ["-p", "tests.mutation.order", "-rfE"]), *MODULES[module]]

    def start(self, module: str) -> float:
        """Start this slot's fork server for `module` (fork route only); its start-up CPU seconds."""
        self.stop()
        self.routes.clear()
        self.select.unlink(missing_ok=True)     # the server's own collection sees every test
        if self.route != "fork":
            return 0.0
        log = (self.dir / f"server-{self.order.stem}.log").open("w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "tests.mutation.forkserver", str(self.dir), module, *self._args(module)],
            cwd=self.dir, env=self._env(), text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True)
        log.close()
        hello = self._reply()
        return float(str(hello["cpu"]))

    def _reply(self) -> dict[str, object]:
        assert self.server is not None and self.server.stdout is not None
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped: see {self.dir}/server-{self.order.stem}.log")
        reply: dict[str, object] = json.loads(line)
        return reply

    def stop(self) -> None:
        if self.server is not None:
            stdin: IO[str] | None = self.server.stdin
            if stdin is not None:
                stdin.close()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
            self.server = None

    def close(self) -> None:
        self.stop()
        super().close()

    def measure(self, module: str, mutant: Mutant | None, limit: float, killers: Counter[str],
                selection: list[str] | None = None) -> Outcome:
        """The module's tests against `mutant` (None: unmutated); only those in `selection` when given."""
        self.order.write_text("".join(test + "\n" for test, _n in killers.most_common()))
        if selection is None:
            self.select.unlink(missing_ok=True)
        else:
            self.select.write_text("".join(test + "\n" for test in selection))
        self.last_route = "subproc"
        if self.server is not None:
            forked = self._forked(module, mutant, limit)
            if forked is not None:
                return forked
        if mutant is None:
            return self._timed(module, limit)
        target = self.dir / mutant.path
        original = target.read_text()
        self._write(target, mutant.code)
        try:
            return self._timed(module, limit)
        finally:
            self._write(target, original)

    def _timed(self, module: str, limit: float) -> Outcome:
        started = time.monotonic()
        code, out = self._pytest_process(self._args(module), self._env(), limit)
        seconds = time.monotonic() - started
        if code is None:
            return Outcome("timeout", seconds, -1.0, "")
        killer = next((line.split(" ", 1)[1].split(" - ", 1)[0] for line in out.splitlines()
                       if line.startswith(("FAILED ", "ERROR "))), "")
        status, detail = verdict(code, killer, lambda: out)
        return Outcome(status, seconds, self._cpu(), detail)

    def _pytest_process(self, args: list[str], env: dict[str, str], limit: float) -> tuple[int | None, str]:
        """A pytest process in this scratch copy (its CPU in self.times): exit code (None: past the
        limit, killed) and output."""
        shutil.rmtree(self.dir / ".hypothesis", ignore_errors=True)   # no example saved by another mutant
        self.times.unlink(missing_ok=True)
        cmd = ["/usr/bin/time", "-f", "%U %S", "-o", str(self.times), sys.executable, "-m", "pytest", *args]
        # errors="replace": a test's output may hold a file name's raw bytes (tests/test_builder_edges.py
        # names files that are not UTF-8), which must not stop the run
        proc = subprocess.Popen(cmd, cwd=self.dir, env=env, text=True, errors="replace", stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)     # and every process the tests started
            proc.communicate()
            return None, ""
        return proc.returncode, out

    def _forked(self, module: str, mutant: Mutant | None, limit: float) -> Outcome | None:
        """The mutant run by the fork server; None when it cannot be swapped in exactly (run it in a subprocess)."""
        assert self.server is not None and self.server.stdin is not None
        request = {"code": None if mutant is None else mutant.code, "args": self._args(module), "limit": limit,
                   "out": str(self.out)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self._reply()
        if reply["route"] != "fork":
            self.routes[f"subprocess: {reply['why']}"] += 1
            self.last_route = "subproc"
            return None
        self.routes["fork"] += 1
        self.last_route = "fork"
        return Outcome(str(reply["status"]), float(reply["seconds"]), float(reply["cpu"]),  # type: ignore[arg-type]
                       str(reply["killer"]))

    def record(self, module: str, limit: float = RECORD_LIMIT) -> tuple[coverage.Coverage | None, float]:
        """Which of the module's tests reach each of its functions (tests/mutation/coverage.py), from
        RECORDINGS runs of its whole selection, unmutated, recorded in them and every process they start; None
        when one breaks off (then every mutant runs the whole selection). Also their CPU seconds."""
        records = self.dir / f"coverage-{self.order.stem}.tsv"
        self.select.unlink(missing_ok=True)
        site = self.dir / "sitecustomize.py"     # first on PYTHONPATH: every Python process the tests start
        site.write_text(coverage.SITECUSTOMIZE)
        env = {**self._env(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", coverage.OUT: str(records),
               coverage.TARGET: str(self.dir / module), coverage.KEY: coverage.EVERY}
        # the recorder is imported (by sitecustomize) before pytest could rewrite its asserts: it has none
        args = [*PYTEST, f"--basetemp={self.dir / ('tmp-' + self.order.stem)}", "-p", "_hypothesis_pytestplugin",
                "-p", "pytest_timeout", "-p", "tests.mutation.coverage",
                "-W", "ignore::pytest.PytestAssertRewriteWarning", "-rfE", *MODULES[module]]
        args = [arg for arg in args if arg != "-x"]   # every test recorded: one that fails is run for every mutant
        records.unlink(missing_ok=True)
        cpu = 0.0
        try:
            for _run in range(RECORDINGS):
                code, out = self._pytest_process(args, env, limit)
                cpu += self._cpu()
                if code not in (0, 1):  # not "some tests failed": interrupted, a collection error, past the limit
                    (self.dir / f"coverage-{self.order.stem}.out").write_text(out)
                    return None, cpu
        finally:
            site.unlink()
        return coverage.load(records), cpu

    def _cpu(self) -> float:
        try:
            return sum(float(x) for x in self.times.read_text().split()[-2:])
        except (OSError, ValueError):
            return -1.0


def coverage_key(module: str, root: Path = ROOT) -> str:
    """What a coverage record depends on: the package's code (a call can reach the module through any of
    it), the module's test files and the recorder."""
    sources = sorted((root / "casstore").rglob("*.py"))
    recorder = [root / "tests/mutation/coverage.py", root / "tests/mutation/order.py"]
    return digest(tests_digest(module, root) + "".join(p.read_text() for p in [*sources, *recorder]))


def selections(module: str, runner: Runner, cache: Path | None) -> coverage.Coverage | None:
    """The module's coverage record: from the cache when the code and tests are those it was made from,
    else recorded now (and cached)."""
    cached = None if cache is None else cache / f"{module.replace('/', '.')}-{coverage_key(module)}.tsv"
    if cached is not None and cached.exists():
        print(f"{module}: coverage record from {cached}", flush=True)
        return coverage.load(cached)
    started = time.monotonic()
    record, cpu = runner.record(module)
    if record is None:
        print(f"{module}: the recording run broke off ({runner.dir}/coverage-{runner.order.stem}.out); "
              "every mutant runs the whole selection", flush=True)
        return None
    reached = sum(1 for keys in record.reached.values() if keys)
    failed = f" ({len(record.failed)} failed while recorded: run for every mutant)" if record.failed else ""
    print(f"{module}: coverage recorded, {len(record.tests)} tests{failed}, {reached} functions reached, "
          f"{time.monotonic() - started:.0f} s wall, {cpu:.1f} s CPU", flush=True)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(runner.dir / f"coverage-{runner.order.stem}.tsv", cached)
    return record


def function_name(mutant_id: str) -> str:
    """The function a mutant is in, as its id names it (`?`: outside any function)."""
    return mutant_id.split("::", 2)[1]


def run_module(module: str, runners: list[Runner], ledger_dir: Path, deadline: float, recheck: bool,
               commit: str, limit: int | None = None, select: bool = True, cache: Path | None = COVERAGE_CACHE,
               ) -> None:
    mutants, tests = current(module)
    path = ledger_path(module, ledger_dir)
    records = {k: r for k, r in read_ledger(path).items() if k in mutants}    # ids gone: dropped
    judged = set(load_equivalents())
    todo = sorted((k for k in mutants
                   if recheck or k not in records or not _valid(records[k], mutants[k][1], tests, judged)),
                  key=_rank)     # in the gate's seeded order: a partial run is a spread sample
    print(f"{module}: {len(mutants)} mutants, {len(mutants) - len(todo)} recorded and valid, {len(todo)} to run",
          flush=True)
    todo = todo[:limit]
    write_ledger(path, records)
    if not todo or time.time() > deadline:
        return
    killers = Counter(r.killer for r in records.values() if r.killer and r.status == "killed")
    for runner in runners:
        startup = runner.start(module)
        if startup:
            print(f"{module}: fork server {runner.order.stem} up, {startup:.1f} s CPU to import", flush=True)
    clean = runners[0].measure(module, None, MAX_LIMIT, killers)
    if clean.status != "survived":
        print(f"{module}: its tests do not pass unmutated ({clean.status}); skipped", flush=True)
        return
    wall = min(MAX_LIMIT, max(MIN_LIMIT, 4 * clean.seconds))
    print(f"{module}: clean run {clean.seconds:.1f} s wall, {clean.cpu:.1f} s CPU, per-mutant limit {wall:.0f} s",
          flush=True)
    record = selections(module, runners[0], cache) if select else None
    lock = threading.Lock()
    free = list(runners)

    def one(mutant_id: str) -> None:
        if time.time() > deadline or STOP.is_set():
            return
        change, function = mutants[mutant_id]
        chosen = None if record is None else record.selection(function_name(mutant_id))
        if chosen == []:       # no test runs its function: a survivor without running anything
            outcome, route = Outcome("survived", 0.0, 0.0, UNREACHED), "none"
        else:
            with lock:
                runner = free.pop()
                order = Counter(killers)
            try:
                mutant = _mutant(mutant_id, module, change)    # type: ignore[arg-type]
                outcome = runner.measure(module, mutant, wall, order, chosen)
                route = runner.last_route
            finally:
                with lock:
                    free.append(runner)
        with lock:
            records[mutant_id] = Record(outcome.status, outcome.seconds, outcome.cpu, commit, function, tests,
                                        outcome.killer, mutant_id)
            if outcome.status == "killed":
                killers[outcome.killer] += 1
            write_ledger(path, records)
        tests_run = "all" if chosen is None else str(len(chosen))
        print(f"{outcome.status:9} {outcome.seconds:6.1f}s {outcome.cpu:5.1f} cpu {route[:7]:7} {tests_run:>4} tests "
              f"{mutant_id}", flush=True)

    with ThreadPoolExecutor(len(runners)) as pool:
        list(pool.map(one, todo))
    routes = sum((runner.routes for runner in runners), Counter())
    for runner in runners:
        runner.stop()
    print(f"{module}: routes: " + "; ".join(f"{n} {route}" for route, n in routes.most_common()), flush=True)


# ---- the report -----------------------------------------------------------------------------------

BEGIN, END = "<!-- full-run table: generated by python -m tests.mutation.full --report -->", "<!-- end of table -->"


@dataclass
class Row:
    module: str
    mutants: int
    valid: list[Record]     # the recorded results still valid now
    judged: set[str]        # every id in equivalents.txt

    def count(self, status: str) -> int:
        return sum(1 for r in self.valid if r.status.startswith(status))

    @property
    def real(self) -> list[str]:
        return sorted(r.id for r in self.valid if r.status == "survived" and r.id not in self.judged)

    @property
    def score(self) -> float | None:
        caught = self.count("killed") + self.count("timeout")
        scored = len(self.valid) - (self.count("survived") - len(self.real))
        return caught / scored if scored else None

    def cost(self, status: str) -> str:
        """Mean CPU seconds (wall seconds) of the mutants of this status."""
        measured = [r for r in self.valid if r.status == status and r.cpu >= 0]
        if not measured:
            return "-"
        return (f"{sum(r.cpu for r in measured) / len(measured):.1f} "
                f"({sum(r.seconds for r in measured) / len(measured):.0f})")


def rows(ledger_dir: Path = LEDGER_DIR) -> list[Row]:
    judged = set(load_equivalents())
    out = []
    for module in MODULES:
        mutants, tests = current(module)
        valid = [r for k, r in read_ledger(ledger_path(module, ledger_dir)).items()
                 if k in mutants and _valid(r, mutants[k][1], tests, judged)]
        out.append(Row(module, len(mutants), valid, judged))
    return out


def table(all_rows: list[Row]) -> str:
    lines = ["| module | mutants | run | killed | timed out | survived | judged equivalent | errors | score "
             "| CPU (wall) s a mutant: killed; survived | commits |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in all_rows:
        survived = row.count("survived")
        score = "-" if row.score is None else f"{row.score:.0%}"
        if row.score is not None:
            score = f"**{score}**, complete" if len(row.valid) == row.mutants else f"{score} so far"
        commits = sorted({r.commit for r in row.valid})
        lines.append(f"| {row.module.removeprefix('casstore/')} | {row.mutants} | {len(row.valid)} "
                     f"| {row.count('killed')} | {row.count('timeout')} | {survived} | {survived - len(row.real)} "
                     f"| {row.count('error')} | {score} | {row.cost('killed')}; {row.cost('survived')} "
                     f"| {', '.join(commits) or '-'} |")
    unreached = {r.id for row in all_rows for r in row.valid if r.killer == UNREACHED}
    survivors = [f"- `{s}`" + (" (no test of its selection reaches its function)" if s in unreached else "")
                 for row in all_rows for s in row.real]
    return "\n".join([*lines, "", f"Survivors neither killed nor judged ({len(survivors)}):", "", *survivors])


def write_report(ledger_dir: Path = LEDGER_DIR) -> None:
    doc = ROOT / "MUTATION.md"
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + table(rows(ledger_dir)) + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths (casstore/format/codec.py); default: none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=10 ** 9, help="start no mutant after this many seconds")
    parser.add_argument("--ledger-dir", type=Path, default=LEDGER_DIR)
    parser.add_argument("--limit", type=int, help="at most this many mutants a module (a seeded spread)")
    parser.add_argument("--no-speedups", action="store_true",
                        help="every plugin autoloaded, tests in their own order (to measure what the speedups save)")
    parser.add_argument("--route", choices=["fork", "subprocess"], default="fork",
                        help="fork: a fork server a worker, a pytest.main a mutant, the function swapped in "
                             "(what it cannot swap exactly runs as subprocess); subprocess: a pytest process a mutant")
    parser.add_argument("--recheck", action="store_true", help="run the modules' mutants again, valid or not")
    parser.add_argument("--no-selection", action="store_true",
                        help="every mutant runs its module's whole selection (no coverage record)")
    parser.add_argument("--coverage-cache", type=Path, default=COVERAGE_CACHE,
                        help=f"where coverage records are kept between runs (default {COVERAGE_CACHE})")
    parser.add_argument("--status", action="store_true")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--survivors", metavar="MODULE")
    args = parser.parse_args()
    if args.report:
        write_report(args.ledger_dir)
        return 0
    if args.status:
        print(table(rows(args.ledger_dir)))
        return 0
    if args.survivors:
        for row in rows(args.ledger_dir):
            if row.module == args.survivors:
                print("\n".join(row.real))
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"not a module of the full run: {', '.join(unknown)} (one of: {', '.join(MODULES)})", file=sys.stderr)
        return 2
    deadline = time.time() + args.budget
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: STOP.set())
    commit = head_commit()
    runners = [Runner(str(n), speedups=not args.no_speedups, route=args.route) for n in range(args.workers)]
    try:
        for module in args.modules:
            if STOP.is_set():
                break
            run_module(module, runners, args.ledger_dir, deadline, args.recheck, commit, args.limit,
                       select=not args.no_selection, cache=args.coverage_cache)
    finally:
        for runner in runners:
            runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
