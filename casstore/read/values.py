"""A file's value as history and the value diff see it, and key paths into it.

`name.jsonl` is the list of its records (blank lines skipped), any other file its parsed JSON
when it parses, else its text when it is short UTF-8, else None (NOT_JSON tells which). Values
are cached by content key (the file's chunk ids): a file unchanged across snapshots has the same
chunk ids, so it is read and parsed once however many snapshots hold it; `parses` counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from casstore.errors import CasstoreError
from casstore.format.pack import KIND_DATA
from casstore.format.tree import Entry
from casstore.repo.core import BlobReader

MAX_TEXT = 64 * 1024      # a non-JSON file's text is its value up to this size


class BadQuery(CasstoreError, ValueError):
    """A key path, time or pattern that cannot be used, or a file that is not JSON where JSON is needed."""

    exit_code = 2


class _Missing:
    """No value: the file or the key is not there."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


@dataclass(frozen=True)
class FileValue:
    value: object
    is_json: bool
    size: int


def parse_key(key: str | None) -> tuple[str, ...]:
    """'a.b.0' -> ('a', 'b', '0'); a list index is any integer part (negative counts from the end)."""
    if key is None or key == "":
        return ()
    parts = tuple(key.split("."))
    if any(p == "" for p in parts):
        raise BadQuery(f"bad key path {key!r}: empty part (write it as a.b.0)")
    return parts


def lookup(value: object, parts: Sequence[str]) -> object:
    """The value at key path `parts`, or MISSING."""
    for part in parts:
        if isinstance(value, dict):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                return MISSING
        else:
            return MISSING
    return value


def canonical(value: object) -> str:
    """One string per JSON value, so equal values compare equal (and 1, 1.0 and true do not)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_file(name: str, data: bytes) -> FileValue:
    try:
        if name.endswith(".jsonl"):
            return FileValue([json.loads(line) for line in data.splitlines() if line.strip()], True, len(data))
        return FileValue(json.loads(data), True, len(data))
    except (ValueError, UnicodeDecodeError):
        pass
    text: str | None = None
    if len(data) <= MAX_TEXT:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return FileValue(text, False, len(data))


def content_key(entry: Entry) -> bytes:
    """Identical for identical contents (the chunk ids), whatever the snapshot."""
    return b"".join(entry.chunks)


class ValueCache:
    """Parsed file values by content key; `parses` counts files actually read and parsed."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._values: dict[tuple[bytes, str], FileValue] = {}
        self._max = max_entries
        self.parses = 0

    def value(self, repo: BlobReader, entry: Entry) -> FileValue:
        name = entry.name.decode("utf-8", "surrogateescape")
        # the name matters only through its .jsonl suffix, which changes how the bytes parse
        key = (content_key(entry), ".jsonl" if name.endswith(".jsonl") else "")
        found = self._values.get(key)
        if found is None:
            found = parse_file(name, read_entry(repo, entry))
            self.parses += 1
            if len(self._values) >= self._max:
                self._values.pop(next(iter(self._values)))   # oldest first: a bounded cache
            self._values[key] = found
        return found


def read_entry(repo: BlobReader, entry: Entry) -> bytes:
    return b"".join(repo.read_blob(KIND_DATA, chunk_id) for chunk_id in entry.chunks)
