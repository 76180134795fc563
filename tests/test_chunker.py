"""The chunker: compiled FastCDC in use, golden cut points, and the copy-free file cutter
cutting exactly where the reference streaming cutter does."""

from __future__ import annotations

import io
import os
import random

import pytest

from casstore.chunker import FastCDCChunker, FixedChunker, chunker_from_params

KiB, MiB = 1024, 1024 * 1024
SEED = 0x5EED5EED
GOLDEN_DATA = random.Random(20261125).randbytes(6 * MiB)

# Cut lengths of GOLDEN_DATA with SEED. A change here silently ends dedup with every existing
# repository: never update these numbers to make the test pass.
GOLDEN = {
    (16 * KiB, 64 * KiB, 512 * KiB): [
        142365, 45143, 74754, 86256, 90541, 42189, 217584, 17409, 81809, 190923, 88480, 74743, 191355, 79017,
        51459, 79303, 90672, 65936, 62973, 87775, 29490, 56774, 55758, 59630, 52992, 139629, 87653, 120220,
        95706, 22568, 96089, 19469, 69556, 115968, 114269, 50036, 74730, 96841, 66836, 36110, 98935, 66891,
        67371, 69127, 20085, 84620, 92441, 151537, 147424, 34290, 24458, 135418, 96491, 140075, 126456,
        212680, 122104, 43328, 21028, 27424, 37113, 137909, 71817, 87736, 64285, 135866, 66946, 25799, 93077,
        178517, 54772, 130855, 58081, 45490],
    (256 * KiB, 1 * MiB, 8 * MiB): [1089908, 1606756, 1422777, 983752, 1188263],
}


def test_the_compiled_fastcdc_is_in_use():
    import pyfastcdc
    from pyfastcdc.cy import FastCDC as Compiled

    from casstore.chunker import fastcdc

    assert pyfastcdc.__version__ == "0.3.1"  # cut points are pinned to this version
    assert fastcdc.compiled() is Compiled
    assert Compiled.__module__.startswith("pyfastcdc.cy")


@pytest.mark.parametrize("sizes", sorted(GOLDEN))
def test_golden_cut_points(sizes):
    chunker = FastCDCChunker(*sizes, seed=SEED)
    assert [len(p) for p in chunker.chunks(io.BytesIO(GOLDEN_DATA))] == GOLDEN[sizes]


def _fd_cuts(chunker, data: bytes, tmp_path) -> list[bytes]:
    path = tmp_path / "input"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = list(chunker.chunks_of_fd(fd))  # every view must still be valid at the end
        return [bytes(p) for p in pieces]
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [(16 * KiB, 64 * KiB, 512 * KiB), (64 * KiB, 256 * KiB, 2 * MiB),
                                   (256 * KiB, 1 * MiB, 8 * MiB), (4 * KiB, 16 * KiB, 64 * KiB)])
