"""Client-side encryption (issue 15): what an encrypted repository stores, what it refuses, its keys.

Real files, real repositories on disk, the real CLI as subprocesses, a real S3 server (moto) on
loopback for the bucket scan. Key slots use the cheapest KDF (CASSTORE_TEST_WEAK_KDF) so that the
many processes stay quick; tests/test_encryption_keys.py checks the real parameters once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import blake3
import pytest

from casstore.client import Repository
from casstore.errors import DowngradeError, IntegrityError, MissingKey, WrongPassword
from casstore.format import codec, layout
from casstore.format.config import RepoConfig
from casstore.format.crypto import KIND_INDEX, KIND_PLAN, KIND_SNAPSHOT, MasterKey
from casstore.format.pack import KIND_DATA, KIND_TREE, parse_header
from casstore.format.plan import GcPlan, decode_plan, encode_plan_verified
from casstore.repo import keys
from casstore.settings import load_settings
from tests.helpers import assert_one_line_error, file_contents, run

PASSWORD = "correct horse battery staple 15"
SMALL = {"min_size": 4096, "avg_size": 16384, "max_size": 65536}


@pytest.fixture(autouse=True)
def _weak_kdf_and_password(monkeypatch):
    monkeypatch.setenv("CASSTORE_TEST_WEAK_KDF", "1")
    monkeypatch.setenv("CASSTORE_PASSWORD", PASSWORD)
    keys.forget_unlocked()
    yield
    keys.forget_unlocked()


def make_source(root: Path) -> Path:
    """Files whose content, names and chunks the scans look for."""
    (root / "models" / "alpha-secret-dir").mkdir(parents=True)
    (root / "models" / "weights-of-the-model.json").write_text(
        json.dumps({"layer": [i * 0.5 for i in range(4000)], "owner": "Zanzibar Quux Widget Co"}))
    (root / "models" / "alpha-secret-dir" / "notes-about-plans.txt").write_text(
        "The quarterly plan of the Zanzibar Quux Widget Co is confidential.\n" * 300)
    (root / "random.bin").write_bytes(blake3.blake3(b"seed").digest(length=200_000))
    return root


def encrypted_repo(path: Path, password: str = PASSWORD) -> Repository:
    settings = load_settings({"repository": str(path), "password": password})
    config = RepoConfig.new(**SMALL, pack_size=64 * 1024, keys=keys.new_key(settings, "testhost"))
    return Repository.init_local(str(path), settings, config)


def open_encrypted(path: Path, password: str = PASSWORD) -> Repository:
    keys.forget_unlocked()
    return Repository.open_local(str(path), load_settings({"repository": str(path), "password": password}))


def stored_objects(root: Path) -> dict[str, bytes]:
    """Every object of a local repository (or remote folder) by key, local-only files left out."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(("state/", "lock")):
            found[rel] = path.read_bytes()
    return found


