"""Independent requests issued together, so their latencies overlap instead of adding up (issue 20)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: requests in flight at once; small: these are metadata reads, and providers throttle bursts
FANOUT = 8


def each_concurrently(call: Callable[[T], R], items: Sequence[T], limit: int = FANOUT) -> list[R]:
    """`[call(item) for item in items]`, up to `limit` at a time; the first error raises, in order."""
    if len(items) <= 1:
        return [call(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor  # lazy: most commands' start-up needs no pool

    with ThreadPoolExecutor(min(limit, len(items)), thread_name_prefix="casstore-fanout") as pool:
        return list(pool.map(call, items))
