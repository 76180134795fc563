"""A generator of hostile repositories, and every read path run against one (issue 13, cases 7-10).

Each repository is built with casstore's own encoders (blob store, tree and manifest encoders), so
only the intended field is hostile: a tree DAG, a summary that lies, one chunk named thousands of
times, a size that is not the bytes stored, metadata outside the platform's range, privileged
entries, a JSON file nested 100,000 deep, unsafe names, a config outside the format's range.

`python -m tests.hostile_repos CASE DIR` builds the case in DIR, then runs every read path
(restore, check, to_dict, the HTTP API, diff, stats, sync from it) in this process, under an
address-space limit, and prints one JSON line: path -> outcome. An outcome is "ok", "ok+errors"
(a restore that reported per-file failures), "http <status>", or "error <CasstoreError class>:
message"; anything else escaping is "crash <class>", which the tests refuse.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Callable

import msgpack

CASES = ("dag", "dag_lying_summary", "chunk_reuse", "size_lie", "huge_metadata", "privileged", "deep_json",
         "unsafe_names", "huge_config")
MEMORY_LIMIT = 3 << 30        # address space of the process running the read paths
HARD_VISIT_LIMIT = 200_000    # casstore's hard walk limit (50 M entries) scaled down for a test
KiB = 1024
CHUNK = 512 * KiB             # the test repository's maximum chunk size


def build(case: str, repo_dir: str) -> str:
    """Make the hostile repository `case` in `repo_dir`; return its hostile snapshot's id."""
    from casstore.client import Repository
    from casstore.format.config import RepoConfig
    from casstore.settings import load_settings

    repo = Repository.init_local(repo_dir, load_settings({"host": "h"}),
                                 config=RepoConfig.new(avg_size=64 * KiB, max_size=CHUNK))
    repo.load_index()
    store = repo.blob_store()
    builder = _BUILDERS[case] if case != "huge_config" else _BUILDERS["chunk_reuse"]
    tree, summary = builder(_Writer(store))
    store.flush()
    store.close()
    _snapshot(repo, _Writer.empty_tree(repo), {"files_total": 0, "dirs_total": 1}, time_ns=1)  # for diff
    snapshot_id = _snapshot(repo, tree, summary, time_ns=2)
    if case == "huge_config":
        _rewrite_config(repo_dir, max_size=2**40)
    return snapshot_id


class _Writer:
    def __init__(self, store) -> None:
        self.store = store

    def tree(self, entries: list) -> bytes:
        from casstore.format.pack import KIND_TREE
        from casstore.format.tree import encode_tree_chain

        return encode_tree_chain(entries, lambda body: self.store.add(KIND_TREE, body)[0])

    def chunk(self, data: bytes) -> bytes:
        from casstore.format.pack import KIND_DATA

        return self.store.add(KIND_DATA, data)[0]

    @staticmethod
    def empty_tree(repo) -> bytes:
        writer = _Writer(repo.blob_store())
        tree = writer.tree([])
        writer.store.flush()
        writer.store.close()
        return tree


def _entry(name: bytes, kind: str = "file", content: object = None, *, size: int = 0, mode: int = 0o644,
           uid: int = 0, gid: int = 0):
    from casstore.format.tree import Entry, EntryType

    default = [] if kind == "file" else None
    return Entry(name, EntryType(kind), mode, uid, gid, 1_600_000_000 * 10**9, size, 0,
                 default if content is None else content)


def _file(writer: _Writer, name: bytes, data: bytes, **fields: int):
    return _entry(name, "file", [writer.chunk(data)] if data else [], size=len(data), **fields)


def _dag(writer: _Writer, levels: int = 40) -> bytes:
    tree = writer.tree([_file(writer, b"f.json", b'{"x": 1}')])
    for _ in range(levels):
        tree = writer.tree([_entry(name, "dir", tree, mode=0o755) for name in (b"a", b"b")])
    return tree


def _case_dag(writer: _Writer) -> tuple[bytes, dict]:
    return _dag(writer), {"files_total": 1, "dirs_total": 40}


def _case_dag_lying_summary(writer: _Writer) -> tuple[bytes, dict]:
    return _dag(writer), {"files_total": 2**62, "dirs_total": 2**62, "bytes_total": 2**62}


