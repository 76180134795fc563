"""FastCDC (2020, normalized) through pyfastcdc's compiled implementation.

The gear table is XORed with a per-repository 63-bit seed, so cut points do not leak content
across repositories. The compiled (Cython) implementation is required: the pure-Python fallback
cuts about 600x slower, so importing it is refused rather than silently used.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Iterator
from typing import BinaryIO

with warnings.catch_warnings():
    warnings.simplefilter("error")  # pyfastcdc warns when it falls back to pure Python
    try:
        from pyfastcdc.cy import FastCDC
    except (ImportError, RuntimeWarning) as exc:  # pragma: no cover - install problem
        raise ImportError(
            "casstore needs pyfastcdc's compiled chunker; reinstall with PYFASTCDC_REQUIRE_CYTHON=1"
        ) from exc

# FastCDC normalization level (NC) from the paper; 1 matches fastcdc-rs and restic-like spreads
NORMALIZATION = 1


def new_seed() -> int:
    """A random non-zero seed for a new repository's gear table."""
    return secrets.randbits(63) | 1


class FastCDCChunker:
    algorithm = "fastcdc-2020"

    def __init__(self, min_size: int, avg_size: int, max_size: int, seed: int) -> None:
        if not 0 < seed < 2**63:
            raise ValueError("the chunker seed must be in 1 .. 2**63-1")
        self.min_size, self.avg_size, self.max_size, self.seed = min_size, avg_size, max_size, seed
        self._cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size,
                            normalized_chunking=NORMALIZATION, seed=seed)

    @classmethod
    def from_params(cls, params: dict) -> FastCDCChunker:
        return cls(int(params["min_size"]), int(params["avg_size"]), int(params["max_size"]), int(params["seed"]))

    def params(self) -> dict:
        return {"algorithm": self.algorithm, "min_size": self.min_size, "avg_size": self.avg_size,
                "max_size": self.max_size, "normalization": NORMALIZATION, "seed": self.seed}

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def chunks_of_buffer(self, buffer: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(buffer):
            yield chunk.data
