"""The source folder of a snapshot: refused with one line when it is missing, not a directory, or empty.

A wiped or unmounted `data/` would otherwise produce good-looking empty snapshots that push the
real ones out of retention. Every entry point (CLI, API, facade, scheduler) calls `require_source`
before it creates or opens anything, so a refused snapshot leaves nothing behind.
"""

from __future__ import annotations

import os

from casstore.errors import SourceError


def check_source(source: str, hint: str = "set CASSTORE_SOURCE or pass a path") -> None:
    """SourceError unless `source` is a directory, saying what it is instead."""
    if os.path.isdir(source):
        return
    if os.path.lexists(source):
        what = "a file" if os.path.isfile(source) else "not a directory"
        raise SourceError(f"source {source} is {what}: a snapshot is of a directory (give the folder that holds it)")
    raise SourceError(f"source directory {source} does not exist ({hint})")


def require_source(path: str, *, allow_empty: bool = False, hint: str = "set CASSTORE_SOURCE or pass a path") -> None:
    """`check_source`, and unless `allow_empty`, SourceError when the directory holds no entry."""
    check_source(path, hint)
    if allow_empty:
        return
    with os.scandir(path) as entries:
        if next(iter(entries), None) is None:
            raise SourceError(f"source directory {path} is empty: nothing to back up (is it mounted? "
                              "--allow-empty or CASSTORE_ALLOW_EMPTY=1 to snapshot it anyway)")
