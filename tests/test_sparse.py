"""Sparse files (issue 13, case 6): holes found on read with SEEK_DATA/SEEK_HOLE, restored as holes.

The files are real sparse files on the test's file system (ext4 under tmp_path) and on tmpfs
(/dev/shm). A file system that does not report holes skips these tests and says so.
"""

from __future__ import annotations

import errno
import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casstore.chunker import FastCDCChunker, FixedChunker
from casstore.chunker.sparse import ZeroRun, sparse_chunks
from casstore.client import Repository
from casstore.format import codec
from casstore.format.config import RepoConfig
from casstore.settings import load_settings
from tests.helpers import KiB, MiB, det_bytes, init_repo, open_repo

PAGE = 4096


def _reports_holes(directory: Path) -> bool:
    """Whether the file system under `directory` reports a hole in a file that has one."""
    probe = directory / ".hole-probe"
    with open(probe, "wb") as fh:
        fh.truncate(4 * MiB)
        fh.seek(4 * MiB - 1)
        fh.write(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < 4 * MiB
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


def _need_holes(directory: Path) -> None:
    if not hasattr(os, "SEEK_HOLE") or not _reports_holes(directory):
        pytest.skip(f"the file system under {directory} reports no holes (SEEK_HOLE): nothing to test there")


def _write_layout(path: Path, layout: list[tuple[str, int]], seed: int) -> bytes:
    """Write data and holes (whole pages, so the file system keeps them holes); return the bytes."""
    rng = random.Random(seed)
    content = bytearray()
    with open(path, "wb") as fh:
        for kind, pages in layout:
            if kind == "hole":
                content += bytes(pages * PAGE)
                fh.seek(len(content))
            else:
                piece = rng.randbytes(pages * PAGE) if kind == "data" else bytes(pages * PAGE)  # "zeros": written
                content += piece
                fh.write(piece)
        fh.truncate(len(content))      # a file may end in a hole
    return bytes(content)


def _cut_sparse(chunker, path: Path) -> tuple[list[bytes], int]:
    """The chunks `sparse_chunks` gives (zero runs expanded), and how many zero runs it found."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces, runs = [], 0
        for piece in sparse_chunks(chunker, fd, os.fstat(fd).st_size):
            if isinstance(piece, ZeroRun):
                runs += 1
                pieces += [bytes(piece.length)] * piece.count
            else:
                pieces.append(bytes(piece))
        return pieces, runs
    finally:
        os.close(fd)


def _data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every data extent the file system reports (the rest of the file is holes)."""
    extents, pos = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, pos))
        return extents
    finally:
        os.close(fd)


def _same_content(a: Path, b: Path) -> bool:
    """Whether two (sparse) files hold the same bytes, reading only their data extents: outside
    every extent of both, both read as zeros."""
    if os.stat(a).st_size != os.stat(b).st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in _data_extents(a) + _data_extents(b):
            fa.seek(start)
            fb.seek(start)
            if fa.read(end - start) != fb.read(end - start):
                return False
    return True


layouts = st.lists(st.tuples(st.sampled_from(["data", "hole", "zeros"]), st.integers(1, 12)), min_size=1, max_size=8)
chunkers = st.one_of(
    st.builds(lambda seed: FastCDCChunker(64, 256, 2048, seed), st.integers(1, 2**63 - 1)),
    st.builds(lambda seed: FastCDCChunker(1024, 4096, 8192, seed), st.integers(1, 2**63 - 1)),
    st.builds(FixedChunker, st.sampled_from([1000, 4096, 3000])),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, chunker=chunkers, seed=st.integers(0, 1000))
def test_a_sparse_file_is_cut_into_the_chunks_of_its_bytes(tmp_path, layout, chunker, seed) -> None:
    """Holes read or skipped, the chunks are those of the file's bytes read densely: same ids, same dedup."""
    _need_holes(tmp_path)
    path = tmp_path / "sparse.bin"
    content = _write_layout(path, layout, seed)
    pieces, _ = _cut_sparse(chunker, path)
    assert pieces == [bytes(p) for p in chunker.chunks(io.BytesIO(content))]


@pytest.mark.parametrize("chunker", [FastCDCChunker(64, 256, 2048, 8854690838895162613), FixedChunker(3000)],
                         ids=["fastcdc", "fixed"])
def test_the_chunks_inside_a_large_hole_are_not_read(tmp_path, chunker) -> None:
    """A hole at the start, one in the middle and one at the end: each is skipped, and the bytes
    around them (a zero chunk's neighbours, the end of the file) still cut as a dense read does."""
    _need_holes(tmp_path)
    path = tmp_path / "sparse.bin"
    content = _write_layout(path, [("hole", 60), ("data", 3), ("hole", 61), ("zeros", 1), ("data", 2),
                                   ("hole", 59)], seed=7)
    pieces, runs = _cut_sparse(chunker, path)
    assert runs == 3
    assert pieces == [bytes(p) for p in chunker.chunks(io.BytesIO(content))]


