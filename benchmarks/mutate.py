"""Deterministic changes to a generated data folder, for incremental benchmarks.

    python benchmarks/mutate.py DEST day      # a day of change
    python benchmarks/mutate.py DEST insert   # insert-only: a few bytes near the start of one large file

A day of change: edit values in 2% of the small JSON files, append records to a large JSONL file,
insert a few bytes near the start of a large indented JSON file, add 10 files, delete 5. The
insert-only change touches a different large file (a compact JSON array). Every result stays
valid JSON. The same folder and seed always give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys

from generate import DIR_KINDS, KINDS, LARGE_FILES, MB, TOP_DIRS, Values, small_document, small_size

_NUMBER = re.compile(rb'(": )(-?\d+\.\d+)')

DAY_APPEND = "total_market_intelligence/tick_history.jsonl"
DAY_INSERT = "universal_market_analysis/full_market_snapshot.json"
INSERT_ONLY = "ai_hub/collective_memory.json"
LARGE_PATHS = {path for path, *_ in LARGE_FILES}


def small_files(root: str) -> list[str]:
    """Relative paths of the small JSON files (everything under 1 MB except the large set)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name.endswith(".json") and rel not in LARGE_PATHS and os.path.getsize(path) < MB:
                found.append(rel)
    return found


def _edit_values(data: bytes, rng: random.Random, edits: int) -> bytes:
    matches = list(_NUMBER.finditer(data))
    if not matches:
        return data + b"\n"
    chosen = sorted(rng.sample(range(len(matches)), min(edits, len(matches))))
    out, last = [], 0
    for index in chosen:
        m = matches[index]
        decimals = len(m.group(2).split(b".")[1])
        value = float(m.group(2)) * (1 + (rng.random() - 0.5) * 0.1)
        out += [data[last:m.start(2)], b"%.*f" % (decimals, value)]
        last = m.end(2)
    out.append(data[last:])
    return b"".join(out)


def _insert_after_open_bracket(path: str, text: bytes) -> int:
    with open(path, "rb") as fh:
        data = fh.read()
    at = data.index(b"[") + 1
    with open(path, "wb") as fh:
        fh.write(data[:at] + text + data[at:])
    return len(text)


def day_of_change(root: str, seed: int = 7) -> dict:
    rng = random.Random(seed)
    v = Values(random.Random(seed + 1))
    small = small_files(root)
    # 1. edit a few values in 2% of the small files (same size class, new numbers)
    edited = rng.sample(small, max(1, round(len(small) * 0.02)))
    for rel in edited:
        path = os.path.join(root, rel)
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path, "wb") as fh:
            fh.write(_edit_values(data, rng, rng.randint(1, 6)))
    # 2. append records to a large JSONL file (about 1% of its size)
    append_path = os.path.join(root, DAY_APPEND)
    size = os.path.getsize(append_path)
    kind = KINDS["market"]
    lines = []
    added = 0
    while added < size // 100:
        line = kind.compact % kind.values(v) + "\n"
        lines.append(line)
        added += len(line)
    with open(append_path, "a") as fh:
        fh.write("".join(lines))
    # 3. insert a few bytes near the start of another large file
    inserted = _insert_after_open_bracket(os.path.join(root, DAY_INSERT),
                                          b'\n  {"note": "late correction %d"},' % rng.randrange(10**6))
    # 4. add 10 files, delete 5
    for n in range(10):
        top = TOP_DIRS[n % len(TOP_DIRS)]
        text = small_document(DIR_KINDS[top], top, v, small_size(rng), indented=n % 2 == 0)
        path = os.path.join(root, top, "added", f"new_{seed}_{n:03d}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
    remaining = sorted(set(small) - set(edited))
    deleted = rng.sample(remaining, 5)
    for rel in deleted:
        os.unlink(os.path.join(root, rel))
    return {"edited": len(edited), "appended_bytes": added, "inserted_bytes": inserted, "added": 10,
            "deleted": len(deleted)}


def insert_only(root: str, seed: int = 11) -> dict:
    rng = random.Random(seed)
    inserted = _insert_after_open_bracket(os.path.join(root, INSERT_ONLY),
                                          b'{"note": "inserted %d"},\n' % rng.randrange(10**6))
    return {"inserted_bytes": inserted, "file": INSERT_ONLY}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="a folder made by generate.py")
    parser.add_argument("change", choices=["day", "insert"])
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.change == "day":
        result = day_of_change(args.dest, *(() if args.seed is None else (args.seed,)))
    else:
        result = insert_only(args.dest, *(() if args.seed is None else (args.seed,)))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
