"""Which tests reach each function of a module: the full mutation run's per-mutant test selection (issue 19).

mutmut's rule: a mutant can only be killed by a test that runs the function it is in, so a mutant runs
only the tests of its module's selection that reached that function in a clean, recorded run; a mutant
whose function no test reaches survives at once (a real gap, not an equivalent).

Recording (one pytest run of the module's whole selection, unmutated, in the slot's scratch copy):
- in the pytest process, this module is a plugin (`-p tests.mutation.coverage`). A profile hook
  (`sys.setprofile`, and `threading.setprofile` for every thread started later: the pipeline's pool)
  notes each function of the target file that starts, under the key of what is running: the test's
  node id from its setup to its teardown, `fixture:NAME` while a fixture wider than a function (module,
  session) is set up (its result serves every test that uses it: they all count as reaching what it
  called), and `*` (every test) outside any test: collection, imports, a function run at import;
- in processes the tests start (`python -m casstore`, the `casstore` executable, servers, spawned
  workers): the scratch copy is first on PYTHONPATH, and recording writes a `sitecustomize.py` there,
  so every Python process starts the same hook, keyed by CASSTORE_MUTATION_KEY, which the plugin sets
  in os.environ to the current key (a child inherits it). A process started with a scrubbed
  environment is not recorded, but it does not run the mutant either (no PYTHONPATH);
- forked children (the restore's worker pool) inherit the hook and the key; they end with os._exit,
  so nothing is buffered: each new (key, function) pair is one os.write on an O_APPEND file, at once.
A profile hook that raises is removed by Python, silently, for the rest of the run: so the hook never
raises, and a line the records file refuses (a test's own RLIMIT_FSIZE, lower than the file has grown:
test_restore_safety's full-disk tests) waits for the next write. Should the hook still be gone after a
test (the test replaced it), it is put back and that test counts as failed: what it reached is unknown.
A test that fails in the recording run (a race under the load the profile hook adds) is run for every
mutant: what it would have reached is not known. Where the record cannot tell at all, the mutant gets
the whole selection: a function reached under `*`, under
a key that names no collected test (a test's subprocess that outlived it), a mutant outside any function
(a class attribute, a module constant: `?` in its id), or a module whose recording run failed.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

OUT = "CASSTORE_MUTATION_COVERAGE"      # the records file (its presence turns recording on)
TARGET = "CASSTORE_MUTATION_TARGET"     # the absolute path of the module file whose functions are noted
KEY = "CASSTORE_MUTATION_KEY"           # what a process works for: a test's node id, fixture:NAME or *
EVERY = "*"
FIXTURE = "fixture:"
ITEM = "item\t"                         # a records line naming a collected test and its fixtures
FAILED = "failed\t"                     # a records line naming a test that failed while recorded
SITECUSTOMIZE = """\
import os
if os.environ.get("CASSTORE_MUTATION_COVERAGE"):     # the full mutation run's recording (tests/mutation/coverage.py)
    from tests.mutation.coverage import start_from_env
    start_from_env()
