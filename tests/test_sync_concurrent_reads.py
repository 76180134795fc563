"""Issue 20 item 4: the unchanged sync's reads are in flight together, so latency does not add up,
except the `index/` listing, which must start after the `gc/` listing was answered (issue 11 (d)).

Counted in requests in flight, not in seconds: every call through `Gate` waits until the gate
opens, and the gate opens when four calls wait at once. Made one after another, the reads never
get there (each waits out its short fallback alone), and the assertion on the maximum fails."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from casstore.remotes.base import ObjectInfo, Remote
from casstore.remotes.wrappers import RemoteWrapper
from tests.gc_helpers import FakeClock, Writer, new_memory_remote

T = TypeVar("T")
READS = 3   # get config, list gc/, snapshots/ (index/ waits for gc/: DESIGN.md "Sync")


class Gate(RemoteWrapper):
    """Holds every call until `width` calls are in flight at once (or a fallback wait runs out, so a
    sequential caller still finishes); records how many were in flight and in what order calls ran."""

    def __init__(self, inner: Remote, width: int, fallback: float = 2.0) -> None:
        super().__init__(inner)
        self.width, self.fallback = width, fallback
        self.cond = threading.Condition()
        self.in_flight = self.most = 0
        self.opened = False
        self.calls: list[tuple[str, int]] = []   # (call, in flight when it began)
        self.events: list[str] = []               # "begin CALL" and "end CALL", in order

    def _enter(self, call: str) -> None:
        with self.cond:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.calls.append((call, self.in_flight))
            self.events.append(f"begin {call}")
            if self.in_flight >= self.width:
                self.opened = True
                self.cond.notify_all()
            self.cond.wait_for(lambda: self.opened, timeout=self.fallback)

    def _leave(self, call: str) -> None:
        with self.cond:
            self.in_flight -= 1
            self.events.append(f"end {call}")

    def _through(self, call: str, run: Callable[[], T]) -> T:
        self._enter(call)
        try:
            return run()
        finally:
            self._leave(call)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        return self._through(f"get {key}", lambda: super(Gate, self)._get(key, offset, length, large=large))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        return iter(self._through(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        return self._through(f"put {key}", lambda: self.inner.put(key, data, if_absent=if_absent,
                                                                    if_match=if_match, cold=cold))

    def _stat(self, key: str) -> ObjectInfo:
        return self._through(f"stat {key}", lambda: self.inner.stat(key))


def test_unchanged_sync_sends_its_reads_at_once_then_index_after_gc_then_the_snapshot_put_alone(tmp_path) -> None:
    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    writer.sync(remote)
    clock.advance(86400)
    writer.snapshot()   # the same folder the next day: a new manifest, no new blob
    gate = Gate(remote, width=READS)
    report = writer.sync(gate)
    assert len(report.snapshots) == 1 and report.packs_uploaded == 0
    print(f"calls (in flight when each began): {gate.calls}")
    assert gate.most >= READS, f"at most {gate.most} requests in flight: the reads went one after another"
    reads, rest = gate.calls[:READS], gate.calls[READS:]
    assert sorted(c for c, _ in reads) == ["get config", "list gc/", "list snapshots/"]
    # a whole sweep between an index/ listing and the gc/ listing would go unseen: index/ is
    # listed only once the gc/ listing has been answered (issue 11 (d), DESIGN.md "Sync")
    assert rest[0][0] == "list index/"
    assert gate.events.index("end list gc/") < gate.events.index("begin list index/"), gate.events
    # the commit is order-sensitive (DESIGN.md "Sync"): it starts after every read ended, alone
    assert [c.split("/")[0] for c, _ in rest[1:]] == ["put snapshots"] and rest[1][1] == 1


def test_a_sync_with_nothing_new_reads_only_the_config(tmp_path) -> None:
    """Nothing to copy: no listing is sent ahead (they would be wasted requests)."""
    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    writer.snapshot()
    writer.sync(remote)
    gate = Gate(remote, width=1)
    writer.sync(gate)
    assert [c for c, _ in gate.calls] == ["get config"]


def test_a_fresh_machine_fetches_the_index_objects_together(tmp_path) -> None:
    """The gets a listing leads to are independent too: with an empty cache they overlap."""
    from tests.gc_helpers import remote_repo

    clock = FakeClock()
    remote = new_memory_remote(clock)
    writer = Writer(tmp_path / "a", "host-a", clock, big_mib=0)
    for seed in range(3):
        writer.edit(seed)
        writer.snapshot()
        writer.sync(remote)
    indexes = len(list(remote.list("index/")))
    assert indexes >= 3
    repo = remote_repo(remote, tmp_path, host="fresh")   # its own, empty cache
    repo.remote = gate = Gate(remote, width=3)
    repo.load_index()
    assert len(repo.index.index_packs) == indexes
    assert gate.most >= 3, f"at most {gate.most} index gets in flight: fetched one after another"
