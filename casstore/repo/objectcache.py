"""Local, disposable copies of immutable objects of a remote repository, and verified reads.

Index objects, snapshot manifests and blobs never change once written, so a copy can be used
for as long as the object is listed. Two rules keep a bad byte in transit from becoming a
permanent failure (DESIGN.md "Verified reads"):

- only verified bytes enter the cache: `read_verified` checks a download against its id before
  anything is written here;
- a cached entry is verified again every time it is used; one that fails is evicted and the
  object is downloaded again.

A download that fails verification is fetched again a bounded number of times with backoff. When
every attempt fails, the error says whether the reads disagreed ("corrupt in transit": the
network or a proxy is damaging answers, trying later may work) or agreed on the same wrong bytes
("corrupt in storage": the stored object itself is damaged).

The cache has an optional size limit (CASSTORE_CACHE_MAX): a write that takes it over the limit
evicts the least recently used entries (a read touches the entry's mtime) down to 90% of it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import blake3

from casstore.errors import FormatError, IntegrityError, ShortRead
from casstore.format import codec, delta, layout
from casstore.fsio.private import make_dirs, open_private

log = logging.getLogger(__name__)

T = TypeVar("T")
BLOBS = "blobs"
KINDS = (layout.INDEX, layout.SNAPSHOTS, BLOBS)   # the cache's folders
# what a failed verification can look like when the bytes were damaged on the way
BAD_BYTES = (IntegrityError, FormatError, ShortRead)


class CorruptObject(IntegrityError):
    """Every read of an object failed verification; `in_storage` when the reads agreed."""

    def __init__(self, message: str, in_storage: bool) -> None:
        super().__init__(message)
        self.in_storage = in_storage


# -- re-fetch on mismatch ----------------------------------------------------------------------

@dataclass(frozen=True)
class ReadPolicy:
    """How often a download that fails verification is fetched again, and how long to wait between."""

    attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, attempt: int) -> float:
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return cap * (0.5 + random.random() / 2)   # jitter: concurrent readers do not retry in step


def _fingerprint(body: bytes | memoryview | None, exc: Exception) -> str:
    """What one failed read saw: equal fingerprints mean two reads got the same wrong answer."""
    if body is None:
        return f"{type(exc).__name__}: {exc}"
    import hashlib  # lazy: start-up time of every command (only a failed read needs it)

    return hashlib.blake2b(body, digest_size=16).hexdigest()


def read_verified(what: str, fetch: Callable[[], bytes], check: Callable[[bytes], T],
                  policy: ReadPolicy, *, on_verified: Callable[[bytes], None] | None = None) -> T:
    """`check(fetch())`, fetching again while the check fails; `on_verified` sees only bytes that passed.

    `check` raises IntegrityError / FormatError for bytes that are not the object (a ShortRead
    from `fetch` counts the same). After `policy.attempts` failures the IntegrityError names the
    object and says whether the failed reads agreed (storage) or not (transit).
    """
    seen: list[str] = []
    last: Exception | None = None
    for attempt in range(1, max(1, policy.attempts) + 1):
        body = None
        try:
            body = fetch()
            result = check(body)
        except BAD_BYTES as exc:
            seen.append(_fingerprint(body, exc))
            last = exc
            if attempt < policy.attempts:
                log.info("%s failed verification (attempt %d), fetching again: %s", what, attempt, exc)
                policy.sleep(policy.delay(attempt))
            continue
        if attempt > 1:
            log.info("%s read intact on attempt %d", what, attempt)
        if on_verified is not None:
            on_verified(body)
        return result
    verdict, in_storage = damage_verdict(seen)
    raise CorruptObject(f"{what}: {verdict}: {last}", in_storage)


def damage_verdict(fingerprints: list[str]) -> tuple[str, bool]:
    """What the failed reads say about where the damage is; True when they point at storage."""
    if len(fingerprints) == 1:
        return "corrupt (read once)", True
    if len(set(fingerprints)) == 1:
        return f"corrupt in storage ({len(fingerprints)} reads agree on the same wrong bytes)", True
    return (f"corrupt in transit ({len(fingerprints)} reads gave {len(set(fingerprints))} "
            "different wrong answers)", False)


# -- named objects: index objects and snapshot manifests --------------------------------------

def check_named(kind: str, name: str, body: bytes) -> bytes:
    """An index object's or manifest's name is the BLAKE3 of its bytes."""
    if blake3.blake3(body).hexdigest() != name:
        raise IntegrityError(f"{_singular(kind)} {name[:16]} does not match its name")
    return body


def _singular(kind: str) -> str:
    return {layout.SNAPSHOTS: "snapshot"}.get(kind, kind)


def verified_object(remote, cache: LocalCache | None, kind: str, name: str, policy: ReadPolicy) -> bytes:
    """The bytes of `<kind>/<name>`, checked against the name: from the cache when its copy is sound
    (an unsound copy is evicted), else downloaded, re-fetched on mismatch, and cached once verified."""
    if cache is not None:
        body = cache.get(kind, name)
        if body is not None:
            try:
                return check_named(kind, name, body)
            except IntegrityError as exc:
                log.warning("evicting a damaged cache entry and downloading again: %s", exc)
                cache.discard(kind, name)
    store = (lambda body: cache.put(kind, name, body)) if cache is not None else None
    return read_verified(f"{_singular(kind)} {name[:16]}", lambda: remote.get(layout.key(kind, name)),
                         lambda body: check_named(kind, name, body), policy, on_verified=store)


# -- the cache folder ----------------------------------------------------------------------------

class CacheEntry(NamedTuple):
    """One cached object (a named tuple: a frozen dataclass cost every command's start-up ~4M instructions)."""

    kind: str
    name: str
    path: str
    size: int
    mtime: float


class LocalCache:
    """One repository's cache folder: `<cache dir>/<repo id>/{index,snapshots,blobs}/<name>`."""

    def __init__(self, root: str, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._size: int | None = None       # known after the first write that needs it
        self._lock = threading.Lock()

    def _path(self, kind: str, name: str) -> str:
        return os.path.join(self.root, kind, name)

    def get(self, kind: str, name: str) -> bytes | None:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        try:
            os.utime(path)   # mtime is the recency the size limit evicts by (atime is often off)
        except OSError:
            pass
        return data

    def put(self, kind: str, name: str, data: bytes | memoryview) -> None:
        path = self._path(kind, name)
        tmp = f"{path}.{os.urandom(4).hex()}.tmp"
        try:
            make_dirs(os.path.dirname(path))
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_EXCL), "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._account(len(data))

    def names(self, kind: str) -> set[str]:
        try:
            return {n for n in os.listdir(os.path.join(self.root, kind)) if not n.endswith(".tmp")}
        except FileNotFoundError:
            return set()

    def discard(self, kind: str, name: str) -> None:
        path = self._path(kind, name)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return
        with self._lock:
            if self._size is not None:
                self._size -= size

    def entries(self) -> Iterator[CacheEntry]:
        for kind in KINDS:
            for name in sorted(self.names(kind)):
                path = self._path(kind, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                yield CacheEntry(kind, name, path, st.st_size, st.st_mtime)

    def size(self) -> int:
        return sum(e.size for e in self.entries())

    def clear(self) -> int:
        """Delete every entry; return how many."""
        count = 0
        for entry in self.entries():
            self.discard(entry.kind, entry.name)
            count += 1
        return count

    # -- the size limit ------------------------------------------------------------------------

    def _account(self, added: int) -> None:
        if self.max_bytes is None:
            return
        with self._lock:
            if self._size is None:
                self._size = self.size()     # one scan per process; other processes' writes drift in
            else:
                self._size += added
            over = self._size > self.max_bytes
        if over:
            self.shrink(int(self.max_bytes * 0.9))

    def shrink(self, target: int) -> int:
        """Evict least recently used entries until at most `target` bytes remain; return how many."""
        entries = sorted(self.entries(), key=lambda e: e.mtime)
        total = sum(e.size for e in entries)
        evicted = 0
        for entry in entries:
            if total <= target:
                break
            self.discard(entry.kind, entry.name)
            total -= entry.size
            evicted += 1
        with self._lock:
            # `total` misses what other threads added since the scan: the next addition rescans
            # rather than trust it (an undercount would let the cache grow past its limit for good)
            self._size = None
        return evicted


def cache_roots(cache_dir: str) -> list[str]:
    """Every repository's cache folder under the cache dir (one per repository id)."""
    try:
        names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        return []
    return [os.path.join(cache_dir, n) for n in names
            if os.path.isdir(os.path.join(cache_dir, n)) and any(
                os.path.isdir(os.path.join(cache_dir, n, kind)) for kind in KINDS)]


class BlobCache:
    """Encoded blobs of a remote repository, keyed by kind, id and plaintext length.

    The length is part of the name so that `casstore cache verify` can decode an entry alone.
    """

    def __init__(self, cache: LocalCache) -> None:
        self._cache = cache

    @staticmethod
    def name(kind: int, blob_id: bytes, raw_length: int) -> str:
        return f"{kind}-{blob_id.hex()}-{raw_length}"

    def get(self, kind: int, blob_id: bytes, raw_length: int) -> bytes | None:
        return self._cache.get(BLOBS, self.name(kind, blob_id, raw_length))

    def put(self, kind: int, blob_id: bytes, raw_length: int, encoded: bytes) -> None:
        self._cache.put(BLOBS, self.name(kind, blob_id, raw_length), encoded)

    def discard(self, kind: int, blob_id: bytes, raw_length: int) -> None:
        self._cache.discard(BLOBS, self.name(kind, blob_id, raw_length))


def parse_blob_name(name: str) -> tuple[int, bytes, int] | None:
    """`kind-id-rawlength` -> (kind, id, raw length); None for a name of another layout."""
    parts = name.split("-")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), bytes.fromhex(parts[1]), int(parts[2])
    except ValueError:
        return None


# -- `casstore cache verify` ---------------------------------------------------------------------

def entry_problem(entry: CacheEntry) -> str | None:
    """Why a cache entry is unsound (its bytes do not match its name), or None when it is sound."""
    try:
        with open(entry.path, "rb") as fh:
            body = fh.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        if entry.kind == BLOBS:
            parsed = parse_blob_name(entry.name)
            if parsed is None:
                return "not a name this version writes"
            if codec.is_sealed(body):
                return None   # an encrypted repository's blob: verified with its key on every use
            if delta.base_of(body) is not None:
                # a delta decodes only with its base, which the cache may not hold: its frame is
                # checked here, its plaintext against its id on every read (as every cached blob)
                delta.check_frame(body, parsed[2])
            else:
                codec.decode_verified(body, parsed[2], parsed[1])
        else:
            check_named(entry.kind, entry.name, body)
    except BAD_BYTES as exc:
        return str(exc)
    return None


def verify_cache(cache: LocalCache) -> tuple[int, list[tuple[CacheEntry, str]]]:
    """Check every entry, evicting unsound ones; (entries checked, [(evicted entry, why)])."""
    checked, evicted = 0, []
    for entry in cache.entries():
        checked += 1
        problem = entry_problem(entry)
        if problem is not None:
            cache.discard(entry.kind, entry.name)
            evicted.append((entry, problem))
    return checked, evicted
