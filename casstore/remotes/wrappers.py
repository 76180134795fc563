"""Cross-cutting behaviour around any remote: retries, request counting, and (tests) fault injection.

Each wrapper is itself a Remote around an `inner` one, so they stack
(`CountingRemote(RetryingRemote(open_remote(url)))` counts logical calls; the other order counts
attempts). Backends turn their SDK's own retries down, so RetryingRemote is the one place that
decides, and retries never multiply.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from casstore._testing import FAULTS
from casstore.errors import ObjectExists, ObjectNotFound, RemoteError, TransientError
from casstore.remotes.base import ObjectInfo, Remote, delete_each

T = TypeVar("T")


class RemoteWrapper(Remote):
    """Passes every call to `inner`; subclasses change what they are about."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.url = inner.url
        self.takes_buffers = inner.takes_buffers

    def _put(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        return self._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=False)

    def _put_cold(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None) -> ObjectInfo:
        if type(self)._put is not RemoteWrapper._put:
            # a wrapper that overrides `_put` alone (fault injection) must see every put; the
            # hint then stops there, which only costs a storage class
            return self._put(key, data, if_absent=if_absent, if_match=if_match)
        return self._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=True)

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        """Every put, with its hint kept for the inner remote; subclasses override this one."""
        return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        return self.inner.get(key, offset, length, large=large)

    def _stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def _delete(self, key: str) -> None:
        self.inner.delete(key)

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        if type(self)._delete is not RemoteWrapper._delete and type(self)._delete_many is RemoteWrapper._delete_many:
            # a wrapper that overrides `_delete` alone must see every delete, one key at a time
            return delete_each(self._delete, keys)
        return self.inner.delete_many(keys)

    def setup_warnings(self) -> list[str]:
        return self.inner.setup_warnings()

    def close(self) -> None:
        self.inner.close()


class HookedRemote(RemoteWrapper):
    """Calls `before_write()` right before each put and delete: a fault-injection seam in the style
    of kopia's FaultyStorage (casstore._testing.crash_hook kills the process at the nth write).
    It overrides `_delete` alone, so a `delete_many` through it goes one key at a time and a crash
    test can stop gc between any two deletions."""

    def __init__(self, inner: Remote, before_write: Callable[[], None]) -> None:
        super().__init__(inner)
        self.before_write = before_write

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        self.before_write()
        return super()._put_hinted(key, data, if_absent=if_absent, if_match=if_match, cold=cold)

    def _delete(self, key: str) -> None:
        self.before_write()
        super()._delete(key)


class RetryingRemote(RemoteWrapper):
    """Retries TransientError (throttling, 5xx, network) with capped exponential backoff and jitter.

    Nothing else is retried: ObjectNotFound, ObjectExists, AccessDenied are answers, not accidents.
    A conditional put whose earlier attempt failed in transit may have landed anyway; when the
    retry then loses its condition but the stored bytes are exactly ours, the put succeeded.
    A listing that fails part-way is restarted and yields only keys it has not yielded before.
    """

    def __init__(self, inner: Remote, attempts: int = 5, base_delay: float = 0.2, max_delay: float = 5.0, *,
                 deadline: float | None = 120.0, sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(inner)
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self.deadline = deadline        # one operation's total seconds, its retries and waits included
        self._sleep: Callable[[float], None] = sleep
        self._jitter: Callable[[], float] = jitter
        self._clock = clock

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): half fixed, half random."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return cap * (0.5 + self._jitter() / 2)

    def _retry(self, call: Callable[[int], T]) -> T:
        started = self._clock()
        for attempt in range(1, self.attempts + 1):
            try:
                return call(attempt)
            except TransientError as exc:
                self._wait_or_give_up(exc, attempt, started)
        raise AssertionError("unreachable")

    def _wait_or_give_up(self, exc: TransientError, attempt: int, started: float) -> None:
        """Sleep before the next attempt, or raise when attempts or the operation's deadline run out."""
        if attempt == self.attempts:
            raise exc
        delay = self.delay(attempt)
        spent = self._clock() - started
        if self.deadline is not None and spent + delay > self.deadline:
            raise TransientError(f"{exc} (gave up after {attempt} attempts in {spent:.0f} s: "
                                 f"the {self.deadline:.0f} s deadline, CASSTORE_REQUEST_DEADLINE)") from exc
        self._sleep(delay)

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        def put_once(attempt: int) -> ObjectInfo:
            try:
                return self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
            except ObjectExists:
                if attempt > 1 and self._holds(key, data, large=cold):  # a cold put is bulk data
                    return self.inner.stat(key)
                raise

        return self._retry(put_once)

    def _holds(self, key: str, data: bytes, *, large: bool) -> bool:
        try:
            return self.inner.get(key, large=large) == data
        except ObjectNotFound:
            return False

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        return self._retry(lambda _: self.inner.get(key, offset, length, large=large))

    def _stat(self, key: str) -> ObjectInfo:
        return self._retry(lambda _: self.inner.stat(key))

    def _delete(self, key: str) -> None:
        self._retry(lambda _: self.inner.delete(key))

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        """The batch is retried whole on a transient failure, then only its keys that failed
        transiently (deleting is idempotent, and a missing key is no error)."""
        started = self._clock()
        pending, errors = list(keys), {}
        for attempt in range(1, self.attempts + 1):
            try:
                result = self.inner.delete_many(pending)
            except TransientError as exc:
                self._wait_or_give_up(exc, attempt, started)
                continue
            transient = {key: exc for key, exc in result.items() if isinstance(exc, TransientError)}
            errors.update({key: exc for key, exc in result.items() if key not in transient})
            if not transient or attempt == self.attempts:
                return {**errors, **transient}
            pending = sorted(transient)
            self._wait_or_give_up(next(iter(transient.values())), attempt, started)
        raise AssertionError("unreachable")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        yielded: set[str] = set()
        started = self._clock()
        for attempt in range(1, self.attempts + 1):
            try:
                for info in self.inner.list(prefix):
                    if info.key not in yielded:
                        yielded.add(info.key)
                        yield info
                return
            except TransientError as exc:
                self._wait_or_give_up(exc, attempt, started)


