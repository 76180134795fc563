"""Where the old system kept its backups, and reading one.

Locally: `data/unified_backups/` (or any folder holding the files, or its parent `data/`), with
`backup_index.json` beside them. In a bucket: the files under `backups/` (below the URL's prefix).
A backup is one gzip'd JSON document {"backup_id", "timestamp", "data_sources": {...}}.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from casstore.errors import CasstoreError, SnapshotNotFound, SourceError
from casstore.remotes.base import Remote

NAME = re.compile(r"^(unified_backup_(\d{8})_(\d{6}))\.json\.gz$")
OLD_ID = re.compile(r"^unified_backup_\d{8}_\d{6}$")
INDEX = "backup_index.json"


class CorruptBackup(CasstoreError):
    """An old backup that cannot be read whole (truncated gzip, bad JSON, no data_sources)."""


@dataclass(frozen=True)
class OldBackup:
    backup_id: str            # unified_backup_20260207_151223
    location: str             # a path, or a key in the bucket
    listed_time: str | None   # the index's timestamp, when it lists this backup


class LegacySource:
    """Lists the old backups, oldest first, and reads one (bytes from a folder or a bucket)."""

    def __init__(self, where: str, settings: Any) -> None:
        self.where = where
        self._remote: Remote | None = None
        self._folder: str | None = None
        if "://" in where:
            from casstore.remotes import open_remote  # lazy: start-up time (a bucket's SDK)

            self._remote = open_remote(where, **settings.remote_options())
        else:
            self._folder = _backup_folder(where)

    def backups(self) -> tuple[list[OldBackup], list[str]]:
        """(the backups found, ids the index lists whose file is missing)."""
        names = dict(self._files())
        listed = self._index()
        found = [OldBackup(backup_id, location, listed.get(backup_id)) for backup_id, location in names.items()]
        missing = sorted(set(listed) - set(names))
        return sorted(found, key=lambda b: b.backup_id), missing

    def _files(self) -> Iterator[tuple[str, str]]:
        if self._folder is not None:
            for name in os.listdir(self._folder):
                match = NAME.match(name)
                if match:
                    yield match.group(1), os.path.join(self._folder, name)
            return
        assert self._remote is not None
        for info in self._remote.list("backups/"):
            match = NAME.match(info.key.rsplit("/", 1)[-1])
            if match:
                yield match.group(1), info.key

    def _index(self) -> dict[str, str | None]:
        """backup id -> its timestamp, from backup_index.json when there is one (it may list none)."""
        try:
            body = self.read_raw(os.path.join(self._folder, INDEX) if self._folder else "backups/" + INDEX)
            doc = json.loads(body)
        except (OSError, ValueError, CasstoreError):
            return {}
        items = doc.get("backups", []) if isinstance(doc, dict) else doc
        listed: dict[str, str | None] = {}
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and isinstance(item.get("backup_id"), str):
                stamp = item.get("timestamp")
                listed[item["backup_id"]] = stamp if isinstance(stamp, str) else None
        return listed

    def read_raw(self, location: str) -> bytes:
        if self._folder is not None:
            with open(location, "rb") as fh:
                return fh.read()
        assert self._remote is not None
        return self._remote.get(location)

    def read(self, backup: OldBackup) -> tuple[dict, datetime]:
        """(data_sources, the backup's time); CorruptBackup when the file is not whole."""
        try:
            doc = json.loads(gzip.decompress(self.read_raw(backup.location)))
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            raise CorruptBackup(f"{backup.backup_id}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data_sources"), dict):
            raise CorruptBackup(f"{backup.backup_id}: no data_sources object")
        return doc["data_sources"], backup_time(backup, doc.get("timestamp"))

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()


def backup_time(backup: OldBackup, stamp: object) -> datetime:
    """The document's timestamp, else the index's, else the name's; a naive time is local time,
    as the old system wrote it."""
    for text in (stamp, backup.listed_time):
        if isinstance(text, str):
            try:
                return datetime.fromisoformat(text).astimezone()
            except ValueError:
                pass
    match = NAME.match(backup.backup_id + ".json.gz")
    assert match is not None
    return datetime.strptime(match.group(2) + match.group(3), "%Y%m%d%H%M%S").astimezone()


def _backup_folder(where: str) -> str:
    for candidate in (where, os.path.join(where, "unified_backups"), os.path.join(where, "backups")):
        if os.path.isdir(candidate) and any(NAME.match(n) for n in os.listdir(candidate)):
            return candidate
    if not os.path.isdir(where):
        raise SourceError(f"{where} is not a directory")
    raise SourceError(f"no unified_backup_*.json.gz in {where} (nor in its unified_backups/ or backups/)")


def legacy_ref(repo: Any, ref: str) -> str:
    """An old id (unified_backup_…) -> the id of the snapshot tagged with it; any other ref unchanged."""
    if not OLD_ID.match(ref):
        return ref
    for info in repo.all_snapshots():
        if ref in info.manifest.tags:
            return info.id
    raise SnapshotNotFound(f"no snapshot tagged {ref} (import the old backups with `casstore import-legacy`)")
