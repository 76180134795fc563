"""The full mutation run's coverage record (tests/mutation/coverage.py): which tests a mutant runs.

A test left out of a mutant's selection although it reaches the mutated function can turn a killed
mutant into a false survivor; so each way a test reaches code is tried on a small package made here
(a thread, a subprocess, a forked child that os._exits, a module-scoped fixture, a cache, a call at
import), and a function no test reaches must get no test at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mutation import coverage

ROOT = Path(__file__).resolve().parents[2]

MODULE = '''\
import functools


def at_import():
    return 1


VALUE = at_import()


def direct():
    return 1


def in_thread():
    return 2


def in_subprocess():
    return 3


def in_fork():
    return 4


def via_fixture():
    return 5


def never():
    return 6


@functools.cache
def cached(x):
    return x


class Box:
    def area(self):
        def inner():
            return 7
        return inner()
'''

TESTS = '''\
import os
import subprocess
import sys
import threading

import pytest

from pkg import mod


@pytest.fixture(scope="module")
def shared():
    return mod.via_fixture()


def test_direct():
    assert mod.direct() == 1


def test_thread():
    thread = threading.Thread(target=mod.in_thread)
    thread.start()
    thread.join()


def test_subprocess():
    subprocess.run([sys.executable, "-c", "from pkg import mod; mod.in_subprocess()"], check=True)


def test_fork():
    pid = os.fork()
    if pid == 0:
        mod.in_fork()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0


def test_shared_first(shared):
    assert shared == 5


def test_shared_second(shared):
    assert shared == 5


def test_cached_first():
    assert mod.cached(1) == 1


def test_cached_second():
    assert mod.cached(1) == 1


def test_nested():
    assert mod.Box().area() == 7
'''


def _recorded(tmp: Path, tests: str) -> tuple[int, coverage.Coverage]:
    """The package's tests run once, recorded as the full run records a module's list: pytest's exit code
    and the record."""
    (tmp / "pkg").mkdir()
    (tmp / "pkg" / "__init__.py").write_text("")
    (tmp / "pkg" / "mod.py").write_text(MODULE)
    (tmp / "test_pkg.py").write_text(tests)
    (tmp / "sitecustomize.py").write_text(coverage.SITECUSTOMIZE)
    records = tmp / "records.tsv"
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           coverage.OUT: str(records), coverage.TARGET: str(tmp / "pkg" / "mod.py"), coverage.KEY: coverage.EVERY}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "tests.mutation.coverage", "-o", "addopts=", "--rootdir", str(tmp), "test_pkg.py"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, coverage.load(records)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> coverage.Coverage:
    code, recorded = _recorded(tmp_path_factory.mktemp("recorded"), TESTS)
    assert code == 0
    return recorded


def test_a_function_reached_only_by_a_test_runs_only_that_test(record: coverage.Coverage) -> None:
    assert record.selection("direct") == ["test_pkg.py::test_direct"]


def test_a_function_reached_only_in_a_thread_counts_for_the_test_that_started_it(record: coverage.Coverage) -> None:
    assert record.selection("in_thread") == ["test_pkg.py::test_thread"]


def test_a_function_reached_only_in_a_subprocess_counts_for_the_test_that_started_it(
        record: coverage.Coverage) -> None:
    assert record.selection("in_subprocess") == ["test_pkg.py::test_subprocess"]


def test_a_function_reached_only_in_a_forked_child_that_os_exits_is_recorded(record: coverage.Coverage) -> None:
    assert record.selection("in_fork") == ["test_pkg.py::test_fork"]


def test_a_function_no_test_reaches_gets_no_test(record: coverage.Coverage) -> None:
    assert record.selection("never") == []


def test_a_module_scoped_fixtures_calls_count_for_every_test_that_uses_it(record: coverage.Coverage) -> None:
    assert record.selection("via_fixture") == ["test_pkg.py::test_shared_first", "test_pkg.py::test_shared_second"]


def test_a_nested_function_counts_as_its_outer_method(record: coverage.Coverage) -> None:
    assert record.selection("Box.area") == ["test_pkg.py::test_nested"]


def test_what_runs_at_import_or_behind_a_cache_or_outside_functions_gets_every_test(
        record: coverage.Coverage) -> None:
    assert record.selection("at_import") is None      # its result is a module constant every test sees
    assert record.selection("cached") is None         # only the first caller runs it; the others read its result
    assert record.selection("?") is None              # a class attribute, a module constant


def test_a_test_that_fails_while_recorded_runs_for_every_mutant(tmp_path: Path) -> None:
    tests = "from pkg import mod\n\n\ndef test_direct():\n    mod.direct()\n\n\ndef test_racy():\n    assert False\n"
    code, recorded = _recorded(tmp_path, tests)
    assert code == 1
    assert recorded.selection("direct") == ["test_pkg.py::test_direct", "test_pkg.py::test_racy"]
    assert recorded.selection("never") == ["test_pkg.py::test_racy"]


def test_only_the_selected_tests_run_and_the_killers_go_first(tmp_path: Path) -> None:
    (tmp_path / "test_three.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n    pass\n\n\n"
                                            "def test_c():\n    pass\n")
    (tmp_path / "select.txt").write_text("test_three.py::test_a\ntest_three.py::test_c\n")
    (tmp_path / "order.txt").write_text("test_three.py::test_c\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "CASSTORE_MUTATION_SELECT": str(tmp_path / "select.txt"),
           "CASSTORE_MUTATION_ORDER": str(tmp_path / "order.txt")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "tests.mutation.order",
                           "-o", "addopts=", "--rootdir", str(tmp_path), "test_three.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    ran = [line.split(" ", 1)[0] for line in done.stdout.splitlines() if " PASSED" in line]
    assert ran == ["test_three.py::test_c", "test_three.py::test_a"]
    assert "1 deselected" in done.stdout


def test_two_recordings_of_a_module_join_so_a_reach_seen_once_selects_its_test(tmp_path: Path) -> None:
    # a timing-dependent path (reached by test_b in one run only) must still select test_b
    one = f"{coverage.ITEM}t.py::test_a\t\n{coverage.ITEM}t.py::test_b\t\nt.py::test_a\tf\n"
    two = f"{coverage.ITEM}t.py::test_a\t\n{coverage.ITEM}t.py::test_b\t\nt.py::test_a\tf\nt.py::test_b\tf\n"
    (tmp_path / "records.tsv").write_text(one + two)
    recorded = coverage.load(tmp_path / "records.tsv")
    assert recorded.tests == ["t.py::test_a", "t.py::test_b"]
    assert recorded.selection("f") == ["t.py::test_a", "t.py::test_b"]


HOSTILE_TESTS = '''\
import resource
import sys

from pkg import mod


def test_under_a_file_size_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))      # as a full-disk test does
    try:
        assert mod.direct() == 1
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_after_the_limit():
    assert mod.in_thread() == 2


def test_replacing_the_hook():
    sys.setprofile(None)
    assert mod.in_fork() == 4


def test_after_the_replacement():
    assert mod.in_subprocess() == 3
'''


def test_a_test_that_limits_file_size_or_replaces_the_hook_does_not_end_the_recording(tmp_path: Path) -> None:
    # session 10's false survivors: a full-disk test's RLIMIT_FSIZE made the hook's write raise, Python
    # dropped the hook, and no later test of the run was recorded in-process
    code, recorded = _recorded(tmp_path, HOSTILE_TESTS)
    assert code == 0
    replaced = "test_pkg.py::test_replacing_the_hook"      # its reach is unknown: it runs for every mutant
    assert recorded.selection("direct") == ["test_pkg.py::test_under_a_file_size_limit", replaced]
    assert recorded.selection("in_thread") == ["test_pkg.py::test_after_the_limit", replaced]
    assert recorded.selection("in_subprocess") == [replaced, "test_pkg.py::test_after_the_replacement"]
    assert recorded.selection("never") == [replaced]
