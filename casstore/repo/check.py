"""check: is every snapshot complete and every stored byte what it claims to be? (design 10)

Structure (default): config readable, every index readable, every indexed pack present in the
pack listing, every snapshot's trees readable and every chunk they name indexed.
`read_data` (or a `subset` fraction of packs) downloads packs and verifies every blob. The
report names damaged packs, and the snapshots and files that lose data because of them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace

from casstore.errors import CasstoreError, FormatError, IntegrityError
from casstore.format import codec, delta, layout
from casstore.format.index import decode_index
from casstore.format.layout import pack_key
from casstore.format.pack import KIND_DATA, KIND_TREE, parse_header, verify_pack_id
from casstore.format.snapshot import decode_snapshot
from casstore.format.tree import Entry, EntryType, safe_name
from casstore.format.walk import VisitBudget, load_tree_chain
from casstore.remotes.local import leftovers
from casstore.repo.checkedtrees import CheckedTrees
from casstore.repo.core import RepoCore
from casstore.repo.objectcache import CorruptObject, ReadPolicy, check_named, read_verified

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    snapshots: int = 0
    indexes: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_verified: int = 0
    orphan_packs: int = 0
    leftovers: list[tuple[str, int]] = field(default_factory=list)   # temp files of killed runs (local)
    errors: list[str] = field(default_factory=list)
    damaged_packs: dict[str, str] = field(default_factory=dict)
    affected: dict[str, list[str]] = field(default_factory=dict)   # snapshot id -> damaged paths

    @property
    def ok(self) -> bool:
        return not self.errors and not self.damaged_packs and not self.affected

    def as_dict(self) -> dict:
        return {"ok": self.ok, "snapshots": self.snapshots, "indexes": self.indexes, "packs": self.packs,
                "packs_read": self.packs_read, "blobs_verified": self.blobs_verified,
                "orphan_packs": self.orphan_packs, "leftover_temp_files": len(self.leftovers),
                "leftover_bytes": sum(size for _, size in self.leftovers), "errors": self.errors,
                "damaged_packs": self.damaged_packs, "affected": self.affected}


class Checker:
    def __init__(self, repo: RepoCore) -> None:
        self.repo = repo
        self.report = CheckReport()
        self.bad_blobs: set[tuple[int, bytes]] = set()
        self.pack_sizes: dict[str, int] = {}
        self._trees = CheckedTrees()

    def run(self, read_data: bool, subset: float | None) -> CheckReport:
        self._check_indexes()
        self._check_packs_listed()
        self.report.leftovers = leftovers(self.repo.remote)
        if read_data or subset:
            self._read_packs(subset)
        self._check_snapshots()
        return self.report

    def _check_indexes(self) -> None:
        index = self.repo.index
        index.clear()
        # each object goes into the table as it is decoded, never all of them held beside it (issue
        # 14: at 1M blobs that held check at 217 MiB); withdrawn ones (they name lost packs) are
        # taken out after, as `load_index` does
        for info in self.repo.remote.list(layout.INDEX_PREFIX):
            index_id = info.key.split("/", 1)[1]
            try:
                decoded = decode_index(index_id, self._read_named(layout.INDEX, index_id),
                                       self.repo.config.max_blob_size, self.repo.config.sealer)
                index.add_object(index_id, decoded)   # its body already released
                del decoded
                self.report.indexes += 1
            except CasstoreError as exc:
                self.report.errors.append(f"index {index_id[:16]}: {exc}")
        index.drop_retracted()

    def _check_packs_listed(self) -> None:
        self.pack_sizes = {layout.name_of(info.key): info.size for info in self.repo.remote.list(layout.DATA_PREFIX)}
        self.report.packs = len(self.pack_sizes)
        extents: dict[str, int] = {}
        for _key, locations in self.repo.index.blobs():
            for loc in locations:
                extents[loc.pack_id] = max(extents.get(loc.pack_id, 0), loc.offset + loc.length)
        for pack_id, extent in sorted(extents.items()):
            size = self.pack_sizes.get(pack_id)
            if size is None:
                self._damaged(pack_id, "missing (indexed but not in the pack listing)")
            elif size < extent:
                self._damaged(pack_id, f"truncated ({size} bytes, index needs {extent})")
        self.report.orphan_packs = len(set(self.pack_sizes) - set(extents))

    def _damaged(self, pack_id: str, reason: str) -> None:
        self.report.damaged_packs[pack_id] = reason
        for key, locations in self.repo.index.blobs():
            if any(loc.pack_id == pack_id for loc in locations) and \
                    all(loc.pack_id in self.report.damaged_packs for loc in locations):
                self.bad_blobs.add(key)

    def _read_packs(self, subset: float | None) -> None:
        packs = sorted(set(self.pack_sizes) & self.repo.index.all_pack_ids())
        if subset:
            packs = random.sample(packs, max(1, round(len(packs) * subset))) if packs else []
        for pack_id in packs:
            if pack_id in self.report.damaged_packs:
                continue
            try:
                self.report.blobs_verified += self._verify_pack(pack_id)
            except CorruptObject as exc:
                if exc.in_storage:      # damaged only when a second read agrees (DESIGN.md "Verified reads")
                    self._damaged(pack_id, str(exc))
                else:
                    self.report.errors.append(f"pack {pack_id[:16]} could not be read intact: {exc}")
            except CasstoreError as exc:
                self._damaged(pack_id, str(exc))
            self.report.packs_read += 1

    def _verify_pack(self, pack_id: str) -> int:
        """Download a pack and verify it and every blob in it (twice or more when it fails); the blob count."""
        def check(data: bytes) -> int:
            verify_pack_id(pack_id, data)
            entries = parse_header(data, self.repo.config.max_blob_size, self.repo.config.sealer)
            verified = 0
            for e in entries:
                base = None if e.base is None else self._base(pack_id, e)
                if e.base is None or base is not None:
                    codec.decode_verified(memoryview(data)[e.offset:e.offset + e.length], e.raw_length, e.id,
                                          self.repo.config.sealer, e.kind, base=base)
                    verified += 1
            return verified

        return read_verified(f"pack {pack_id[:16]}", lambda: self.repo.remote.get(pack_key(pack_id), large=True), check,
                             self._policy())

    def _base(self, pack_id: str, e) -> bytes | None:
        """A delta's base plaintext, or None (an error recorded, the delta counted lost) when its chain
        cannot be read: the delta's own pack is not damaged for that."""
        assert e.base is not None
        try:
            return self.repo.read_blob_ready().base_plaintext(e.base)
        except CasstoreError as exc:
            self.bad_blobs.add((e.kind, e.id))
            self.report.errors.append(f"blob {e.id.hex()[:16]} in pack {pack_id[:16]}: its delta base "
                                      f"{e.base.hex()[:16]} cannot be read ({exc})")
            return None

    def _policy(self) -> ReadPolicy:
        return replace(self.repo.read_policy, attempts=max(2, self.repo.read_policy.attempts))

    def _read_named(self, kind: str, name: str) -> bytes:
        """An index or manifest straight from the remote (check reads the storage, not the cache)."""
        return read_verified(f"{kind} {name[:16]}", lambda: self.repo.remote.get(layout.key(kind, name)),
                             lambda body: check_named(kind, name, body), self._policy())

    def _check_snapshots(self) -> None:
        for snapshot_id in self.repo.snapshot_ids():
            try:
                manifest = decode_snapshot(snapshot_id, self._read_named(layout.SNAPSHOTS, snapshot_id),
                                           self.repo.config.sealer)
            except CasstoreError as exc:
                self.report.errors.append(f"snapshot {snapshot_id[:8]}: {exc}")
                continue
            self.report.snapshots += 1
            self._check_tree(snapshot_id, manifest.tree, VisitBudget(manifest.summary))

    def _check_tree(self, snapshot_id: str, root: bytes, budget: VisitBudget) -> None:
        """Check every directory below `root` that no snapshot checked before, then report the
        problems this snapshot has (found now or earlier, under this snapshot's paths); then say
        whether a full walk (restore, to_dict) would visit far more entries than it records.

        Tree ids repeat across snapshots (an unchanged directory keeps its id), so each distinct
        tree is read and checked once per check, not once per snapshot (issue 14), and a DAG
        that names one subtree 2**60 times costs one read per distinct tree."""
        self._trees.check_below(root, self._check_entries)
        for path, why in self._trees.problems(root):
            self._affect(snapshot_id, path, why)
        if self._trees.walk_size(root) > budget.left:
            self._affect(snapshot_id, "/", f"a full walk visits {self._trees.walk_size(root)} entries, far more than "
                                           "the snapshot records (corrupt or hostile)")

    def _check_entries(self, tree_id: bytes) -> tuple[list[Entry], list[tuple[str, str]]]:
        """A directory's entries and the problems of its own entries, as (name, why)."""
        entries = self._load_tree(tree_id)
        problems = []
        for entry in entries:
            name = entry.name.decode("utf-8", "surrogateescape")
            if not safe_name(entry.name):
                problems.append((name, "unsafe name (restore refuses it)"))
            if entry.type is EntryType.FILE and (why := self._file_problem(entry)):
                problems.append((name, why))
        return entries, problems

    def _file_problem(self, entry: Entry) -> str | None:
        lost = [c for c in entry.chunks if self._lost(c)]
        if lost:
            return f"{len(lost)} of {len(entry.chunks)} chunks missing or damaged"
        stored = sum(self.repo.index.locations(KIND_DATA, c)[0].raw_length for c in entry.chunks)
        if stored != entry.size:
            return f"size recorded as {entry.size} but its chunks hold {stored} bytes"
        return None

    def _lost(self, chunk_id: bytes) -> bool:
        """No readable copy: not indexed, damaged, or every copy a delta whose chain is."""
        frontier: set[bytes] = {chunk_id}
        for _depth in range(delta.MAX_RESOLVE + 1):
            bases: set[bytes] = set()
            for blob in frontier:
                locations = [] if (KIND_DATA, blob) in self.bad_blobs else self.repo.index.locations(KIND_DATA, blob)
                if any(loc.base is None for loc in locations):
                    return False
                bases |= {loc.base for loc in locations if loc.base is not None}
            if not bases:
                return True
            frontier = bases
        return True

    def _load_tree(self, tree_id: bytes) -> list:
        return load_tree_chain(self._read_tree, tree_id)

    def _read_tree(self, tree_id: bytes) -> bytes:
        if (KIND_TREE, tree_id) in self.bad_blobs:
            raise IntegrityError("tree blob is in a damaged pack")
        return self.repo.read_blob(KIND_TREE, tree_id)

    def _affect(self, snapshot_id: str, path: str, why: str) -> None:
        self.report.affected.setdefault(snapshot_id, []).append(f"{path}: {why}")


def check_repository(repo: RepoCore, *, read_data: bool = False, subset: float | None = None) -> CheckReport:
    try:
        return Checker(repo).run(read_data, subset)
    except FormatError as exc:
        report = CheckReport()
        report.errors.append(str(exc))
        return report
