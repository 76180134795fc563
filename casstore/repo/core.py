"""The repository core: a remote holding the casstore format, with its config, index and snapshots.

RepoCore is what every operation (snapshot/, read/, restore/, sync/, gc/, repo.check, repo.stats)
receives; it imports none of them. The public front with `snapshot()`, `get()`, `restore()`...
is casstore.client.Repository, a RepoCore subclass, so the core's constructors build either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol, Self

from casstore.errors import (
    CasstoreError,
    DowngradeError,
    FormatError,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
)
from casstore.format import layout
from casstore.format.config import RepoConfig, encryption_domain
from casstore.format.index import IndexObject, MasterIndex, decode_index
from casstore.format.plan import condemned_packs, list_plan_keys, load_plans
from casstore.format.snapshot import SnapshotManifest, decode_snapshot, manifest_text
from casstore.remotes.base import Remote
from casstore.remotes.fanout import each_concurrently
from casstore.remotes.local import LocalRemote
from casstore.repo import keys
from casstore.repo.blobstore import BlobStore
from casstore.repo.indexcache import IndexTableCache
from casstore.repo.lock import repository_lock
from casstore.repo.objectcache import BlobCache, LocalCache, ReadPolicy, read_verified, verified_object
from casstore.settings import Settings, load_settings

log = logging.getLogger(__name__)
INDEX_BATCH = 64      # index objects decoded at once by load_index (their entries are Python objects)


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot as listings show it: its id and its manifest."""

    id: str
    manifest: SnapshotManifest
    where: str = "local"      # local | remote | both: which repository holds it (listings that merge)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def as_dict(self) -> dict:
        m = self.manifest
        return {"id": self.id, "short_id": self.short_id, "time": m.time.isoformat(), "host": m.host,
                "source": m.source, "tags": list(m.tags), "parent": m.parent, "incomplete": m.incomplete,
                "summary": dict(m.summary), "where": self.where}


class BlobReader(Protocol):
    """The one role a lazy reader of file contents needs (read/, restore/)."""

    def read_blob(self, kind: int, blob_id: bytes) -> bytes: ...


