"""The full run's fork route (issue 19): import once, fork a child per mutant, swap the mutated function in.

A server process per worker slot (`python -m tests.mutation.forkserver SCRATCH MODULE PYTEST-ARGS...`,
started by full.py with the slot's scratch copy first on PYTHONPATH) imports pytest, hypothesis, casstore
and the module's test files (a `--collect-only` in-process), once. For each mutant (a JSON line on
stdin: the mutated module source, the pytest arguments, a wall limit) it:

1. plans the swap (`plan`): compiles the original and the mutated source and compares the code trees.
   The mutant is swappable when the two differ only inside the code of functions (module functions,
   methods at any class depth; a nested function comes with its outer function's code), each of which
   is reachable as a live function object (through staticmethod, classmethod, property, cached_property
   and `__wrapped__`) and was not called while the server imported (a value computed at import would
   keep the original's result). A module constant, a class attribute, a default argument, a decorator
   argument, an annotation: the module or class body code differs, and the mutant is answered
   `fallback` (full.py runs it in its own pytest process, as before);
2. writes the mutant into the scratch copy on disk too, so the processes the tests start
   (`python -m casstore`, the CLI, servers, multiprocess workers) import the mutant, not the original;
3. forks; the child makes itself a process group, assigns the mutated code to each planned function
   (`__code__`: every reference to the function, `from x import f` included, sees it), runs the
   tests in-process with `pytest.main` and exits with pytest's code;
4. waits at most the wall limit, then kills the child's whole process group (also when it ended in
   time: nothing the tests started outlives the mutant), reaps it (its CPU: user + sys of the child
   and the processes it waited for), restores the original source and answers one JSON line.

The parent never runs a test, so every child starts from the same imported, unexercised state (fork
copies it); nothing a child does reaches the parent or the next child.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import select
import shutil
import signal
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

CodeType = types.CodeType
_FUNCTION_FLAGS = 0x1 | 0x2     # CO_OPTIMIZED | CO_NEWLOCALS: a function's code, not a module's or class body's


def _is_function(code: CodeType) -> bool:
    return code.co_flags & _FUNCTION_FLAGS == _FUNCTION_FLAGS


def changed_functions(original: CodeType, mutated: CodeType) -> list[tuple[CodeType, CodeType]] | None:
    """The (original, mutated) code of each function that differs, or None when anything else differs."""
    out: list[tuple[CodeType, CodeType]] = []
    return out if _diff(original, mutated, out) else None


def _diff(original: CodeType, mutated: CodeType, out: list[tuple[CodeType, CodeType]]) -> bool:
    """Compare a module's or class body's code; only the code of the functions in it may differ."""
    if len(original.co_consts) != len(mutated.co_consts):
        return False
    consts: list[object] = []
    for before, after in zip(original.co_consts, mutated.co_consts, strict=True):
        if isinstance(before, CodeType) and isinstance(after, CodeType):
            if _is_function(before) != _is_function(after):
                return False
            if not _is_function(before):                     # a class body: its methods may differ
                if not _diff(before, after, out):
                    return False
            elif before != after:
                out.append((before, after))
            consts.append(before)
        else:
            consts.append(after)
    # everything but the functions' code must be equal: the bytecode, names, constants (not the positions:
    # a `def` statement's extent in the module's line table moves with any change to its last line)
    return original == mutated.replace(co_consts=tuple(consts), co_linetable=original.co_linetable)


def _unwrapped(obj: object) -> list[types.FunctionType]:
    """The plain functions behind a class or module attribute (decorators and descriptors peeled)."""
    if isinstance(obj, (staticmethod, classmethod)):
        return _unwrapped(obj.__func__)
    if isinstance(obj, property):
        return [f for part in (obj.fget, obj.fset, obj.fdel) if part is not None for f in _unwrapped(part)]
    if isinstance(obj, functools.cached_property):
        return _unwrapped(obj.func)
    found = [obj] if isinstance(obj, types.FunctionType) else []
    wrapped = getattr(obj, "__wrapped__", None) if callable(obj) else None
    if wrapped is not None and wrapped is not obj:
        found += _unwrapped(wrapped)
    return found


def live_functions(module: types.ModuleType) -> dict[CodeType, list[types.FunctionType]]:
    """Every function of `module` reachable from its namespace and its classes', by its code."""
    filename = module.__file__
    index: dict[CodeType, list[types.FunctionType]] = {}
    seen: set[int] = set()

    def visit(namespace: dict[str, Any]) -> None:
        for value in list(namespace.values()):
            if isinstance(value, type):
                if id(value) not in seen and value.__module__ == module.__name__:
                    seen.add(id(value))
                    visit(dict(vars(value)))
                continue
            for function in _unwrapped(value):
                if function.__code__.co_filename == filename and function not in index.get(function.__code__, []):
                    index.setdefault(function.__code__, []).append(function)
    visit(vars(module))
    return index


