"""Shared pieces of the sync tests: a seed-shaped source folder, repositories, tree comparison."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from casstore.client import Repository
from casstore.format.config import RepoConfig
from casstore.settings import load_settings

KiB = 1024


def make_source(root: Path, seed: int = 1, n_json: int = 40, big_mib: int = 3) -> Path:
    """A small folder shaped like the seed's: JSON documents in a few sources plus one large file."""
    rng = random.Random(seed)
    for i in range(n_json):
        folder = root / ["ai_hub", "total_market_intelligence", "notification_ai"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        records = [{"id": j, "score": rng.random(), "label": f"item-{rng.randrange(10**6)}"} for j in range(60)]
        (folder / f"doc_{i:03d}.json").write_text(json.dumps(records))
    (root / "ai_hub" / "collective_intelligence.json").write_text(json.dumps({"collective_iq": 100 + seed}))
    (root / "market.bin").write_bytes(rng.randbytes(big_mib * 1024 * KiB))
    return root


def day_of_edits(root: Path, seed: int = 2) -> None:
    """Edit a few documents, append to the large file, add and delete files."""
    rng = random.Random(seed)
    docs = sorted((root / "ai_hub").glob("doc_*.json"))
    for doc in docs[:3]:
        records = json.loads(doc.read_text())
        records[0]["score"] = rng.random()
        doc.write_text(json.dumps(records))
    with open(root / "market.bin", "ab") as fh:
        fh.write(rng.randbytes(200 * KiB))
    (root / "notification_ai" / "new.json").write_text(json.dumps({"new": True}))
    docs[-1].unlink()


def local_repo(path: Path, host: str = "testhost", config: RepoConfig | None = None, **overrides) -> Repository:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    settings = load_settings({"host": host, "repository": str(path), **overrides})
    config = config or RepoConfig.new(avg_size=64 * KiB)
    return Repository.init_local(str(path), settings, config)


def tree_digest(root: Path) -> dict[str, tuple]:
    """Relative path -> (kind, content or target, mode) for everything below `root`."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode)
            else:
                found[rel] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return found
