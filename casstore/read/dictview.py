"""`Snapshot.to_dict()`: the seed's dict shape, as lazy mappings.

A directory becomes a mapping; `name.json` appears under `name` holding the parsed JSON,
`name.jsonl` under `name` holding the list of records, any other file its bytes under its full
name. On a clash the directory wins, then `.json`, then `.jsonl`; the losers keep their full
names (a file literally named `name` keeps `name` too, so no entry is ever hidden). Nothing is
read until a key is accessed, so a 5 GB snapshot need not fit in memory; `materialize()` turns
the whole thing into plain dicts.

The JSON-ready form (`to_dict(json_ready=True)`, and what the HTTP API streams) is plain dicts that
`json.dumps` writes as standard JSON: a file that is not JSON (or does not parse) appears as a
reference {"$file": path, "size": n} (plus "error" for a .json that does not parse), never as bytes,
and NaN, Infinity, -Infinity and numbers beyond a double's range (1e999) become None (null), as
JavaScript's JSON.stringify writes them, so `JSON.parse` and strict parsers accept every document.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping

from casstore.format.tree import Entry, EntryType
from casstore.format.walk import VisitBudget

log = logging.getLogger(__name__)

_RANK = {"dir": 0, "json": 1, "jsonl": 2}


class LazyDir(Mapping):
    def __init__(self, snapshot, tree_id: bytes, path: str, json_ready: bool = False,
                 budget: VisitBudget | None = None) -> None:
        self._snapshot, self._tree_id, self._path = snapshot, tree_id, path
        self._json_ready = json_ready
        # one budget for the whole dict: a hostile DAG or a file naming one chunk a thousand
        # times ends in an IntegrityError, not a walk that never ends or a MemoryError
        self._budget = budget or VisitBudget(snapshot.manifest.summary)
        self._keys: dict[str, Entry] | None = None
        self._values: dict[str, object] = {}

    def _key_map(self) -> dict[str, Entry]:
        if self._keys is None:
            self._keys = _assign_keys(self._budget.spend(self._snapshot.tree(self._tree_id)))
        return self._keys

    def __getitem__(self, key: str) -> object:
        if key not in self._values:
            entry = self._key_map()[key]
            self._values[key] = self._load(entry)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_map())

    def __len__(self) -> int:
        return len(self._key_map())

    def __repr__(self) -> str:
        return f"<LazyDir {self._path or '/'} keys={list(self._key_map())[:8]}>"

    def _load(self, entry: Entry) -> object:
        name = entry.name.decode("utf-8", "surrogateescape")
        path = f"{self._path}/{name}" if self._path else name
        if entry.type is EntryType.DIR:
            return LazyDir(self._snapshot, entry.subtree, path, self._json_ready, self._budget)
        if entry.type is not EntryType.FILE:
            return None
        if self._json_ready:
            return json_ready_file(self._snapshot, path, entry, self._budget)
        data = self._snapshot.read_entry(entry, path, self._budget)
        return _parse(path, name, data)

    def materialize(self) -> dict:
        """Plain dicts all the way down (iterative: a tree of any depth)."""
        self._budget.check_walk(self._snapshot.tree, self._tree_id)
        out: dict = {}
        stack: list[tuple[LazyDir, dict]] = [(self, out)]
        while stack:
            lazy, target = stack.pop()
            for key, value in lazy.items():
                if isinstance(value, LazyDir):
                    target[key] = {}
                    stack.append((value, target[key]))
                else:
                    target[key] = value
        return out


class SnapshotDict(Mapping):
    """{'snapshot_id', 'timestamp', 'host', 'tags', 'data_sources'} with a lazy data_sources."""

    def __init__(self, snapshot, json_ready: bool = False) -> None:
        self._items = {
            "snapshot_id": snapshot.id,
            "backup_id": snapshot.id,
            "timestamp": snapshot.time.isoformat(),
            "host": snapshot.manifest.host,
            "tags": list(snapshot.manifest.tags),
            "data_sources": LazyDir(snapshot, snapshot.manifest.tree, "", json_ready),
        }

    def __getitem__(self, key: str) -> object:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def materialize(self) -> dict:
        return {k: (v.materialize() if isinstance(v, LazyDir) else v) for k, v in self._items.items()}  # one level


def snapshot_dict(snapshot) -> SnapshotDict:
    return SnapshotDict(snapshot)


def json_ready_dict(snapshot) -> dict:
    """The whole snapshot as plain dicts that json.dumps writes as standard JSON (module docstring)."""
    return SnapshotDict(snapshot, json_ready=True).materialize()


def json_ready_file(snapshot, path: str, entry: Entry, budget: VisitBudget | None = None) -> object:
    """A .json/.jsonl file parsed (non-finite numbers as None); any other file as a reference.
    The file is read within `budget` (the snapshot's declared totals)."""
    if not path.endswith((".json", ".jsonl")):
        return file_ref(path, entry.size)
    data = snapshot.read_entry(entry, path, budget)
    try:
        return parse_json_file(path, data, json_ready=True)
    except (ValueError, RecursionError):      # UnicodeDecodeError is a ValueError; too deep: a reference
        return file_ref(path, entry.size, error="does not parse as JSON")


def file_ref(path: str, size: int, error: str | None = None) -> dict:
    ref: dict = {"$file": path, "size": size}
    if error:
        ref["error"] = error
    return ref


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


# json.loads hooks of the JSON-ready form: NaN/Infinity/-Infinity and overflowing numbers -> None
_JSON_READY = {"parse_constant": lambda _name: None, "parse_float": _finite_or_none}


def parse_json_file(name: str, data: bytes, *, json_ready: bool = False) -> object:
    """A .json file's value or a .jsonl file's list of records; ValueError when it does not parse."""
    hooks: dict = _JSON_READY if json_ready else {}
    if name.endswith(".jsonl"):
        return [json.loads(line, **hooks) for line in data.splitlines() if line.strip()]
    return json.loads(data, **hooks)


def _kind(entry: Entry) -> tuple[str, str]:
    """(key it wants, rank name) for one entry."""
    name = entry.name.decode("utf-8", "surrogateescape")
    if entry.type is EntryType.DIR:
        return name, "dir"
    if entry.type is EntryType.FILE and name.endswith(".json") and len(name) > 5:
        return name[:-5], "json"
    if entry.type is EntryType.FILE and name.endswith(".jsonl") and len(name) > 6:
        return name[:-6], "jsonl"
    return name, "other"


def _assign_keys(entries: list[Entry]) -> dict[str, Entry]:
    wanted = sorted(((*_kind(e), e) for e in entries), key=lambda t: (_RANK.get(t[1], 3), t[2].name))
    # a short key never takes another entry's full name, so every loser's full name stays free
    full_names = {e.name.decode("utf-8", "surrogateescape") for e in entries}
    keys: dict[str, Entry] = {}
    for key, _rank, entry in wanted:
        full = entry.name.decode("utf-8", "surrogateescape")
        keys[full if key != full and (key in keys or key in full_names) else key] = entry
    return dict(sorted(keys.items()))


def _parse(path: str, name: str, data: bytes) -> object:
    try:
        if name.endswith((".json", ".jsonl")):
            return parse_json_file(name, data)
    except (ValueError, RecursionError) as exc:   # nested too deep to parse: bytes too
        log.warning("%s does not parse as JSON (%s); returned as bytes", path, type(exc).__name__)
    return data