class CountingRemote(RemoteWrapper):
    """Counts calls per method (`counts`) and payload bytes (`bytes_up`, `bytes_down`).

    A call counts when it is made, whether or not it succeeds; a `list()` counts once however
    many pages it reads. Bytes count only for calls that succeeded. Thread-safe.
    """

    METHODS = ("put", "get", "stat", "list", "delete")

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(self.METHODS, 0)
        self.bytes_up = 0
        self.bytes_down = 0

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _count(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def _add_bytes(self, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self.bytes_up += up
            self.bytes_down += down

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        self._count("put")
        info = self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
        self._add_bytes(up=len(data))
        return info

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        self._count("get")
        data = self.inner.get(key, offset, length, large=large)
        self._add_bytes(down=len(data))
        return data

    def _stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._count("list")
        return self.inner.list(prefix)

    def _delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        self._count("delete")   # one call counts once, as a listing does; S3 splits it per 1,000 keys
        return self.inner.delete_many(keys)


class FaultyRemote(RemoteWrapper):
    """Test-only: injects the faults a network and a storage service produce, seeded and replayable.

    - `error_rate`: a call fails before it takes effect (a 503 / 500 answer);
    - `lost_ack_rate`: a put lands, then its answer is lost (a connection reset after the write);
    - `truncate_rate`: a read answers only part of the body (a cut transfer);
    - `flip_rate`: a read answers the body with one bit flipped;
    - `delay_rate` / `delay`: a call waits first (a slow answer);
    - `cut_listing_rate`: a listing yields part of its keys, then fails (broken pagination).

    Each decision is a hash of the seed, the call and how often that same call was made before,
    so a run replays exactly whatever the threads' order, and a repeated read draws again.
    `enabled = False` passes everything through; `faults` counts each kind injected, `injected` all.
    """

    def __init__(self, inner: Remote, *, seed: int, error_rate: float = 0.0, lost_ack_rate: float = 0.0,
                 truncate_rate: float = 0.0, flip_rate: float = 0.0, delay_rate: float = 0.0,
                 delay: float = 0.005, cut_listing_rate: float = 0.0, only: str = "") -> None:
        super().__init__(inner)
        self.seed, self.only = seed, only     # faults touch only keys (and listings) under `only`
        self.error_rate, self.lost_ack_rate = error_rate, lost_ack_rate
        self.truncate_rate, self.flip_rate = truncate_rate, flip_rate
        self.delay_rate, self.delay, self.cut_listing_rate = delay_rate, delay, cut_listing_rate
        self.enabled = True
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self._local = threading.local()     # the key of the call this thread is making

    @property
    def _current_key(self) -> str:
        return getattr(self._local, "key", "")

    @property
    def injected(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    def _draw(self, call: str) -> random.Random:
        """A random stream for this call: the same call made again draws a new one."""
        self._local.key = call.split("|")[1]
        with self._lock:
            n = self._calls[call] = self._calls.get(call, 0) + 1
        import hashlib  # lazy: start-up time of every command (only injected faults draw)

        digest = hashlib.blake2b(f"{self.seed}|{call}|{n}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def _hit(self, rng: random.Random, rate: float, fault: str) -> bool:
        if not self.enabled or rng.random() >= rate or not self._current_key.startswith(self.only):
            return False
        with self._lock:
            self.faults[fault] = self.faults.get(fault, 0) + 1
        return True

    def _before(self, rng: random.Random, what: str) -> None:
        if self._hit(rng, self.delay_rate, "delay"):
            time.sleep(self.delay)
        if self._hit(rng, self.error_rate, "error"):
            raise TransientError(f"injected: 503 answer to {what}")

    def _put_hinted(self, key: str, data: bytes, *, if_absent: bool, if_match: str | None,
                    cold: bool) -> ObjectInfo:
        rng = self._draw(f"put|{key}")
        self._before(rng, f"put {key}")
        info = self.inner.put(key, data, if_absent=if_absent, if_match=if_match, cold=cold)
        if self._hit(rng, self.lost_ack_rate, "lost_ack"):
            raise TransientError(f"injected: connection reset after put {key} landed")
        return info

    def _get(self, key: str, offset: int, length: int | None, *, large: bool) -> bytes:
        rng = self._draw(f"get|{key}|{offset}|{length}")
        self._before(rng, f"get {key}")
        data = self.inner.get(key, offset, length, large=large)
        if data and self._hit(rng, self.truncate_rate, "truncate"):
            return data[: rng.randrange(len(data))]
        if data and self._hit(rng, self.flip_rate, "flip"):
            damaged = bytearray(data)
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            return bytes(damaged)
        return data

    def _stat(self, key: str) -> ObjectInfo:
        self._before(self._draw(f"stat|{key}"), f"stat {key}")
        return self.inner.stat(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        rng = self._draw(f"list|{prefix}")
        self._before(rng, f"list {prefix}")
        cut = self._hit(rng, self.cut_listing_rate, "cut_listing")
        items = list(self.inner.list(prefix))
        if cut:
            yield from items[: len(items) // 2]
            # not transient: a continuation marker that does not advance is found out, not retried
            raise RemoteError(f"injected: listing of {prefix!r} broke off after a page")
        yield from items

    def _delete(self, key: str) -> None:
        self._before(self._draw(f"delete|{key}"), f"delete {key}")
        self.inner.delete(key)

    def _delete_many(self, keys: list[str]) -> dict[str, RemoteError]:
        self._before(self._draw(f"delete_many|{keys[0]}"), f"delete of {len(keys)} keys from {keys[0]}")
        return self.inner.delete_many(keys)


FAULTS_VARIABLE = FAULTS   # casstore._testing lists every test hook
_FAULT_FIELDS = {"seed": int, "error": float, "lost_ack": float, "truncate": float, "flip": float,
                 "delay_rate": float, "delay": float, "cut_listing": float, "only": str}


def faults_from_env(remote: Remote, environ: Mapping[str, str] | None = None) -> Remote:
    """Test hook: `CASSTORE_TEST_FAULTS="seed=3,flip=0.05,truncate=0.1"` wraps every opened remote in a
    FaultyRemote, so a test can put faults under a real CLI process. Unset in normal use."""
    spec = (os.environ if environ is None else environ).get(FAULTS_VARIABLE)
    if not spec:
        return remote
    values: dict[str, Any] = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        values[name.strip()] = _FAULT_FIELDS[name.strip()](value)
    return FaultyRemote(remote, seed=values.pop("seed", 0), error_rate=values.get("error", 0.0),
                        lost_ack_rate=values.get("lost_ack", 0.0), truncate_rate=values.get("truncate", 0.0),
                        flip_rate=values.get("flip", 0.0), delay_rate=values.get("delay_rate", 0.0),
                        delay=values.get("delay", 0.005), cut_listing_rate=values.get("cut_listing", 0.0),
                        only=values.get("only", ""))