def _case_chunk_reuse(writer: _Writer) -> tuple[bytes, dict]:
    zero = writer.chunk(bytes(CHUNK))
    refs = 4000                                  # 2 GiB of zeros named by a repository of a few KiB
    tree = writer.tree([_entry(b"zeros.json", "file", [zero] * refs, size=refs * CHUNK),
                        _file(writer, b"small.json", b'{"ok": true}')])
    return tree, {"files_total": 2, "dirs_total": 1, "bytes_total": 100}


def _case_size_lie(writer: _Writer) -> tuple[bytes, dict]:
    tree = writer.tree([_entry(b"grown.json", "file", [writer.chunk(b'{"a": 1}' * 1000)], size=10),
                        _file(writer, b"fine.json", b'{"ok": true}')])
    return tree, {"files_total": 2, "dirs_total": 1, "bytes_total": 8010}


def _case_huge_metadata(writer: _Writer) -> tuple[bytes, dict]:
    tree = writer.tree([_file(writer, b"a.txt", b"first"),
                        _file(writer, b"b.txt", b"mode", mode=2**40),
                        _file(writer, b"c.txt", b"uid", uid=2**40),
                        _entry(b"d", "dir", writer.tree([_file(writer, b"inner.txt", b"inner")]), gid=2**40),
                        _file(writer, b"e.txt", b"last")])
    return tree, {"files_total": 5, "dirs_total": 2, "bytes_total": 30}


def _case_privileged(writer: _Writer) -> tuple[bytes, dict]:
    tree = writer.tree([_file(writer, b"suid", b"#!/bin/sh\n", mode=0o6777),
                        _entry(b"null", "chardev", os.makedev(1, 3), mode=0o666),
                        _file(writer, b"theirs.txt", b"owned by someone else", uid=4242, gid=4242)])
    return tree, {"files_total": 2, "dirs_total": 1, "bytes_total": 40}


def _case_deep_json(writer: _Writer) -> tuple[bytes, dict]:
    depth = 100_000
    tree = writer.tree([_file(writer, b"deep.json", b"[" * depth + b"]" * depth),
                        _file(writer, b"fine.json", b'{"ok": true}')])
    return tree, {"files_total": 2, "dirs_total": 1, "bytes_total": 2 * depth + 12}


def _case_unsafe_names(writer: _Writer) -> tuple[bytes, dict]:
    tree = writer.tree([_file(writer, b"..", b"up"), _file(writer, b"a/../../b", b"climb"),
                        _file(writer, b"ok.txt", b"fine")])
    return tree, {"files_total": 3, "dirs_total": 1, "bytes_total": 11}


_BUILDERS: dict[str, Callable[[_Writer], tuple[bytes, dict]]] = {
    "dag": _case_dag, "dag_lying_summary": _case_dag_lying_summary, "chunk_reuse": _case_chunk_reuse,
    "size_lie": _case_size_lie, "huge_metadata": _case_huge_metadata, "privileged": _case_privileged,
    "deep_json": _case_deep_json, "unsafe_names": _case_unsafe_names,
}


def _snapshot(repo, tree: bytes, summary: dict, *, time_ns: int) -> str:
    from casstore.format.snapshot import SnapshotManifest

    manifest = SnapshotManifest(time_ns=time_ns, host="h", source="/s", tree=tree, summary=summary)
    return repo.write_snapshot(manifest)[0]


def _rewrite_config(repo_dir: str, **chunker: int) -> None:
    path = os.path.join(repo_dir, "config")
    with open(path, "rb") as fh:
        doc = msgpack.unpackb(fh.read())
    doc["chunker"].update(chunker)
    os.chmod(path, 0o600)
    with open(path, "wb") as fh:
        fh.write(msgpack.packb(doc))


# -- the read paths ---------------------------------------------------------------------------


