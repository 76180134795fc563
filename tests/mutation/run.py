"""Mutation testing of the core layers with mutmut 3 (issue 19); writes MUTATION.md.

    python -m tests.mutation.run                       # seeded sample (default 160 mutants), 2 workers
    python -m tests.mutation.run --sample 0            # every mutant of the modules (hours on 2 cores)
    python -m tests.mutation.run --tests tests/test_x.py ...   # another test selection
    nice -n 19 python -m tests.mutation.run --sample 0 --workers 1 --state /work/mutstate/full-COMMIT \
        --modules casstore.gc.sweep ...                # resumable: run again to go on where it stopped

The run happens in a scratch export of HEAD (`git archive`), so the work tree is never mutated and
uncommitted edits are not measured. mutmut (configured in pyproject.toml, [tool.mutmut]) runs the
selected test files once under tracing to learn which tests reach which function, then runs, for
each mutant, only those tests (coverage-based selection) under a CPU-time limit derived from their
measured duration (per-mutant timeout: a mutant that makes a loop endless counts as `timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the modules sampled by default: the format, the chunker, retention, gc's mark and sweep, sync's plan
DEFAULT_MODULES = [
    "casstore.format.codec", "casstore.format.pack", "casstore.format.index", "casstore.format.tree",
    "casstore.format.snapshot", "casstore.format.config", "casstore.format.plan", "casstore.chunker.fastcdc",
    "casstore.gc.retention", "casstore.gc.mark", "casstore.gc.sweep", "casstore.sync.transfer",
]
# gc's mutants also run the writer/gc interleaving exploration (issue 11), at a few schedules per
# scenario so a mutant costs seconds, not the 1.5 minutes of CI's 1,600 schedules
EXPLORE = "tests/test_gc_explore.py::test_every_explored_schedule_keeps_every_snapshot_restorable"
EXPLORE_SCHEDULES = "16"
STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          255: "timeout", None: "not checked", 33: "no tests", 5: "no tests", 37: "killed"}


def _export(work: Path, tests: list[str] | None, explore: bool) -> None:
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    current = tomllib.loads(text)["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    wanted = list(tests if tests is not None else current) + ([EXPLORE] if explore else [])
    if wanted != current:
        start = text.index("pytest_add_cli_args_test_selection")
        end = text.index("]", start) + 1
        pyproject.write_text(text[:start] + f"pytest_add_cli_args_test_selection = {json.dumps(wanted)}" + text[end:])
        print(f"test selection {current} -> {wanted}", file=sys.stderr)


def _mutmut(work: Path, *args: str) -> None:
    exe = Path(sys.executable).with_name("mutmut")
    # one exploration process: spawned workers would re-run mutmut's own script as __main__ and fail
    env = {**os.environ, "CASSTORE_EXPLORE_SCHEDULES": EXPLORE_SCHEDULES, "CASSTORE_EXPLORE_WORKERS": "1"}
    with open(work.parent / f"{work.name}.log", "ab") as log:   # mutmut's own output, kept after the run
        subprocess.run([str(exe), *args], cwd=work, check=False, stdout=log, stderr=subprocess.STDOUT, env=env)


def _meta(work: Path) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in (work / "mutants" / "casstore").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def _module(name: str) -> str:
    return name.split(".x", 1)[0].split(".xǁ", 1)[0]


def run(modules: list[str], sample: int, seed: int, tests: list[str] | None, workers: int,
        previous: dict | None = None, explore: bool = True, state: Path | None = None) -> dict:
    """Run a seeded sample; with `previous` (an earlier result), run again only its survivors: tests
    were added since, and a mutant an earlier test killed stays killed. With `state`, the export and
    mutmut's results live there and are kept: a later run with the same `state` runs only the
    mutants that have no result yet (mutmut saves each result as it comes)."""
    work = state or Path(tempfile.mkdtemp(prefix="casstore-mutation-"))
    try:
        if not (work / "pyproject.toml").exists():
            work.mkdir(parents=True, exist_ok=True)
            _export(work, tests, explore and any(m.startswith("casstore.gc.") for m in modules))
        _mutmut(work, "run", "--max-children", str(workers), "no-such-mutant")   # generate, trace, run nothing
        every = sorted(k for k in _meta(work) if _module(k) in modules)
        if previous is not None:
            chosen = sorted(previous["survivors"])
        elif state is not None:
            done = _meta(work)
            chosen = [name for name in every if done.get(name) is None]    # resume: only what has no result
        else:
            chosen = sorted(random.Random(seed).sample(every, sample)) if 0 < sample < len(every) else every
        started = time.monotonic()
        for i in range(0, len(chosen), 200):       # keep the command line short
            _mutmut(work, "run", "--max-children", str(workers), *chosen[i:i + 200])
        codes = merge(previous["codes"] if previous else {}, {name: _meta(work).get(name) for name in chosen})
        survivors = {name: _diff(work, name) for name in chosen if STATUS.get(codes.get(name), "?") == "survived"}
        if state is not None:        # the report covers every result kept, this session's and earlier ones
            codes = {name: code for name, code in _meta(work).items() if _module(name) in modules}
            survivors = {name: _diff(work, name) for name, code in codes.items() if STATUS.get(code) == "survived"}
        return {"codes": codes, "population": len(every), "seconds": round(time.monotonic() - started),
                "survivors": survivors}
    finally:
        if state is None:
            shutil.rmtree(work, ignore_errors=True)


def merge(before: dict[str, int | None], again: dict[str, int | None]) -> dict[str, int | None]:
    """Earlier results updated by a re-run; a mutant no selected test reaches keeps its earlier result."""
    return {**before, **{k: v for k, v in again.items() if STATUS.get(v) not in ("no tests", "not checked")}}


def _diff(work: Path, name: str) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(exe), "show", name], cwd=work, capture_output=True, text=True).stdout
    changed = [line for line in out.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return " / ".join(line.strip() for line in changed)[:200]


def table(codes: dict[str, int | None]) -> list[str]:
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, code in codes.items():
        per[_module(name)][STATUS.get(code, "suspicious")] += 1
    rows = ["| module | mutants | killed | survived | timed out | other | score |", "|---|---|---|---|---|---|---|"]
    totals: dict[str, int] = defaultdict(int)
    for module in sorted(per):
        c = per[module]
        rows.append(_row(module, c))
        for k, v in c.items():
            totals[k] += v
    rows.append(_row("**all**", totals))
    return rows


def _row(module: str, c: dict[str, int]) -> str:
    n = sum(c.values())
    caught = c["killed"] + c["timeout"]
    other = n - caught - c["survived"]
    score = f"{100 * caught / (caught + c['survived']):.0f}%" if caught + c["survived"] else "-"
    return f"| {module} | {n} | {c['killed']} | {c['survived']} | {c['timeout']} | {other} | {score} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", nargs="*", default=DEFAULT_MODULES)
    parser.add_argument("--sample", type=int, default=160, help="mutants to draw (0: all)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tests", nargs="*", help="test files to select from (default: pyproject's)")
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave MUTATION.md as it is")
    parser.add_argument("--rerun-survivors", type=Path, help="a --json result: run only its survivors again")
    parser.add_argument("--state", type=Path, help="keep the export and mutmut's results here (outside every "
                        "work tree, e.g. /work/mutstate/full-COMMIT); running again resumes")
    parser.add_argument("--no-explore", action="store_true",
                        help="leave the gc exploration test out of the selection (it joins when a gc module is run)")
    args = parser.parse_args()
    previous = json.loads(args.rerun_survivors.read_text()) if args.rerun_survivors else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()    # the commit exported, read before the run
    if args.state is not None:
        marker = args.state / "COMMIT"      # a kept state measures the commit it was exported from
        commit = marker.read_text().strip() if marker.exists() else commit
        args.state.mkdir(parents=True, exist_ok=True)
        marker.write_text(commit + "\n")
    result = run(args.modules, args.sample, args.seed, args.tests, args.workers, previous, not args.no_explore,
                 args.state)
    result.update(commit=commit, command=" ".join(["python -m tests.mutation.run", *sys.argv[1:]]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    report = render(result, args.sample)
    print(report)
    if not args.no_write:
        write_report(report)


NOTES = "<!-- notes: everything below is kept when the run above is rewritten -->"


def render(result: dict, sample: int) -> str:
    kind = (f"a seeded SAMPLE of {len(result['codes'])} of {result['population']} mutants" if sample
            else f"a FULL run: all {result['population']} mutants")
    lines = ["# Mutation testing (mutmut 3)", "",
             f"Measured on commit `{result['commit']}`: {kind} of the modules below, in {result['seconds']} s.",
             f"Command: `{result['command']}` (see tests/mutation/run.py and [tool.mutmut] in pyproject.toml).",
             "Score = (killed + timed out) / (killed + timed out + survived); `other` = not run / no test reaches it.",
             "", *table(result["codes"]), "", "## Survivors of this run", ""]
    lines += [f"- `{name}`: {diff}" for name, diff in sorted(result["survivors"].items())] or ["none"]
    return "\n".join(lines) + "\n"


def write_report(report: str) -> None:
    path = ROOT / "MUTATION.md"
    kept = ""
    if path.exists() and NOTES in path.read_text():
        kept = path.read_text().split(NOTES, 1)[1]
    path.write_text(report + "\n" + NOTES + (kept or "\n"))


if __name__ == "__main__":
    main()
