"""The local index table cache: the merged in-memory index saved whole, read back in one go.

Decoding every index object (msgpack, a Python object per entry) costs about 9 s per million
blobs; reading the table `MasterIndex.write_image` saved costs a file read and a BLAKE3 pass.
The image records which index objects it was built from, so `RepoCore.load_index` restores it,
then fetches only index objects listed since and forgets the ones no longer listed.

It is a cache, never an authority: a file that does not verify (torn write, disk damage, another
version) is deleted and the index is built from the index objects; one is written only when the
in-memory index holds exactly what its index objects list (`MasterIndex.from_objects_only`: no
pack a writer uploaded but has not indexed yet); reads still verify every blob against its id.
"""

from __future__ import annotations

import logging
import os

import blake3

from casstore.errors import FormatError
from casstore.format.index import MasterIndex
from casstore.fsio.private import make_dirs, open_private

log = logging.getLogger(__name__)


PREFIX = "index-table-"


class IndexTableCache:
    """One repository's saved index table, `<cache dir>/<repo id>/index-table-<location hash>`
    (the location is in the name: a sync destination may share the source's repository id)."""

    def __init__(self, cache_dir: str, repo_id: str, location: str) -> None:
        name = PREFIX + blake3.blake3(os.fsencode(location)).hexdigest()[:16]   # a path may not be UTF-8
        self.path = os.path.join(cache_dir, repo_id, name)

    def restore(self, index: MasterIndex) -> bool:
        """Load the saved table into `index`; False (and the file removed) when there is none usable."""
        try:
            with open(self.path, "rb") as fh:
                index.read_image(fh)
            return True
        except FileNotFoundError:
            return False
        except (OSError, FormatError) as exc:
            log.info("index table cache %s unusable, rebuilding it: %s", self.path, exc)
            self.discard()
            return False

    def save(self, index: MasterIndex) -> None:
        """Write the table (best effort: a failure leaves no file behind and is only logged)."""
        if not index.from_objects_only:
            return
        tmp = f"{self.path}.{os.urandom(4).hex()}.tmp"
        try:
            make_dirs(os.path.dirname(self.path))
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
                index.write_image(fh)
            os.replace(tmp, self.path)      # readers see the old file or the new one, never half
        except OSError as exc:
            log.info("index table cache %s not written: %s", self.path, exc)
            _unlink(tmp)
        except BaseException:
            _unlink(tmp)
            raise

    def discard(self) -> None:
        _unlink(self.path)


def clear_tables(cache_dir: str) -> tuple[int, int]:
    """Delete every repository's saved index table under the cache dir (and any a writer left
    half-written); return (files, bytes). The next open of each repository rebuilds its table
    from the index objects. Local repositories have a table here too, and no other cache folder."""
    try:
        repos = [os.path.join(cache_dir, name) for name in os.listdir(cache_dir)]
    except FileNotFoundError:
        return 0, 0
    files = size = 0
    for folder in repos:
        try:
            names = [name for name in os.listdir(folder) if name.startswith(PREFIX)]
        except (NotADirectoryError, FileNotFoundError):
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                size += os.lstat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            files += 1
    return files, size


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
