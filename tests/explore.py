"""Bad luck, enumerated: run writers and gc as cooperating steps and check the invariants after each
schedule (shared/testing.md, "Bad luck, enumerated").

Each actor is a thread running the real code (sync, gc, a snapshot). Every test pause point
(`casstore._testing.pause_point`) parks the thread that reaches it until the scheduler says go,
so exactly one actor runs at a time. Before each go the scheduler may move the storage clock
forward, by nothing or by up to more than two grace periods: every parked actor is "suspended"
meanwhile (each actor's boot clock is the storage clock plus its own origin, so it keeps counting
through the suspension, as CLOCK_BOOTTIME does). The choices come from a `Chooser`: a seeded
random one, or `Bounded`, which enumerates every schedule with at most P preemptions (iterative
context bounding; tests/test_gc_explore.py states the bound CI runs and what it leaves out).

A schedule's verdict is the invariants of design 5 and 9 checked afterwards: every snapshot on
the remote restores byte-identical to the folder it was taken of, `check --read-data` is clean,
and gc runs again without aborting (then the snapshots still restore).

**Cost.** That full check costs more than the schedule itself, so every schedule gets the cheap
one (every blob each snapshot reaches has a location, in an index listed now, in a pack listed
now: what every hole found so far broke), before and after gc runs again; the full restore and
`check --read-data` run on every FULL_EVERY-th seed (CASSTORE_EXPLORE_FULL_EVERY, default 8; 1 =
all), and on any schedule replayed by seed.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from casstore import _testing as testhooks
from casstore.client import Repository
from casstore.errors import CasstoreError, ConfigError
from casstore.format import layout
from casstore.format.blobset import BlobSet
from casstore.format.config import RepoConfig
from casstore.format.index import add_delta_bases
from casstore.format.pack import KIND_TREE
from casstore.format.walk import add_reachable
from casstore.gc.run import GcAborted, LeaseHeld, LeaseLost, collect_garbage
from casstore.remotes.base import ObjectInfo, Remote
from casstore.remotes.local import LocalRemote
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.wrappers import RemoteWrapper
from casstore.settings import Settings, load_settings
from casstore.sync import transfer
from casstore.sync.transfer import sync_to_remote
from tests.sync_helpers import tree_digest

GRACE = 3600.0
T0 = 1_800_000_000.0
#: how far the storage clock may jump before a step: mostly not at all, sometimes past two grace periods
ADVANCES = (0.0, 0.0, 0.0, GRACE / 4 + 1, GRACE / 2 + 1, GRACE + 1, 2 * GRACE + 1)
#: a writer that is merely slow: two minutes, far inside the repository's grace period
SLOW = (0.0, 0.0, 121.0)
#: a window of seconds, not a suspension: the storage clock moves by a minute at most
SHORT = (0.0, 0.0, 60.0)
#: the clock jumps a bounded enumeration tries: a suspension past two grace periods (one on the
#: window scenarios); the other thresholds (G/4, G/2, G) are all crossed by it
JUMPS = {ADVANCES: (2 * GRACE + 1,), SLOW: (121.0,), SHORT: (60.0,)}
STEP_TIMEOUT = 60.0
#: the full restore + check --read-data on every FULL_EVERY-th seed; the cheap invariant on all
FULL_EVERY = int(os.environ.get("CASSTORE_EXPLORE_FULL_EVERY", "8"))


class Hang(AssertionError):
    """An actor neither parked nor finished in time: a deadlock between actors."""


class StorageClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ClockedRemote(RemoteWrapper):
    """A file:// remote whose objects carry the storage clock's time as their mtime."""

    def __init__(self, inner: LocalRemote, clock: StorageClock) -> None:
        super().__init__(inner)
        self.local, self.clock = inner, clock

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        super()._put(key, data, if_absent=if_absent, if_match=if_match)
        stamp = self.clock()
        os.utime(self.local._path(key), (stamp, stamp))
        return self.local.stat(key)


class ListedOnUse(RemoteWrapper):
    """In place of `casstore.sync.ahead.ListingsAhead` while a schedule runs: each listing a sync
    sends ahead is answered when the sync uses it. Sent together, those listings may be answered in
    any order and arbitrarily late (a retried request, a stalled connection); this is the order in
    which the sync reads them, with a pause point between them, so a whole gc can run in between.
    (Threads the scheduler does not park would otherwise answer them all before the first pause.)"""

    def __init__(self, inner: Remote, prefixes: object = ()) -> None:
        super().__init__(inner)

    def settle(self) -> None:
        pass


