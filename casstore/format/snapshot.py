"""Snapshot manifests: the small object a snapshot is, stored as `snapshots/<BLAKE3 of its stored bytes>`
(sealed first in an encrypted repository)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import blake3
import msgpack

from casstore.errors import FormatError, IntegrityError
from casstore.format.crypto import KIND_SNAPSHOT, Sealer, seal_if, unseal_if
from casstore.format.fields import is_int
from casstore.format.reasons import unpack_reason

SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class SnapshotManifest:
    time_ns: int                 # UTC, nanoseconds since the epoch (integers, never floats)
    host: str
    source: str
    tree: bytes                  # root tree id
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    incomplete: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    version: int = SNAPSHOT_VERSION

    def encode(self, sealer: Sealer | None = None) -> tuple[str, bytes]:
        """(id, stored bytes): sealed in an encrypted repository, named by the BLAKE3 of what is stored."""
        doc = asdict(self)
        doc["tags"] = sorted(self.tags)
        stored = seal_if(sealer, KIND_SNAPSHOT, msgpack.packb(doc))
        return blake3.blake3(stored).hexdigest(), stored

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ns / 1e9, tz=UTC)


def manifest_text(text: str) -> str:
    """`text` as a manifest (msgpack, UTF-8) can hold it: a byte of a path that was not UTF-8 (a lone
    surrogate from surrogateescape, as Python names such a path) becomes a `\\xNN` escape, as the CLI
    shows it. The source path and the error lines are stored this way; the names in trees are bytes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:       # a surrogate no path decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decode_snapshot(snapshot_id: str, body: bytes, sealer: Sealer | None = None) -> SnapshotManifest:
    if blake3.blake3(body).hexdigest() != snapshot_id:
        raise IntegrityError(f"snapshot {snapshot_id[:8]} does not match its name")
    body = unseal_if(sealer, KIND_SNAPSHOT, body, f"snapshot {snapshot_id[:8]}")
    try:
        doc = msgpack.unpackb(body, max_bin_len=64)
        if not isinstance(doc, dict):
            raise ValueError("not a map")
        if doc.get("version") != SNAPSHOT_VERSION:
            raise FormatError(f"unsupported snapshot version {doc.get('version')}")
        manifest = SnapshotManifest(**doc)
        _check_types(manifest)
    except (TypeError, ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt snapshot {snapshot_id[:8]}: {unpack_reason(exc)}") from exc
    return manifest


def _check_types(m: SnapshotManifest) -> None:
    if not isinstance(m.tree, bytes) or len(m.tree) != 32:
        raise ValueError("bad root tree id")
    if not is_int(m.time_ns):
        raise ValueError("time_ns must be an integer")
    if not isinstance(m.host, str) or not isinstance(m.source, str):
        raise ValueError("host and source must be strings")
    if not isinstance(m.tags, list) or not all(isinstance(t, str) for t in m.tags):
        raise ValueError("tags must be a list of strings")
    if m.parent is not None and not isinstance(m.parent, str):
        raise ValueError("parent must be a snapshot id")
    if not isinstance(m.incomplete, bool) or not isinstance(m.summary, dict):
        raise ValueError("bad incomplete flag or summary")
