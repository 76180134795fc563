"""Crash safety (design 5.1): SIGKILL a `casstore snapshot` at many I/O points.

`CASSTORE_TEST_CRASH_AT_IO=N` makes the process SIGKILL itself at its Nth durability call (temp
write, fsync, rename, link, unlink, directory fsync; see casstore/fsio/durable.py). For every N
over the whole snapshot (and a few during the very first snapshot, which creates the
repository), starting each time from the same committed repository:

- the process really died at N (exit -9) and its fcntl lock went with it (design 5.8);
- `casstore check --read-data` passes;
- every earlier snapshot restores byte-identical, with metadata;
- the snapshot being written is either absent or complete (the manifest write is the commit);
- a new snapshot afterwards succeeds and restores exactly the current source.
"""

from __future__ import annotations

import fcntl
import os
import shutil

import pytest

from casstore.client import Repository
from casstore.fsio.durable import FileSystem
from casstore.settings import load_settings
from tests.helpers import (
    KiB,
    assert_same_tree,
    det_bytes,
    init_repo,
    invoke,
    objects,
    open_repo,
    run,
    tree_state,
    write,
)

MAX_KILLS_IN_SNAPSHOT = 24


class _Counter(FileSystem):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _tick(self) -> None:
        self.count += 1


def _restores_exactly(repo: Repository, snapshot_id: str, expected: dict, target) -> None:
    shutil.rmtree(target, ignore_errors=True)
    result = repo.restore(snapshot_id, str(target))
    assert result.ok, result.errors
    assert_same_tree(expected, tree_state(target), f"restore of {snapshot_id[:8]}")


def _lock_is_free(repo_dir) -> bool:
    fd = os.open(os.path.join(repo_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _kill_points(total: int) -> list[int]:
    if total <= MAX_KILLS_IN_SNAPSHOT:
        return list(range(1, total + 1))
    step = (total - 1) / (MAX_KILLS_IN_SNAPSHOT - 1)
    return sorted({round(1 + k * step) for k in range(MAX_KILLS_IN_SNAPSHOT)} | {total - 1, total})


# ~13 CPU s (user+sys, children included: 24 killed CLI snapshots, each checked, restored and
# snapshotted again), so its wall time is about 13 s x load/2 on 2 cores: 39 s at load 6.5, 100 s
# at load 17, past the default 120 s once. 300 s holds up to load ~45 and still ends a real hang.
@pytest.mark.timeout(300)
def test_sigkill_during_snapshot_at_every_io_point(tmp_path):
    source, repo_dir, cache = tmp_path / "data", tmp_path / ".casstore", tmp_path / "cache"
    for i in range(4):
        write(source / f"d{i % 2}" / f"f{i}.bin", det_bytes(250 * KiB, i))
    write(source / "doc.json", '{"a": 1}')
    repo = init_repo(repo_dir, pack_size=256 * KiB)
    first = repo.snapshot(str(source)).id
    states = {first: tree_state(source)}
    write(source / "d1" / "extra.bin", det_bytes(200 * KiB, "extra"))
    os.chmod(source / "d0" / "f0.bin", 0o600)
    second = repo.snapshot(str(source)).id
    states[second] = tree_state(source)
    # the change the killed snapshots are writing
    write(source / "d0" / "new.bin", det_bytes(800 * KiB, "v2"))
    write(source / "d2" / "more.json", '{"more": true}')
    (source / "d1" / "f1.bin").unlink()
    current = tree_state(source)

    # pack names are random, so whether a pack needs a new data/<xx>/ directory (one more fsync)
    # varies from run to run; with every such directory present the calls are the same each run
    # (crashes around directory creation are exercised by the first-snapshot test below)
    for prefix in range(256):
        (repo_dir / "data" / f"{prefix:02x}").mkdir(exist_ok=True)
    base_repo, base_cache = tmp_path / "base-repo", tmp_path / "base-cache"
    shutil.copytree(repo_dir, base_repo)
    shutil.copytree(cache, base_cache)
    counter = _Counter()
    open_repo(base_repo, fs=counter).snapshot(str(source))
    total = counter.count
    shutil.rmtree(base_repo)
    shutil.copytree(repo_dir, base_repo)
    assert total >= 20, f"only {total} I/O calls: the data is too small to exercise the write order"

    kills = 0
    for n in _kill_points(total):
        for path, base in ((repo_dir, base_repo), (cache, base_cache)):
            shutil.rmtree(path)
            shutil.copytree(base, path)
        try:
            proc = run("snapshot", source, env={"CASSTORE_TEST_CRASH_AT_IO": str(n)}, expect=None)
            assert proc.returncode == -9, f"not killed (exit {proc.returncode}): {proc.stderr[-500:]!r}"
            kills += 1
            assert _lock_is_free(repo_dir), "the dead process still holds the repository lock"
            invoke("check", "--read-data")
            repo = open_repo(repo_dir)
            ids = {s.id for s in repo.snapshots()}
            assert {first, second} <= ids and len(ids) in (2, 3)
            for snapshot_id, expected in states.items():
                _restores_exactly(repo, snapshot_id, expected, tmp_path / "restore")
            for committed in ids - {first, second}:  # the killed one committed: it must be whole
                _restores_exactly(repo, committed, current, tmp_path / "restore")
            again = repo.snapshot(str(source))
            assert not again.incomplete
            _restores_exactly(open_repo(repo_dir), again.id, current, tmp_path / "restore")
        except AssertionError as exc:
            raise AssertionError(f"SIGKILL at I/O call {n} of {total}: {exc}") from exc
    print(f"{kills} kills over {total} I/O calls")
    assert kills == len(_kill_points(total))


def test_sigkill_during_the_first_snapshot_that_creates_the_repository(tmp_path):
    source = tmp_path / "data"
    for i in range(3):
        write(source / f"f{i}.bin", det_bytes(200 * KiB, i))
    expected = tree_state(source)
    for n in (1, 3, 5, 8, 12):
        try:
            shutil.rmtree(tmp_path / ".casstore", ignore_errors=True)
            proc = run("snapshot", env={"CASSTORE_TEST_CRASH_AT_IO": str(n)}, expect=None)
            assert proc.returncode == -9, f"not killed (exit {proc.returncode})"
            if (tmp_path / ".casstore" / "config").exists():
                invoke("check", "--read-data")
            else:
                assert objects(tmp_path / ".casstore", "snapshots") == []
            run("snapshot")
            invoke("check", "--read-data")
            repo = Repository.open_local(str(tmp_path / ".casstore"), load_settings())
            _restores_exactly(repo, "latest", expected, tmp_path / "restore")
        except AssertionError as exc:
            raise AssertionError(f"SIGKILL at I/O call {n} of the first snapshot: {exc}") from exc