# -- choosing --------------------------------------------------------------------------------

class Chooser:
    def choose(self, options: int) -> int:
        raise NotImplementedError

    def move(self, scheduler: Scheduler, live: list[Actor]) -> tuple[Actor, float]:
        """The next step: which live actor runs, after moving the storage clock by how much."""
        actor = live[self.choose(len(live))]
        return actor, scheduler.advances[self.choose(len(scheduler.advances))]


class RandomChooser(Chooser):
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choose(self, options: int) -> int:
        return self.rng.randrange(options)


class Bounded(Chooser):
    """Every schedule with at most `bound` preemptions, depth-first (iterative context bounding,
    Musuvathi and Qadeer, PLDI 2007: most concurrency bugs need very few preemptions).

    At each pause point the moves are: the actor that ran last goes on (free); or, one preemption
    each, it is suspended for a clock jump and goes on, or another live actor runs instead, after a
    jump or none. When the last actor finished (and at the start) any live actor may run: free, as
    nothing is preempted, but a clock jump there still costs one (it suspends every parked actor).
    The jumps are `JUMPS` of the scenario's advances.

    Each schedule replays the move prefix it was given and records how many moves each pause point
    offered; `advance()` then moves to the next unexplored sequence (False when all were run). The
    first move is always "go on", so a prefix extends with the fewest preemptions.
    """

    #: the step from an actor's start to its first pause point runs nothing that another actor's step
    #: could interleave with (a sync or snapshot starts with its pause point; gc reads the immutable
    #: `config` first), so the scheduler runs it on into the next step: that pause offers no choice
    merges_first_step = True

    def __init__(self, bound: int, first: int = 0, stride: int = 1) -> None:
        """`first`, `stride`: only the subtrees whose first move is first, first + stride, ... (one
        worker process's share)."""
        self.bound, self.stride = bound, stride
        self.prefix: list[int] = [first]
        self.taken: list[tuple[int, int]] = []   # (move, moves offered) of the current run
        self.used = 0

    def start(self) -> None:
        self.taken, self.used = [], 0

    def move(self, scheduler: Scheduler, live: list[Actor]) -> tuple[Actor, float]:
        moves = self.moves(scheduler, live)
        n = len(self.taken)
        pick = min(self.prefix[n] if n < len(self.prefix) else 0, len(moves) - 1)
        self.taken.append((pick, len(moves)))
        actor, jump, cost = moves[pick]
        self.used += cost
        return actor, jump

    def moves(self, scheduler: Scheduler, live: list[Actor]) -> list[tuple[Actor, float, int]]:
        jumps = scheduler.jumps
        last = scheduler.last
        free = last is None or last.done
        moves = [(actor, 0.0, 0) for actor in live] if free else [(last, 0.0, 0)]
        if self.used < self.bound:
            if free:
                moves += [(actor, jump, 1) for actor in live for jump in jumps]
            else:
                moves += [(last, jump, 1) for jump in jumps]
                moves += [(actor, jump, 1) for actor in live if actor is not last for jump in (0.0, *jumps)]
        return moves

    def advance(self) -> bool:
        path = list(self.taken)
        while path:
            pick, options = path.pop()
            step = self.stride if not path else 1
            if pick + step < options:
                self.prefix = [p for p, _ in path] + [pick + step]
                return True
        return False


# -- actors and the scheduler ----------------------------------------------------------------

@dataclass
class Actor:
    name: str
    body: Callable[[Callable[[], float]], object]   # gets its boot clock
    origin: float = 0.0                             # its boot clock reads storage time + origin
    at: str = "start"
    done: bool = False
    turn: bool = False
    error: BaseException | None = None
    result: object = None
    thread: threading.Thread | None = None


