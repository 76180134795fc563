"""The fault-injecting remote wrapper (casstore.remotes.wrappers.FaultyRemote) with the mix of faults
the older fault tests were written for: failures before and after a call, some truncated reads,
some delays, some listings cut short."""

from __future__ import annotations

from casstore.remotes.base import Remote
from casstore.remotes.wrappers import FaultyRemote as _FaultyRemote


class FaultyRemote(_FaultyRemote):
    def __init__(self, inner: Remote, *, seed: int, failure_rate: float = 0.1, truncate_rate: float = 0.02,
                 delay_rate: float = 0.05, cut_listing_rate: float = 0.05, **more: float) -> None:
        super().__init__(inner, seed=seed, error_rate=failure_rate, lost_ack_rate=failure_rate / 2,
                         truncate_rate=truncate_rate, delay_rate=delay_rate, cut_listing_rate=cut_listing_rate,
                         **more)
