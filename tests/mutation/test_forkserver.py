"""The full mutation run's fork route (tests/mutation/forkserver.py): where it can go wrong.

A mutant swapped into the wrong function object, or run although it cannot be swapped exactly, is a
false survivor; a hung child that is not killed stops the run. Each is tried on a small package made
here, not on casstore.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.mutation.forkserver import plan

ROOT = Path(__file__).resolve().parents[2]

MODULE = '''\
import functools

LIMIT = 3


def twice(x):
    return 2 * x


def _decorator(f):
    @functools.wraps(f)
    def wrapper(*args):
        return f(*args)
    return wrapper


@_decorator
def wrapped(x):
    return x + 1


def with_default(x=LIMIT):
    return x


class Box:
    size = 4

    @property
    def area(self):
        return self.size * self.size

    @staticmethod
    def unit():
        return 1

    class Inner:
        def name(self):
            return "inner"


TABLE = {n: twice(n) for n in range(3)}     # twice runs at import
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A fresh package `name` with `mod` (MODULE) and `user`, which imports from it by name."""
    name = f"swap_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "mod.py").write_text(MODULE)
    (tmp_path / name / "user.py").write_text(f"from {name}.mod import Box, twice, wrapped\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(f"{name}.mod")
    user = importlib.import_module(f"{name}.user")
    yield mod, user
    for key in [k for k in sys.modules if k.startswith(name)]:
        del sys.modules[key]


def _swap(mod, old: str, new: str, called=frozenset()):
    source = Path(mod.__file__).read_text()
    assert old in source
    original = compile(source, mod.__file__, "exec", dont_inherit=True)
    return plan(mod, original, source.replace(old, new, 1), set(called))


def _apply(assignments) -> None:
    for function, code in assignments:
        function.__code__ = code


def test_the_swap_reaches_a_function_imported_by_name_elsewhere(package):
    mod, user = package
    _apply(_swap(mod, "return 2 * x", "return 3 * x"))
    assert user.twice(5) == 15


def test_the_swap_reaches_through_a_decorator_a_property_a_staticmethod_and_a_nested_class(package):
    mod, user = package
    _apply(_swap(mod, "return x + 1", "return x - 1"))
    _apply(_swap(mod, "return self.size * self.size", "return self.size + self.size"))
    _apply(_swap(mod, "return 1\n", "return 2\n"))
    _apply(_swap(mod, 'return "inner"', 'return "outer"'))
    assert (user.wrapped(5), user.Box().area, user.Box.unit(), mod.Box.Inner().name()) == (4, 8, 2, "outer")


@pytest.mark.parametrize("old, new", [
    ("LIMIT = 3", "LIMIT = 4"),                          # a module constant
    ("    size = 4", "    size = 5"),                    # a class attribute
    ("def with_default(x=LIMIT)", "def with_default(x=None)"),   # a default argument
    ("@_decorator\n", ""),                               # a decorator
    ("return 2 * x", "return 2 *"),                      # does not compile
])
def test_a_mutant_outside_a_function_body_falls_back(package, old, new):
    mod, _user = package
    assert isinstance(_swap(mod, old, new), str)


def test_a_function_that_ran_at_import_falls_back(package):
    mod, _user = package
    called = {mod.twice.__code__}
    assert isinstance(_swap(mod, "return 2 * x", "return 3 * x", called), str)


# ---- the server end to end ---------------------------------------------------------------------------

TESTS = '''\
import subprocess
import sys

from hypothesis import given, strategies

from hangpkg.mod import f


@given(strategies.integers())
def test_a_property(n):     # a hypothesis test: collecting it gathers the local modules' constants
    assert isinstance(n, int)


def test_in_process():
    assert f() == 1


def test_in_a_subprocess():
    out = subprocess.run([sys.executable, "-c", "from hangpkg.mod import f; print(f())"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
'''


ORIGINAL = "def f():\n    return 1\n\n\ndef g():\n    return 123456789\n"


@pytest.fixture
def server(tmp_path):
    (tmp_path / "hangpkg").mkdir()
    (tmp_path / "hangpkg" / "__init__.py").write_text("")
    (tmp_path / "hangpkg" / "mod.py").write_text(ORIGINAL)
    (tmp_path / "test_hang.py").write_text(TESTS)
    args = ["-p", "no:cacheprovider", "-p", "_hypothesis_pytestplugin", "-q", "-o", "addopts=", "test_hang.py"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.mutation.forkserver", str(tmp_path), "hangpkg/mod.py",
                             *args], cwd=tmp_path, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["ready"]

    def ask(code: str | None, limit: float = 60, select: str = "test_hang.py") -> dict:
        request = {"code": code, "args": [*args[:-1], select], "limit": limit, "out": str(tmp_path / "out.txt")}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())
    yield ask, tmp_path
    proc.stdin.close()
    proc.wait(timeout=30)


def test_the_server_runs_the_original_and_a_mutant_in_process_and_in_subprocesses(server):
    ask, scratch = server
    assert ask(None)["status"] == "survived"
    killed = ask(ORIGINAL.replace("return 1", "return 2"))
    assert (killed["route"], killed["status"], killed["killer"]) == ("fork", "killed", "test_hang.py::test_in_process")
    # a test that starts python reads the mutant from disk
    only_subprocess = ask(ORIGINAL.replace("return 1", "return 2"), select="test_hang.py::test_in_a_subprocess")
    assert (only_subprocess["status"], only_subprocess["killer"]) == ("killed", "test_hang.py::test_in_a_subprocess")
    assert (scratch / "hangpkg" / "mod.py").read_text() == ORIGINAL                        # restored after each
    assert ask(None)["status"] == "survived"                                              # and in memory


def test_a_hung_child_is_killed_at_the_limit_with_what_it_started(server):
    ask, scratch = server
    pidfile = scratch / "grandchild.pid"
    hang = ORIGINAL.replace("    return 1\n", (
        "    import subprocess, sys, time\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"    open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "    while True:\n        time.sleep(0.05)\n"))
    reply = ask(hang, limit=3, select="test_hang.py::test_in_process")
    assert (reply["route"], reply["status"]) == ("fork", "timeout")
    grandchild = int(pidfile.read_text())
    assert _gone(grandchild)
    assert ask(None)["status"] == "survived"    # the server goes on


def _gone(pid: int) -> bool:
    """The process has ended (a zombie left for init to reap counts as ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_hypothesis_draws_on_the_mutant_s_constants_as_in_a_pytest_process(server):
    """Hypothesis seeds its examples with the local modules' constants: a child must see the mutant's."""
    ask, scratch = server
    (scratch / "test_constants.py").write_text(
        "def test_constants():\n"
        "    from hypothesis.internal.conjecture.providers import _get_local_constants\n"
        "    assert 987654321 not in _get_local_constants().integers\n"
        "    assert 123456789 in _get_local_constants().integers\n")
    assert ask(None, select="test_constants.py")["status"] == "survived"
    assert ask(ORIGINAL.replace("123456789", "987654321"), select="test_constants.py")["status"] == "killed"


def test_a_mutant_the_server_cannot_swap_is_answered_fallback(server):
    ask, _scratch = server
    assert ask("LIMIT = 1\n\n\n" + ORIGINAL)["route"] == "fallback"
