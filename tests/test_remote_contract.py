"""The one remote contract, run on every backend (see tests/remote_backends.py)."""

from __future__ import annotations

import os

import pytest

from casstore.errors import ObjectExists, ObjectNotFound
from casstore.remotes.registry import normalized_remote_url


def test_a_remote_url_worked_out_without_opening_it_is_the_one_it_calls_itself(remote):
    # the sync state (what reached which remote) is keyed by remote.url; forget, status and the cost
    # estimate work the key out from the configured URL without opening the remote
    assert normalized_remote_url(remote.url) == remote.url
    assert normalized_remote_url(remote.url.rstrip("/") + "//") == remote.url


def test_put_get_roundtrip(remote):
    info = remote.put("data/ab/abcdef", b"hello world")
    assert info.key == "data/ab/abcdef" and info.size == 11
    assert remote.get("data/ab/abcdef") == b"hello world"


def test_put_takes_any_bytes_like_body(remote):
    # packs are written from a view of a reused buffer; a remote must store exactly its bytes
    buffer = bytearray(b"xx-pack body-yy")
    remote.put("data/cd/view", memoryview(buffer)[3:12])
    remote.put("data/cd/array", bytearray(b"from a bytearray"))
    buffer[3:12] = b"OVERWRITE"          # the buffer is reused once put returns
    assert remote.get("data/cd/view") == b"pack body"
    assert remote.get("data/cd/array") == b"from a bytearray"


def test_empty_object(remote):
    remote.put("snapshots/empty", b"")
    assert remote.get("snapshots/empty") == b""
    assert remote.stat("snapshots/empty").size == 0


def test_ranged_reads(remote):
    payload = bytes(range(256)) * 40
    remote.put("data/00/ranged", payload)
    assert remote.get("data/00/ranged", 10, 5) == payload[10:15]
    assert remote.get("data/00/ranged", 9000) == payload[9000:]
    assert remote.get("data/00/ranged", len(payload) - 4, 4) == payload[-4:]


def test_range_past_end_is_an_error_not_short_data(remote):
    remote.put("data/00/short", b"0123456789")
    with pytest.raises(ObjectNotFound):
        remote.get("data/00/short", 5, 10)


def test_missing_object_is_object_not_found(remote):
    with pytest.raises(ObjectNotFound):
        remote.get("index/missing")
    with pytest.raises(ObjectNotFound):
        remote.stat("index/missing")
    assert not remote.exists("index/missing")


def test_stat_reports_size_and_storage_time(remote):
    remote.put("config", b"x" * 123)
    info = remote.stat("config")
    assert info.size == 123
    assert info.mtime > 1_600_000_000


def test_list_by_prefix_each_key_once(remote):
    keys = {f"data/{i:02x}/{'p' * 8}{i}" for i in range(30)}
    for key in keys:
        remote.put(key, key.encode())
    remote.put("index/one", b"i")
    remote.put("snapshots/s1", b"s")
    listed = [info.key for info in remote.list("data/")]
    assert sorted(listed) == sorted(keys)
    assert {info.key for info in remote.list("index/")} == {"index/one"}
    sizes = {info.key: info.size for info in remote.list("data/")}
    assert all(sizes[key] == len(key) for key in keys)
    assert len({info.key for info in remote.list("")}) == 32


def test_list_of_empty_prefix_is_empty(remote):
    assert list(remote.list("snapshots/")) == []


def test_list_paginates_past_a_thousand(remote):
    # cloud listings page at 1000 keys; the contract is every key exactly once
    keys = [f"index/{i:05d}" for i in range(1005)]
    _put_many(remote, keys)
    listed = [info.key for info in remote.list("index/")]
    assert len(listed) == len(keys) and set(listed) == set(keys)


def _put_many(remote, keys):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: remote.put(k, b"."), keys))


def test_overwrite_replaces_whole_object(remote):
    remote.put("gc/lease", b"first version, long")
    remote.put("gc/lease", b"second")
    assert remote.get("gc/lease") == b"second"


def test_conditional_create(remote):
    remote.put("gc/lease", b"a", if_absent=True)
    with pytest.raises(ObjectExists):
        remote.put("gc/lease", b"b", if_absent=True)
    assert remote.get("gc/lease") == b"a"


def test_compare_and_swap(remote):
    first = remote.put("gc/lease", b"a")
    second = remote.put("gc/lease", b"b", if_match=first.etag)
    with pytest.raises(ObjectExists):
        remote.put("gc/lease", b"c", if_match=first.etag)
    assert remote.get("gc/lease") == b"b"
    remote.put("gc/lease", b"d", if_match=second.etag)
    assert remote.get("gc/lease") == b"d"


def test_delete_many_deletes_every_key_and_a_missing_key_is_no_error(remote):
    keys = [f"data/{i % 7:02x}/{'d' * 8}{i}" for i in range(300)]   # Azure batches 256, GCS 100
    for key in keys:
        remote.put(key, b"x")
    remote.put("index/stays", b"i")
    errors = remote.delete_many([*keys, "data/00/never-there", "index/also-missing"])
    assert errors == {}
    assert list(remote.list("data/")) == []
    assert [info.key for info in remote.list("")] == ["index/stays"]
    assert remote.delete_many([]) == {}
    assert remote.delete_many(keys[:3]) == {}, "deleting again is no error"


def test_delete_many_refuses_an_invalid_key_before_deleting_anything(remote):
    remote.put("index/one", b"i")
    with pytest.raises(ValueError):
        remote.delete_many(["index/one", "../escape"])
    assert remote.exists("index/one")


def test_delete_and_delete_missing(remote):
    remote.put("snapshots/gone", b"x")
    remote.delete("snapshots/gone")
    assert not remote.exists("snapshots/gone")
    remote.delete("snapshots/gone")  # deleting a missing key succeeds everywhere


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "UPPER", "x.tmp", "a/", " sp"])
def test_invalid_keys_refused_before_any_io(remote, bad):
    with pytest.raises(ValueError):
        remote.put(bad, b"x")
    with pytest.raises(ValueError):
        remote.get(bad)


def test_binary_payload_intact(remote):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    remote.put("data/ff/big", payload)
    assert remote.get("data/ff/big") == payload
