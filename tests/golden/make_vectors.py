"""Write the golden format vectors (tests/golden/*.bin) once, from fixed inputs and a fixed nonce.

Run only when the format changes on purpose (then update DESIGN.md and the expected values in
tests/test_golden_vectors.py with it):  python -m tests.golden.make_vectors
Every input is fixed here: no clock, no host name, no random bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import blake3
import msgpack

from casstore.format import codec
from casstore.format.config import RepoConfig
from casstore.format.crypto import SCHEME, MasterKey, make_slot
from casstore.format.index import IndexObject
from casstore.format.pack import KIND_DATA, PackBuilder
from casstore.format.plan import GcPlan, encode_plan_verified
from casstore.format.snapshot import SnapshotManifest
from casstore.format.tree import Entry, EntryType, encode_tree_chain

HERE = Path(__file__).parent
NONCE = bytes(range(16))                       # the pack header's nonce
RAW_BLOB = b"golden raw blob\n"                # does not shrink: stored raw (tag 0x00)
ZSTD_BLOB = b"casstore golden vector " * 40    # shrinks: one zstd frame (tag 0x01)
ZSTD_LEVEL = 3
CONFIG_ID = "0123456789abcdef0123456789abcdef"
CHUNKER = {"algorithm": "fastcdc-2020", "min_size": 65536, "avg_size": 262144, "max_size": 2097152,
           "normalization": 1, "seed": 0x5EED5EED}


def config_vector() -> bytes:
    return RepoConfig(id=CONFIG_ID, chunker=dict(CHUNKER)).encode()


def pack_vector() -> bytes:
    builder = PackBuilder(KIND_DATA)
    builder.add(codec.blob_id(RAW_BLOB), codec.encode(RAW_BLOB, 0), len(RAW_BLOB))
    builder.add(codec.blob_id(ZSTD_BLOB), codec.encode(ZSTD_BLOB, ZSTD_LEVEL), len(ZSTD_BLOB))
    with mock.patch.object(os, "urandom", lambda n: NONCE[:n]):
        _, data = builder.finish()
    return bytes(data)


# a delta blob (tag 0x04) against DELTA_BASE, as a pack and an index entry (issue 17): the base is
# hex text (zstd halves it), the delta changes two bytes of it, so the delta envelope is far smaller
DELTA_BASE = b"".join(blake3.blake3(bytes([i])).hexdigest().encode() for i in range(32))
DELTA_BLOB = DELTA_BASE[:700] + b"!!" + DELTA_BASE[702:]
DELTA_CHAIN = 8


def delta_config_vector() -> bytes:
    config = RepoConfig(id=CONFIG_ID, chunker=dict(CHUNKER),
                        compression={"algorithm": "zstd", "level": ZSTD_LEVEL, "delta": DELTA_CHAIN})
    return config.encode()


def delta_pack_vector() -> bytes:
    base_id, blob_id = codec.blob_id(DELTA_BASE), codec.blob_id(DELTA_BLOB)
    builder = PackBuilder(KIND_DATA)
    builder.add(base_id, codec.encode(DELTA_BASE, ZSTD_LEVEL), len(DELTA_BASE))
    builder.add(blob_id, codec.encode_verified(DELTA_BLOB, ZSTD_LEVEL, blob_id, base=(base_id, DELTA_BASE)),
                len(DELTA_BLOB))
    with mock.patch.object(os, "urandom", lambda n: NONCE[:n]):
        _, data = builder.finish()
    return bytes(data)


def index_vector(pack: bytes) -> bytes:
    from casstore.format.pack import parse_header

    entries = parse_header(pack, 8 << 20)
    index = IndexObject({"kind": "writer", "host": "golden-host", "session": "golden-session"},
                        {blake3.blake3(pack).hexdigest(): entries}, supersedes=["ab" * 32])
    return index.encode()[1]


def tree_entries() -> list[Entry]:
    chunk = codec.blob_id(ZSTD_BLOB)
    return [
        Entry(b"notes.txt", EntryType.FILE, 0o100644, 1000, 1000, 1_700_000_000_123_456_789, len(ZSTD_BLOB),
              0, [chunk]),
        Entry(b"sub", EntryType.DIR, 0o40755, 1000, 1000, 1_700_000_001_000_000_000, 0, 0, b"\x11" * 32),
        Entry(b"link", EntryType.SYMLINK, 0o120777, 0, 0, 1_700_000_002_000_000_000, 9, 0, b"notes.txt"),
        Entry(b"pipe", EntryType.FIFO, 0o10600, 0, 0, 1_700_000_003_000_000_000, 0, 0, None),
    ]


def tree_vector() -> bytes:
    pages: list[bytes] = []
    encode_tree_chain(tree_entries(), lambda body: pages.append(body) or codec.blob_id(body))
    assert len(pages) == 1
    return pages[0]


def snapshot_vector() -> bytes:
    manifest = SnapshotManifest(
        time_ns=1_700_000_100_000_000_000, host="golden-host", source="/data/golden", tree=b"\x22" * 32,
        tags=["nightly", "alpha"], parent="cd" * 32, incomplete=False,
        summary={"files_total": 3, "bytes_total": 945, "duration_ms": 12})
    return manifest.encode()[1]


def plan_vector() -> bytes:
    return GcPlan(condemned_packs=["ef" * 32, "0a" * 32], superseded_indexes=["12" * 32], host="golden-host").encode()


# -- the encrypted format (format/crypto.py): a fixed key, and every nonce and salt fixed --------

GOLDEN_KEY = MasterKey(bytes(range(32)), bytes(range(100, 116)))
GOLDEN_PASSWORD = b"golden password"
SLOT_ID = "5107" * 8
PLAN_KEY = "gc/20261204t120000z-0123456789ab"
WEAK = {"algorithm": "argon2id", "iterations": 1, "memory_kib": 64, "lanes": 1}


def fixed_random(n: int) -> bytes:
    """Every nonce and salt of the encrypted vectors (never in real use: they must be random)."""
    return bytes(range(n))


def encrypted_vectors() -> dict[str, bytes]:
    sealer = GOLDEN_KEY.sealer
    with mock.patch.object(os, "urandom", fixed_random):
        config = RepoConfig(id=CONFIG_ID, chunker={**CHUNKER, "seed": GOLDEN_KEY.chunker_seed()},
                            encryption={"scheme": SCHEME, "domain": GOLDEN_KEY.domain.hex()}, keys=GOLDEN_KEY).encode()
        builder = PackBuilder(KIND_DATA, sealer=sealer)
        for blob in (RAW_BLOB, ZSTD_BLOB):
            blob_id = codec.blob_id(blob, sealer)
            builder.add(blob_id, codec.encode_verified(blob, ZSTD_LEVEL, blob_id, sealer, KIND_DATA), len(blob))
        pack = bytes(builder.finish()[1])
        from casstore.format.pack import parse_header

        index = IndexObject({"kind": "writer", "host": "golden-host", "session": "golden-session"},
                            {blake3.blake3(pack).hexdigest(): parse_header(pack, 8 << 20, sealer)}).encode(sealer)[1]
        manifest = SnapshotManifest(time_ns=1_700_000_100_000_000_000, host="golden-host", source="/data/golden",
                                    tree=b"\x22" * 32).encode(sealer)[1]
        plan = encode_plan_verified(GcPlan(condemned_packs=["ef" * 32], host="golden-host"), PLAN_KEY, sealer)
        slot = make_slot(GOLDEN_KEY, GOLDEN_PASSWORD, SLOT_ID, WEAK, "golden-host")
    slot = msgpack.packb({**msgpack.unpackb(slot), "created_ns": 1_700_000_000_000_000_000})
    return {"enc-config.bin": config, "enc-pack.bin": pack, "enc-index.bin": index, "enc-snapshot.bin": manifest,
            "enc-plan.bin": plan, "enc-keyslot.bin": slot}


def vectors() -> dict[str, bytes]:
    pack = pack_vector()
    delta_pack = delta_pack_vector()
    return {"config.bin": config_vector(), "pack.bin": pack, "index.bin": index_vector(pack),
            "tree.bin": tree_vector(), "snapshot.bin": snapshot_vector(), "plan.bin": plan_vector(),
            "config-delta.bin": delta_config_vector(), "pack-delta.bin": delta_pack,
            "index-delta.bin": index_vector(delta_pack), **encrypted_vectors()}


def main() -> None:
    for name, data in vectors().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, blake3 {blake3.blake3(data).hexdigest()}")


if __name__ == "__main__":
    main()
