"""design.md section 5, invariant by invariant: which tests fail when it is broken.

| # | invariant (design 5)                            | tests that catch a violation                               |
|---|-------------------------------------------------|------------------------------------------------------------|
| 1 | packs, then the index that lists them, then the | test_durability: packs_then_index_then_snapshot_each_...   |
|   | snapshot (the commit); a crash at any moment    | test_crash: sigkill_during_snapshot_at_every_io_point,     |
|   | leaves every snapshot intact and restorable     |   sigkill_during_the_first_snapshot_that_creates_the_...   |
|   |                                                 | here: failed_pack_or_index_upload_commits_no_snapshot      |
| 2 | a snapshot references only blobs durably stored | here: every_referenced_blob_is_indexed_in_an_existing_pack,|
|   | and indexed in the same repository              |   files_cache_of_another_repository_is_not_trusted,        |
|   |                                                 |   failed_pack_or_index_upload_commits_no_snapshot          |
|   |                                                 | test_crash (check --read-data after every kill)            |
|   |                                                 | test_durability: new_directories_are_made_durable_...      |
| 3 | temp file beside the target -> write -> fsync   | test_durability: every_publication_is_temp_write_fsync_...,|
|   | -> rename -> fsync the directory; never rename  |   new_directories_are_made_durable_before_the_commit,      |
|   | before the file's fsync                         |   nothing_is_written_outside_the_shim,                     |
|   |                                                 |   files_cache_is_replaced_only_after_the_commit            |
| 4 | nothing overwritten in place; an upload is      | here: existing_objects_are_never_rewritten,                |
|   | skipped only when an index lists the blob in a  |   blobs_only_in_condemned_packs_are_uploaded_again         |
|   | pack no gc plan condemns                        |                                                            |
| 5 | every blob read is verified; every object       | test_check: reads_of_damaged_data_fail_cleanly_..., and    |
|   | written is read back from memory before it      |   flipped_bits_in_a_data_pack; test_hostile_input (all)    |
|   | leaves the process                              | here: a_bad_encoder_cannot_store_bad_data,                 |
|   |                                                 |   damaged_snapshot_and_index_objects_are_never_believed,   |
|   |                                                 |   a_bad_batch_encoder_cannot_store_bad_small_files,        |
|   |                                                 |   a_bad_index_encoder_cannot_store_a_bad_index,            |
|   |                                                 |   a_bad_pack_header_cannot_be_stored                       |
| 6 | a failed or partial listing is an error, never  | here: listing_that_fails_midway_is_an_error_for_readers,   |
|   | "empty"; readers skip a damaged snapshot or     |   listing_that_fails_midway_fails_check_and_the_cli,       |
|   | index with a warning; check treats damage as    |   pack_missing_from_a_short_listing_fails_check,           |
|   | fatal                                           |   damaged_snapshot_and_index_objects_are_never_believed    |
| 7 | restore never writes outside its target: `/`,   | test_restore_safety (all): hostile names, symlinked        |
|   | `..`, NUL, absolute names, symlinked parents,   |   parents, symlinks at the destination, `--path ../..`,    |
|   | existing symlinks at the destination            |   an `outside` directory compared before and after         |
| 8 | every operation holds a shared fcntl lock on    | here: operations_hold_a_shared_lock (snapshot, restore,    |
|   | <repository>/lock, local gc an exclusive one;   |   check, stats), an_exclusive_holder_makes_a_snapshot_wait,|
|   | the kernel drops it when the process dies       |   lock_without_waiting_reports_the_holder                  |
|   |                                                 | test_crash (the lock is free after every SIGKILL)          |

("here" is this module; test names are given without their `test_` prefix.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

import casstore.format.codec
import casstore.repo.core
from casstore.errors import CasstoreError, IntegrityError, LockError, RemoteError
from casstore.format import codec
from casstore.format.pack import KIND_DATA, KIND_TREE, PackBuilder
from casstore.format.walk import walk_tree
from casstore.remotes.local import LocalRemote
from casstore.remotes.wrappers import RemoteWrapper
from casstore.repo.lock import repository_lock
from tests.helpers import (
    CASSTORE,
    KiB,
    MiB,
    det_bytes,
    flip_bit,
    init_repo,
    invoke,
    objects,
    open_repo,
    run,
    tree_state,
    write,
)
from tests.servers import die_with_parent


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        write(root / f"d{i % 2}" / f"f{i}.bin", det_bytes(300 * KiB, i))
    write(root / "doc.json", '{"collective_iq": 1}')
    return root


# -- 1 and 2: what a snapshot may reference ----------------------------------------------------


class _FailingPut(RemoteWrapper):
    def __init__(self, inner, prefix: str, after: int = 0) -> None:
        super().__init__(inner)
        self.prefix, self.after = prefix, after

    def _put(self, key, data, *, if_absent, if_match):
        if key.startswith(self.prefix):
            if self.after == 0:
                raise RemoteError(f"injected: cannot store {key}")
            self.after -= 1
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)


@pytest.mark.parametrize("prefix,after", [("data/", 0), ("data/", 2), ("index/", 0)])
def test_failed_pack_or_index_upload_commits_no_snapshot(tmp_path, source, prefix, after):
    init_repo(tmp_path / "repo", pack_size=256 * KiB).snapshot(str(tmp_path / "data" / "d0"))
    before = objects(tmp_path / "repo", "snapshots")
    repo = open_repo(tmp_path / "repo", lambda r: _FailingPut(r, prefix, after))
    with pytest.raises(RemoteError):
        repo.snapshot(str(source))
    assert objects(tmp_path / "repo", "snapshots") == before
    invoke("--repo", tmp_path / "repo", "check", "--read-data")


def test_every_referenced_blob_is_indexed_in_an_existing_pack(tmp_path, source, monkeypatch):
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    repo = init_repo(tmp_path / "repo", pack_size=256 * KiB)
    repo.snapshot(str(source))
    write(source / "d0" / "f0.bin", det_bytes(300 * KiB, "changed"))
    repo.snapshot(str(source))
    repo.snapshot(str(source))  # files-cache hits only
    reader = open_repo(tmp_path / "repo")
    index = reader.load_index()
    packs = {p.name for p in objects(tmp_path / "repo", "data")}
    for info in reader.snapshots():
        snap = reader.get(info.id)
        seen = 0
        for _path, entry in walk_tree(snap.tree, info.manifest.tree):
            for chunk in entry.chunks:
                assert any(loc.pack_id in packs for loc in index.locations(KIND_DATA, chunk))
                seen += 1
            if entry.type.value == "dir":
                assert any(loc.pack_id in packs for loc in index.locations(KIND_TREE, entry.subtree))
        assert seen >= 8


def test_files_cache_of_another_repository_is_not_trusted(tmp_path, source, monkeypatch):
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    init_repo(tmp_path / "a").snapshot(str(source))
    second = init_repo(tmp_path / "b").snapshot(str(source))
    assert second.summary.bytes_read == second.summary.bytes_total > MiB
    repo = open_repo(tmp_path / "b")
    repo.restore(second.id, str(tmp_path / "out"))
    assert tree_state(tmp_path / "out") == tree_state(source)
    invoke("--repo", tmp_path / "b", "check", "--read-data")


# -- 4: nothing overwritten; uploads skipped only for blobs in packs no plan condemns ----------


def _object_identities(repo_dir: Path) -> dict[str, tuple]:
    found = {}
    for path in Path(repo_dir).rglob("*"):
        if path.is_file() and path.name != "lock":
            st = path.stat()
            found[str(path)] = (st.st_ino, st.st_mtime_ns, codec.blob_id(path.read_bytes()))
    return found


def test_existing_objects_are_never_rewritten(tmp_path, source):
    repo = init_repo(tmp_path / "repo", pack_size=256 * KiB)
    repo.snapshot(str(source))
    for step in range(2):
        before = _object_identities(tmp_path / "repo")
        write(source / f"new{step}.bin", det_bytes(200 * KiB, step))
        repo.snapshot(str(source))
        after = _object_identities(tmp_path / "repo")
        assert {k: after[k] for k in before} == before
        assert len(after) > len(before)


def test_blobs_only_in_condemned_packs_are_uploaded_again(tmp_path, source, monkeypatch):
    from casstore.format.layout import plan_key
    from casstore.format.plan import GcPlan

    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    repo = init_repo(tmp_path / "repo", pack_size=256 * KiB)
    repo.snapshot(str(source))
    old_packs = {p.name for p in objects(tmp_path / "repo", "data")}
    repo.remote.put(plan_key(), GcPlan(condemned_packs=sorted(old_packs), host="gc").encode())

    again = open_repo(tmp_path / "repo").snapshot(str(source))
    assert again.summary.bytes_read == again.summary.bytes_total   # the files cache is not trusted
    reader = open_repo(tmp_path / "repo")
    index = reader.load_index()
    snap = reader.get(again.id)
    for _path, entry in walk_tree(snap.tree, snap.manifest.tree):
        for chunk in entry.chunks:
            assert any(loc.pack_id not in old_packs for loc in index.locations(KIND_DATA, chunk))


# -- 5: verified reads, verified writes --------------------------------------------------------


def test_a_bad_encoder_cannot_store_bad_data(tmp_path, source, monkeypatch):
    real_encode = codec.encode_parts

    def lossy(data, level):
        tag, payload = real_encode(data, level)
        return tag, payload[:-1] + bytes([payload[-1] ^ 1])   # a "compression bug"

    repo = init_repo(tmp_path / "repo")
    monkeypatch.setattr(casstore.format.codec, "encode_parts", lossy)
    with pytest.raises(IntegrityError):
        repo.snapshot(str(source))
    assert objects(tmp_path / "repo", "snapshots") == [] and objects(tmp_path / "repo", "data") == []


@pytest.mark.parametrize("bug", ["one byte more", "one byte less", "raw and short", "garbage frame"])
def test_verification_on_write_refuses_an_encoding_of_other_bytes(monkeypatch, bug):
    import zstandard

    data = b"casstore " * 50_000
    real = codec.encode_parts

    def buggy(piece, level):
        if bug == "one byte more":
            return b"\x01", zstandard.ZstdCompressor(level=3).compress(bytes(piece) + b"!")
        if bug == "one byte less":
            return b"\x01", zstandard.ZstdCompressor(level=3, write_content_size=False).compress(bytes(piece)[:-1])
        if bug == "raw and short":
            return b"\x00", bytes(piece)[:-1]
        tag, payload = real(piece, level)
        return tag, payload[:40] + b"\xff" * 100

    monkeypatch.setattr(codec, "encode_parts", buggy)
    with pytest.raises(IntegrityError):
        codec.encode_verified(data, 3, codec.blob_id(data))


@pytest.mark.parametrize("bug", ["other bytes", "one byte more"])
def test_a_bad_batch_encoder_cannot_store_bad_small_files(tmp_path, monkeypatch, bug):
    """Small files are compressed and verified a batch at a time (`encode_verified_many`): a batch
    compressed wrong is refused like a single blob, and nothing is committed."""
    source = tmp_path / "data"
    for i in range(20):
        write(source / f"doc{i}.json", json.dumps({"n": i, "text": "casstore " * (50 + i)}))
    real = codec._compressor

    class Lossy:
        def __init__(self, level):
            self.real = real(level)

        def multi_compress_to_buffer(self, datas):
            wrong = [bytes(d)[:-1] + b"!" if bug == "other bytes" else bytes(d) + b"!" for d in datas]
            return self.real.multi_compress_to_buffer(wrong)

        def __getattr__(self, name):       # everything else (trees, large chunks) as it is
            return getattr(self.real, name)

    repo = init_repo(tmp_path / "repo")
    monkeypatch.setattr(codec, "_compressor", Lossy)
    with pytest.raises(IntegrityError):
        repo.snapshot(str(source))
    assert objects(tmp_path / "repo", "snapshots") == [] and objects(tmp_path / "repo", "data") == []


def test_a_batch_encodes_each_blob_as_one_at_a_time_would():
    """The batch path stores the same envelopes (so the same bytes) as `encode_verified` per blob,
    compressible or not, and each decodes to its plaintext."""
    blobs = [b'{"n": %d}' % i * (i + 1) for i in range(30)] + [det_bytes(3000, 1), b"x"]
    ids = [codec.blob_id(b) for b in blobs]
    many = codec.encode_verified_many(blobs, 3, ids)
    assert many == [codec.encode_verified(b, 3, i) for b, i in zip(blobs, ids, strict=True)]
    assert [codec.decode(b"".join(env), len(b)) for env, b in zip(many, blobs, strict=True)] == blobs
    assert {env[0] for env in many} == {b"\x00", b"\x01"}      # both raw and compressed were made


def test_a_bad_index_encoder_cannot_store_a_bad_index(tmp_path, source, monkeypatch):
    import blake3

    from casstore.repo import blobstore

    real = blobstore.encode_index    # the streaming encoder a writer's store uses

    def broken(*args, **kwargs):
        _, body = real(*args, **kwargs)
        body = body.replace(b"writer", b"wrong!")
        return blake3.blake3(body).hexdigest(), body

    repo = init_repo(tmp_path / "repo")
    monkeypatch.setattr(blobstore, "encode_index", broken)
    with pytest.raises(CasstoreError):
        repo.snapshot(str(source))
    assert objects(tmp_path / "repo", "snapshots") == []


def test_a_bad_pack_header_cannot_be_stored(tmp_path, source, monkeypatch):
    import blake3

    real = PackBuilder.finish

    def broken(self):
        _, data = real(self)
        data = bytes(data)
        data = data[:-6] + bytes([data[-6] ^ 0xFF]) + data[-5:]   # one header byte
        return blake3.blake3(data).hexdigest(), data

    repo = init_repo(tmp_path / "repo")
    monkeypatch.setattr(PackBuilder, "finish", broken)
    with pytest.raises(CasstoreError):
        repo.snapshot(str(source))
    assert objects(tmp_path / "repo", "snapshots") == []


def test_damaged_snapshot_and_index_objects_are_never_believed(tmp_path, source, caplog):
    repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source)).id
    write(source / "more.txt", "more\n")
    second = repo.snapshot(str(source)).id
    flip_bit(tmp_path / "repo" / "snapshots" / first, 10)
    with caplog.at_level(logging.WARNING):
        listed = [s.id for s in open_repo(tmp_path / "repo").snapshots()]
    assert listed == [second] and "skipping damaged snapshot" in caplog.text
    with pytest.raises(IntegrityError):
        open_repo(tmp_path / "repo").get(first[:8])
    result = invoke("--repo", tmp_path / "repo", "check", expect=1)
    assert f"snapshot {first[:8]}" in result.stdout

    for index in objects(tmp_path / "repo", "index"):
        flip_bit(index, 20)
    # the snapshot saved its index table (a cache of the objects as they were); without it the
    # reader must decode the damaged objects, which it must not believe
    open_repo(tmp_path / "repo").table_cache.discard()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reader = open_repo(tmp_path / "repo")
        with pytest.raises(IntegrityError, match="not in any index"):
            reader.get(second).read_bytes("doc.json")
    assert "skipping damaged index" in caplog.text


# -- 6: listings -------------------------------------------------------------------------------


class _CutListing(RemoteWrapper):
    """A listing of `prefix` that yields one object, then fails."""

    def __init__(self, inner, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = prefix

    def _list(self, prefix):
        items = super()._list(prefix)
        if not prefix.startswith(self.prefix):
            yield from items
            return
        yield next(iter(items))
        raise RemoteError(f"listing of {prefix} cut off")


@pytest.fixture
def two_snapshots(tmp_path, source):
    repo = init_repo(tmp_path / "repo", pack_size=256 * KiB)
    repo.snapshot(str(source))
    write(source / "more.txt", "more\n")
    repo.snapshot(str(source))
    return tmp_path / "repo"


@pytest.mark.parametrize("prefix", ["snapshots/", "index/", "data/"])
def test_listing_that_fails_midway_is_an_error_for_readers(two_snapshots, prefix):
    def reader():
        return open_repo(two_snapshots, lambda r: _CutListing(r, prefix))

    readers = {"snapshots/": [lambda: reader().snapshots(), lambda: reader().get("latest"),
                              lambda: reader().resolve("0000")],
               "index/": [lambda: reader().load_index(), lambda: reader().stats()],
               "data/": [lambda: reader().stats()]}[prefix]
    for read in readers + [lambda: reader().check(), lambda: reader().check(read_data=True)]:
        with pytest.raises(RemoteError, match="cut off"):
            read()


@pytest.mark.parametrize("prefix", ["snapshots/", "index/", "data/"])
def test_listing_that_fails_midway_fails_check_and_the_cli(two_snapshots, prefix, monkeypatch):
    class CutLocal(LocalRemote):
        def _list(self, p):
            items = super()._list(p)
            if not p.startswith(prefix):
                yield from items
                return
            yield next(iter(items))
            raise RemoteError(f"listing of {p} cut off")

    monkeypatch.setattr(casstore.repo.core, "LocalRemote", CutLocal)
    commands = {"snapshots/": (["check"], ["list"], ["show", "latest"], ["stats"]),
                "index/": (["check"], ["show", "latest"], ["stats"]),   # `list` needs no index
                "data/": (["check"], ["stats"])}[prefix]                  # only these list packs
    for command in commands:
        result = invoke("--repo", two_snapshots, *command, expect=None)
        assert result.exit_code != 0, f"{command} with a cut {prefix} listing exited 0:\n{result.stdout}"
        assert "cut off" in result.stderr and "no snapshots" not in result.stdout


class _ShortListing(RemoteWrapper):
    """A listing of data/ that silently leaves one pack out (a truncated page with no error)."""

    def _list(self, prefix):
        items = list(super()._list(prefix))
        yield from items[1:] if prefix == "data/" else items


def test_pack_missing_from_a_short_listing_fails_check(two_snapshots):
    report = open_repo(two_snapshots, _ShortListing).check()
    assert not report.ok
    assert any("missing" in reason for reason in report.damaged_packs.values())


# -- 8: locks ----------------------------------------------------------------------------------


def _lock_state(repo_dir) -> str:
    fd = os.open(os.path.join(repo_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "free"
        except BlockingIOError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return "shared"
        except BlockingIOError:
            return "exclusive"
    finally:
        os.close(fd)


class _LockProbe(RemoteWrapper):
    """Records the state of <repository>/lock at every remote call."""

    def __init__(self, inner, repo_dir) -> None:
        super().__init__(inner)
        self.repo_dir, self.seen = repo_dir, []

    def _probe(self):
        self.seen.append(_lock_state(self.repo_dir))

    def _put(self, key, data, *, if_absent, if_match):
        self._probe()
        return super()._put(key, data, if_absent=if_absent, if_match=if_match)

    def _get(self, key, offset, length, *, large):
        self._probe()
        return super()._get(key, offset, length, large=large)

    def _list(self, prefix):
        self._probe()
        return super()._list(prefix)


@pytest.mark.parametrize("operation", ["snapshot", "restore", "check", "stats"])
def test_operations_hold_a_shared_lock(two_snapshots, tmp_path, source, operation):
    probes = []
    repo = open_repo(two_snapshots, lambda r: probes.append(_LockProbe(r, two_snapshots)) or probes[-1])
    probe = probes[0]
    write(source / "third.txt", "third\n")
    if operation == "snapshot":
        repo.snapshot(str(source))
    elif operation == "restore":
        ref = repo.snapshots()[0].id
        probe.seen.clear()
        repo.restore(ref, str(tmp_path / "out"))
    elif operation == "check":
        repo.check(read_data=True)
    else:
        repo.stats()
    assert probe.seen and set(probe.seen) == {"shared"}, probe.seen
    assert _lock_state(two_snapshots) == "free"


def test_lock_without_waiting_reports_the_holder(two_snapshots):
    fd = os.open(two_snapshots / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockError), repository_lock(str(two_snapshots), wait=False):
            pass
    finally:
        os.close(fd)
    with repository_lock(str(two_snapshots), wait=False):
        assert _lock_state(two_snapshots) == "shared"


def test_an_exclusive_holder_makes_a_snapshot_wait(two_snapshots, source):
    """While (say) a local gc holds the lock exclusively, a snapshot blocks in flock; then proceeds."""
    lock = two_snapshots / "lock"
    inode = os.stat(lock).st_ino
    before = objects(two_snapshots, "snapshots")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen([CASSTORE, "--repo", str(two_snapshots), "snapshot", str(source)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 60
        while not any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines()):
            assert proc.poll() is None, f"snapshot did not wait for the lock: {proc.communicate()}"
            assert time.monotonic() < deadline, "snapshot never queued on the lock"
            time.sleep(0.02)
        assert objects(two_snapshots, "snapshots") == before
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(objects(two_snapshots, "snapshots")) == len(before) + 1
    assert run("--repo", two_snapshots, "check").returncode == 0