def _tmpfs(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    return shm


def _rchar() -> int:
    """Bytes this process has read through read(2) and friends so far (holes included)."""
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


@pytest.mark.parametrize("where", ["ext4", "tmpfs"])
def test_a_1_gib_sparse_file_is_snapshotted_without_reading_or_hashing_its_holes(tmp_path, monkeypatch, where):
    """1 GiB holding 4 KiB of data, with the default chunk sizes: read and hashed are a few chunks
    (not 1 GiB), and it restores with the same bytes and only its data allocated."""
    base = _tmpfs(tmp_path) if where == "tmpfs" else tmp_path
    source = Path(os.path.realpath(base)) / f"sparse-{os.getpid()}-{where}"
    source.mkdir()
    try:
        _need_holes(source)
        size, offset = 1024 * MiB, 512 * MiB + 12 * KiB
        image = source / "disk.img"
        with open(image, "wb") as fh:
            fh.seek(offset)
            fh.write(det_bytes(4 * KiB, "data"))
            fh.truncate(size)
        repo = Repository.init_local(str(tmp_path / "repo"), load_settings(), RepoConfig.new())
        hashed: list[int] = []
        real_blob_id = codec.blob_id
        monkeypatch.setattr(codec, "blob_id", lambda data, *key: hashed.append(len(data)) or real_blob_id(data, *key))
        before = _rchar()
        result = repo.snapshot(str(source))
        read = _rchar() - before
        assert read < 64 * MiB, read                      # the holes were not read
        assert sum(hashed) < 64 * MiB, sum(hashed)        # nor hashed
        monkeypatch.setattr(codec, "blob_id", real_blob_id)
        entry = open_repo(tmp_path / "repo").get(result.id).entry("disk.img")
        assert entry.size == size and result.summary.blobs_added <= 4

        restored = tmp_path / "out"
        assert repo.restore(result.id, str(restored)).ok
        assert _same_content(restored / "disk.img", image)
        assert os.stat(restored / "disk.img").st_blocks * 512 < 1 * MiB   # only the data page(s) allocated
    finally:
        for path in sorted(source.rglob("*"), reverse=True):
            path.unlink()
        source.rmdir()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_sparse_file_and_its_dense_copy_store_the_same_chunks(tmp_path, monkeypatch, encrypted):
    """Same bytes, same chunk ids (keyed ids too), whether the file has holes or real zeros: the
    copy adds nothing."""
    _need_holes(tmp_path)
    source = tmp_path / "data"
    source.mkdir()
    layout = [("data", 5), ("hole", 700), ("data", 40), ("hole", 1100), ("data", 1), ("hole", 900)]
    content = _write_layout(source / "sparse.bin", layout, seed=3)
    if encrypted:
        from casstore.repo import keys
        from tests.test_encryption import PASSWORD, encrypted_repo

        monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
        monkeypatch.setenv("CASSTORE_PASSWORD", PASSWORD)
        keys.forget_unlocked()
        repo = encrypted_repo(tmp_path / "repo")
    else:
        repo = init_repo(tmp_path / "repo")
    first = repo.snapshot(str(source))
    (source / "dense.bin").write_bytes(content)
    assert _data_extents(source / "dense.bin") == [(0, len(content))]     # truly dense
    second = repo.snapshot(str(source))
    snap = repo.get(second.id)
    assert snap.entry("sparse.bin").chunks == snap.entry("dense.bin").chunks
    assert second.summary.blobs_added <= 1              # the new tree only: every chunk was stored
    assert first.summary.bytes_read == len(content)     # counted as the file's bytes, holes included
    assert snap.read_bytes("dense.bin") == content


def test_restore_keeps_the_zero_pages_inside_a_chunk_as_holes(tmp_path):
    """A chunk of data then zeros (the one running into a hole) restores with its zero pages unallocated."""
    _need_holes(tmp_path)
    source = tmp_path / "data"
    source.mkdir()
    content = det_bytes(5000, "head") + bytes(4 * MiB) + det_bytes(3000, "tail")
    (source / "mixed.bin").write_bytes(content)                 # dense on disk
    ending = det_bytes(5000, "end") + bytes(64 * KiB)           # one chunk that ends in zero pages
    (source / "ending.bin").write_bytes(ending)
    repo = Repository.init_local(str(tmp_path / "repo"), load_settings(), RepoConfig.new())   # 8 MiB chunks
    result = repo.snapshot(str(source))
    for verify in (True, False):     # without --verify a small file takes the batched path
        out = tmp_path / f"out-{verify}"
        assert repo.restore(result.id, str(out), verify=verify).ok
        assert (out / "mixed.bin").read_bytes() == content
        assert os.stat(out / "mixed.bin").st_blocks * 512 <= 64 * KiB
        assert (out / "ending.bin").read_bytes() == ending          # its length kept after the skipped pages
