"""CI's mutation gate (issue 19): a fixed, seeded sample of mutants of the core modules; fails below 90%.

    python -m tests.mutation.gate                  # the gate, as .ci/test runs it
    python -m tests.mutation.gate --list           # the sampled mutants and their ids, nothing run
    python -m tests.mutation.gate --only 'ID'      # one mutant: its diff, then its module's full-run pool

A mutant is one of mutmut's one-token changes (mutmut's own operators, through its libcst visitor), but
it is named by what it changes, not by mutmut's number (which moves whenever code above it moves):
`path::function::line::original -> mutated`, where `line` is the stripped source line the change
starts on. The sample is, per module, the K mutants whose id hashes lowest under the seed (a bottom-K
sample): a mutant stays in or out of the sample when other code changes, and only a mutant whose own
line changed can join or leave it. Each mutant is written into a scratch copy of casstore and the
module's tests run against it (`-x`: the first failure kills it), in a subprocess whose PYTHONPATH
puts the scratch copy first, so the `casstore` executable the tests start runs the mutant too.

Survivors judged equivalent or harmless are listed in tests/mutation/equivalents.txt, one a line,
`id || reason`, and left out of the score. A survivor not listed fails the gate when the score drops
below 90%, and is printed with the command that runs it alone either way.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider
from mutmut.mutation.file_mutation import MutationVisitor, mutation_operators
from mutmut.mutation.pragma_handling import get_ignored_lines

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENTS = Path(__file__).with_name("equivalents.txt")
SEED = "19"
THRESHOLD = 0.90
FORMAT_TESTS = ["tests/test_golden_vectors.py", "tests/test_hostile_input.py", "tests/test_properties.py"]
GC_TESTS = ["tests/test_gc_protocol.py", "tests/test_strength.py"]
SYNC_TESTS = ["tests/test_sync.py", "tests/test_strength.py"]
WRITER_TESTS = ["tests/test_snapshot_roundtrip.py", "tests/test_golden_vectors.py", "tests/test_strength.py",
                "tests/test_encryption.py::test_encrypted_repository_snapshots_dedups_checks_restores_and_reads_as_dict"]
# module -> (mutants sampled, the tests its mutants run against: the quick files that exercise it)
CORE: dict[str, tuple[int, list[str]]] = {
    "casstore/format/codec.py": (2, FORMAT_TESTS),
    "casstore/format/pack.py": (2, FORMAT_TESTS),
    "casstore/format/index.py": (2, [*FORMAT_TESTS, "tests/test_index.py", "tests/test_index_cache.py"]),
    "casstore/format/tree.py": (2, FORMAT_TESTS),
    "casstore/format/snapshot.py": (2, FORMAT_TESTS),
    "casstore/format/config.py": (2, [*FORMAT_TESTS, "tests/test_strength.py"]),
    "casstore/format/plan.py": (2, [*FORMAT_TESTS, "tests/test_strength.py"]),
    "casstore/chunker/fastcdc.py": (2, ["tests/test_properties.py", "tests/test_chunker.py"]),
    "casstore/repo/core.py": (2, [*WRITER_TESTS, "tests/test_repo_core.py"]),
    "casstore/snapshot/builder.py": (2, WRITER_TESTS),
    "casstore/snapshot/pipeline.py": (2, WRITER_TESTS),
    "casstore/restore/restorer.py": (2, ["tests/test_restore_safety.py", "tests/test_snapshot_roundtrip.py",
                                         "tests/test_strength.py"]),
    "casstore/sync/transfer.py": (2, SYNC_TESTS),
    "casstore/sync/copier.py": (2, SYNC_TESTS),
    "casstore/gc/mark.py": (2, GC_TESTS),
    "casstore/gc/sweep.py": (2, GC_TESTS),
    "casstore/gc/repack.py": (2, GC_TESTS),
    "casstore/gc/retention.py": (2, ["tests/test_retention.py", "tests/test_properties.py", "tests/test_strength.py"]),
}
# mutmut's pytest options (no cloud servers, per-test timeout), stopping at the first failure, examples seeded
PYTEST = ["-x", "--hypothesis-seed=19", "-p", "no:schemathesis", "-p", "no:benchmark", "-p", "no:anyio",
          *tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["pytest_add_cli_args"]]
WALL_LIMIT = 600    # a mutant that hangs past pytest-timeout's own limit counts as caught (timeout)


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    code: str         # the whole module with this one change

    def diff(self) -> str:
        before = (ROOT / self.path).read_text().splitlines(keepends=True)
        return "".join(difflib.unified_diff(before, self.code.splitlines(keepends=True), self.path, self.path, n=1))


Change = tuple[cst.Module, cst.CSTNode, cst.CSTNode]     # the module, the node replaced, its replacement


def _qualnames(module: cst.Module) -> dict[cst.CSTNode, str]:
    names: dict[cst.CSTNode, str] = {}
    for node in module.body:
        if isinstance(node, cst.FunctionDef):
            names[node] = node.name.value
        elif isinstance(node, cst.ClassDef) and isinstance(node.body, cst.IndentedBlock):
            for method in node.body.body:
                if isinstance(method, cst.FunctionDef):
                    names[method] = f"{node.name.value}.{method.name.value}"
    return names


def _one_line(code: str) -> str:
    return " ".join(code.split())


def mutants_of(path: str) -> dict[str, Change]:
    """Every mutant mutmut would make of `path`, by id (mutmut's operators, pragmas and skips)."""
    return {mutant_id: change for mutant_id, (change, _function) in mutants_in_functions(path).items()}


def mutants_in_functions(path: str) -> dict[str, tuple[Change, str]]:
    """Every mutant of `path` by id, with the source of the function it is in (the full run's ledger keys on it)."""
    source = (ROOT / path).read_text()
    wrapper = MetadataWrapper(cst.parse_module(source))
    visitor = MutationVisitor(mutation_operators, get_ignored_lines(path, source, wrapper, None), None)
    wrapper.visit(visitor)
    module = wrapper.module
    positions = wrapper.resolve(PositionProvider)
    qualnames = _qualnames(module)
    lines = source.splitlines()
    found: dict[str, tuple[Change, str]] = {}
    for m in visitor.mutations:
        if m.contained_by_top_level_function is None:      # mutmut mutates functions only
            continue
        line = lines[positions[m.original_node].start.line - 1].strip()
        before, after = (_one_line(module.code_for_node(node)) for node in (m.original_node, m.mutated_node))
        base = f"{path}::{qualnames.get(m.contained_by_top_level_function, '?')}::{line}::{before} -> {after}"
        key, n = base, 1
        while key in found:            # the same change on two identical lines of one function
            n += 1
            key = f"{base} #{n}"
        function = module.code_for_node(m.contained_by_top_level_function)
        found[key] = ((module, m.original_node, m.mutated_node), function)
    return found


def _mutant(mutant_id: str, path: str, change: Change) -> Mutant:
    module, original, mutated = change
    changed = module.deep_replace(original, mutated)
    assert isinstance(changed, cst.Module)
    return Mutant(mutant_id, path, changed.code)


def _rank(mutant_id: str) -> bytes:
    return hashlib.blake2b(f"{SEED}:{mutant_id}".encode(), digest_size=8).digest()


def sample(existing: set[str] | None = None) -> list[Mutant]:
    """The gate's mutants; `existing` collects the id of every mutant of the modules, sampled or not."""
    chosen: list[Mutant] = []
    for path, (k, _tests) in CORE.items():
        every = mutants_of(path)
        if existing is not None:
            existing.update(every)
        for mutant_id in sorted(every, key=_rank)[:k]:
            chosen.append(_mutant(mutant_id, path, every[mutant_id]))
    return chosen


def load_equivalents() -> dict[str, str]:
    judged: dict[str, str] = {}
    for raw in EQUIVALENTS.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            mutant_id, _, reason = raw.partition(" || ")
            judged[mutant_id.strip()] = reason.strip()
    return judged


class Scratch:
    """A copy of the tree the mutants are written into, one at a time."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="casstore-gate-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
        for name in ("casstore", "tests"):
            shutil.copytree(ROOT / name, self.dir / name, ignore=ignore)
        for name in ("pyproject.toml", "conftest.py"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, self.dir / name)

    def run(self, mutant: Mutant, verbose: bool = False, tests: list[str] | None = None) -> str:
        target = self.dir / mutant.path
        original = target.read_text()
        self._write(target, mutant.code)
        try:
            return self._pytest(CORE[mutant.path][1] if tests is None else tests, verbose)
        finally:
            self._write(target, original)

    @staticmethod
    def _write(target: Path, text: str) -> None:
        target.write_text(text)
        for cached in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):   # never a stale module
            cached.unlink()

    def _pytest(self, tests: list[str], verbose: bool) -> str:
        shutil.rmtree(self.dir / ".hypothesis", ignore_errors=True)   # no example saved by another mutant
        env = {**os.environ, "PYTHONPATH": str(self.dir), "CASSTORE_EXPLORE_WORKERS": "1"}
        cmd = [sys.executable, "-m", "pytest", *PYTEST, *tests]
        try:
            # errors="replace": a failing test's output may hold a file name's raw bytes
            done = subprocess.run(cmd, cwd=self.dir, env=env, timeout=WALL_LIMIT, text=True, errors="replace",
                                  stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            return "timeout"
        if done.returncode == 0:
            return "survived"
        if done.returncode == 1:
            return "killed"
        return f"error (pytest exit {done.returncode})"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def run_all(mutants: list[Mutant], workers: int) -> dict[str, str]:
    scratches = [Scratch() for _ in range(workers)]
    free = list(scratches)
    try:
        def one(mutant: Mutant) -> tuple[str, str]:
            scratch = free.pop()
            try:
                status = scratch.run(mutant)
            finally:
                free.append(scratch)
            print(f"{status:10} {mutant.id}", flush=True)     # as they come: CI's log shows progress
            return mutant.id, status
        with ThreadPoolExecutor(workers) as pool:
            return dict(pool.map(one, mutants))
    finally:
        for scratch in scratches:
            scratch.close()


def verdict(results: dict[str, str], judged: dict[str, str]) -> tuple[float, list[str], list[str]]:
    """(score, real survivors, errors): survivors listed as equivalent are left out of the score."""
    caught = sum(1 for status in results.values() if status in ("killed", "timeout"))
    real = sorted(m for m, status in results.items() if status == "survived" and m not in judged)
    errors = sorted(m for m, status in results.items() if status.startswith("error"))
    scored = caught + len(real) + len(errors)
    return (caught / scored if scored else 1.0), real, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the sample's ids; run nothing")
    parser.add_argument("--only", help="run this one mutant (an id from the sample, or any id of its module)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    if args.only:
        return _run_one(args.only)
    existing: set[str] = set()
    mutants = sample(existing)
    if args.list:
        for mutant in mutants:
            print(mutant.id)
        return 0
    judged = load_equivalents()
    results = run_all(mutants, args.workers)
    score, real, errors = verdict(results, judged)
    # the list also holds the full run's judged survivors (tests/mutation/full.py): stale only when gone
    stale = sorted(j for j in judged if j.split("::", 1)[0] in CORE and j not in existing)
    print(f"\nmutation gate: {len(mutants)} mutants of {len(CORE)} modules (seed {SEED}), "
          f"{sum(s == 'survived' for s in results.values()) - len(real)} judged equivalent "
          f"(tests/mutation/equivalents.txt), score {score:.0%} (need {THRESHOLD:.0%}), "
          f"{time.monotonic() - started:.0f} s")
    if stale:
        print(f"({len(stale)} listed equivalents are no longer mutants of their module: their code changed)")
    for mutant_id in [*real, *errors]:
        print(f"SURVIVED: {mutant_id}\n  reproduce: python -m tests.mutation.gate --only '{mutant_id}'"
              if mutant_id in real else f"ERROR ({results[mutant_id]}): {mutant_id}")
    if score < THRESHOLD:
        print("FAILED: kill each survivor with a behaviour test, or list it in tests/mutation/equivalents.txt "
              "with one line on why it is equivalent or harmless")
        return 1
    return 0


def _run_one(mutant_id: str) -> int:
    path = mutant_id.split("::", 1)[0]
    every = mutants_of(path)
    if mutant_id not in every:
        print(f"no mutant {mutant_id!r} in {path} (its line changed?); `--list` shows the sample", file=sys.stderr)
        return 2
    mutant = _mutant(mutant_id, path, every[mutant_id])
    print(mutant.diff())
    # the full run's pool (not the gate's files): a survivor it records must survive here too, or
    # --only would confirm a false one (session 11: the restore workers' tests kill some)
    from tests.mutation.full import MODULES
    scratch = Scratch()
    try:
        status = scratch.run(mutant, verbose=True, tests=MODULES.get(path))
    finally:
        scratch.close()
    print(f"\n{status}: {mutant_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
