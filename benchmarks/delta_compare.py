"""Ways to store fewer bytes for a history of real JSON releases, measured on the same data
(issue 17): the bytes each scheme would store after every version, and its compression CPU time.

    python benchmarks/delta_compare.py [--versions 12] [--chain 8] [--schemes a,b]

Uses the pinned npm versions and the tarball cache of `realdata.py` (run that first, or this
fetches them). Each scheme sees the versions in order, file by file, as casstore would; a blob is
stored once per distinct plaintext (BLAKE3 id). Schemes:

- `base`:   casstore today: FastCDC 1 MiB average (256 KiB / 8 MiB), each chunk its own zstd 3 frame.
- `cdc256k`, `cdc64k`: the same with 256 KiB (64 KiB / 2 MiB) and 64 KiB (16 KiB / 512 KiB) chunks.
- `delta`:  1 MiB chunks; a new chunk of a file is compressed with the chunk at the same position
            (index) in the previous version of the same path as a zstd raw-content dictionary, when
            that is smaller; at most `--chain` deltas in a row before a full blob. The frame is
            what casstore writes (format/delta.py). `delta-chain2`, `delta-chain4`: bounds 2 and 4.
- `delta-align`: as `delta`, the old and new chunk lists realigned on every unchanged chunk
            (snapshot/deltahints.py); `delta-align-256k` the same with 256 KiB chunks.
- `dict`:   1 MiB chunks, every chunk compressed with one 112 KiB zstd dictionary trained on the
            first version's chunks (its size counted once).
- `group`:  1 MiB chunks; chunks under 64 KiB are grouped into zstd frames of up to 1 MiB
            (a version's new small blobs in order), larger ones as `base`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from realdata import fetch, load_pins, package_dir  # noqa: E402

from casstore.chunker.fastcdc import FastCDCChunker  # noqa: E402
from casstore.format import codec, delta  # noqa: E402

MiB = 1024 * 1024
SEED = 0x5EED_CA55  # fixed: every scheme cuts at the same places
SMALL = 64 * 1024
DICT_SIZE = 112 * 1024


def version_files(packages: list[dict], i: int, cache: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every regular file of version i, read straight from the tarballs."""
    for package in packages:
        with tarfile.open(fetch(package["versions"][i], cache)) as tar:
            for member in tar:
                if member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    yield f"{package_dir(package['name'])}/{member.name.split('/', 1)[1]}", fh.read()


def cut(chunker: FastCDCChunker, data: bytes) -> list[bytes]:
    return [bytes(c) for c in chunker.chunks(io.BytesIO(data))] if data else [b""]


def delta_size(base: bytes, data: bytes) -> int:
    """The frame casstore writes (format/delta.py), without the envelope's tag and base id."""
    return len(delta.encode_parts(data, 3, codec.blob_id(base), base)[1])


class Scheme:
    def __init__(self, name: str) -> None:
        self.name, self.stored, self.blobs, self.cpu = name, 0, 0, 0.0
        self.seen: set[bytes] = set()
        self.per_version: list[int] = []

    def end_version(self) -> None:
        self.per_version.append(self.stored)


class PerChunk(Scheme):
    """Each new chunk its own zstd frame (base, cdc256k, cdc64k)."""

    def __init__(self, name: str, sizes: tuple[int, int, int]) -> None:
        super().__init__(name)
        self.chunker = FastCDCChunker(*sizes, SEED)

    def new_chunks(self, data: bytes) -> Iterator[bytes]:
        """The file's chunks not stored before, each counted as a blob (dedup across versions)."""
        for chunk in cut(self.chunker, data):
            cid = codec.blob_id(chunk)
            if cid in self.seen:
                continue
            self.seen.add(cid)
            self.blobs += 1
            yield chunk

    def add_file(self, path: str, data: bytes) -> None:
        for chunk in self.new_chunks(data):
            started = time.process_time()
            self.stored += sum(map(len, codec.encode_parts(chunk, 3))) + 40   # + an index record's worth
            self.cpu += time.process_time() - started


class Delta(PerChunk):
    def __init__(self, name: str, chain: int, align: bool = False,
                 sizes: tuple[int, int, int] = (256 * 1024, MiB, 8 * MiB)) -> None:
        super().__init__(name, sizes)
        self.chain, self.align = chain, align
        self.previous: dict[str, list[bytes]] = {}
        self.depth: dict[bytes, int] = {}
        self.deltas = 0

    def add_file(self, path: str, data: bytes) -> None:
        chunks = cut(self.chunker, data)
        before = self.previous.get(path, [])
        position = {codec.blob_id(c): i for i, c in enumerate(before)} if self.align else {}
        shift = 0
        for k, chunk in enumerate(chunks):
            cid = codec.blob_id(chunk)
            if cid in position:                 # an unchanged chunk realigns the old and new lists
                shift = position[cid] - k
            if cid in self.seen:
                continue
            k += shift
            self.seen.add(cid)
            started = time.process_time()
            full = sum(map(len, codec.encode_parts(chunk, 3)))
            size, depth = full, 0
            if k < len(before):
                base_id = codec.blob_id(before[k])
                base_depth = self.depth.get(base_id, 0)
                if base_depth < self.chain:
                    d = delta_size(before[k], chunk) + 1 + 32   # tag + base id in the envelope
                    if d < full:
                        size, depth = d, base_depth + 1
            self.cpu += time.process_time() - started
            self.depth[cid] = depth
            self.deltas += depth > 0
            self.stored += size + 40
            self.blobs += 1
        self.previous[path] = chunks