def plan(module: types.ModuleType, original: CodeType, mutated_source: str, called: set[CodeType],
         ) -> list[tuple[types.FunctionType, CodeType]] | str:
    """The assignments that put the mutant in place, or why it cannot be done exactly (then: fallback)."""
    try:
        mutated = compile(mutated_source, original.co_filename, "exec", dont_inherit=True)
    except SyntaxError:
        return "does not compile"
    changes = changed_functions(original, mutated)
    if changes is None:
        return "not inside a function (module or class body code differs)"
    index = live_functions(module)
    assignments = []
    for before, after in changes:
        if before in called:
            return f"{before.co_qualname} ran at import"
        if len(before.co_freevars) != len(after.co_freevars):
            return f"{before.co_qualname}: closure changed"
        functions = index.get(before)
        if not functions:
            return f"{before.co_qualname} is not reachable as a function object"
        assignments += [(function, after) for function in functions]
    return assignments


# ---- the server -----------------------------------------------------------------------------------

def _record_calls(root: str, called: set[CodeType]) -> Any:
    def hook(frame: types.FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(root):
            called.add(frame.f_code)
    return hook


class Server:
    def __init__(self, scratch: Path, module: str, args: list[str]) -> None:
        self.scratch = scratch
        self.path = scratch / module
        self.name = module.removesuffix(".py").replace("/", ".")
        self.called: set[CodeType] = set()
        sys.setprofile(_record_calls(str(scratch / self.name.split(".")[0]), self.called))
        try:
            self._preload(args)
        finally:
            sys.setprofile(None)
        self.module = sys.modules[self.name]
        assert self.module.__file__ == str(self.path), f"{self.name} imported from {self.module.__file__}"
        self.original_source = self.path.read_text()
        self.original = compile(self.original_source, str(self.path), "exec", dont_inherit=True)
        self._warm_hypothesis()
        # pytest collects garbage several times a session: with what this process holds moved out of the
        # collector's sight, a child's collections cost what the child made, and touch no inherited page
        gc.collect()
        gc.freeze()

    def _warm_hypothesis(self) -> None:
        """Hypothesis parses every local module's source for constants at each process's first test (most
        of a quick mutant's CPU): parse them here once, except the mutated module, whose source differs a
        mutant and which the child parses itself, from the disk, as a pytest process would. The collection
        above gathered them already, the module's original constants included: that is forgotten, so the
        child gathers them again (from this cache, and the mutant's from its source)."""
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import constants_from_module, is_local_module_file
        constants_from_module.cache_clear()
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if module is not self.module and path and is_local_module_file(path):
                constants_from_module(module)
        providers._local_constants = providers.Constants(
            integers=providers.SortedSet(), floats=providers.SortedSet(key=providers.float_to_int),
            bytes=providers.SortedSet(), strings=providers.SortedSet())
        providers._seen_modules.clear()
        providers._sys_modules_len = None
        providers.CONSTANTS_CACHE.cache.clear()

    def _preload(self, args: list[str]) -> None:
        """Import what a child would import, so it need not: pytest's plugins, the module, and the test
        modules, through a collection in this process (so pytest rewrites their asserts as usual).
        Nothing runs a test here; a session's state ends with its session."""
        import pytest

        importlib.import_module(self.name)
        code = pytest.main([*args, "--collect-only", "-q"])
        if code != 0:
            raise RuntimeError(f"the tests of {self.name} do not collect (pytest exit {code})")

    def serve(self, requests: Any, reply: Any) -> None:
        usage = os.times()
        reply.write(json.dumps({"ready": True, "cpu": usage.user + usage.system}) + "\n")
        reply.flush()
        for line in requests:
            request = json.loads(line)
            reply.write(json.dumps(self.one(request, reply.fileno())) + "\n")
            reply.flush()

    def one(self, request: dict[str, Any], reply_fd: int) -> dict[str, Any]:
        code = request.get("code")
        assignments: list[tuple[types.FunctionType, CodeType]] = []
        if code is not None:
            planned = plan(self.module, self.original, code, self.called)
            if isinstance(planned, str):
                return {"route": "fallback", "why": planned}
            assignments = planned
            _write(self.path, code)
        try:
            return {"route": "fork", **self._fork(assignments, request, reply_fd)}
        finally:
            if code is not None:
                _write(self.path, self.original_source)

    def _fork(self, assignments: list[tuple[types.FunctionType, CodeType]], request: dict[str, Any],
              reply_fd: int) -> dict[str, Any]:
        for kept in (self.scratch / ".hypothesis").glob("*"):     # no example saved by another mutant; the
            if kept.name != "constants":                          # constants' cache is keyed by source hash
                shutil.rmtree(kept, ignore_errors=True) if kept.is_dir() else kept.unlink()
        out, result = Path(request["out"]), Path(request["out"] + ".killer")
        result.unlink(missing_ok=True)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(assignments, request["args"], out, result, reply_fd)
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], request["limit"])
        finally:
            os.close(pidfd)
        seconds = time.monotonic() - started
        try:
            os.killpg(pid, signal.SIGKILL)      # a hung child, and whatever the tests left running
        except ProcessLookupError:
            pass
        _, status, usage = os.wait4(pid, 0)
        cpu = usage.ru_utime + usage.ru_stime
        if not ready:
            return {"status": "timeout", "seconds": seconds, "cpu": -1.0, "killer": ""}
        killer = result.read_text() if result.exists() else ""
        status_name, detail = verdict(os.waitstatus_to_exitcode(status), killer,
                                      lambda: out.read_text(errors="replace") if out.exists() else "")
        return {"status": status_name, "seconds": seconds, "cpu": cpu, "killer": detail}