class Scheduler:
    def __init__(self, clock: StorageClock, chooser: Chooser, advances: tuple[float, ...] = ADVANCES) -> None:
        self.clock, self.chooser, self.advances = clock, chooser, advances
        self.jumps = JUMPS.get(advances, (max(advances),))   # a bounded enumeration's clock jumps
        self.actors: list[Actor] = []
        self.trace: list[str] = []
        self._cond = threading.Condition()
        self._by_thread: dict[int, Actor] = {}
        self.last: Actor | None = None   # the actor that ran the latest step

    def add(self, name: str, body: Callable[[Callable[[], float]], object]) -> Actor:
        actor = Actor(name, body, origin=1000.0 * (len(self.actors) + 1))
        self.actors.append(actor)
        return actor

    def boot_clock(self, actor: Actor) -> Callable[[], float]:
        return lambda: self.clock.now - T0 + actor.origin

    # -- the actor's side ----------------------------------------------------------------------

    def _park(self, name: str) -> None:
        actor = self._by_thread.get(threading.get_ident())
        if actor is None:
            return   # an upload thread, or code outside the exploration
        with self._cond:
            actor.at, actor.turn = name, False
            self._cond.notify_all()
            self._cond.wait_for(lambda: actor.turn)

    def _run_actor(self, actor: Actor) -> None:
        self._by_thread[threading.get_ident()] = actor
        with self._cond:
            self._cond.wait_for(lambda: actor.turn)
        try:
            actor.result = actor.body(self.boot_clock(actor))
        except BaseException as exc:   # reported with the schedule, judged by the caller
            actor.error = exc
        finally:
            with self._cond:
                actor.done, actor.turn = True, False
                self._cond.notify_all()

    # -- the scheduler's side ------------------------------------------------------------------

    def _go(self, actor: Actor) -> None:
        with self._cond:
            actor.turn = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: not actor.turn, timeout=STEP_TIMEOUT):
                raise Hang(f"{actor.name} did not reach a pause point after {actor.at}; trace {self.trace}")

    def run(self) -> list[str]:
        testhooks.set_pause_hook(self._park)
        listings_ahead, transfer.ListingsAhead = transfer.ListingsAhead, ListedOnUse   # type: ignore[misc]
        try:
            for actor in self.actors:
                actor.thread = threading.Thread(target=self._run_actor, args=(actor,), daemon=True,
                                                name=f"explore-{actor.name}")
                actor.thread.start()
            while True:
                live = [a for a in self.actors if not a.done]
                if not live:
                    break
                actor, jump = self.chooser.move(self, live)
                self.clock.now += jump
                self.trace.append(f"+{jump:.0f}s {actor.name}@{actor.at}" if jump else f"{actor.name}@{actor.at}")
                first = actor.at == "start"
                self._go(actor)
                if first and getattr(self.chooser, "merges_first_step", False) and not actor.done:
                    self.trace.append(f"{actor.name}@{actor.at}")
                    self._go(actor)
                self.last = actor
            for actor in self.actors:
                if actor.thread is not None:
                    actor.thread.join()
        finally:
            testhooks.set_pause_hook(None)
            transfer.ListingsAhead = listings_ahead   # type: ignore[misc]
        return self.trace


# -- the world one schedule runs in ----------------------------------------------------------

def tiny_config(grace: float = GRACE) -> RepoConfig:
    """Chunks of about 1 KiB, packs of 4 KiB: a few files make several packs."""
    return _config_with_grace(RepoConfig.new(avg_size=1024, pack_size=4096), grace)


def _config_with_grace(config: RepoConfig, grace: float) -> RepoConfig:
    from dataclasses import fields, replace

    if "grace_seconds" in {f.name for f in fields(RepoConfig)}:
        return replace(config, grace_seconds=int(grace))
    return config


