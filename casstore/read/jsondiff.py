"""The value diff: what changed inside JSON documents between two snapshots, key path by key path.

Each change is {"op", "key", "path", "old", "new"}: `op` is added, removed or changed; `key` the
dotted key path ('' for the whole document) and `path` the same as a list (list indexes as
ints, so keys holding dots stay unambiguous). Objects are compared key by key, arrays index by
index. A `.jsonl` file is a list of records; when only its tail changed, its changes are
`appended` and `truncated` records, and the records before the first chunk that differs are not
parsed at all: an unchanged prefix has the same chunk ids in both snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casstore.format.pack import KIND_DATA
from casstore.format.tree import Entry, EntryType
from casstore.read.diff import diff_snapshots
from casstore.read.reader import PathNotFound, Snapshot
from casstore.read.trees import path_parts
from casstore.read.values import BadQuery, canonical, parse_file, read_entry

JSON_SUFFIXES = (".json", ".jsonl")


@dataclass
class ValueDiff:
    """One file's value changes; `status` is modified, added or removed (the file itself)."""

    path: str
    status: str
    format: str                                    # json | jsonl
    changes: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "format": self.format, "changes": self.changes}


def diff_values(old: object, new: object, prefix: tuple = ()) -> list[dict]:
    """Changes from JSON value `old` to `new` (objects by key, arrays by index)."""
    changes: list[dict] = []
    stack = [(old, new, prefix)]
    while stack:   # iterative, so a deeply nested document cannot exhaust the stack
        a, b, at = stack.pop()
        if isinstance(a, dict) and isinstance(b, dict):
            pairs = [(k, a.get(k, _NONE), b.get(k, _NONE)) for k in _ordered_keys(a, b)]
        elif isinstance(a, list) and isinstance(b, list):
            pairs = [(i, a[i] if i < len(a) else _NONE, b[i] if i < len(b) else _NONE)
                     for i in range(max(len(a), len(b)))]
        else:
            if canonical(a) != canonical(b):
                changes.append(change("changed", at, a, b))
            continue
        later = []
        for k, x, y in pairs:
            if x is _NONE:
                changes.append(change("added", (*at, k), None, y))
            elif y is _NONE:
                changes.append(change("removed", (*at, k), x, None))
            else:
                later.append((x, y, (*at, k)))
        stack.extend(reversed(later))
    return sorted(changes, key=lambda c: _sort_key(c["path"]))


def change(op: str, path: tuple, old: object, new: object) -> dict:
    return {"op": op, "key": ".".join(str(p) for p in path), "path": list(path), "old": old, "new": new}


def diff_file_values(old: Snapshot, new: Snapshot, path: str) -> ValueDiff:
    """The value diff of one file (a PathNotFound when it is in neither snapshot)."""
    a, b = _file_or_none(old, path), _file_or_none(new, path)
    if a is None and b is None:
        raise PathNotFound(f"{path} is not a file in snapshot {old.short_id} or {new.short_id}")
    return _diff_entries(old, new, a, b, "/".join(p.decode("utf-8", "surrogateescape") for p in path_parts(path)),
                         strict=True)


def diff_snapshot_values(old: Snapshot, new: Snapshot, path: str = "") -> list[ValueDiff]:
    """Value diffs of every .json / .jsonl file below `path` whose content differs."""
    found = _file_or_none(old, path) or _file_or_none(new, path) if path_parts(path) else None
    if found is not None:
        return [diff_file_values(old, new, path)]
    prefix = "/".join(p.decode("utf-8", "surrogateescape") for p in path_parts(path))
    out = []
    for c in diff_snapshots(old, new):
        inside = not prefix or c.path == prefix or c.path.startswith(prefix + "/")
        if inside and c.type == "file" and c.kind != "metadata" and c.path.endswith(JSON_SUFFIXES):
            out.append(_diff_entries(old, new, _file_or_none(old, c.path), _file_or_none(new, c.path), c.path,
                                     strict=False))
    return out


