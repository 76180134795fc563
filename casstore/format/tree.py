"""Tree blobs: one directory listing, deterministic so unchanged directories dedup.

A tree blob is msgpack {"v": 1, "entries": [entry, ...], "next": tree id or None}. An entry is
a fixed-order array:

    [name (bytes), type (str), mode, uid, gid, mtime_ns, size, link, content]

`link` is the hard-link identity (inode number when the file has more than one link, else 0).
`content` is, by type: file -> list of chunk ids; dir -> subtree id; symlink -> target bytes;
chardev/blockdev -> device number; fifo/socket -> None. Entries are sorted by name bytes and
names are unique. A directory whose listing would exceed MAX_TREE_BYTES is split into a chain of
tree blobs linked by "next", split at deterministic points so identical directories still dedup.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack

from casstore.errors import FormatError
from casstore.format.fields import is_int
from casstore.format.reasons import unpack_reason

TREE_VERSION = 1
MAX_TREE_BYTES = 2 * 1024 * 1024


class EntryType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"


@dataclass(frozen=True, slots=True)
class Entry:
    name: bytes
    type: EntryType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    link: int = 0
    content: object = None

    @property
    def chunks(self) -> list[bytes]:
        return self.content if self.type is EntryType.FILE else []  # type: ignore[return-value]

    @property
    def subtree(self) -> bytes:
        assert self.type is EntryType.DIR
        return self.content  # type: ignore[return-value]

    def as_list(self) -> list[Any]:
        return [self.name, self.type.value, self.mode, self.uid, self.gid, self.mtime_ns, self.size,
                self.link, self.content]


def encode_tree_chain(entries: Iterable[Entry], store: Callable[[bytes], bytes]) -> bytes:
    """Encode a directory's entries as one tree blob or a chain; `store` saves a blob, returns its id."""
    return encode_tree_rows([entry.as_list() for entry in entries], store)


def encode_tree_rows(rows: list[list[Any]], store: Callable[[bytes], bytes]) -> bytes:
    """`encode_tree_chain` of entries given as their `Entry.as_list()` rows: a snapshot of many
    small files makes its file entries as rows, without an `Entry` object each (issue 14)."""
    rows.sort(key=_row_name)
    names = [row[0] for row in rows]
    if len(set(names)) != len(names):
        raise FormatError("corrupt tree: duplicate entry name")
    packer = msgpack.Packer()         # one packer for the directory: packb makes one per call
    # one page (nearly every directory): the rows packed in one call, not a call each (most of a
    # no-change snapshot's tree encoding); a directory past one page is packed again, a row at a time
    whole = packer.pack(rows)         # the entries' array: its header, then each row packed
    if len(whole) - len(packer.pack_array_header(len(rows))) <= MAX_TREE_BYTES:
        return store(_tree_body(whole, None))
    pages: list[list[bytes]] = []
    page: list[bytes] = []
    size = 0
    pack = packer.pack
    for row in rows:
        packed = pack(row)
        if page and size + len(packed) > MAX_TREE_BYTES:
            pages.append(page)
            page, size = [], 0
        page.append(packed)
        size += len(packed)
    pages.append(page)
    next_id = None
    for page in reversed(pages):
        next_id = store(_tree_body(packer.pack_array_header(len(page)) + b"".join(page), next_id))
    return next_id  # type: ignore[return-value]


_row_name = operator.itemgetter(0)     # a row's name: the sort key (C-level, not a call a row)


def _tree_body(entries: bytes, next_id: bytes | None) -> bytes:
    """msgpack {"v": 1, "entries": [...], "next": id} from the entries' array packed once
    (`entries`): the same bytes as packing the map whole (msgpack has one encoding for these types)."""
    packer = msgpack.Packer()
    return b"".join((packer.pack_map_header(3), packer.pack("v"), packer.pack(TREE_VERSION), packer.pack("entries"),
                     entries, packer.pack("next"), packer.pack(next_id)))


def decode_tree(body: bytes) -> tuple[list[Entry], bytes | None]:
    """Decode one tree blob into (entries, next tree id); anything malformed is a FormatError."""
    try:
        doc = msgpack.unpackb(body, max_bin_len=1 << 24)
        if doc["v"] != TREE_VERSION:
            raise FormatError(f"unsupported tree version {doc['v']}")
        entries = [_entry(item) for item in doc["entries"]]
        next_id = doc["next"]
        if next_id is not None and not _is_id(next_id):
            raise ValueError("bad next tree id")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt tree: {unpack_reason(exc)}") from exc
    _check_unique(entries)
    return entries, next_id


def _entry(item: list[Any]) -> Entry:
    name, type_name, mode, uid, gid, mtime_ns, size, link, content = item
    if not isinstance(name, bytes) or not name:
        raise ValueError("entry name must be non-empty bytes")
    kind = EntryType(type_name)
    if not all(is_int(n) for n in (mode, uid, gid, mtime_ns, size, link)) or size < 0:
        raise ValueError(f"entry {name!r}: bad integer field")
    _check_content(kind, content, name)
    return Entry(name, kind, mode, uid, gid, mtime_ns, size, link, content)


def _check_content(kind: EntryType, content: object, name: bytes) -> None:
    valid: Callable[[object], bool] = {
        EntryType.FILE: lambda c: isinstance(c, list) and all(_is_id(i) for i in c),
        EntryType.DIR: _is_id,
        EntryType.SYMLINK: lambda c: isinstance(c, bytes),
        EntryType.CHARDEV: is_int,
        EntryType.BLOCKDEV: is_int,
        EntryType.FIFO: lambda c: c is None,
        EntryType.SOCKET: lambda c: c is None,
    }[kind]
    if not valid(content):
        raise ValueError(f"entry {name!r}: bad content for a {kind.value}")


def safe_name(name: bytes) -> bool:
    """A name that can be created inside a directory: not empty, `.` or `..`, no `/` or NUL."""
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def _is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def _check_unique(entries: list[Entry]) -> None:
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise FormatError("corrupt tree: duplicate entry name")