def write_source(root: Path, seed: int, shared_seed: int = 0) -> Path:
    """A handful of small documents; those from `shared_seed` are the same on every host."""
    rng, shared = random.Random(seed), random.Random(shared_seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shared.json").write_bytes(shared.randbytes(3000))
    for i in range(2):
        (root / f"own-{i}.bin").write_bytes(rng.randbytes(2500))
    for path in root.iterdir():
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    return root


@dataclass
class Host:
    """A writer: its local repository and the folder digests of the snapshots it took."""

    name: str
    repo: Repository
    expected: dict[str, dict] = field(default_factory=dict)


def settings_for(root: Path, host: str, grace: float) -> Settings:
    return load_settings({"host": host, "repository": str(root / f"repo-{host}"), "grace_seconds": grace,
                          "cache_dir": str(root / f"cache-{host}"), "upload_concurrency": 1})


def make_host(root: Path, name: str, config: RepoConfig, seeds: list[int], grace: float = GRACE) -> Host:
    settings = settings_for(root, name, grace)
    repo = Repository.init_local(str(root / f"repo-{name}"), settings, config)
    host = Host(name, repo)
    for seed in seeds:
        source = write_source(root / f"src-{name}", seed)
        result = repo.snapshot(str(source))
        host.expected[result.id] = tree_digest(source)
    return host


def remote_repo(remote: Remote, root: Path, host: str, grace: float = GRACE) -> Repository:
    return Repository.open_remote(remote, settings_for(root, host, grace))


# -- scenarios -------------------------------------------------------------------------------

@dataclass
class World:
    root: Path
    clock: StorageClock
    remote: Remote
    expected: dict[str, dict] = field(default_factory=dict)   # snapshot id -> folder digest


def new_world(root: Path, kind: str) -> World:
    clock = StorageClock()
    if kind == "memory":
        remote: Remote = MemoryRemote(clock=clock, name="explore")
    else:
        remote = ClockedRemote(LocalRemote(str(root / "bucket")), clock)
    return World(root, clock, remote)


def sync_actor(world: World, host: Host) -> Callable[[Callable[[], float]], object]:
    def body(boot: Callable[[], float]) -> object:
        testhooks.pause_point("sync-start")
        return sync_to_remote(host.repo, world.remote, clock=boot)
    return body


def gc_actor(world: World, runs: int, grace: float, host: str = "gc-host",
             spacing: float | None = None) -> Callable[[Callable[[], float]], object]:
    """`runs` gc runs one after another; with `spacing`, each starts at least that long (storage
    time) after the previous one started, as a host's timer would run them."""
    def body(boot: Callable[[], float]) -> object:
        repo = remote_repo(world.remote, world.root, host, grace)
        reports: list[object] = []
        started: float | None = None
        for _ in range(runs):
            testhooks.pause_point("gc-start")
            if spacing is not None:
                if started is not None:
                    world.clock.now = max(world.clock.now, started + spacing)
                started = world.clock.now
            try:
                reports.append(collect_garbage(repo, clock=boot, local_clock=world.clock))
            except (LeaseHeld, LeaseLost) as exc:
                reports.append(exc)
        return reports
    return body


def remote_snapshot_actor(world: World, source: Path) -> Callable[[Callable[[], float]], object]:
    """`casstore.open(remote=URL).snapshot()`: a snapshot taken straight into the remote."""
    def body(boot: Callable[[], float]) -> object:
        testhooks.pause_point("snapshot-start")
        repo = remote_repo(world.remote, world.root, "host-r")
        try:
            result = repo.snapshot(str(source))
        except ConfigError as refused:   # the fix: refused, it must be built locally and synced
            return refused
        world.expected[result.id] = tree_digest(source)
        return result
    return body


SCENARIOS = ("writers", "grace", "remote-snapshot", "unchanged", "all")


def setup_of(scenario: str) -> str:
    """Which prepared state a scenario starts from (see `prepare`, `prepare_due_plan`)."""
    return "due-plan" if scenario == "unchanged" else "main"


def prepare_due_plan(world: World) -> dict[str, dict[str, dict]]:
    """Host c's state for the unchanged-sync window: its first snapshot was synced and forgotten on
    the remote, and a gc plan condemning its packs is already due; its second snapshot is of the
    same folder, unchanged (a new manifest, no new blob: every blob it needs is condemned)."""
    config = tiny_config()
    remote_setup = Repository.init_remote(world.remote, settings_for(world.root, "init", GRACE), config)
    host = make_host(world.root, "c", config, [4])
    sync_to_remote(host.repo, world.remote, clock=lambda: world.clock.now - T0)
    for snapshot_id in remote_setup.snapshot_ids():
        world.remote.delete(f"snapshots/{snapshot_id}")
    world.clock.now += GRACE + 1
    report = collect_garbage(remote_setup, clock=lambda: world.clock.now - T0, local_clock=world.clock)
    assert report.plan, "the preparation's gc condemned nothing"
    world.clock.now += GRACE + 1
    result = host.repo.snapshot(str(world.root / "src-c"))
    host.expected[result.id] = tree_digest(world.root / "src-c")
    host.repo.close()
    return {host.name: host.expected}


def prepare(world: World) -> dict[str, dict[str, dict]]:
    """The state every schedule starts from; returns each host's snapshot digests.

    Host a's first snapshot is on the remote and forgotten there: dead data a's second snapshot
    (not synced yet) relies on. Host b has one snapshot sharing a file with a's; host r's folder
    is ready for a snapshot taken straight into the remote. Host c's first snapshot is on the
    remote and forgotten there too, and its second is of the same folder, unchanged: a new
    manifest and no new blob, all of them dead data on the remote (the daily sync's shortcut).
    """
    config = tiny_config()
    remote_setup = Repository.init_remote(world.remote, settings_for(world.root, "init", GRACE), config)
    hosts = [make_host(world.root, "a", config, [1]), make_host(world.root, "b", config, [2]),
             make_host(world.root, "c", config, [4])]
    for synced in (hosts[0], hosts[2]):
        sync_to_remote(synced.repo, world.remote, clock=lambda: world.clock.now - T0)
    for snapshot_id in remote_setup.snapshot_ids():
        world.remote.delete(f"snapshots/{snapshot_id}")
    world.clock.now += GRACE / 2
    source_a = write_source(world.root / "src-a", 1)
    (source_a / "own-0.bin").write_bytes(random.Random(11).randbytes(2500))
    result = hosts[0].repo.snapshot(str(source_a))
    hosts[0].expected[result.id] = tree_digest(source_a)
    result = hosts[2].repo.snapshot(str(world.root / "src-c"))
    hosts[2].expected[result.id] = tree_digest(world.root / "src-c")
    write_source(world.root / "src-r", 3)
    for host in hosts:
        host.repo.close()
    return {host.name: host.expected for host in hosts}


#: each scenario's writing hosts: in a seeded random schedule, and in a bounded enumeration (fewer
#: actors: each one multiplies the schedules of a preemption bound)
WRITERS = {"writers": "ab", "grace": "ab", "unchanged": "c", "all": "abc"}
BOUNDED_WRITERS = {"writers": "a", "grace": "a", "unchanged": "c", "all": "ab"}


def build(world: World, scenario: str, scheduler: Scheduler, expected: dict[str, dict[str, dict]]) -> list[Host]:
    """Add `scenario`'s actors to `scheduler`; returns the writing hosts.

    - writers: host a (whose new snapshot relies on data the remote holds for a forgotten snapshot)
      and host b (sharing a file with a) sync, while gc runs three times (one repository grace);
    - grace: as writers, but the gc host's own setting says a grace of one minute, and every
      pause lasts at most two minutes (a slow writer, not a suspended one);
    - remote-snapshot: a snapshot taken straight into the remote while gc runs;
    - unchanged: from `prepare_due_plan`, host c's sync of an unchanged folder, all of whose blobs
      a due plan condemns, while gc runs twice; the clock moves by a minute at most (the window
      between a sync's first listings is seconds long);
    - all: every actor above at once, plus a second gc host whose own setting says one minute.
    """
    hosts = [Host(name, Repository.open_local(str(world.root / f"repo-{name}"), settings_for(world.root, name, GRACE)),
                  dict(digests)) for name, digests in sorted(expected.items())]
    gc_grace = GRACE / 60 if scenario == "grace" else GRACE
    bounded = isinstance(scheduler.chooser, Bounded)
    writers = (BOUNDED_WRITERS if bounded else WRITERS).get(scenario, "")
    for host in hosts:
        if host.name in writers:
            scheduler.add(host.name, sync_actor(world, host))
    if scenario == "remote-snapshot" or scenario == "all" and not bounded:
        scheduler.add("r", remote_snapshot_actor(world, world.root / "src-r"))
    if bounded:   # two timed runs: a mark, then a sweep of its plan (unchanged: its plan is due, one run)
        scheduler.add("gc", gc_actor(world, 1 if scenario == "unchanged" else 2, gc_grace, spacing=gc_grace + 1))
        if scenario == "all":
            scheduler.add("gc2", gc_actor(world, 2, GRACE / 60, host="gc2-host", spacing=GRACE / 60 + 1))
        return hosts
    scheduler.add("gc", gc_actor(world, 2 if scenario == "unchanged" else 3, gc_grace))
    if scenario == "all":   # a second gc host, whose own setting says one minute
        scheduler.add("gc2", gc_actor(world, 2, GRACE / 60, host="gc2-host"))
    return hosts


# -- templates: the prepared state, copied for each schedule ---------------------------------

@dataclass
class Template:
    path: Path                                  # a copy of the prepared world's folder
    clock: float
    expected: dict[str, dict[str, dict]]
    objects: dict | None = None                 # the memory remote's objects


_TEMPLATES: dict[str, Template] = {}


def _base() -> Path:
    """Where schedules run: tmpfs when there is one (fsync is then free), one folder per process."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return parent / f"casstore-explore-{os.getpid()}"


def _cleanup() -> None:
    shutil.rmtree(_base(), ignore_errors=True)


def _sweep_orphans() -> None:
    """Remove the folders of explorer processes that are gone: a process killed by a timeout (a
    mutation run's, a CI job's) never runs its atexit cleanup, and tmpfs is memory."""
    for folder in _base().parent.glob("casstore-explore-*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def fresh_world(kind: str, setup: str = "main") -> tuple[World, dict[str, dict[str, dict]]]:
    """A world in the prepared state, always at the same path (so every absolute path in the
    local repositories' records, and a file:// remote's URL, stays the same)."""
    run = _base() / f"run-{setup}-{kind}"
    shutil.rmtree(run, ignore_errors=True)
    template = _TEMPLATES.get(f"{setup}-{kind}")
    if template is None:
        import atexit

        _sweep_orphans()
        atexit.register(_cleanup)
        world = new_world(run, kind)
        expected = prepare_due_plan(world) if setup == "due-plan" else prepare(world)
        objects = dict(world.remote._objects) if isinstance(world.remote, MemoryRemote) else None
        template = Template(_base() / f"template-{setup}-{kind}", world.clock.now, expected, objects)
        shutil.rmtree(template.path, ignore_errors=True)
        shutil.copytree(run, template.path, symlinks=True)
        _TEMPLATES[f"{setup}-{kind}"] = template
        shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(template.path, run, symlinks=True)
    world = new_world(run, kind)
    world.clock.now = template.clock
    if isinstance(world.remote, MemoryRemote):
        world.remote._objects = dict(template.objects or {})
        world.remote._version = len(world.remote._objects) + 1_000_000
    return world, template.expected


# -- one schedule, and many ----------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    trace: list[str]
    problems: list[str]


def advances_of(scenario: str) -> tuple[float, ...]:
    return {"grace": SLOW, "unchanged": SHORT}.get(scenario, ADVANCES)


def run_schedule(scenario: str, kind: str, chooser: Chooser, full: bool = True) -> Verdict:
    world, expected = fresh_world(kind, setup_of(scenario))
    scheduler = Scheduler(world.clock, chooser, advances_of(scenario))
    hosts = build(world, scenario, scheduler, expected)
    try:
        trace = scheduler.run()
        problems = [f"{a.name}: {type(a.error).__name__}: {a.error}" for a in scheduler.actors
                    if a.error is not None and not _tolerated(a.error)]
        problems += _rerun_failed_syncs(world, scheduler, hosts)
    finally:
        for host in hosts:
            host.repo.close()
    for host in hosts:
        world.expected.update(host.expected)
    problems += check_invariants(world, full)
    return Verdict(not problems, trace, problems)


def _rerun_failed_syncs(world: World, scheduler: Scheduler, hosts: list[Host]) -> list[str]:
    """A writer that gave up is run again, as its next scheduled sync would: that finishes the
    post-commit check of a snapshot it wrote but had not recorded as committed (design 9)."""
    problems = []
    for actor in scheduler.actors:
        host = next((h for h in hosts if h.name == actor.name), None)
        if host is None or actor.error is None:
            continue
        try:
            sync_to_remote(host.repo, world.remote, clock=scheduler.boot_clock(actor))
        except CasstoreError as exc:
            problems.append(f"{host.name}: sync run again failed: {exc}")
    return problems


def _tolerated(error: BaseException) -> bool:
    """An actor may give up cleanly: a writer told to run sync again, a gc that lost its lease, or
    a gc that aborted, deleting nothing, on a snapshot whose writer is still repairing it after a
    late commit. Whether anything was lost is for the invariants afterwards (gc must run again)."""
    if isinstance(error, GcAborted):
        return True
    return isinstance(error, CasstoreError) and "keeps changing" in str(error) or type(error).__name__ in (
        "SessionExpired", "LeaseHeld", "LeaseLost")


def check_invariants(world: World, full: bool = True) -> list[str]:
    """Every snapshot's blobs are stored (and, `full`, it restores byte-identical and check
    --read-data is clean); then gc runs again cleanly, three times, and the same holds."""
    repo = remote_repo(world.remote, world.root, "checker")
    problems = _stored(repo) + (_restorable(repo, world) if full else [])
    if problems:
        return problems
    try:
        for _ in range(3):
            world.clock.now += 2 * GRACE + 1
            collect_garbage(repo, clock=lambda: world.clock.now, local_clock=world.clock)
    except CasstoreError as exc:
        return [f"gc cannot run again: {type(exc).__name__}: {exc}"]
    return _stored(repo) + (_restorable(repo, world) if full else [])


def _stored(repo: Repository) -> list[str]:
    """The cheap invariant: every blob a snapshot reaches (trees, chunks, delta bases) has a location, in
    an index listed now (withdrawn ones aside), in a pack listed now."""
    repo.load_index()
    packs = {layout.name_of(info.key) for info in repo.remote.list(layout.DATA_PREFIX)}
    problems = []
    for snapshot_id in repo.snapshot_ids():
        reached = BlobSet()
        try:
            add_reachable(lambda i: repo.read_blob(KIND_TREE, i), repo.manifest(snapshot_id).tree, reached)
            add_delta_bases(repo.index, reached)     # a delta chunk is readable only with its bases
        except CasstoreError as exc:
            problems.append(f"snapshot {snapshot_id[:12]}: a tree cannot be read: {exc}")
            continue
        lost = [key for key in reached if not any(loc.pack_id in packs for loc in repo.index.locations(*key))]
        if lost:
            problems.append(f"snapshot {snapshot_id[:12]}: {len(lost)} blob(s) in no stored pack an index "
                            f"names, e.g. {lost[0][1].hex()[:16]}")
    return problems


def _restorable(repo: Repository, world: World) -> list[str]:
    problems = []
    repo.load_index()
    report = repo.check(read_data=True)
    if not report.ok:
        problems.append(f"check --read-data: {_short(report.as_dict())}")
    for snapshot_id in repo.snapshot_ids():
        target = world.root / "restore" / snapshot_id[:12]
        try:
            result = repo.restore(snapshot_id, str(target))
            if not result.ok or tree_digest(target) != world.expected.get(snapshot_id):
                problems.append(f"snapshot {snapshot_id[:12]} does not restore as taken")
        except CasstoreError as exc:
            problems.append(f"snapshot {snapshot_id[:12]} cannot be restored: {exc}")
        shutil.rmtree(target, ignore_errors=True)
    return problems


def _short(doc: dict) -> str:
    text = str({k: v for k, v in doc.items() if v})
    return text if len(text) < 300 else text[:300] + "..."


@dataclass
class Exploration:
    scenario: str
    kind: str
    schedules: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, Verdict]] = field(default_factory=list)   # (seed or path, verdict)
    traces: set[int] = field(default_factory=set)   # distinct schedules (hashes of their traces)
    full: int = 0                                   # how many got the full restore + check --read-data
    complete: bool = False                          # a bounded enumeration ran every schedule

    def add(self, other: Exploration) -> None:
        self.schedules += other.schedules
        self.failures += other.failures
        self.traces |= other.traces
        self.full += other.full


def explore_random(scenario: str, kind: str, seeds: Iterator[int] | range, budget: float,
                   stop_at_first: bool = False, full_every: int = FULL_EVERY, workers: int = 1) -> Exploration:
    """Run seeded random schedules until `seeds` or the time budget (seconds) is used up; with
    `workers` > 1, in that many processes (each builds its own prepared state once)."""
    if workers > 1 and not stop_at_first:
        return _explore_in_processes(scenario, kind, list(seeds), budget, full_every, workers)
    found = Exploration(scenario, kind)
    started = time.monotonic()
    for seed in seeds:
        if time.monotonic() - started > budget:
            break
        full = seed % full_every == 0
        verdict = run_schedule(scenario, kind, RandomChooser(seed), full=full)
        found.schedules += 1
        found.full += full
        found.traces.add(trace_id(verdict.trace))
        if not verdict.ok:
            found.failures.append((f"seed {seed}", verdict))
            if stop_at_first:
                break
    found.seconds = time.monotonic() - started
    return found


def trace_id(trace: list[str]) -> int:
    """The same in every process (str hashes are salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b("|".join(trace).encode(), digest_size=8).digest(), "big")


