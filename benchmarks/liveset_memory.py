"""Bytes per member of gc's live set (issue 14): BlobSet against the set of (kind, id) tuples it replaced.

Members arrive as gc's tree walk produces them: fresh 32-byte ids, each held only by the set (a
set of tuples keeps each tuple and its bytes object; a BlobSet copies 31 bytes and lets them go).
Reported: tracemalloc's traced memory held by the finished set over N, and the mean membership
test of a member.

    python benchmarks/liveset_memory.py 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Callable, Collection, Iterator

from casstore.format.blobset import BlobSet
from casstore.format.pack import KIND_DATA


def members(n: int, seed: int) -> Iterator[tuple[int, bytes]]:
    rng = random.Random(seed)
    for _ in range(n):
        yield KIND_DATA, rng.randbytes(32)


def tuple_set(items: Iterator[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
    return set(items)


Maker = Callable[[Iterator[tuple[int, bytes]]], Collection[tuple[int, bytes]]]


def measure(n: int, make: Maker) -> tuple[float, float]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    live = make(members(n, seed=n))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    sample = [blob_id for _, blob_id in members(min(n, 100_000), seed=n)]
    t0 = time.perf_counter()
    for blob_id in sample:
        assert (KIND_DATA, blob_id) in live
    return held / n, (time.perf_counter() - t0) / len(sample) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int)
    args = parser.parse_args()
    print(f"python {os.path.basename(__file__)}")
    print("| members | layout | bytes/member | lookup us |")
    print("|---|---|---|---|")
    for n in args.sizes:
        for name, make in (("BlobSet", BlobSet), ("set of tuples (before)", tuple_set)):
            per, lookup = measure(n, make)
            print(f"| {n:,} | {name} | {per:.1f} | {lookup:.1f} |", flush=True)


if __name__ == "__main__":
    main()
