"""The processes of the gc soak test (tests/test_gc_concurrency.py), run as `python -m tests.gc_soak_driver`.

    writer REPO SOURCE SEED LOG STOPFILE   snapshot changing data and sync it, in a loop
    gc URL SEED LOG STOPFILE               forget (keep the last 2 of each host) and gc, in a loop

Settings come from the environment (CASSTORE_REMOTE, CASSTORE_GRACE, CASSTORE_HOST, AWS_*).
Each event is one JSON line in LOG. A writer checks each snapshot it synced right away: every blob
it needs must be indexed in a pack the remote lists (no snapshot is committed with blobs missing).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import blake3

VERSIONS = 4


def digest(root: Path) -> dict[str, list]:
    """Relative path -> [blake3 of the content, mode, mtime_ns] of every file below `root`."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            st = path.stat()
            found[str(path.relative_to(root))] = [blake3.blake3(path.read_bytes()).hexdigest(), st.st_mode,
                                                  st.st_mtime_ns]
    return found


def content(name: str, version: int) -> bytes:
    """The same bytes for the same (file, version): old versions come back, so new snapshots need
    blobs that only packs of forgotten snapshots hold."""
    rng = random.Random(f"{name}/{version}")
    if name == "big.bin":
        return rng.randbytes(160 * 1024)
    return json.dumps([{"k": rng.random(), "v": rng.randrange(10**9)} for _ in range(rng.randrange(50, 400))]).encode()


def mutate(source: Path, rng: random.Random) -> None:
    names = [f"doc{i:02d}.json" for i in range(10)] + ["big.bin"]
    for name in rng.sample(names, 3):
        (source / name).write_bytes(content(name, rng.randrange(VERSIONS)))


def log_event(log: Path, **event) -> None:
    with open(log, "a") as fh:
        fh.write(json.dumps({"at": time.clock_gettime(time.CLOCK_BOOTTIME), **event}) + "\n")


def run_writer(repo_dir: str, source: str, seed: int, log: Path, stop: Path) -> None:
    from casstore.client import Repository
    from casstore.errors import CasstoreError

    rng = random.Random(seed)
    repo = Repository.open_local(repo_dir)
    while not stop.exists():
        mutate(Path(source), rng)
        snap = repo.snapshot(source)
        log_event(log, event="snapshot", id=snap.id, digest=digest(Path(source)))
        started = time.clock_gettime(time.CLOCK_BOOTTIME)
        try:
            report = repo.sync()
        except CasstoreError as exc:
            log_event(log, event="sync", ok=False, error=str(exc), started=started)
            continue
        log_event(log, event="sync", ok=True, started=started, snapshots=report.snapshots,
                  rechecks=report.rechecks, reuploaded=report.reuploaded_blobs, uploaded=report.packs_uploaded,
                  missing=verify_on_remote(repo, report.snapshots))
        time.sleep(rng.uniform(0.1, 0.6))


def verify_on_remote(repo, snapshot_ids: list[str], attempts: int = 3) -> list[str]:
    """The blobs of these snapshots the remote lacks (none when committed properly).

    The index is listed before the packs, so a sweep in between can delete a pack whose blobs have
    a new copy indexed after our index listing; such a blob looks missing once, never on a fresh
    listing. A blob that is really gone stays missing, so it is re-checked before it is reported.
    """
    for _ in range(attempts):
        missing = _missing_on_remote(repo, snapshot_ids)
        if not missing:
            return []
        time.sleep(0.5)
    return missing


def _missing_on_remote(repo, snapshot_ids: list[str]) -> list[str]:
    from casstore.client import open_repository
    from casstore.errors import SnapshotNotFound
    from casstore.format.pack import KIND_DATA, KIND_TREE
    from casstore.format.walk import walk_tree

    remote_repo = open_repository(repo.settings, remote=repo.settings.remote)
    index = remote_repo.load_index()
    packs = {info.key.rsplit("/", 1)[1] for info in remote_repo.remote.list("data/")}
    missing: list[str] = []

    def check(kind: int, blob_id: bytes, where: str) -> None:
        locations = [loc.pack_id[:12] for loc in index.locations(kind, blob_id)]
        if not any(loc.pack_id in packs for loc in index.locations(kind, blob_id)):
            missing.append(f"{where} {kind}:{blob_id.hex()[:12]} in {locations}")

    for snapshot_id in snapshot_ids:
        try:
            snapshot = remote_repo.get(snapshot_id)
        except SnapshotNotFound:
            continue   # forgotten already by the gc process
        check(KIND_TREE, snapshot.manifest.tree, f"{snapshot_id[:8]} /")
        for path, entry in walk_tree(snapshot.tree, snapshot.manifest.tree):
            for chunk in entry.chunks:
                check(KIND_DATA, chunk, f"{snapshot_id[:8]} {path}")
    remote_repo.close()
    return missing


def run_gc(url: str, seed: int, log: Path, stop: Path) -> None:
    from casstore.errors import CasstoreError
    from casstore.gc.retention import apply_retention
    from casstore.gc.run import collect_garbage
    from casstore.settings import load_settings
    from casstore.sync.transfer import open_destination

    rng = random.Random(seed)
    repo, _ = open_destination(url, None, load_settings())
    while not stop.exists():
        try:
            forgot = apply_retention(repo, {"keep_last": 2}, all_hosts=True).removed
            report = collect_garbage(repo)
            log_event(log, event="gc", ok=True, forgot=len(forgot), **report.as_dict())
        except CasstoreError as exc:
            log_event(log, event="gc", ok=False, error=f"{type(exc).__name__}: {exc}")
        time.sleep(rng.uniform(1.0, 3.0))


def _die_with_parent() -> None:
    """SIGKILL this process when the test that started it dies (even while it is SIGSTOPped,
    which no handler of its own could do): a killed soak run leaves no stopped orphans."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> None:
    _die_with_parent()
    if argv[0] == "writer":
        run_writer(argv[1], argv[2], int(argv[3]), Path(argv[4]), Path(argv[5]))
    else:
        run_gc(argv[1], int(argv[2]), Path(argv[3]), Path(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
