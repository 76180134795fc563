"""The source folder's check before a snapshot: missing or empty sources are refused.

A wiped or unmounted `data/` would otherwise produce good-looking empty snapshots that push the
real ones out of retention. Every entry point (CLI, API, facade, scheduler) calls `require_source`
before it creates or opens anything, so a refused snapshot leaves nothing behind.
"""

from __future__ import annotations

import os

from casstore.errors import SourceError


def require_source(path: str, *, allow_empty: bool = False) -> None:
    """Raise SourceError (one line) unless `path` is a directory holding at least one entry."""
    if not os.path.exists(path):
        raise SourceError(f"source directory {path} does not exist (set CASSTORE_SOURCE or pass a path)")
    if not os.path.isdir(path):
        raise SourceError(f"source {path} is not a directory (snapshot a folder: its parent, or a folder holding it)")
    if allow_empty:
        return
    with os.scandir(path) as entries:
        if next(iter(entries), None) is None:
            raise SourceError(f"source directory {path} is empty: nothing to back up (is it mounted? "
                              "--allow-empty or CASSTORE_ALLOW_EMPTY=1 to snapshot it anyway)")