_POOL: object = None   # concurrent.futures.ProcessPoolExecutor, made on first use and kept


def _pool(workers: int):   # -> ProcessPoolExecutor
    """Worker processes, kept for the whole run: each builds its prepared states once."""
    global _POOL
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    if _POOL is None or _POOL._max_workers != workers:   # type: ignore[attr-defined]
        if _POOL is not None:
            _POOL.shutdown()   # type: ignore[attr-defined]
        # spawned, not forked: a fork would copy whatever threads the parent has mid-call
        _POOL = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_quiet)
        import atexit

        atexit.register(_POOL.shutdown)   # type: ignore[attr-defined]
    return _POOL


def _quiet() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)   # writers warn at each repair: thousands of schedules
    logging.getLogger().setLevel(logging.ERROR)


def _explore_in_processes(scenario: str, kind: str, seeds: list[int], budget: float, full_every: int,
                          workers: int) -> Exploration:
    started = time.monotonic()
    found = Exploration(scenario, kind)
    shares = [seeds[i::workers] for i in range(workers)]
    futures = [_pool(workers).submit(explore_random, scenario, kind, share, budget, False, full_every)  # type: ignore[attr-defined]
               for share in shares if share]
    for future in futures:
        found.add(future.result())
    found.seconds = time.monotonic() - started
    return found


