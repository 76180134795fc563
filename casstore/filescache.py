"""The files cache: path -> (size, mtime_ns, ctime_ns, inode, chunk ids) of the last snapshot.

Local and disposable. Keyed by repository id and source path, so two sources or two repositories
never share one. It is replaced atomically, and only after the snapshot that produced it
committed. A cached chunk list is trusted only when every chunk is still in the index outside
condemned packs (checked by the builder), so a gc that removed data can never make a later
snapshot skip a blob that no longer exists.
"""

from __future__ import annotations

import logging
import os

import blake3
import msgpack

from casstore.localfs import FileSystem, write_durably

log = logging.getLogger(__name__)

CacheEntry = list  # [size, mtime_ns, ctime_ns, inode, [chunk ids]]


def cache_path(cache_dir: str, repo_id: str, source: str) -> str:
    key = blake3.blake3(os.path.abspath(source).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, repo_id, f"files-{key}")


def load(path: str) -> dict[bytes, CacheEntry]:
    try:
        with open(path, "rb") as fh:
            doc = msgpack.unpackb(fh.read())
        return doc if isinstance(doc, dict) else {}
    except FileNotFoundError:
        return {}
    except (ValueError, msgpack.UnpackException, OSError) as exc:
        log.warning("ignoring unreadable files cache %s: %s", path, exc)
        return {}


def save(path: str, entries: dict[bytes, CacheEntry]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_durably(FileSystem(), path, msgpack.packb(entries))
