"""The source folder of a snapshot: refused with one line when it is not a directory."""

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