class Trained(PerChunk):
    def __init__(self, name: str) -> None:
        super().__init__(name, (256 * 1024, MiB, 8 * MiB))
        self.samples: list[bytes] = []
        self.ctx: zstandard.ZstdCompressor | None = None
        self.pending: list[bytes] = []

    def add_file(self, path: str, data: bytes) -> None:
        for chunk in self.new_chunks(data):
            if self.ctx is None:          # the first version: gather samples, compress at its end
                self.pending.append(chunk)
                self.samples.extend(chunk[o:o + 4096] for o in range(0, len(chunk), 64 * 1024))
            else:
                self._compress(chunk)

    def _compress(self, chunk: bytes) -> None:
        assert self.ctx is not None
        started = time.process_time()
        self.stored += min(len(self.ctx.compress(chunk)), len(chunk)) + 1 + 40
        self.cpu += time.process_time() - started

    def end_version(self) -> None:
        if self.ctx is None:
            started = time.process_time()
            zdict = zstandard.train_dictionary(DICT_SIZE, self.samples)
            self.ctx = zstandard.ZstdCompressor(level=3, dict_data=zdict)
            self.cpu += time.process_time() - started
            self.stored += len(zdict.as_bytes())
            for chunk in self.pending:
                self._compress(chunk)
            self.pending, self.samples = [], []
        super().end_version()


class Grouped(PerChunk):
    def __init__(self, name: str) -> None:
        super().__init__(name, (256 * 1024, MiB, 8 * MiB))
        self.group: list[bytes] = []

    def add_file(self, path: str, data: bytes) -> None:
        for chunk in self.new_chunks(data):
            if len(chunk) >= SMALL:
                started = time.process_time()
                self.stored += sum(map(len, codec.encode_parts(chunk, 3))) + 40
                self.cpu += time.process_time() - started
                continue
            self.group.append(chunk)
            self.stored += 40 + 8       # its index record and its offset inside the frame
            if sum(map(len, self.group)) >= MiB:
                self._flush()

    def _flush(self) -> None:
        if self.group:
            started = time.process_time()
            self.stored += sum(map(len, codec.encode_parts(b"".join(self.group), 3)))
            self.cpu += time.process_time() - started
            self.group = []

    def end_version(self) -> None:
        self._flush()
        super().end_version()


def schemes(chain: int) -> list[Scheme]:
    return [PerChunk("base", (256 * 1024, MiB, 8 * MiB)), PerChunk("cdc256k", (64 * 1024, 256 * 1024, 2 * MiB)),
            PerChunk("cdc64k", (16 * 1024, 64 * 1024, 512 * 1024)), Delta("delta", chain),
            Delta("delta-chain2", 2), Delta("delta-chain4", 4), Delta("delta-align", chain, align=True),
            Delta("delta-align-256k", chain, align=True, sizes=(64 * 1024, 256 * 1024, 2 * MiB)),
            Trained("dict"), Grouped("group")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--versions", type=int, default=12)
    p.add_argument("--chain", type=int, default=8, help="deltas in a row before a full blob (default 8)")
    p.add_argument("--cache", default=str(HERE / "work" / "realdata-cache"))
    p.add_argument("--output", default=str(HERE / "delta-compare.json"))
    p.add_argument("--schemes", default="", help="comma-separated subset of the schemes (default all)")
    args = p.parse_args(argv)
    packages = load_pins(args.versions)
    cache = Path(args.cache)
    all_schemes = [s for s in schemes(args.chain) if not args.schemes or s.name in args.schemes.split(",")]
    seen_files: dict[str, bytes] = {}     # path -> content id of the last version (unchanged: skipped)
    raw_new: list[int] = []
    for i in range(args.versions):
        new_bytes = 0
        for path, data in version_files(packages, i, cache):
            fid = codec.blob_id(data)
            if seen_files.get(path) == fid:
                continue
            seen_files[path] = fid
            new_bytes += len(data)
            for scheme in all_schemes:
                scheme.add_file(path, data)
        for scheme in all_schemes:
            scheme.end_version()
        raw_new.append(new_bytes)
        print(f"version {i + 1}: " + ", ".join(f"{s.name} {s.stored / MiB:.1f}" for s in all_schemes), flush=True)
    report = {"versions": args.versions, "chain": args.chain, "raw_changed_bytes": raw_new,
              "schemes": {s.name: {"stored": s.per_version, "blobs": s.blobs, "cpu_s": s.cpu,
                                   "deltas": getattr(s, "deltas", None)} for s in all_schemes}}
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: {"MiB": round(v["stored"][-1] / MiB, 1), "added after v1 MiB":
                          round((v["stored"][-1] - v["stored"][0]) / MiB, 1), "blobs": v["blobs"],
                          "cpu_s": round(v["cpu_s"], 1), "deltas": v["deltas"]}
                      for k, v in report["schemes"].items()}, indent=1))


if __name__ == "__main__":
    main()