class RepoCore:
    """One open repository. Open with `open_local(path)` or `open_remote(remote)` (or repo/open.py)."""

    def __init__(self, remote: Remote, config: RepoConfig, settings: Settings, *,
                 local_dir: str | None = None) -> None:
        self.remote, self.config, self.settings = remote, config, settings
        self.local_dir = local_dir          # set for the local repository (locks, records)
        # a remote repository keeps local copies of its immutable objects; the local one needs none
        self.cache = None if local_dir else LocalCache(os.path.join(settings.cache_dir, config.id),
                                                       settings.cache_max_bytes)
        # a download that fails verification is fetched again (DESIGN.md "Verified reads")
        self.read_policy = ReadPolicy(attempts=settings.read_attempts)
        self.index = MasterIndex()
        self.table_cache = IndexTableCache(settings.cache_dir, config.id, self.location)
        self._table_restored = False      # the index came from the local table cache (see reload_index)
        # one load at a time: threads that miss a blob at once (a damaged pack under a parallel
        # restore) each reload; two loads into one index mixed their work (an index listed, its
        # packs not yet in the table) and readers saw it half built
        self._index_lock = threading.RLock()
        self._manifests: dict[str, SnapshotManifest] = {}
        self._reader: BlobStore | None = None
        self._reader_lock = threading.Lock()

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def init_local(cls, path: str, settings: Settings | None = None, config: RepoConfig | None = None) -> Self:
        settings = settings or load_settings()
        remote = LocalRemote(path)
        return cls._init(remote, settings, config, local_dir=remote.root)

    @classmethod
    def init_remote(cls, remote: Remote, settings: Settings, config: RepoConfig | None = None) -> Self:
        return cls._init(remote, settings, config, local_dir=None)

    @classmethod
    def _init(cls, remote: Remote, settings: Settings, config: RepoConfig | None, local_dir: str | None) -> Self:
        config = config or RepoConfig.new(compression_level=settings.compression_level or 3,
                                          grace_seconds=settings.grace_seconds)
        try:
            create_config(remote, config)
        except ObjectExists:
            raise RepositoryExists(f"a repository already exists at {remote.url}") from None
        return cls(remote, config, settings, local_dir=local_dir)

    @classmethod
    def open_local(cls, path: str, settings: Settings | None = None) -> Self:
        settings = settings or load_settings()
        if not layout.is_local_repository(path):
            raise RepositoryNotFound(f"no casstore repository at {path} (run `casstore init`)")
        remote = LocalRemote(path, create=False)
        return cls(remote, read_config(remote, settings), settings, local_dir=remote.root)

    @classmethod
    def open_remote(cls, remote: Remote, settings: Settings | None = None) -> Self:
        """The repository at `remote` as it is: its key slots are not listed for a downgrade check
        (repo/open.py `open_as` does that when no local repository is the marker)."""
        settings = settings or load_settings()
        return cls(remote, read_config(remote, settings, downgrade_check=False), settings)

    @property
    def location(self) -> str:
        return self.local_dir or self.remote.url

    def locked(self, exclusive: bool = False):
        """The local repository lock (design 5.8); a remote repository has none."""
        if self.local_dir is None:
            return nullcontext()
        return repository_lock(self.local_dir, exclusive=exclusive)

    # -- indexes -----------------------------------------------------------------------------

    def load_index(self) -> MasterIndex:
        """Load every index object listed now; entries of vanished index objects are dropped.

        The first load of a process starts from the local index table cache when it has a sound
        one (repo/indexcache.py), so only index objects listed since it was saved are fetched."""
        with self._index_lock:
            self._load_into(self.index)
            return self.index

    def _load_into(self, index: MasterIndex) -> None:
        listed = {layout.name_of(info.key) for info in self.remote.list(layout.INDEX_PREFIX)}
        if index.untouched():
            self._table_restored = self.table_cache.restore(index)
        loaded = set(index.index_packs)
        gone = loaded - listed        # consolidated by gc: forget it (packs another index lists stay)
        if gone:
            index.remove_objects(gone)
        todo, added = sorted(listed - loaded - index.retracted), 0
        for start in range(0, len(todo), INDEX_BATCH):   # decoded a batch at a time: entries are big
            for index_id, decoded in self._fetch_indexes(todo[start:start + INDEX_BATCH]).items():
                index.add_object(index_id, decoded)
                added += 1
        withdrawn = index.drop_retracted()     # by an index loaded now
        if gone or added or withdrawn or not os.path.exists(self.table_cache.path):
            self.table_cache.save(index)
        if self.cache:
            for stale in self.cache.names(layout.INDEX) - listed:
                self.cache.discard(layout.INDEX, stale)

    def reload_index(self) -> MasterIndex:
        """Load again after a blob was not found where the index said (or not at all).

        A table restored from the local cache is a cache, never an authority: the first miss
        rebuilds it from the index objects (unless a writer holds packs it has not indexed yet,
        which a rebuild would forget), so a stale or wrong table costs one rebuild, not a failure.
        The rebuild is made beside the table in use and swapped in whole: readers in other threads
        go on finding what the old table holds meanwhile."""
        with self._index_lock:
            if self._table_restored and self.index.from_objects_only:
                log.info("a blob is missing from the index table restored from the local cache: rebuilding it")
                self._table_restored = False
                self.table_cache.discard()
                rebuilt = MasterIndex()
                self._load_into(rebuilt)
                self.index.adopt(rebuilt)
                return self.index
            return self.load_index()

    def _fetch_indexes(self, index_ids: list[str]) -> dict:
        """Decode each index object; damaged ones are skipped with a warning (readers, design 5.6)."""
        decoded = each_concurrently(self._fetch_index, index_ids)   # a fresh cache: their latencies overlap
        return {index_id: index for index_id, index in zip(index_ids, decoded, strict=True) if index is not None}

    def _fetch_index(self, index_id: str) -> IndexObject | None:
        try:
            return decode_index(index_id, self._cached_get(layout.INDEX, index_id), self.config.max_blob_size,
                                self.config.sealer)
        except (FormatError, IntegrityError, ObjectNotFound) as exc:
            log.warning("skipping damaged index %s: %s", index_id[:16], exc)
            if self.cache:
                self.cache.discard(layout.INDEX, index_id)
            return None

    def load_plans(self) -> list[str]:
        """Read every gc plan; their condemned packs no longer count as holding blobs."""
        keys = list_plan_keys(self.remote)
        self.index.condemned = condemned_packs(load_plans(self.remote, keys, self.config.sealer))
        return keys

    def _cached_get(self, kind: str, name: str) -> bytes:
        """An immutable object verified against its name: from the local cache when this is a remote
        repository and the copy is sound, else downloaded (again on mismatch) and then cached."""
        return verified_object(self.remote, self.cache, kind, name, self.read_policy)

    def blob_store(self, *, upload_threads: int = 1) -> BlobStore:
        # each index object the store writes names this origin and its own kind (BlobStore.put_index)
        origin = {"host": self.settings.host or os.uname().nodename, "session": os.urandom(8).hex()}
        return BlobStore(self.remote, self.config, self.index, origin=origin,
                         compression_level=self.settings.compression_level, upload_threads=upload_threads,
                         reload_index=self.reload_index, blob_cache=BlobCache(self.cache) if self.cache else None,
                         read_policy=self.read_policy)

    def read_blob(self, kind: int, blob_id: bytes) -> bytes:
        """A blob's plaintext, verified; loads the index on first use.

        Each read holds the shared repository lock (design 5.8), so a local gc (exclusive) never
        deletes a pack under a Python-API or HTTP read; between reads it may, and a read that then
        misses re-lists the index once and finds the blob where gc repacked it."""
        with self.locked():
            return self.read_blob_ready().read(kind, blob_id)

    def read_blob_ready(self) -> BlobStore:
        """The reading blob store, with the index loaded (call before reading from several threads)."""
        with self._reader_lock:
            if self._reader is None:
                if not self.index.index_packs:
                    self.load_index()
                self._reader = self.blob_store()
            return self._reader

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        return [layout.name_of(info.key) for info in self.remote.list(layout.SNAPSHOTS_PREFIX)]

    def manifest(self, snapshot_id: str) -> SnapshotManifest:
        if snapshot_id not in self._manifests:
            try:
                body = self._cached_get(layout.SNAPSHOTS, snapshot_id)
            except ObjectNotFound:
                raise SnapshotNotFound(f"snapshot {snapshot_id[:8]} not found") from None
            try:
                self._manifests[snapshot_id] = decode_snapshot(snapshot_id, body, self.config.sealer)
            except (FormatError, IntegrityError):
                if self.cache:
                    self.cache.discard(layout.SNAPSHOTS, snapshot_id)
                raise
        return self._manifests[snapshot_id]

    def all_snapshots(self) -> list[SnapshotInfo]:
        """Every readable snapshot, newest first; damaged ones are skipped with a warning."""
        infos, where = [], "local" if self.local_dir else "remote"
        for snapshot_id in self.snapshot_ids():
            try:
                infos.append(SnapshotInfo(snapshot_id, self.manifest(snapshot_id), where))
            except (FormatError, IntegrityError, SnapshotNotFound) as exc:
                log.warning("skipping damaged snapshot %s: %s", snapshot_id[:8], exc)
        return sorted(infos, key=lambda s: (s.manifest.time_ns, s.id), reverse=True)

    def snapshots(self, limit: int | None = None, *, host: str | None = None, all_hosts: bool = False,
                  source: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one (host, source) group, newest first (all hosts with `all_hosts`); `source`
        is the path as given (a path that is not UTF-8 is compared as its manifest holds it)."""
        wanted_host = None if all_hosts else (host or self.settings.host)
        wanted_source = None if source is None else manifest_text(source)
        found = [s for s in self.all_snapshots()
                 if (wanted_host is None or s.manifest.host == wanted_host)
                 and (wanted_source is None or s.manifest.source == wanted_source)]
        return found[:limit] if limit else found

    def readable(self, limit: int | None = None, *, host: str | None = None,
                 all_hosts: bool = False) -> list[SnapshotInfo]:
        """Snapshots as reads see them (`for_reads`: this host's when it has any, else every host's)."""
        found = for_reads(self.all_snapshots(), self.settings.host, host=host, all_hosts=all_hosts)
        return found[:limit] if limit else found

    def resolve(self, ref: str, *, host: str | None = None, all_hosts: bool = False) -> SnapshotInfo:
        """`latest` (the newest complete snapshot that reads see), a full id or any unique prefix."""
        if ref == "latest":
            return latest_of(self.readable(host=host, all_hosts=all_hosts))
        ref = check_ref(ref)
        matches = [i for i in self.snapshot_ids() if i.startswith(ref)]
        if not matches:
            raise SnapshotNotFound(f"no snapshot with id {ref}")
        if len(matches) > 1:
            raise SnapshotNotFound(f"snapshot id {ref} is ambiguous ({len(matches)} match); give more digits")
        return SnapshotInfo(matches[0], self.manifest(matches[0]), "local" if self.local_dir else "remote")

    def has_snapshot(self, snapshot_id: str) -> bool:
        return self.remote.exists(layout.snapshot_key(snapshot_id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Forget a snapshot (retention): its manifest object goes; its data stays until gc."""
        try:
            self.remote.delete(layout.snapshot_key(snapshot_id))
        finally:
            self._manifests.pop(snapshot_id, None)
            if self.cache:
                self.cache.discard(layout.SNAPSHOTS, snapshot_id)

    def stored_bytes(self, prefixes: Iterable[str] = layout.STORED_PREFIXES) -> int:
        """The size of every object listed under `prefixes` (default: packs and metadata)."""
        return sum(info.size for prefix in prefixes for info in self.remote.list(prefix))

    def write_snapshot(self, manifest: SnapshotManifest):
        """Write a manifest (the commit point); return (id, the storage's ObjectInfo)."""
        snapshot_id, body = manifest.encode(self.config.sealer)
        decode_snapshot(snapshot_id, body, self.config.sealer)  # read back before it leaves the process (design 5.5)
        info = self.remote.put(layout.snapshot_key(snapshot_id), body)
        self._manifests[snapshot_id] = manifest
        return snapshot_id, info

    def close(self) -> None:
        self.remote.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def for_reads(snapshots: list[SnapshotInfo], own_host: str, *, host: str | None = None,
              all_hosts: bool = False) -> list[SnapshotInfo]:
    """The host rule of reads (list, show, cat, diff, restore, get, the API's GETs, the facade).

    `all_hosts`: every host's snapshots; `host`: that host's; otherwise this host's snapshots when
    it has any, else every host's, so a replacement machine with a new hostname sees the bucket's
    backups while hosts that share a bucket keep reading their own. Writes (parents, retention)
    never use this rule: they act on this host's snapshots only.
    """
    if all_hosts:
        return list(snapshots)
    if host:
        return [s for s in snapshots if s.manifest.host == host]
    own = [s for s in snapshots if s.manifest.host == own_host]
    return own or list(snapshots)


def latest_of(snapshots: list[SnapshotInfo]) -> SnapshotInfo:
    """The newest complete snapshot of a newest-first listing."""
    for info in snapshots:
        if not info.manifest.incomplete:
            return info
    raise SnapshotNotFound("no snapshot yet (take one with `casstore snapshot`)")


def check_ref(ref: str) -> str:
    """A snapshot id prefix, lowercased; SnapshotNotFound when it cannot be one."""
    ref = ref.lower()
    if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
        raise SnapshotNotFound(f"{ref!r} is not a snapshot id (give at least 4 hex digits, or 'latest')")
    return ref


def read_config(remote: Remote, settings: Settings | None = None, *, downgrade_check: bool = True) -> RepoConfig:
    """The repository's config; an encrypted one is unlocked first (repo/keys.py).

    A plain config where key slots exist is a downgrade (the config was replaced), refused: checked
    unless the caller holds a local repository whose own config decides (`downgrade_check=False`:
    sync and pull compare the two configs, and a plain decoder refuses every sealed object anyway).
    """
    def check(body: bytes) -> tuple[bytes, str | None]:
        domain = encryption_domain(body)
        if domain is None:
            RepoConfig.decode(body)
        return body, domain

    try:
        # the config has no id to check; one that does not decode is read again (DESIGN.md "Verified reads")
        body, domain = read_verified("repository config", lambda: remote.get(layout.CONFIG_KEY), check,
                                     ReadPolicy())
    except ObjectNotFound:
        raise RepositoryNotFound(f"no casstore repository at {remote.url} (run `casstore init`)") from None
    if domain is None:
        if downgrade_check and keys.has_slots(remote):
            raise DowngradeError(f"{remote.url} holds key slots (keys/) but its config says it is not encrypted: "
                                 "the config may have been replaced (downgrade); refusing to open it")
        return RepoConfig.decode(body)
    return RepoConfig.decode(body, keys.unlock(remote, domain, settings or load_settings()))


def create_config(remote: Remote, config: RepoConfig) -> None:
    """Write a new repository's config (conditional create): an encrypted one's key slots first."""
    written = keys.write_slots(remote, config.keys) if config.keys is not None else []
    try:
        remote.put(layout.CONFIG_KEY, config.encode_verified(), if_absent=True)
    except ObjectExists:
        keys.undo_slots(remote, written)
        raise


__all__ = ["BlobReader", "CasstoreError", "RepoCore", "SnapshotInfo", "check_ref", "create_config", "for_reads",
           "latest_of", "read_config"]
