"""An fsspec filesystem over snapshots, registered as the `casstore` protocol (pyproject entry point).

    import pandas as pd
    pd.read_json("casstore://latest/market/prices.json")
    fsspec.open("casstore://1a2b3c4d/ai_hub/collective_intelligence.json").open().read()

The first path component is a snapshot (`latest` or an id prefix); the rest is a path inside it.
The root lists the snapshots as directories. Files are read through `Snapshot.open`, seekable, so
a range read fetches only the chunks it touches, from a local or a remote repository alike.
The repository is chosen as the CLI chooses it (CASSTORE_REPOSITORY, else the configured remote,
from the environment or .env), or by the `repository=` / `remote=` storage options.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from casstore.client import open_repository
from casstore.format.tree import Entry, EntryType
from casstore.read.reader import PathNotFound, Snapshot
from casstore.read.trees import path_parts
from casstore.repo.open import settings_for

_TYPES = {EntryType.FILE: "file", EntryType.DIR: "directory"}


class CasstoreFileSystem(AbstractFileSystem):
    protocol = "casstore"
    root_marker = ""
    # fsspec would cache instances by their arguments alone, but with none the repository comes
    # from the environment, which may have changed: repositories are shared by _opened instead
    cachable = False

    def __init__(self, repository: str | None = None, remote: str | None = None, host: str | None = None,
                 all_hosts: bool = False, **storage_options: Any) -> None:
        super().__init__(**storage_options)
        self.repo = _opened(repository, remote)
        self._host, self._all_hosts = host, all_hosts

    def _snapshot(self, ref: str) -> Snapshot:
        # `latest` is resolved on every call: a long-lived filesystem sees new snapshots
        return self.repo.get(ref, host=self._host, all_hosts=self._all_hosts)

    def _split(self, path: str) -> tuple[str, str]:
        clean = self._strip_protocol(path)
        ref, _, inner = clean.partition("/")
        return ref, inner

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        text = path[len("casstore://"):] if path.startswith("casstore://") else path
        return "/".join(p.decode("utf-8", "surrogateescape") for p in path_parts(text))

    # -- what fsspec asks ----------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        ref, inner = self._split(path)
        if not ref:
            infos = [{"name": s.id, "size": 0, "type": "directory", "time": s.manifest.time}
                     for s in self.repo.snapshots(host=self._host, all_hosts=self._all_hosts)]
        else:
            snap = self._snapshot(ref)
            found = snap.entry(inner)
            if found is not None and found.type is not EntryType.DIR:
                infos = [_info(f"{ref}/{inner}", found)]
            else:
                tree = snap.manifest.tree if found is None else found.subtree
                base = f"{ref}/{inner}" if inner else ref
                infos = [_info(f"{base}/{e.name.decode('utf-8', 'surrogateescape')}", e) for e in snap.tree(tree)]
        return infos if detail else [i["name"] for i in infos]

    def info(self, path: str, **kwargs: Any) -> dict:
        ref, inner = self._split(path)
        if not ref:
            return {"name": "", "size": 0, "type": "directory"}
        try:
            snap = self._snapshot(ref)
            found = snap.entry(inner)
        except PathNotFound as exc:
            raise FileNotFoundError(str(exc)) from None
        if found is None:
            return {"name": ref, "size": 0, "type": "directory", "snapshot_id": snap.id}
        return _info(f"{ref}/{inner}", found)

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any):
        if mode != "rb":
            raise PermissionError("casstore snapshots are read-only")
        ref, inner = self._split(path)
        try:
            return self._snapshot(ref).open(inner)
        except PathNotFound as exc:
            raise FileNotFoundError(str(exc)) from None

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        """Bytes [start, end) (negative counts from the end), reading only the chunks they fall in."""
        with self._open(path) as fh:
            size = fh.seek(0, io.SEEK_END)
            lo = 0 if start is None else max(0, size + start) if start < 0 else min(start, size)
            hi = size if end is None else max(0, size + end) if end < 0 else min(end, size)
            fh.seek(lo)
            return fh.read(max(0, hi - lo))

    def ukey(self, path: str) -> str:
        """Changes exactly when the content does: a digest of the file's chunk ids."""
        ref, inner = self._split(path)
        found = self._snapshot(ref).entry(inner)
        return hashlib.sha256(b"".join(found.chunks) if found is not None else ref.encode()).hexdigest()


_REPOS: dict[tuple, Any] = {}
_REPOS_LOCK = threading.Lock()


def _opened(repository: str | None, remote: str | None):
    """One open Repository per (repository, remote, cache, host) the settings resolve to, kept for
    the process: its index and manifests stay loaded between reads."""
    settings = settings_for(repository)
    key = (os.path.abspath(settings.repository), remote, settings.remote, settings.cache_dir, settings.host)
    with _REPOS_LOCK:
        if key not in _REPOS:
            _REPOS[key] = open_repository(settings, remote=remote)
        return _REPOS[key]


def _info(name: str, entry: Entry) -> dict:
    return {"name": name, "size": entry.size, "type": _TYPES.get(entry.type, "other"),
            "mtime": entry.mtime_ns / 1e9, "mode": entry.mode}