def verdict(exit_code: int, killer: str, output: Callable[[], str]) -> tuple[str, str]:
    """A mutant's status from pytest's exit code, and what the ledger's `killer` column holds: both
    routes (this one and full.py's subprocess) judge alike. 0: every test passed (survived); 1 or 2:
    a test failed, or a module no longer imports (killed); anything else is an error, recorded with
    the end of the output."""
    if exit_code == 0:
        return "survived", ""
    if exit_code in (1, 2):
        return "killed", killer or "collection"
    return f"error{exit_code}", output()[-300:].replace("\n", " ").replace("\t", " ")


class _FirstFailure:
    """A pytest plugin: the node id of the first test (or file) that failed, as `-rfE` would name it."""

    def __init__(self) -> None:
        self.nodeid = ""

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self.nodeid:
            self.nodeid = report.nodeid

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed and not self.nodeid:
            self.nodeid = report.nodeid


def _child(assignments: list[tuple[types.FunctionType, CodeType]], args: list[str], out: Path, result: Path,
           reply_fd: int) -> None:
    code = 99
    try:
        os.setsid()
        os.close(reply_fd)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for function, mutated in assignments:
            function.__code__ = mutated
        import pytest
        first = _FirstFailure()
        code = int(pytest.main(args, plugins=[first]))
        result.write_text(first.nodeid)
    except BaseException:   # noqa: BLE001 - any escape is an error verdict, never a second server
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _write(target: Path, text: str) -> None:
    target.write_text(text)
    for cached in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):   # never a stale module
        cached.unlink()


def main() -> None:
    scratch, module, *args = sys.argv[1:]
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)           # stray prints of imports go to the log, never into the replies
    server = Server(Path(scratch), module, args)
    server.serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
