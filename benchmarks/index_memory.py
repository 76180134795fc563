"""Memory per blob and load time of the in-memory index (issue 14).

Builds a MasterIndex of N random blobs in packs of --per-pack blobs from encoded index objects of
--per-index packs, the way `Repository.load_index` does (decode_index, then add_object), and
reports:
  bytes/blob   tracemalloc's traced memory held by the finished index, divided by N (a run of its own:
               tracing slows the build, so times come from an untraced run)
  decode s     decode_index of every index object (msgpack to BlobEntry lists)
  add s        add_object of every decoded object, then len() (which settles the table)
  lookup us    time of one locations() call for a known blob (the snapshot path's per-chunk cost),
               the best of 10 passes over the sample
With --baseline the same is measured for a plain dict of (kind, id) -> [Location] (the layout
before issue 14).

    python benchmarks/index_memory.py 1000000 3000000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Callable

from casstore.format.index import IndexObject, Location, MasterIndex, decode_index
from casstore.format.pack import KIND_DATA, BlobEntry

ORIGIN = {"kind": "writer", "host": "bench", "session": "bench"}
MAX_RAW = 1 << 24


class DictIndex:
    """The layout before issue 14, for --baseline."""

    def __init__(self) -> None:
        self.locations_of: dict[tuple[int, bytes], list[Location]] = {}

    def add_object(self, index_id: str, index: IndexObject) -> None:
        for pack_id, entries in index.packs.items():
            for e in entries:
                self.locations_of.setdefault((e.kind, e.id), []).append(
                    Location(pack_id, e.offset, e.length, e.raw_length))

    def locations(self, kind: int, blob_id: bytes) -> list[Location]:
        return self.locations_of.get((kind, blob_id), [])

    def __len__(self) -> int:
        return len(self.locations_of)


def index_objects(n: int, per_pack: int, per_index: int, seed: int) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """Encoded index objects listing n blobs, and a sample of their ids to look up."""
    rng = random.Random(seed)
    objects: list[tuple[str, bytes]] = []
    sample: list[bytes] = []
    made = 0
    while made < n:
        packs: dict[str, list[BlobEntry]] = {}
        for _ in range(per_index):
            count = min(per_pack, n - made)
            if not count:
                break
            ids = [rng.randbytes(32) for _ in range(count)]
            packs[rng.randbytes(32).hex()] = [BlobEntry(KIND_DATA, blob_id, 9 + i * 4000, 4000, 8000)
                                              for i, blob_id in enumerate(ids)]
            sample.extend(ids[:5])
            made += count
        objects.append(IndexObject(ORIGIN, packs).encode())
    return objects, sample


def load(objects: list[tuple[str, bytes]],
         make: Callable[[], MasterIndex | DictIndex]) -> tuple[MasterIndex | DictIndex, float, float]:
    t0 = time.perf_counter()
    decoded = [(index_id, decode_index(index_id, body, MAX_RAW)) for index_id, body in objects]
    t1 = time.perf_counter()
    index = make()
    for index_id, obj in decoded:
        index.add_object(index_id, obj)
    len(index)
    return index, t1 - t0, time.perf_counter() - t1


def held_bytes(objects: list[tuple[str, bytes]], make: Callable[[], MasterIndex | DictIndex]) -> int:
    """Bytes the finished index holds: built one index object at a time so transients are freed."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = make()
    for index_id, body in objects:
        index.add_object(index_id, decode_index(index_id, body, MAX_RAW))
    len(index)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del index
    return held


def lookup_us(index: MasterIndex | DictIndex, sample: list[bytes]) -> float:
    """The best of 10 passes over the sample: on a shared machine the minimum is the steady figure."""
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        for blob_id in sample:
            assert index.locations(KIND_DATA, blob_id)
        best = min(best, time.perf_counter() - t0)
    return best / len(sample) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="blob counts")
    parser.add_argument("--per-pack", type=int, default=500)
    parser.add_argument("--per-index", type=int, default=20)
    parser.add_argument("--baseline", action="store_true", help="also measure the dict layout")
    args = parser.parse_args()
    layouts: list[tuple[str, Callable[[], MasterIndex | DictIndex]]] = [("records", MasterIndex)]
    if args.baseline:
        layouts.append(("dict", DictIndex))
    per_object = args.per_pack * args.per_index
    print(f"python {os.path.basename(__file__)}; {args.per_pack} blobs a pack, {per_object} an index object")
    print("| blobs | layout | bytes/blob | decode s | add s | lookup us |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        objects, sample = index_objects(n, args.per_pack, args.per_index, seed=n)
        for name, make in layouts:
            held = held_bytes(objects, make)
            index, decode_s, add_s = load(objects, make)
            assert len(index) == n
            lookup = lookup_us(index, sample)
            print(f"| {n:,} | {name} | {held / n:.1f} | {decode_s:.2f} | {add_s:.2f} | {lookup:.1f} |", flush=True)
            del index
            gc.collect()


if __name__ == "__main__":
    main()
