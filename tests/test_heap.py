"""The C heap after a snapshot: glibc's arenas give back the free memory at their top (issue 17's
peak RSS; casstore/fsio/heap.py). Each case runs in a fresh process: the thresholds are process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")

# Freed in a worker thread: one 8 MiB block (mmapped: glibc then raises its thresholds to 8 and 16
# MiB), then 12 MiB in 1 MiB blocks, which end as free memory at the top of the thread's arena.
_PATTERN = """
import sys, threading
def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
if sys.argv[1] == "snapshot":
    from casstore.client import init_repository
    from casstore.settings import load_settings
    init_repository(load_settings({"repository": sys.argv[2]})).snapshot(sys.argv[3])
def work():
    big = b"\\1" * (8 << 20)
    del big
    held = [b"\\1" * (1 << 20) for _ in range(12)]
    del held
before = rss_mib()
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(rss_mib() - before)
"""


def _kept_mib(tmp_path, mode: str) -> float:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "a").write_bytes(b"casstore" * 1000)
    env = {**os.environ, "CASSTORE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", _PATTERN, mode, str(tmp_path / f"repo-{mode}"), str(tmp_path / "src")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


def test_after_a_snapshot_a_threads_arena_gives_back_its_free_top(tmp_path):
    assert _kept_mib(tmp_path, "plain") >= 8        # glibc's own thresholds keep it: the test can tell
    assert _kept_mib(tmp_path, "snapshot") < 4      # `take_snapshot` bounded them (2 MiB)
