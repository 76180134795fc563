"""The public front: `Repository`, a RepoCore with one method per operation.

Each method takes the local repository lock (design 5.8) and hands the core to the operation's
own module. The core (repo/core.py) imports no operation; this module is where they meet, each
imported when its method runs, so that `casstore list` never loads the restorer or sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from casstore.format.config import RepoConfig
from casstore.remotes.base import Remote
from casstore.repo.core import RepoCore, SnapshotInfo
from casstore.repo.open import open_as
from casstore.settings import Settings

if TYPE_CHECKING:
    from casstore.read.find import Found
    from casstore.read.history import HistoryRow
    from casstore.read.jsondiff import ValueDiff
    from casstore.read.reader import Snapshot
    from casstore.repo.check import CheckReport
    from casstore.restore.restorer import RestoreResult
    from casstore.snapshot.builder import SnapshotResult
    from casstore.snapshot.legacy import ImportReport
    from casstore.sync.transfer import SyncReport


class Repository(RepoCore):
    """One repository, with the operations: snapshot, get, restore, check, sync, pull, stats."""

    def snapshot(self, source: str | None = None, *, tags: tuple[str, ...] = (), excludes: tuple[str, ...] = (),
                 progress: Callable[[int], None] | None = None) -> SnapshotResult:
        from casstore.snapshot.builder import take_snapshot  # lazy: start-up time

        with self.locked():
            return take_snapshot(self, source or self.settings.source, tags=tags, excludes=excludes,
                                 progress=progress)

    def get(self, ref: str = "latest", *, host: str | None = None, all_hosts: bool = False) -> Snapshot:
        from casstore.read.reader import Snapshot  # lazy: start-up time

        return Snapshot(self, self.resolve(ref, host=host, all_hosts=all_hosts))

    def restore(self, ref: str, target: str, **options: Any) -> RestoreResult:
        from casstore.restore.restorer import restore_snapshot  # lazy: start-up time

        with self.locked():
            return restore_snapshot(self.get(ref), target, **options)

    def check(self, *, read_data: bool = False, subset: float | None = None) -> CheckReport:
        from casstore.repo.check import check_repository  # lazy: start-up time

        with self.locked():
            return check_repository(self, read_data=read_data, subset=subset)

    def sync(self, remote: str | Remote | None = None, *, dry_run: bool = False,
             progress: Callable[[int], None] | None = None) -> SyncReport:
        """Copy this repository's new snapshots to `remote` (a URL or Remote; default: the configured one)."""
        from casstore.sync.transfer import sync_to_remote  # lazy: start-up time

        with self.locked():
            return sync_to_remote(self, remote, dry_run=dry_run, progress=progress)

    def pull(self, remote: str | Remote | None = None, *, snapshot: str | None = None, host: str | None = None,
             all_hosts: bool = True, progress: Callable[[int], None] | None = None) -> SyncReport:
        """Copy snapshots from `remote` into this (local) repository."""
        from casstore.sync.transfer import pull_from_remote  # lazy: start-up time

        with self.locked():
            return pull_from_remote(self, remote, snapshot=snapshot, host=host, all_hosts=all_hosts,
                                    progress=progress)

    def import_legacy(self, where: str) -> ImportReport:
        """Each of the seed's unified_backup_*.json.gz (a folder or a bucket URL) as a snapshot."""
        from casstore.snapshot.legacy import import_legacy  # lazy: start-up time

        with self.locked():
            return import_legacy(self, where)

    def stats(self) -> dict[str, Any]:
        from casstore.repo.stats import repository_stats  # lazy: start-up time

        with self.locked():
            return repository_stats(self)

    # -- questions across snapshots (read/history.py, read/jsondiff.py, read/find.py) -----------

    def history(self, path: str, key: str | None = None, **options: Any) -> list[HistoryRow]:
        """One row per snapshot where the file at `path` (or the value at `key`, 'a.b.0') changed."""
        from casstore.read.history import history  # lazy: start-up time

        return history(self, path, key, **options)

    def diff_values(self, old: str, new: str = "latest", path: str = "") -> list[ValueDiff]:
        """What changed inside the JSON files below `path` from snapshot `old` to `new`, key path by key path."""
        from casstore.read.jsondiff import diff_snapshot_values  # lazy: start-up time

        return diff_snapshot_values(self.get(old), self.get(new), path)

    def find(self, pattern: str, **options: Any) -> list[Found]:
        """Every (snapshot, path) whose name (or, with a '/', whole path) matches the glob `pattern`."""
        from casstore.read.find import find  # lazy: start-up time

        return find(self, pattern, **options)


def open_repository(settings: Settings, *, remote: str | Remote | None = None, create: bool = False,
                    like: RepoConfig | str | None = None, fallback_remote: bool = True) -> Repository:
    """The one open/create path (repo/open.py `open_as`, which explains the parameters), as the front."""
    return open_as(Repository, settings, remote=remote, create=create, like=like, fallback_remote=fallback_remote)


def init_repository(settings: Settings, config: RepoConfig | None = None) -> Repository:
    """A new local repository (RepositoryExists if there is one): `casstore init`, `casstore.init()`."""
    return Repository.init_local(settings.repository, settings, config)


__all__ = ["Repository", "SnapshotInfo", "init_repository", "open_repository"]
