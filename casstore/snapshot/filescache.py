"""The files cache: path -> (size, mtime_ns, ctime_ns, inode, chunk ids) of the last snapshot.

Local and disposable. Keyed by repository id and source path, so two sources or two repositories
never share one. It is replaced atomically, and only after the snapshot that produced it
committed. A cached chunk list is trusted only when every chunk is still in the index outside
condemned packs (checked by the builder), so a gc that removed data can never make a later
snapshot skip a blob that no longer exists. An encrypted repository's files cache is sealed like
its objects (it names every file), so the cache directory shows no more than the repository does.
"""

from __future__ import annotations

import logging
import os

import blake3
import msgpack

from casstore.errors import CasstoreError
from casstore.format.crypto import KIND_FILES_CACHE, Sealer, seal_if, unseal_if
from casstore.fsio.durable import FileSystem, write_durably
from casstore.fsio.private import make_dirs, open_private

log = logging.getLogger(__name__)

CacheEntry = list  # [size, mtime_ns, ctime_ns, inode, [chunk ids]]


def cache_path(cache_dir: str, repo_id: str, source: str) -> str:
    key = blake3.blake3(os.path.abspath(source).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, repo_id, f"files-{key}")


def load(path: str, sealer: Sealer | None = None) -> dict[bytes, CacheEntry]:
    try:
        with open(path, "rb") as fh:
            doc = msgpack.unpackb(unseal_if(sealer, KIND_FILES_CACHE, fh.read(), "files cache"))
        return doc if isinstance(doc, dict) else {}
    except FileNotFoundError:
        return {}
    except (ValueError, msgpack.UnpackException, OSError, CasstoreError) as exc:
        log.warning("ignoring unreadable files cache %s: %s", path, exc)
        return {}


def save(path: str, entries: dict[bytes, CacheEntry], sealer: Sealer | None = None) -> None:
    """Replace the cache. Best effort: it is saved after the snapshot committed, so a full or
    unwritable cache directory costs the next snapshot a re-read, never this one its success."""
    try:
        make_dirs(os.path.dirname(path))
        write_durably(FileSystem(), path, seal_if(sealer, KIND_FILES_CACHE, msgpack.packb(entries)))
    except OSError as exc:
        log.warning("could not save the files cache %s: %s (the next snapshot reads every file)", path,
                    exc.strerror or exc)


def _last_path(cache_file: str) -> str:
    return cache_file + ".last"


def load_last(cache_file: str, host: str) -> str | None:
    """The id of this host's last snapshot of the source, as noted after it committed (a hint)."""
    try:
        with open(_last_path(cache_file), "rb") as fh:
            doc = msgpack.unpackb(fh.read())
        return doc["snapshot"] if isinstance(doc, dict) and doc.get("host") == host else None
    except (OSError, ValueError, KeyError, msgpack.UnpackException):
        return None


def save_last(cache_file: str, host: str, snapshot_id: str) -> None:
    """Note the snapshot just committed, so the next one finds its parent without reading every
    manifest. A hint only: written without fsync (a lost note means one scan), never trusted
    unless the snapshot still exists."""
    path = _last_path(cache_file)
    tmp = f"{path}.{os.urandom(4).hex()}.tmp"
    try:
        make_dirs(os.path.dirname(path))
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
            fh.write(msgpack.packb({"host": host, "snapshot": snapshot_id}))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not note the last snapshot in %s: %s", path, exc)
