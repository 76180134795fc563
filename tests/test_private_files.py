"""Repository objects, caches and state are the owner's alone whatever the umask (issue 13, case 4).

A repository holds the contents of every file it backed up: a pack readable by others hands a
root-only file to any local user. Run with umask 0 (the most permissive), every file the CLI
creates must be 0600 and every directory 0700; a repository made with readable modes (before
this change) keeps working.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.helpers import det_bytes, write


def _casstore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "casstore.cli.main", *args], cwd=cwd, capture_output=True,
                          umask=0, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _shared(root: Path) -> list[str]:
    """Everything below `root` (root included) that the group or others may read, write or enter."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            mode = os.lstat(path).st_mode
            if stat.S_IMODE(mode) & 0o077:
                found.append(f"{path} {stat.filemode(mode)}")
    return found


def test_repository_cache_and_state_are_private_whatever_the_umask(tmp_path):
    write(tmp_path / "data" / "secret.txt", b"root-only")
    write(tmp_path / "data" / "big.bin", det_bytes(300_000, "big"))
    _casstore("init", "--repo", "repo", cwd=tmp_path)
    _casstore("snapshot", "data", "--repo", "repo", cwd=tmp_path)
    _casstore("snapshot", "data", "--repo", "repo", cwd=tmp_path)
    _casstore("sync", "--repo", "repo", "--remote", f"file://{tmp_path / 'offsite'}", cwd=tmp_path)
    _casstore("check", "--repo", "repo", cwd=tmp_path)
    for root in ("repo", "cache", "offsite"):
        assert (tmp_path / root).is_dir()
        assert _shared(tmp_path / root) == [], root


def test_a_repository_made_with_readable_modes_keeps_working(tmp_path):
    write(tmp_path / "data" / "a.txt", b"one")
    _casstore("init", "--repo", "repo", cwd=tmp_path)
    _casstore("snapshot", "data", "--repo", "repo", cwd=tmp_path)
    for dirpath, _dirnames, filenames in os.walk(tmp_path / "repo"):   # as an older casstore left it
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    write(tmp_path / "data" / "b.txt", b"two")
    _casstore("snapshot", "data", "--repo", "repo", cwd=tmp_path)
    _casstore("check", "--repo", "repo", cwd=tmp_path)
    _casstore("restore", "latest", "out", "--repo", "repo", cwd=tmp_path)
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"two"
