"""Hangs fail fast and children do not outlive their test (issue 19, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent_code = (
        "import subprocess, sys, time\n"
        "from tests.servers import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline, "the parent never started its child"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)      # as a CI runner or a person ends a stuck pytest
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_test_that_never_ends_fails_with_a_timeout(tmp_path: Path) -> None:
    (tmp_path / "test_endless.py").write_text("def test_endless():\n    while True:\n        pass\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    # the project's own configuration (pyproject.toml) with its timeout shortened for this run
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(PROJECT_ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=3",
                           str(tmp_path / "test_endless.py")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "1 failed" in done.stdout


def test_the_suite_has_a_per_test_timeout() -> None:
    import tomllib

    options = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < int(options["timeout"]) <= 300


def test_a_pause_point_never_stops_a_process_that_was_not_asked_to() -> None:
    """A pause hook stops the process (SIGSTOP) only at the point CASSTORE_TEST_PAUSE_AT names: with
    it unset, no name, not even a missing one, stops it (a stopped process uses no CPU, so neither
    a CPU-time limit nor pytest-timeout would ever end it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSTORE_TEST_PAUSE")}
    code = ("from casstore._testing import pause_point\n"
            "for name in ('snapshot-before-commit', '', None):\n"
            "    pause_point(name)\n"
            "print('went on')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.strip() == b"went on"
