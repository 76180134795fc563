"""The public front: `Repository`, a RepoCore with one method per operation.

Each method takes the local repository lock (design 5.8) and hands the core to the operation's
own module. The core (repo/core.py) imports no operation; this module is where they meet, each
imported when its method runs, so that `casstore list` never loads the restorer or sync.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from casstore.errors import CasstoreError, RepositoryNotFound, SnapshotNotFound
from casstore.format.config import RepoConfig
from casstore.format.layout import is_local_repository
from casstore.remotes.base import Remote
from casstore.repo.core import RepoCore, SnapshotInfo, check_ref, for_reads, latest_of
from casstore.repo.open import adopt_or_share, connect, new_config, open_as
from casstore.settings import Settings
from casstore.snapshot.source import require_source

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

log = logging.getLogger(__name__)
_UNOPENED = object()


class Repository(RepoCore):
    """One repository, with the operations: snapshot, get, restore, check, sync, pull, stats.

    Reads of a local repository fall through to the configured remote (design: reads): `listing()`
    merges both, `get()` looks here first, then there, with no URL to retype.
    """

    _remote_view: Any = _UNOPENED

    def snapshot(self, source: str | None = None, *, tags: tuple[str, ...] = (), excludes: tuple[str, ...] = (),
                 progress: Callable[[int], None] | None = None, allow_empty: bool | None = None) -> SnapshotResult:
        from casstore.snapshot.builder import take_snapshot  # lazy: start-up time

        source = source or self.settings.source
        require_source(source, allow_empty=self.settings.allow_empty if allow_empty is None else allow_empty)
        with self.locked():
            return take_snapshot(self, source, tags=tags, excludes=excludes, progress=progress)

    def remote_view(self) -> Repository | None:
        """The configured remote as a repository, for the snapshots this local one lacks; None when this
        is not a local repository, no remote is configured, or it holds no repository yet."""
        if self._remote_view is _UNOPENED:
            self._remote_view = None
            if self.local_dir is not None and self.settings.remote:
                try:
                    self._remote_view = Repository.open_remote(connect(self.settings.remote, self.settings),
                                                               self.settings)
                except RepositoryNotFound:
                    pass
        return self._remote_view

    def listing(self, limit: int | None = None, *, host: str | None = None,
                all_hosts: bool = False) -> list[SnapshotInfo]:
        """Snapshots for reads: this repository's and the configured remote's (each once, `where`
        saying which holds it), newest first, under the host rule of reads (core.for_reads)."""
        merged = {info.id: info for info in self.all_snapshots()}
        for info in self._remote_snapshots():
            merged[info.id] = replace(merged[info.id], where="both") if info.id in merged else info
        ordered = sorted(merged.values(), key=lambda s: (s.manifest.time_ns, s.id), reverse=True)
        found = for_reads(ordered, self.settings.host, host=host, all_hosts=all_hosts)
        return found[:limit] if limit else found

    def _remote_snapshots(self) -> list[SnapshotInfo]:
        try:
            view = self.remote_view()
            return view.all_snapshots() if view is not None else []
        except CasstoreError as exc:   # the local repository still answers; say why the bucket does not
            log.warning("listing only the local repository: %s", exc)
            return []

    def locate(self, ref: str = "latest", *, host: str | None = None, all_hosts: bool = False) -> SnapshotInfo:
        """Here first, then on the configured remote: an id, or `latest` (this repository's newest under
        the host rule; the merged listing's when this repository has none)."""
        if ref == "latest":
            try:
                return latest_of(self.readable(host=host, all_hosts=all_hosts))
            except SnapshotNotFound:
                if self.remote_view() is None:
                    raise
                return latest_of(self.listing(host=host, all_hosts=all_hosts))
        try:
            return self.resolve(check_ref(ref))
        except SnapshotNotFound:
            view = self.remote_view()
            if view is None:
                raise
            return view.resolve(ref)

    def reader_for(self, info: SnapshotInfo) -> Repository:
        """The repository that holds `info`'s data: this one, or the remote for a remote-only snapshot."""
        view = self.remote_view() if info.where == "remote" and self.local_dir is not None else None
        return view or self

    def get(self, ref: str = "latest", *, host: str | None = None, all_hosts: bool = False) -> Snapshot:
        from casstore.read.reader import Snapshot  # lazy: start-up time

        info = self.locate(ref, host=host, all_hosts=all_hosts)
        return Snapshot(self.reader_for(info), info)

    def restore(self, ref: str, target: str, *, host: str | None = None, all_hosts: bool = False,
                **options: Any) -> RestoreResult:
        from casstore.restore.restorer import restore_snapshot  # lazy: start-up time

        with self.locked():
            return restore_snapshot(self.get(ref, host=host, all_hosts=all_hosts), target, **options)

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
        from casstore.sync.estimate import monthly_estimate

        with self.locked():
            data = repository_stats(self)
        if self.local_dir is not None:      # priced where its off-site copy goes (every provider: none yet)
            data["monthly_cost"] = monthly_estimate(self.local_dir, self.settings.remote, data["stored_bytes"])
        else:                               # a remote, listed just now; requests from this host's syncs to it
            local = self.settings.repository if is_local_repository(self.settings.repository) else None
            data["monthly_cost"] = monthly_estimate(local, self.location, data["stored_bytes"], measured=True)
        return data

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

    def close(self) -> None:
        view, self._remote_view = self._remote_view, _UNOPENED
        if isinstance(view, Repository):
            view.close()
        super().close()


def open_repository(settings: Settings, *, remote: str | Remote | None = None, create: bool = False,
                    like: RepoConfig | str | None = None, fallback_remote: bool = True) -> Repository:
    """The one open/create path (repo/open.py `open_as`, which explains the parameters), as the front."""
    return open_as(Repository, settings, remote=remote, create=create, like=like, fallback_remote=fallback_remote)


def init_repository(settings: Settings, config: RepoConfig | None = None, *, encrypt: bool = False) -> Repository:
    """A new local repository (RepositoryExists if there is one): `casstore init`, `casstore.init()`.
    With `encrypt` (and no `config`), an encrypted one under the settings' password, adopting the
    configured remote's repository when it holds one."""
    if config is None and encrypt:
        config = new_config(settings, encrypt=True)
        if settings.remote:
            config = adopt_or_share(settings, config)
    return Repository.init_local(settings.repository, settings, config)


__all__ = ["Repository", "SnapshotInfo", "init_repository", "open_repository"]
