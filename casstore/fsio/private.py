"""Everything casstore writes locally is its owner's alone: files 0600, directories 0700.

A repository holds the contents of every file it backed up, so a pack readable by others hands
a root-only file to any local user (issue 13, case 4; restic does the same). Modes are set at
creation whatever the umask; existing files and directories are left as they are, so a
repository made before keeps working.
"""

from __future__ import annotations

import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: str) -> None:
    """Create `path` and any missing parents, each 0700 exactly (the umask cannot widen or
    narrow it); directories that exist are not touched."""
    missing: list[str] = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)


def open_private(path: str, flags: int) -> int:
    """os.open with O_CREAT, creating the file 0600 (the umask may only narrow that)."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