def read_paths(repo_dir: str, snapshot_id: str, work: str) -> dict[str, str]:
    """Run every read path against the repository; path -> outcome."""
    from casstore.settings import load_settings

    settings = load_settings({"host": "h", "repository": repo_dir, "cache_dir": os.path.join(work, "cache")})
    paths: dict[str, Callable[[], str]] = {
        "restore": lambda: _restore(repo_dir, settings, snapshot_id, os.path.join(work, "restored")),
        "check": lambda: _check(repo_dir, settings),
        "to_dict": lambda: _to_dict(repo_dir, settings, snapshot_id),
        "api": lambda: _api(settings, snapshot_id),
        "api_file": lambda: _api_file(repo_dir, settings, snapshot_id),
        "diff": lambda: _diff(repo_dir, settings, snapshot_id),
        "stats": lambda: _stats(repo_dir, settings),
        "sync": lambda: _sync(repo_dir, settings, f"file://{os.path.join(work, 'offsite')}"),
    }
    return {name: _outcome(run) for name, run in paths.items()}


def _outcome(run: Callable[[], str]) -> str:
    from casstore.errors import CasstoreError

    try:
        return run()
    except CasstoreError as exc:
        return f"error {type(exc).__name__}: {str(exc)[:300]}"
    except BaseException as exc:   # the one thing these tests refuse
        return f"crash {type(exc).__name__}: {str(exc)[:300]}"


def _open(repo_dir: str, settings):
    from casstore.client import Repository

    return Repository.open_local(repo_dir, settings)


def _restore(repo_dir: str, settings, snapshot_id: str, target: str) -> str:
    result = _open(repo_dir, settings).restore(snapshot_id, target)
    return "ok" if result.ok else "ok+errors " + json.dumps(result.errors)


def _check(repo_dir: str, settings) -> str:
    report = _open(repo_dir, settings).check()
    return "ok" if report.ok else "ok+errors " + json.dumps(report.as_dict()["affected"])[:2000]


def _to_dict(repo_dir: str, settings, snapshot_id: str) -> str:
    snapshot = _open(repo_dir, settings).get(snapshot_id)
    data = snapshot.to_dict()["data_sources"].materialize()
    return "ok " + json.dumps(_shape(data))[:2000]


def _shape(value: object) -> object:
    """The dict's shape: bytes as their length, so the outcome stays small."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _api(settings, snapshot_id: str) -> str:
    from fastapi.testclient import TestClient

    from casstore.api.app import create_app

    with TestClient(create_app(settings, allowed_hosts=None)) as client:
        reply = client.get(f"/api/cloud/backup/{snapshot_id}")
    if reply.status_code == 200:
        json.loads(reply.content)          # a 200 is a whole, valid document
    return f"http {reply.status_code} " + reply.text[:300]


def _api_file(repo_dir: str, settings, snapshot_id: str) -> str:
    """Download each of the snapshot's top files: a 200 carries exactly Content-Length bytes."""
    from fastapi.testclient import TestClient

    from casstore.api.app import create_app

    snapshot = _open(repo_dir, settings).get(snapshot_id)
    files = [e.name.decode() for e in snapshot.tree(snapshot.manifest.tree) if e.type.value == "file"]
    statuses = []
    with TestClient(create_app(settings, allowed_hosts=None)) as client:
        for name in files:
            reply = client.get(f"/api/cloud/backup/{snapshot_id}/file", params={"path": name})
            if reply.status_code == 200:
                assert len(reply.content) == int(reply.headers["content-length"]), "a 200 shorter than it said"
            statuses.append(f"{name} {reply.status_code}")
    return "http " + ", ".join(statuses)


def _diff(repo_dir: str, settings, snapshot_id: str) -> str:
    from casstore.read.diff import diff_snapshots

    repo = _open(repo_dir, settings)
    base = next(s for s in repo.all_snapshots() if s.id != snapshot_id)
    changes = diff_snapshots(repo.get(base.id), repo.get(snapshot_id))
    return f"ok {len(changes)} changes"


def _stats(repo_dir: str, settings) -> str:
    _open(repo_dir, settings).stats()
    return "ok"


def _sync(repo_dir: str, settings, url: str) -> str:
    _open(repo_dir, settings).sync(url)
    return "ok"


def main() -> None:
    case, work = sys.argv[1], sys.argv[2]
    import casstore.format.walk

    casstore.format.walk.MAX_VISIT = HARD_VISIT_LIMIT
    repo_dir = os.path.join(work, "repo")
    snapshot_id = build(case, repo_dir)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    print(json.dumps(read_paths(repo_dir, snapshot_id, work)))


if __name__ == "__main__":
    main()