def _diff_entries(old: Snapshot, new: Snapshot, a: Entry | None, b: Entry | None, path: str,
                  strict: bool) -> ValueDiff:
    fmt = "jsonl" if path.endswith(".jsonl") else "json"
    status = "added" if a is None else "removed" if b is None else "modified"
    result = ValueDiff(path, status, fmt)
    if a is not None and b is not None and a.chunks == b.chunks:
        return result
    if fmt == "jsonl" and a is not None and b is not None:
        result.changes = _diff_jsonl(old, new, a, b, path, strict)
        return result
    before = _parsed(old, a, path, strict)
    after = _parsed(new, b, path, strict)
    if a is None:
        result.changes = [change("added", (), None, after)]
    elif b is None:
        result.changes = [change("removed", (), before, None)]
    else:
        result.changes = diff_values(before, after)
    return result


def _diff_jsonl(old: Snapshot, new: Snapshot, a: Entry, b: Entry, path: str, strict: bool) -> list[dict]:
    """Records compared from the first chunk that differs; the shared prefix is read for its line
    count only (record indexes), never parsed."""
    start, skipped = _shared_prefix(old, a, b)
    before = _records(old, start, path, strict)
    after = _records(new, start, path, strict)
    shared = min(len(before), len(after))
    if before[:shared] != after[:shared]:
        return [_shifted(c, skipped) for c in diff_values(before, after)]
    if len(after) > shared:
        return [change("appended", (skipped + i,), None, r) for i, r in enumerate(after[shared:], shared)]
    return [change("truncated", (skipped + i,), r, None) for i, r in enumerate(before[shared:], shared)]


def _shifted(c: dict, by: int) -> dict:
    if not by or not c["path"]:
        return c
    path = (c["path"][0] + by, *c["path"][1:])
    return change(c["op"], path, c["old"], c["new"])


def _shared_prefix(snapshot: Snapshot, a: Entry, b: Entry) -> tuple[int, int]:
    """(offset just after the last newline within the chunks both versions share, the number of
    records before that offset). Both versions hold those bytes, so those records are equal."""
    same = 0
    while same < min(len(a.chunks), len(b.chunks)) and a.chunks[same] == b.chunks[same]:
        same += 1
    offset = cut = records = 0
    pending = b""
    for chunk_id in a.chunks[:same]:
        data = snapshot.repo.read_blob(KIND_DATA, chunk_id)
        last = data.rfind(b"\n")
        if last < 0:
            pending += data
        else:
            complete, pending = pending + data[:last], data[last + 1:]
            records += sum(1 for line in complete.split(b"\n") if line.strip())
            cut = offset + last + 1
        offset += len(data)
    return cut, records


def _records(snapshot: Snapshot, start: int, path: str, strict: bool) -> list:
    with snapshot.open(path) as fh:
        fh.seek(start)
        data = fh.read()
    value = parse_file(path, data)
    if not value.is_json:
        _not_json(path, snapshot, strict)
        return []
    return value.value  # type: ignore[return-value]


def _parsed(snapshot: Snapshot, entry: Entry | None, path: str, strict: bool) -> object:
    if entry is None:
        return None
    value = parse_file(path, read_entry(snapshot.repo, entry))
    if not value.is_json:
        _not_json(path, snapshot, strict)
    return value.value


def _not_json(path: str, snapshot: Snapshot, strict: bool) -> None:
    if strict:
        raise BadQuery(f"{path} in snapshot {snapshot.short_id} does not parse as JSON")


def _file_or_none(snapshot: Snapshot, path: str) -> Entry | None:
    try:
        entry = snapshot.entry(path)
    except PathNotFound:
        return None
    return entry if entry is not None and entry.type is EntryType.FILE else None


def _ordered_keys(a: dict, b: dict) -> list:
    return list(a) + [k for k in b if k not in a]


def _sort_key(path: list) -> list:
    return [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in path]


class _Absent:
    pass


_NONE = _Absent()