@pytest.mark.parametrize("length", [0, 1, 5000, 600 * KiB, 3 * MiB + 7, 21 * MiB + 3])
def test_file_cutter_matches_the_streaming_cutter(tmp_path, sizes, length):
    rng = random.Random(length)
    # random data mixed with long runs of zeros, so forced cuts at max_size happen too
    data = b"".join(rng.randbytes(rng.randrange(1, 200 * KiB)) + bytes(rng.randrange(0, 600 * KiB))
                    for _ in range(1 + length // (300 * KiB)))[:length]
    chunker = FastCDCChunker(*sizes, seed=SEED)
    expected = [bytes(p) for p in chunker.chunks(io.BytesIO(data))]
    assert _fd_cuts(chunker, data, tmp_path) == expected


def test_golden_data_cut_from_a_file(tmp_path):
    sizes = (256 * KiB, 1 * MiB, 8 * MiB)
    pieces = _fd_cuts(FastCDCChunker(*sizes, seed=SEED), GOLDEN_DATA, tmp_path)
    assert [len(p) for p in pieces] == GOLDEN[sizes]


def test_file_cutter_never_reuses_a_block_a_chunk_still_views(tmp_path):
    # every view is held until the end: a block recycled while viewed would change them
    sizes = (16 * KiB, 64 * KiB, 512 * KiB)
    data = random.Random(7).randbytes(9 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    chunker = FastCDCChunker(*sizes, seed=SEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        held = list(chunker.chunks_of_fd(fd))
    finally:
        os.close(fd)
    assert b"".join(held) == data
    assert len(chunker._blocks._blocks) == chunker._blocks.keep   # the pool filled, then fresh blocks


def test_file_cutter_reuses_blocks_once_their_chunks_are_gone(tmp_path, monkeypatch):
    from casstore.fsio import buffers

    made = []
    real = bytearray

    def counting(*args):
        made.append(1)
        return real(*args)

    sizes = (16 * KiB, 64 * KiB, 512 * KiB)
    data = random.Random(8).randbytes(9 * MiB)
    chunker = FastCDCChunker(*sizes, seed=SEED)
    monkeypatch.setattr(buffers, "bytearray", counting, raising=False)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = [bytes(view) for view in chunker.chunks_of_fd(fd)]   # each view dropped at once
    finally:
        os.close(fd)
    assert pieces == [bytes(p) for p in chunker.chunks(io.BytesIO(data))]
    block_count = -(-len(data) // chunker._blocks.size)
    assert block_count > 5 and len(made) <= 2


def test_params_roundtrip_and_seed_changes_cuts():
    chunker = FastCDCChunker(16 * KiB, 64 * KiB, 512 * KiB, seed=SEED)
    assert chunker_from_params(chunker.params()).params() == chunker.params()
    other = FastCDCChunker(16 * KiB, 64 * KiB, 512 * KiB, seed=SEED + 2)
    cuts = [len(p) for p in chunker.chunks(io.BytesIO(GOLDEN_DATA))]
    assert [len(p) for p in other.chunks(io.BytesIO(GOLDEN_DATA))] != cuts


# (128, 512, 1 KiB): max = 2 x avg, so the file cutter's blocks (max + 2 x avg) end exactly on a
# forced cut, and the next block starts with no carried-over tail
@pytest.mark.parametrize("min_size, avg_size, max_size", [(64, 256, 1 * KiB), (64, 256, 2 * KiB), (64, 256, 3 * KiB),
                                                          (128, 512, 1 * KiB)])
def test_a_stretch_with_no_cut_point_is_cut_at_exactly_the_configured_max_size(tmp_path, min_size, avg_size,
                                                                                max_size):
    data = bytes(50 * KiB)        # one repeated byte: no content-defined cut inside max_size
    chunker = FastCDCChunker(min_size, avg_size, max_size, seed=SEED)
    for pieces in ([bytes(p) for p in chunker.chunks(io.BytesIO(data))], _fd_cuts(chunker, data, tmp_path)):
        assert b"".join(pieces) == data
        assert [len(p) for p in pieces[:-1]] == [max_size] * (len(pieces) - 1)


def test_the_recorded_params_are_the_fields_design_md_names():
    # the repository config records them (DESIGN.md, config): a renamed key is a format change
    assert FastCDCChunker(16 * KiB, 64 * KiB, 512 * KiB, seed=SEED).params() == {
        "algorithm": "fastcdc-2020", "min_size": 16 * KiB, "avg_size": 64 * KiB, "max_size": 512 * KiB,
        "normalization": 1, "seed": SEED}


def test_a_seed_outside_1_to_2_63_minus_1_is_refused_with_one_clear_error():
    for seed in (1, 2**63 - 1):
        assert FastCDCChunker(64, 256, 1 * KiB, seed=seed).params()["seed"] == seed
    for seed in (0, -1, 2**63):
        with pytest.raises(ValueError) as refused:
            FastCDCChunker(64, 256, 1 * KiB, seed=seed)
        assert str(refused.value) == "the chunker seed must be in 1 .. 2**63-1"


def test_the_chunker_is_rebuilt_from_its_recorded_params_and_an_unknown_one_is_refused():
    from casstore.errors import FormatError

    for chunker in (FastCDCChunker(16 * KiB, 64 * KiB, 512 * KiB, seed=SEED), FixedChunker(1000)):
        rebuilt = chunker_from_params(chunker.params())
        assert type(rebuilt) is type(chunker) and rebuilt.params() == chunker.params()
    for algorithm in ("rabin", None):
        with pytest.raises(FormatError, match=f"unknown chunker algorithm {algorithm!r}"):
            chunker_from_params({"algorithm": algorithm, "size": 1000})


def test_fixed_chunker(tmp_path):
    data = bytes(range(256)) * 100
    assert [bytes(p) for p in FixedChunker(1000).chunks(io.BytesIO(data))] == _fd_cuts(FixedChunker(1000), data,
                                                                                       tmp_path)


@pytest.mark.parametrize("grows", [False, True])
def test_files_share_a_block_while_their_chunks_are_held_and_cut_as_alone(tmp_path, monkeypatch, grows):
    """Files that fit in what the last file left of its block start there (issue 17: a block per
    1-3 MiB file kept four 10 MiB blocks busy). Every chunk view stays held, as chunks in flight
    are; each file still cuts exactly as the streaming cutter cuts it alone. `grows`: each file
    has grown past its fstat size by the time it is read (the block part was too small)."""
    from casstore.chunker import fastcdc
    from casstore.fsio import buffers

    made: list[int] = []
    real = bytearray
    monkeypatch.setattr(buffers, "bytearray", lambda n: made.append(n) or real(n), raising=False)
    if grows:
        monkeypatch.setattr(fastcdc, "_remaining", lambda fd, offset: 1)
    sizes = (16 * KiB, 64 * KiB, 512 * KiB)
    chunker = FastCDCChunker(*sizes, seed=SEED)
    rng = random.Random(9)
    files = [rng.randbytes(n) for n in (100 * KiB, 17 * KiB, 200 * KiB, 250 * KiB, 300 * KiB, 40 * KiB)]
    held, cut = [], []
    for i, data in enumerate(files):
        path = tmp_path / str(i)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            views = list(chunker.chunks_of_fd(fd))
        finally:
            os.close(fd)
        held += views
        cut.append([bytes(v) for v in views])
    assert cut == [[bytes(p) for p in chunker.chunks(io.BytesIO(data))] for data in files]
    assert [bytes(v) for v in held] == [c for file_cut in cut for c in file_cut]    # nothing overwritten
    assert len(made) == 2      # 907 KiB in blocks of 640 KiB (one block per file made 6)


@pytest.mark.parametrize("min_size", [4 * KiB, 40 * KiB])
def test_the_configured_minimum_chunk_size_is_the_one_cut_to(tmp_path, min_size):
    # the golden sizes above use a minimum of avg/4, which is also the library's default: a chunker
    # that dropped the configured minimum would pass them. Below the default, shorter chunks appear;
    # above it, none but the last is shorter than the minimum.
    chunker = FastCDCChunker(min_size, 64 * KiB, 512 * KiB, SEED)
    lengths = [len(c) for c in chunker.chunks(io.BytesIO(GOLDEN_DATA))]
    path = tmp_path / "data"
    path.write_bytes(GOLDEN_DATA)
    with open(path, "rb") as fh:
        assert [len(c) for c in chunker.chunks_of_fd(fh.fileno())] == lengths
    assert sum(lengths) == len(GOLDEN_DATA)
    assert min(lengths[:-1]) >= min_size
    if min_size < 16 * KiB:
        assert min(lengths[:-1]) < 16 * KiB


@pytest.mark.parametrize("read_ahead", [None, 100 * KiB, 1 * MiB])
def test_read_ahead_hints_the_bytes_beyond_each_read_once_and_never_changes_the_cuts(tmp_path, monkeypatch,
                                                                                      read_ahead):
    """With `read_ahead`, after each read the kernel is asked for the `read_ahead` bytes past the
    read position, each byte once (a hint starts where the last one ended, or at the read position
    when that is further); without it, nothing is hinted. The cutting starts at the file's offset."""
    sizes = (16 * KiB, 64 * KiB, 512 * KiB)           # blocks of 640 KiB: several for 3 MiB
    data = random.Random(11).randbytes(3 * MiB + 5)
    start = 1000
    path = tmp_path / "f"
    path.write_bytes(data)
    events: list[tuple] = []
    real_readv = os.readv

    def readv(fd, buffers):
        n = real_readv(fd, buffers)
        events.append(("read", os.lseek(fd, 0, os.SEEK_CUR)))
        return n

    monkeypatch.setattr(os, "readv", readv)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice:
                        events.append(("hint", fd, offset, offset + length, advice)))
    chunker = FastCDCChunker(*sizes, seed=SEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, start, os.SEEK_SET)
        pieces = [bytes(p) for p in (chunker.chunks_of_fd(fd) if read_ahead is None
                                     else chunker.chunks_of_fd(fd, read_ahead=read_ahead))]
    finally:
        os.close(fd)
    assert pieces == [bytes(p) for p in chunker.chunks(io.BytesIO(data[start:]))]
    hints = [e for e in events if e[0] == "hint"]
    if read_ahead is None:
        assert hints == []
        return
    # the bytes past the first block are asked for before the second block is read, not at the end
    assert events[0][0] == "read" and events[1][0] == "hint"
    read_to, hinted_to = start, start
    for event in events:
        if event[0] == "read":
            read_to = event[1]
            continue
        _, hint_fd, begin, end, advice = event
        assert (hint_fd, advice) == (fd, os.POSIX_FADV_WILLNEED)
        assert (begin, end) == (max(read_to, hinted_to), read_to + read_ahead)
        assert read_to < len(data)      # only after a read that did not reach the end
        hinted_to = end
    if read_ahead >= sizes[2] + 2 * sizes[1]:   # past a whole block: everything after the first read is hinted
        assert hinted_to >= len(data)