"""


def function_of(code: types.CodeType) -> str:
    """The name a mutant id gives the function that holds this code (a nested function, a lambda or a
    comprehension belongs to its outer function; a method is `Class.method`)."""
    return code.co_qualname.split(".<locals>", 1)[0]


class Recorder:
    """Notes, once per key, each function of `target` that starts, in this process and its forks."""

    def __init__(self, out: str, target: str, key: str) -> None:
        self.fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.target = target
        self.key = key
        self.seen: set[tuple[str, types.CodeType]] = set()
        self.unwritten = b""                 # what the records file refused so far (a test's file size limit)

    def hook(self, frame: types.FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == self.target:
            pair = (self.key, frame.f_code)
            if pair not in self.seen:
                self.seen.add(pair)
                self.write(f"{self.key}\t{function_of(frame.f_code)}\n")

    def write(self, line: str) -> None:
        """One write, appended whole (a fork that os._exits loses nothing); never raises, because a
        profile hook that raises is dropped for good: what the file refuses is kept for the next write."""
        data = self.unwritten + line.encode()
        try:
            written = os.write(self.fd, data)
        except OSError:
            written = 0
        self.unwritten = data[written:]

    def installed(self) -> bool:
        return sys.getprofile() == self.hook

    def set_key(self, key: str) -> None:
        self.key = key
        os.environ[KEY] = key                # the processes a test starts work for it

    def start(self) -> None:
        threading.setprofile(self.hook)      # threads started from now on (a thread pool's workers)
        sys.setprofile(self.hook)

    def stop(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)


_recorder: Recorder | None = None


def start_from_env() -> Recorder | None:
    """Start recording in this process when the environment asks for it (sitecustomize, the plugin)."""
    global _recorder
    if _recorder is None and os.environ.get(OUT) and os.environ.get(TARGET):
        _recorder = Recorder(os.environ[OUT], os.environ[TARGET], os.environ.get(KEY, EVERY))
        _recorder.start()
    return _recorder


# ---- the pytest plugin (the recording run's main process) -------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    start_from_env()


@contextmanager
def _keyed(key: str) -> Iterator[None]:
    recorder = _recorder
    if recorder is None:
        yield
        return
    previous = recorder.key
    recorder.set_key(key)
    try:
        yield
    finally:
        recorder.set_key(previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _keyed(item.nodeid):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    if fixturedef.scope == "function":
        yield
        return
    with _keyed(FIXTURE + fixturedef.argname):
        yield


def pytest_collection_finish(session: pytest.Session) -> None:
    if _recorder is not None:
        for item in session.items:
            names = getattr(item, "fixturenames", ())
            _recorder.write(f"{ITEM}{item.nodeid}\t{' '.join(names)}\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _recorder is None:
        return
    lost = report.when == "teardown" and not _recorder.installed()
    if lost:                 # the test replaced the hook (or it raised after all): what it reached is unknown
        _recorder.start()
    if report.failed or lost:
        _recorder.write(f"{FAILED}{report.nodeid}\n")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A function behind a cache (functools.cache) runs for the first test that asks and is skipped
    for the others, which still depend on it: every test counts as reaching it."""
    if _recorder is None:
        return
    target = next((m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == _recorder.target), None)
    for value in vars(target).values() if target is not None else ():
        wrapped = getattr(value, "__wrapped__", None)
        if hasattr(value, "cache_info") and isinstance(wrapped, types.FunctionType):
            _recorder.write(f"{EVERY}\t{function_of(wrapped.__code__)}\n")
    _recorder.stop()


# ---- reading a record -------------------------------------------------------------------------------

@dataclass
class Coverage:
    tests: list[str] = field(default_factory=list)                  # collected, in collection order
    fixtures: dict[str, set[str]] = field(default_factory=dict)     # test -> the fixtures it uses
    reached: dict[str, set[str]] = field(default_factory=dict)      # function -> keys that reached it
    failed: set[str] = field(default_factory=set)    # tests that failed while recorded (a race under load):
                                                     # what they reach is not known, so every mutant runs them

    def selection(self, function: str) -> list[str] | None:
        """The tests that reach `function`, in collection order; [] when none does; None when every
        test must run (the record cannot tell)."""
        if function == "?":
            return None
        keys = self.reached.get(function, set())
        known = set(self.tests)
        chosen: set[str] = set(self.failed)
        for key in keys:
            if key.startswith(FIXTURE):
                name = key.removeprefix(FIXTURE)
                chosen |= {test for test in self.tests if name in self.fixtures[test]}
            elif key in known:
                chosen.add(key)
            else:
                return None          # `*`, or a key no test of this run holds
        return [test for test in self.tests if test in chosen]


def load(path: Path) -> Coverage:
    coverage = Coverage()
    for line in path.read_text().splitlines():
        if line.startswith(ITEM):      # several recording runs may append to one file: their union
            _tag, nodeid, names = line.split("\t", 2)
            if nodeid not in coverage.fixtures:
                coverage.tests.append(nodeid)
            coverage.fixtures[nodeid] = set(names.split())
        elif line.startswith(FAILED):
            coverage.failed.add(line.removeprefix(FAILED))
        elif line:
            key, function = line.rsplit("\t", 1)
            coverage.reached.setdefault(function, set()).add(key)
    return coverage

