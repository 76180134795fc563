"""What the local repository remembers about its remotes (local bookkeeping, not the format).

Stored under `<repository>/state/`, one file per remote (named by a hash of its URL):
- `synced`: snapshots committed to that remote (post-commit check passed);
- `pending`: snapshots written to the remote whose post-commit check has not finished;
- `pulled`: snapshots this repository got from a remote (not created here, never pushed back);
- a journal of packs uploaded by an unfinished sync, so a resumed sync does not send them again.
"""

from __future__ import annotations

import os

import blake3
import msgpack

from casstore.errors import CasstoreError
from casstore.format.pack import BlobEntry
from casstore.fsio.durable import FileSystem, write_durably
from casstore.fsio.private import make_dirs, open_private

REQUEST_WINDOW = 30 * 86400


class SyncState:
    def __init__(self, local_dir: str, remote_url: str) -> None:
        self.dir = os.path.join(local_dir, "state")
        make_dirs(self.dir)
        self.remote_key = blake3.blake3(os.fsencode(remote_url)).hexdigest()[:16]   # a path may not be UTF-8
        self._path = os.path.join(self.dir, f"remote-{self.remote_key}")
        self.journal_path = os.path.join(self.dir, f"journal-{self.remote_key}")
        doc = _load(self._path)
        self.synced: set[str] = set(doc.get("synced", []))
        self.pending: set[str] = set(doc.get("pending", []))
        self.last_sync: dict = doc.get("last_sync", {})
        # [time, PUT/LIST-class, GET/HEAD-class] of each sync in the last REQUEST_WINDOW (for cost estimates)
        self.requests: list[list] = [r for r in doc.get("requests", []) if isinstance(r, list) and len(r) == 3]

    @property
    def recorded(self) -> bool:
        """Whether a sync with this remote has been recorded here."""
        return os.path.exists(self._path)

    def save(self) -> None:
        body = msgpack.packb({"synced": sorted(self.synced), "pending": sorted(self.pending),
                              "last_sync": self.last_sync, "requests": self.requests})
        write_durably(FileSystem(), self._path, body)

    def record_requests(self, now: float, puts: int, gets: int) -> None:
        """Note one sync's requests; only the last REQUEST_WINDOW's are kept."""
        self.requests = [r for r in self.requests if r[0] > now - REQUEST_WINDOW] + [[now, puts, gets]]

    def requests_last_month(self, now: float) -> tuple[int, int]:
        """(PUT/LIST-class, GET/HEAD-class) requests this host's syncs made in the last 30 days."""
        recent = [r for r in self.requests if r[0] > now - REQUEST_WINDOW]
        return sum(r[1] for r in recent), sum(r[2] for r in recent)

    # -- pulled snapshots (shared by every remote) -------------------------------------------

    def pulled(self) -> set[str]:
        return set(_load(os.path.join(self.dir, "pulled")).get("ids", []))

    def add_pulled(self, ids: set[str]) -> None:
        path = os.path.join(self.dir, "pulled")
        write_durably(FileSystem(), path, msgpack.packb({"ids": sorted(self.pulled() | ids)}))

    # -- upload journal ----------------------------------------------------------------------

    def journal_append(self, pack_id: str, entries: list[BlobEntry]) -> None:
        record = msgpack.packb([pack_id, [e.as_list() for e in entries]])
        with os.fdopen(open_private(self.journal_path, os.O_WRONLY | os.O_APPEND), "ab") as fh:
            fh.write(len(record).to_bytes(4, "little") + record)
            fh.flush()
            os.fsync(fh.fileno())

    def journal(self) -> dict[str, list[BlobEntry]]:
        """Packs a previous, unfinished sync uploaded (a torn last record is ignored)."""
        try:
            with open(self.journal_path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}
        packs, pos = {}, 0
        while pos + 4 <= len(data):
            size = int.from_bytes(data[pos:pos + 4], "little")
            if pos + 4 + size > len(data):
                break
            pack_id, entries = msgpack.unpackb(data[pos + 4:pos + 4 + size])
            packs[pack_id] = [BlobEntry(*e) for e in entries]
            pos += 4 + size
        return packs

    def journal_clear(self) -> None:
        try:
            os.unlink(self.journal_path)
        except FileNotFoundError:
            pass


class StateError(CasstoreError):
    """A local record of what went to a remote cannot be read."""


def _load(path: str) -> dict:
    """A state file, or {} when there is none; a damaged one is an error, not "nothing synced":
    read as empty, it would send snapshots again that were forgotten on the remote (design 8.0)."""
    try:
        with open(path, "rb") as fh:
            doc = msgpack.unpackb(fh.read())
    except FileNotFoundError:
        return {}
    except (ValueError, msgpack.UnpackException) as exc:
        raise StateError(f"the sync record {path} is damaged ({exc}); move it away to start over "
                         "(snapshots forgotten on the remote would then be sent again)") from exc
    if not isinstance(doc, dict):
        raise StateError(f"the sync record {path} is damaged (not a map); move it away to start over")
    return doc