def explore_bounded(scenario: str, kind: str, bound: int, stop_at_first: bool = False, workers: int = 1,
                    first: int = 0, stride: int = 1) -> Exploration:
    """Every schedule with at most `bound` preemptions (see `Bounded`); with `workers` > 1, the
    subtrees of the first move are shared out among that many processes."""
    if workers > 1 and not stop_at_first:
        return _bounded_in_processes(scenario, kind, bound, workers)
    found = Exploration(scenario, kind)
    started = time.monotonic()
    chooser = Bounded(bound, first, stride)
    first_moves = _first_moves(scenario, kind, bound)
    while True:
        chooser.start()
        path = list(chooser.prefix)
        if path[0] >= first_moves:
            found.complete = True   # this share is empty
            break
        full = found.schedules % FULL_EVERY == 0
        verdict = run_schedule(scenario, kind, chooser, full=full)
        found.schedules += 1
        found.full += full
        found.traces.add(trace_id(verdict.trace))
        if not verdict.ok:
            found.failures.append((f"moves {path}", verdict))
            if stop_at_first:
                break
        if not chooser.advance():
            found.complete = True
            break
    found.seconds = time.monotonic() - started
    return found


def _first_moves(scenario: str, kind: str, bound: int) -> int:
    """How many moves the first pause offers: each actor, after no jump (and, with a bound, each jump)."""
    world, expected = fresh_world(kind, setup_of(scenario))
    scheduler = Scheduler(world.clock, Bounded(bound), advances_of(scenario))
    for host in build(world, scenario, scheduler, expected):
        host.repo.close()
    return len(scheduler.actors) * (1 + (len(scheduler.jumps) if bound else 0))


