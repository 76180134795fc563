"""Local, disposable copies of immutable objects of a remote repository.

Index objects, snapshot manifests and blobs never change once written, so a copy can be used
for as long as the object is listed. Every cached body is verified when used exactly as a
fresh download would be (its name is its hash), so a damaged cache costs a download, never
wrong data.
"""

from __future__ import annotations

import os

from casstore.fsio.private import make_dirs, open_private


class LocalCache:
    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.root, kind, name)

    def get(self, kind: str, name: str) -> bytes | None:
        try:
            with open(self._path(kind, name), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def put(self, kind: str, name: str, data: bytes) -> None:
        path = self._path(kind, name)
        tmp = f"{path}.{os.urandom(4).hex()}.tmp"
        try:
            make_dirs(os.path.dirname(path))
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def names(self, kind: str) -> set[str]:
        try:
            return {n for n in os.listdir(os.path.join(self.root, kind)) if not n.endswith(".tmp")}
        except FileNotFoundError:
            return set()

    def discard(self, kind: str, name: str) -> None:
        try:
            os.unlink(self._path(kind, name))
        except FileNotFoundError:
            pass


class BlobCache:
    """Encoded blobs of a remote repository, keyed by kind and id (verified on every read)."""

    def __init__(self, cache: LocalCache) -> None:
        self._cache = cache

    def get(self, kind: int, blob_id: bytes) -> bytes | None:
        return self._cache.get("blobs", f"{kind}-{blob_id.hex()}")

    def put(self, kind: int, blob_id: bytes, encoded: bytes) -> None:
        self._cache.put("blobs", f"{kind}-{blob_id.hex()}", encoded)