def needles_of(source: Path, config: RepoConfig) -> dict[str, bytes]:
    """What must appear in no stored object: file content pieces, names, unkeyed hashes of chunks."""
    needles: dict[str, bytes] = {}
    for path in source.rglob("*"):
        needles[f"name {path.name}"] = path.name.encode()
        if path.is_file():
            data = path.read_bytes()
            needles[f"hash of {path.name}"] = blake3.blake3(data).digest()
            for offset in range(0, len(data) - 24, max(1, len(data) // 8)):
                needles[f"content of {path.name}@{offset}"] = data[offset:offset + 24]
            with open(path, "rb") as fh:
                for i, chunk in enumerate(config.make_chunker().chunks(fh)):
                    digest = blake3.blake3(chunk).digest()
                    needles[f"unkeyed hash of chunk {i} of {path.name}"] = digest
                    needles[f"unkeyed hash (hex) of chunk {i} of {path.name}"] = digest.hex().encode()
    needles["password"] = PASSWORD.encode()
    return needles


def assert_nothing_readable(objects: dict[str, bytes], needles: dict[str, bytes]) -> None:
    assert objects, "no object to scan"
    names = "\n".join(objects).encode()
    for what, needle in needles.items():
        assert needle not in names, f"{what} appears in an object name"
        for key, body in objects.items():
            assert needle not in body, f"{what} appears in {key}"


# -- the repository works, and stores nothing readable ------------------------------------------

def test_encrypted_repository_snapshots_dedups_checks_restores_and_reads_as_dict(tmp_path):
    source = make_source(tmp_path / "data")
    with encrypted_repo(tmp_path / "repo") as repo:
        assert repo.config.encrypted
        first = repo.snapshot(str(source))
        second = repo.snapshot(str(source))
    assert first.summary.bytes_added > 0
    assert second.summary.bytes_added == 0 and second.summary.blobs_added == 0    # dedup
    with open_encrypted(tmp_path / "repo") as repo:
        report = repo.check(read_data=True)
        assert report.ok, report
        doc = repo.get(first.id).to_dict()
        assert doc["data_sources"]["models"]["weights-of-the-model"]["owner"] == "Zanzibar Quux Widget Co"
        repo.restore(first.id, str(tmp_path / "out"))
        assert file_contents(tmp_path / "out") == file_contents(source)
        config = repo.config
    cache = stored_objects(tmp_path / "cache")
    assert any("/files-" in key for key in cache), "the files cache was written"
    assert_nothing_readable({**stored_objects(tmp_path / "repo"), **cache}, needles_of(source, config))


def test_blob_ids_are_keyed_and_the_chunker_is_seeded_from_the_key(tmp_path):
    with encrypted_repo(tmp_path / "a") as a, encrypted_repo(tmp_path / "b") as b:
        assert a.config.chunker["seed"] == a.config.keys.chunker_seed() != b.config.chunker["seed"]
        data = b"the same chunk in two repositories"
        assert codec.blob_id(data, a.config.sealer) != codec.blob_id(data, b.config.sealer)
        assert codec.blob_id(data, a.config.sealer) != blake3.blake3(data).digest()


def test_two_encrypted_repositories_of_the_same_data_share_no_object_name(tmp_path):
    source = make_source(tmp_path / "data")
    for name in ("one", "two"):
        with encrypted_repo(tmp_path / name) as repo:
            repo.snapshot(str(source))
    one, two = (set(stored_objects(tmp_path / n)) - {layout.CONFIG_KEY} for n in ("one", "two"))
    assert len(one) > 5 and not one & two


# -- tampering ------------------------------------------------------------------------------------

@pytest.fixture
def snapshotted(tmp_path):
    source = make_source(tmp_path / "data")
    with encrypted_repo(tmp_path / "repo") as repo:
        snapshot_id = repo.snapshot(str(source)).id
        key = repo.config.keys
    return tmp_path / "repo", snapshot_id, key


def data_packs(repo_dir: Path) -> list[Path]:
    return sorted((repo_dir / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)[-2:]


def test_a_flipped_byte_in_a_pack_is_tampering_and_nothing_is_restored(snapshotted, tmp_path):
    repo_dir, snapshot_id, key = snapshotted
    pack = data_packs(repo_dir)[-1]
    entries = parse_header(pack.read_bytes(), 1 << 26, key.sealer)
    body = bytearray(pack.read_bytes())
    body[entries[0].offset + 20] ^= 1
    pack.write_bytes(bytes(body))
    with open_encrypted(repo_dir) as repo:
        report = repo.check(read_data=True)
        assert not report.ok
    proc = run("--repo", repo_dir, "check", "--read-data", expect=None)
    assert proc.returncode != 0 and b"damaged pack" in proc.stdout
    proc = run("--repo", repo_dir, "restore", snapshot_id, tmp_path / "out", expect=None,
               env={"CASSTORE_READ_ATTEMPTS": "1"})
    assert proc.returncode != 0 and b"authentication failed" in proc.stdout + proc.stderr
    restored = tmp_path / "out" / "models" / "weights-of-the-model.json"
    assert not restored.exists() or b"Zanzibar" in restored.read_bytes()   # never damaged plaintext


def test_blobs_swapped_or_moved_to_another_kind_are_refused(snapshotted):
    _, _, key = snapshotted
    sealer = key.sealer
    a, b = b"first blob " * 50, b"second blob " * 50
    id_a, id_b = codec.blob_id(a, sealer), codec.blob_id(b, sealer)
    sealed_a = b"".join(codec.encode_verified(a, 3, id_a, sealer, KIND_DATA))
    assert codec.decode_verified(sealed_a, len(a), id_a, sealer, KIND_DATA) == a
    with pytest.raises(IntegrityError, match="authentication failed"):      # swapped: read as blob b
        codec.decode_verified(sealed_a, len(a), id_b, sealer, KIND_DATA)
    with pytest.raises(IntegrityError, match="authentication failed"):      # renamed to a tree blob
        codec.decode_verified(sealed_a, len(a), id_a, sealer, KIND_TREE)
    with pytest.raises(IntegrityError):                                     # truncated
        codec.decode_verified(sealed_a[:-1], len(a), id_a, sealer, KIND_DATA)
    with pytest.raises(IntegrityError, match="not sealed"):                 # planted in plain
        codec.decode_verified(codec.encode(a, 3), len(a), id_a, sealer, KIND_DATA)


def test_objects_renamed_swapped_replayed_or_truncated_in_a_repository_are_refused(snapshotted):
    repo_dir, snapshot_id, key = snapshotted
    sealer = key.sealer
    manifest = (repo_dir / "snapshots" / snapshot_id).read_bytes()
    # a manifest put in index/ under its own (correct) hash: the kind bound in the seal refuses it
    with pytest.raises(IntegrityError, match="authentication failed"):
        sealer.open_object(KIND_INDEX, manifest, "index")
    assert sealer.open_object(KIND_SNAPSHOT, manifest, "snapshot")
    # a gc plan replayed under another plan key
    plan = encode_plan_verified(GcPlan(["ab" * 32], [], "h"), "gc/20261204t000000z-aaaaaaaaaaaa", sealer)
    with pytest.raises(IntegrityError, match="authentication failed"):
        decode_plan(plan, "gc/20261205t000000z-bbbbbbbbbbbb", sealer)
    with pytest.raises(IntegrityError):
        sealer.open_object(KIND_PLAN, plan[:-3], "plan", b"gc/20261204t000000z-aaaaaaaaaaaa")
    # two snapshot manifests swapped on disk, and one truncated: neither is read as a snapshot
    with open_encrypted(repo_dir) as repo:
        second = repo.snapshot(str(repo_dir.parent / "data"), tags=("two",)).id
    first_path, second_path = repo_dir / "snapshots" / snapshot_id, repo_dir / "snapshots" / second
    first_bytes, second_bytes = first_path.read_bytes(), second_path.read_bytes()
    first_path.write_bytes(second_bytes)
    second_path.write_bytes(first_bytes[:-5])
    proc = run("--repo", repo_dir, "show", snapshot_id[:12], expect=None)
    assert_one_line_error(proc, "does not match its name")
    assert b"Zanzibar" not in proc.stdout
    proc = run("--repo", repo_dir, "show", second[:12], expect=None)
    assert_one_line_error(proc, "does not match its name")


def test_a_pack_header_from_another_repository_with_another_key_is_refused(tmp_path, snapshotted):
    repo_dir, _, key = snapshotted
    with encrypted_repo(tmp_path / "other") as other:
        other.snapshot(str(make_source(tmp_path / "data2")))
    foreign = data_packs(tmp_path / "other")[-1].read_bytes()
    with pytest.raises(IntegrityError, match="authentication failed"):
        parse_header(foreign, 1 << 26, key.sealer)


# -- downgrade, wrong password, missing key ------------------------------------------------------

def plain_config_bytes(tmp_path: Path) -> bytes:
    plain = tmp_path / "plain"
    run("--repo", plain, "init")
    return (plain / "config").read_bytes()


def test_a_config_replaced_by_a_plain_one_is_a_downgrade_and_refused(snapshotted, tmp_path):
    repo_dir, snapshot_id, _ = snapshotted
    (repo_dir / "config").write_bytes(plain_config_bytes(tmp_path))
    for args in (("list",), ("cat", snapshot_id[:12], "models/weights-of-the-model.json"), ("check",)):
        proc = run("--repo", repo_dir, *args, expect=None)
        assert_one_line_error(proc, "downgrade")
        assert b"Zanzibar" not in proc.stdout
    # the attacker removes the key slots too: every sealed object still refuses a plain reader
    shutil.rmtree(repo_dir / "keys")
    proc = run("--repo", repo_dir, "cat", snapshot_id[:12], "models/weights-of-the-model.json", expect=None)
    assert_one_line_error(proc, "downgrade")
    assert proc.stdout == b""
    with pytest.raises(DowngradeError):
        parse_header(data_packs(repo_dir)[-1].read_bytes(), 1 << 26)


def test_wrong_password_and_missing_password_and_missing_keys_are_one_line_each(snapshotted):
    repo_dir, _, _ = snapshotted
    assert_one_line_error(run("--repo", repo_dir, "list", env={"CASSTORE_PASSWORD": "nope"}, expect=None),
                          "wrong password")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSTORE_PASSWORD")}
    assert_one_line_error(_run_env(repo_dir.parent, env, "--repo", repo_dir, "list", expect=None),
                          "encrypted", "CASSTORE_PASSWORD")
    shutil.rmtree(repo_dir / "keys")
    assert_one_line_error(run("--repo", repo_dir, "list", expect=None), "no key slot")
    with pytest.raises((MissingKey, WrongPassword)):
        open_encrypted(repo_dir)


# -- secrets stay secret -------------------------------------------------------------------------

PASSWORD_SCRIPT = """
import os, sys
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                seen.append(fh.read())
        except OSError:
            pass
with open(sys.argv[2], "ab") as log:
    log.write(b"\\n".join(seen) + b"\\n--\\n")
with open(sys.argv[1], "rb") as fh:
    sys.stdout.buffer.write(fh.read())
"""


def test_the_password_is_in_no_process_list_log_error_or_object(tmp_path):
    """The CLI runs with CASSTORE_PASSWORD_COMMAND: the command records every process's command
    line at the moment the password is asked for, then prints the password."""
    source = make_source(tmp_path / "data")
    secret_file, seen_file = tmp_path / "pw", tmp_path / "cmdlines"
    secret_file.write_text(PASSWORD + "\n")
    script = tmp_path / "askpass.py"
    script.write_text(PASSWORD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "CASSTORE_PASSWORD"}
    env["CASSTORE_PASSWORD_COMMAND"] = f"{sys.executable} {script} {secret_file} {seen_file}"
    remote = tmp_path / "remote"
    env["CASSTORE_REMOTE"] = f"file://{remote}"
    outputs = []
    for args in (("init", "--encrypt"), ("snapshot", source), ("sync",), ("list", "--json"), ("-v", "check"),
                 ("key", "list"), ("show", "latest")):
        outputs.append(_run_env(tmp_path, env, "--repo", tmp_path / "repo", *args))
    bad = _run_env(tmp_path, {**env, "CASSTORE_PASSWORD_COMMAND": f"{sys.executable} -c print('wrong')"},
                   "--repo", tmp_path / "repo", "-v", "list", expect=None)
    outputs.append(bad)
    assert bad.returncode != 0
    seen = seen_file.read_bytes()
    assert seen.count(b"--\n") >= 6, "the password command ran for each command"
    assert PASSWORD.encode() not in seen
    for proc in outputs:
        assert PASSWORD.encode() not in proc.stdout + proc.stderr
    for root in (tmp_path / "repo", remote, tmp_path / "cache"):
        for key, body in stored_objects(root).items():
            assert PASSWORD.encode() not in body, key
    state = tmp_path / "repo" / "state"
    for path in state.rglob("*") if state.exists() else []:
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes()


def _run_env(cwd: Path, env: dict[str, str], *args, expect: int | None = 0):
    import subprocess

    from tests.helpers import CASSTORE

    proc = subprocess.run([CASSTORE, *map(str, args)], capture_output=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=120)
    if expect is not None:
        assert proc.returncode == expect, proc.stderr.decode(errors="replace")
    return proc


def test_a_master_key_never_prints_its_secret():
    key = MasterKey.generate()
    assert key.secret.hex() not in repr(key) and key.secret.hex() not in repr(RepoConfig.new(keys=key))


def test_a_remote_downgraded_to_a_plain_config_is_refused_by_readers_and_by_sync(tmp_path):
    """The bucket's config replaced by a plain one: its key slots say otherwise (a reader with no
    local repository), and a local encrypted repository refuses to sync to it (its own marker)."""
    source = make_source(tmp_path / "data")
    remote = tmp_path / "remote"
    url = f"file://{remote}"
    env = {"CASSTORE_REMOTE": url}
    run("--repo", tmp_path / "repo", "init", "--encrypt", env=env)
    run("--repo", tmp_path / "repo", "snapshot", source, env=env)
    run("--repo", tmp_path / "repo", "sync", env=env)
    # a second machine adopts the encrypted remote with `init --from`
    run("--repo", tmp_path / "second", "init", "--from", url)
    assert run("--repo", tmp_path / "second", "list", "--remote", url, "--json").stdout.count(b'"id"') == 1
    (remote / "config").write_bytes(plain_config_bytes(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run("list", "--remote", url, expect=None, cwd=elsewhere)
    assert_one_line_error(proc, "downgrade")
    (source / "new.txt").write_text("more")
    run("--repo", tmp_path / "repo", "snapshot", source, env=env)
    assert_one_line_error(run("--repo", tmp_path / "repo", "sync", env=env, expect=None), "downgrade")


def test_the_python_api_creates_and_opens_an_encrypted_repository(tmp_path, monkeypatch):
    import casstore

    monkeypatch.delenv("CASSTORE_PASSWORD")
    source = make_source(tmp_path / "data")
    with casstore.init(str(tmp_path / "repo"), encrypt=True, password=PASSWORD) as repo:
        assert repo.config.encrypted
        snapshot_id = repo.snapshot(str(source)).id
    keys.forget_unlocked()
    with pytest.raises(MissingKey, match="CASSTORE_PASSWORD"):
        casstore.open(str(tmp_path / "repo"))
    with casstore.open(str(tmp_path / "repo"), password=PASSWORD) as repo:
        assert repo.get(snapshot_id).to_dict()["data_sources"]["random.bin"]


def test_two_data_packs_swapped_under_each_others_names_restore_nothing_wrong(snapshotted, tmp_path):
    repo_dir, snapshot_id, _ = snapshotted
    first, second = data_packs(repo_dir)
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    out = tmp_path / "out"
    proc = run("--repo", repo_dir, "restore", snapshot_id, out, expect=None, env={"CASSTORE_READ_ATTEMPTS": "1"})
    assert proc.returncode != 0
    source = file_contents(repo_dir.parent / "data")
    for name, data in file_contents(out).items():
        assert data == source[name], f"{name} restored with other bytes"
    assert run("--repo", repo_dir, "check", "--read-data", "--json", expect=None).returncode != 0


def test_an_encrypted_repository_stores_no_delta_blob(tmp_path):
    """Delta blobs (issue 17) are for plain repositories: a changed file is sealed whole, as before."""
    repo = encrypted_repo(tmp_path / "repo")
    assert repo.config.delta_chain == 0 and "delta" not in repo.config.compression
    source = make_source(tmp_path / "data")
    repo.snapshot(str(source))
    doc = source / "models" / "weights-of-the-model.json"
    doc.write_text(doc.read_text().replace("0.5,", "0.75,", 3))
    repo.snapshot(str(source))
    assert not repo.load_index().delta_keys()
    assert repo.check(read_data=True).ok


def test_gc_repacks_an_encrypted_repository_and_the_kept_snapshot_still_restores(tmp_path):
    from casstore.gc.run import collect_garbage

    source = make_source(tmp_path / "data")
    with encrypted_repo(tmp_path / "repo") as repo:
        first = repo.snapshot(str(source))
        data = source / "random.bin"          # its first chunk stays; the rest of its packs' bytes die
        data.write_bytes(data.read_bytes()[:8192] + blake3.blake3(b"other").digest(length=200_000))
        kept = repo.snapshot(str(source))
        repo.delete_snapshot(first.id)
        report = collect_garbage(repo, exclusive=True)
        assert report.packs_repacked > 0, "packs that are mostly dead: the case this test is about"
        assert repo.check(read_data=True).ok
        repo.restore(kept.id, str(tmp_path / "out"))
    assert file_contents(tmp_path / "out") == file_contents(source)


# `casstore snapshot` and `restore` of a plain repository, in a fresh interpreter, through the CLI
_PLAIN_RUN = """
import sys
from casstore.cli.main import cli
for args in (["init"], ["snapshot", sys.argv[2]], ["restore", "latest", sys.argv[3]]):
    try:
        cli(["--repo", sys.argv[1], *args], prog_name="casstore", standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, exc.code
print(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"))
"""


def test_a_plain_repository_never_imports_cryptography(tmp_path):
    """`cryptography` and OpenSSL are about 8.6 MiB of RSS (issue 17's peak-RSS target): a plain
    repository's snapshot and restore must not load them; an encrypted one still seals."""
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_bytes(b'{"a": 1}' * 1000)
    env = {**os.environ, "CASSTORE_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("CASSTORE_PASSWORD", None)
    proc = subprocess.run([sys.executable, "-c", _PLAIN_RUN, str(tmp_path / "repo"), str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "a.json").read_bytes() == (src / "a.json").read_bytes()