def _bounded_in_processes(scenario: str, kind: str, bound: int, workers: int) -> Exploration:
    started = time.monotonic()
    found = Exploration(scenario, kind, complete=True)
    futures = [_pool(workers).submit(explore_bounded, scenario, kind, bound, False, 1, w, workers)  # type: ignore[attr-defined]
               for w in range(workers)]
    for future in futures:
        share = future.result()
        found.add(share)
        found.complete &= share.complete
    found.seconds = time.monotonic() - started
    return found


def summary(found: Exploration) -> str:
    rate = found.schedules / found.seconds if found.seconds else 0.0
    return (f"explored {found.schedules} schedules ({len(found.traces)} distinct, {found.full} with the full "
            f"restore + check --read-data) of '{found.scenario}' on {found.kind} in {found.seconds:.1f} s "
            f"({rate:.1f}/s)")


def replay(scenario: str, kind: str, seed: int) -> Verdict:
    return run_schedule(scenario, kind, RandomChooser(seed))


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.explore SCENARIO KIND [--seed N | --schedules N | --bound P [--moves M,M,...]]`:
    replay a seed, explore seeded random schedules, enumerate every schedule with at most P
    preemptions, or replay one of them."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.explore")
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("kind", choices=("memory", "file"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--bound", type=int, help="enumerate every schedule with at most this many preemptions")
    parser.add_argument("--moves", help="with --bound: replay the schedule of these moves (e.g. 0,0,3)")
    parser.add_argument("--workers", type=int, default=1, help="processes to explore in")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.bound is not None and args.moves:   # replay one bounded schedule, as a failure printed it
        chooser = Bounded(args.bound)
        chooser.prefix = [int(m) for m in args.moves.split(",")]
        verdict = run_schedule(args.scenario, args.kind, chooser)
        print(f"{'ok' if verdict.ok else '; '.join(verdict.problems)}\n  schedule: {' '.join(verdict.trace)}")
        return 0 if verdict.ok else 1
    if args.bound is not None:
        found = explore_bounded(args.scenario, args.kind, args.bound, workers=args.workers)
    else:
        seeds = range(args.seed, args.seed + 1) if args.seed is not None else range(args.schedules)
        found = explore_random(args.scenario, args.kind, seeds, budget=float("inf"),
                               full_every=1 if args.seed is not None else FULL_EVERY, workers=args.workers)
    print(f"{summary(found)}, {len(found.failures)} failing")
    for where, verdict in found.failures:
        print(f"{where}: {'; '.join(verdict.problems)}\n  schedule: {' '.join(verdict.trace)}")
    return 1 if found.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
