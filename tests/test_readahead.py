"""Read-ahead hints: every file a snapshot will read is hinted before it is read, in order and
within the window's bounds; files the files cache vouches for are never hinted; a large file is
hinted ahead of each block the chunker reads; a hint that fails is harmless."""

from __future__ import annotations

import os

import pytest

from casstore.chunker import FastCDCChunker
from casstore.fsio import readahead
from tests.helpers import KiB, MiB, age_tree, det_bytes, init_repo, write


@pytest.fixture
def hints(monkeypatch) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(readahead, "hint_file", lambda path, length, dir_fd=None: seen.append((path, length)))
    return seen


def test_window_is_bounded_by_files_and_bytes(hints):
    files = [(f"f{i}", 10) for i in range(10)]
    ahead = readahead.ReadAhead(files, ahead_bytes=1000, ahead_files=3)
    ahead.reading(0)
    assert [p for p, _ in hints] == ["f1", "f2", "f3"]
    ahead.reading(1)
    assert [p for p, _ in hints][3:] == ["f4"]
    ahead.reading(6)     # files skipped (unreadable) leave the window too
    assert [p for p, _ in hints][4:] == ["f7", "f8", "f9"]

    hints.clear()
    big = [(f"b{i}", 10 * MiB) for i in range(10)]
    ahead = readahead.ReadAhead(big, ahead_bytes=9 * MiB, ahead_files=100)
    ahead.reading(0)
    assert hints == [("b1", readahead.FIRST_HINT), ("b2", readahead.FIRST_HINT), ("b3", readahead.FIRST_HINT)]


def test_snapshot_hints_each_file_it_will_read_and_none_it_will_not(tmp_path, hints, monkeypatch):
    """Files larger than one chunk are read on the walk thread and hinted ahead of it; files of
    one chunk go to the workers in batches (`smallfiles.py`), which read them at once: no hint."""
    source = tmp_path / "data"
    for i in range(12):
        write(source / "docs" / f"d{i:02}.json", det_bytes(40 * KiB, i))
    for i in range(5):
        write(source / "docs" / f"s{i}.json", det_bytes(1 * KiB, f"small{i}"))
    write(source / "top.bin", det_bytes(2 * MiB, "top"))
    age_tree(source)
    repo = init_repo(tmp_path / "repo")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if str(path).endswith(".json") and not flags & os.O_DIRECTORY:
            opened.append(str(path))     # the walk opens files by name, relative to their directory
        return fd

    monkeypatch.setattr(os, "open", recording_open)
    repo.snapshot(str(source))
    docs = sorted(p.name for p in (source / "docs").iterdir() if p.name.startswith("d"))
    small = sorted(p.name for p in (source / "docs").iterdir() if p.name.startswith("s"))
    hinted = [p for p, _ in hints]
    assert hinted == docs[1:]            # the first file of a directory is read at once
    read_order = [p for p in opened if p in docs]
    assert read_order == docs            # hints never change what is read, or in which order
    assert sorted(p for p in opened if p in small) == small     # small files read, in batches

    hints.clear()
    monkeypatch.setattr("casstore.snapshot.builder.RACY_WINDOW_NS", 0)
    write(source / "docs" / "d05.json", det_bytes(3 * KiB, "changed"), mtime_ns=1)
    repo.snapshot(str(source))
    assert hints == []                   # one changed file: the files cache vouches for the rest


def test_large_file_is_hinted_ahead_of_each_block(tmp_path, monkeypatch):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr("casstore.chunker.fastcdc.hint_range", lambda fd, off, n: calls.append((off, n)))
    chunker = FastCDCChunker(16 * KiB, 64 * KiB, 512 * KiB, seed=5)
    path = tmp_path / "big"
    path.write_bytes(det_bytes(5 * MiB, "big"))
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = [bytes(p) for p in chunker.chunks_of_fd(fd, read_ahead=2 * MiB)]
    finally:
        os.close(fd)
    assert b"".join(pieces) == path.read_bytes()
    assert calls, "no hint for a file of many blocks"
    end = calls[0][0]
    for offset, length in calls:      # contiguous, each reaching read_ahead past what was read
        assert offset == end and length > 0
        end = offset + length
    assert end >= 5 * MiB


def test_a_failing_hint_is_harmless(tmp_path, monkeypatch):
    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    readahead.hint_file(str(tmp_path / "missing"), 100)     # no such file: ignored
    (tmp_path / "f").write_bytes(b"x" * 100)
    readahead.hint_file(str(tmp_path / "f"), 100)           # fadvise refused: ignored
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        readahead.hint_range(fd, 0, 100)
    finally:
        os.close(fd)
