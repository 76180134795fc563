"""Loading the in-memory index from the local index table cache (issue 14): seconds and memory.

Builds a MasterIndex of N random blobs (500 a pack, as `index_memory.py`), saves it with
`write_image` (what `RepoCore.load_index` writes to the cache), then, in a fresh process, times
`read_image` (what the next `load_index` does before fetching any index object) and reports:
  file MB      the image's size
  save s       write_image (settles the table, hashes and writes it)
  load s       read_image in a fresh process: one read, one BLAKE3 pass, no object per blob
  load RSS MB  growth of that process's peak RSS while loading (the table is held once)
  lookup us    mean locations() of a known blob after the load

    python benchmarks/index_load.py 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from casstore.format.index import MasterIndex
from casstore.format.pack import KIND_DATA, BlobEntry

PER_PACK = 500


def build(n: int, seed: int) -> tuple[MasterIndex, list[bytes]]:
    rng = random.Random(seed)
    index, sample = MasterIndex(), []
    for first in range(0, n, PER_PACK):
        ids = [rng.randbytes(32) for _ in range(min(PER_PACK, n - first))]
        index.add_object(rng.randbytes(32).hex(), _one_pack(rng, ids))
        sample.extend(ids[:2])
    return index, sample


def _one_pack(rng: random.Random, ids: list[bytes]):
    from casstore.format.index import IndexObject
    entries = [BlobEntry(KIND_DATA, blob_id, 9 + i * 4000, 4000, 8000) for i, blob_id in enumerate(ids)]
    return IndexObject({"kind": "writer", "host": "bench", "session": "bench"}, {rng.randbytes(32).hex(): entries})


def load_child(path: str, sample_path: str) -> None:
    """Fresh process: time read_image, report the RSS it added, then time lookups."""
    with open(sample_path, "rb") as fh:
        raw = fh.read()
    sample = [raw[i:i + 32] for i in range(0, len(raw), 32)]
    before = _rss_mb()
    t0 = time.perf_counter()
    index = MasterIndex()
    with open(path, "rb") as fh:
        index.read_image(fh)
    load_s = time.perf_counter() - t0
    rss = _rss_mb() - before
    t0 = time.perf_counter()
    for blob_id in sample:
        assert index.locations(KIND_DATA, blob_id)
    lookup = (time.perf_counter() - t0) / len(sample) * 1e6
    print(json.dumps({"load_s": load_s, "rss_mb": rss, "lookup_us": lookup, "blobs": len(index)}))


def _rss_mb() -> float:
    """This process's peak resident set so far (VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, help="blob counts")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        load_child(*args.child)
        return
    print(f"python {os.path.basename(__file__)}; {PER_PACK} blobs a pack, one pack an index object")
    print("| blobs | file MB | save s | load s | load RSS MB | lookup us |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        index, sample = build(n, seed=n)
        with tempfile.TemporaryDirectory() as tmp:
            path, sample_path = os.path.join(tmp, "table"), os.path.join(tmp, "sample")
            t0 = time.perf_counter()
            with open(path, "wb") as fh:
                index.write_image(fh)
            save_s = time.perf_counter() - t0
            del index
            with open(sample_path, "wb") as fh:
                fh.write(b"".join(random.Random(1).sample(sample, min(20_000, len(sample)))))
            out = subprocess.run([sys.executable, __file__, "--child", path, sample_path], check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out)
            assert got["blobs"] == n
            size = os.path.getsize(path) / 1e6
            print(f"| {n:,} | {size:.0f} | {save_s:.2f} | {got['load_s']:.2f} | {got['rss_mb']:.0f} | "
                  f"{got['lookup_us']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
