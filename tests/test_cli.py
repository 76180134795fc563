"""The `casstore` command line: every command, its options and --json, settings from .env, and
user errors as one clear line on stderr with a non-zero exit and no traceback.

Most commands run in-process through click's CliRunner; the console script itself runs as a
subprocess where real stdout/stderr bytes matter (binary `cat`, one-line errors, .env in the
working directory).
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from casstore.format.pack import KIND_TREE
from casstore.format.snapshot import SnapshotManifest
from tests.helpers import (
    KiB,
    assert_one_line_error,
    assert_same_tree,
    commit,
    det_bytes,
    flip_bit,
    invoke,
    objects,
    on_a_terminal,
    open_repo,
    run,
    tree_state,
    write,
)

COMMANDS = ["backup", "cat", "check", "diff", "init", "list", "ls", "restore", "show", "snapshot", "stats"]


def _json(*args, expect: int = 0):
    return json.loads(invoke(*args, "--json", expect=expect).stdout)


@pytest.fixture
def history(tmp_path):
    """./data snapshotted twice into ./.casstore, with every kind of change in between."""
    data = tmp_path / "data"
    write(data / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 120}))
    write(data / "market" / "big.bin", det_bytes(600 * KiB, "big"))
    write(data / "market" / "old.json", "[1, 2, 3]")
    write(data / "notes" / "todo.txt", "todo\n")
    write(data / "logs" / "app.log", "start\n")
    write(data / "gone" / "x.txt", "x\n")
    init = _json("init", "--chunk-avg", 64 * KiB)
    first = _json("snapshot", "--tag", "nightly", "--tag", "v1")
    write(data / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": 135}))
    write(data / "market" / "new.json", '{"new": 1}')
    (data / "market" / "old.json").unlink()
    (data / "notes" / "todo.txt").chmod(0o600)
    with open(data / "logs" / "app.log", "a") as fh:
        fh.write("more\n")
    (data / "gone" / "x.txt").unlink()
    (data / "gone").rmdir()
    write(data / "added_dir" / "y.txt", "y\n")
    second = _json("backup", "--tag", "v2")
    return {"init": init, "first": first, "second": second, "data": data}


def test_help_lists_every_command_and_version():
    out = run("--help").stdout.decode()
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\b", out, re.M), f"{command} missing from --help"
    assert run("--version").returncode == 0


def test_init_json_and_refusing_a_second_init(tmp_path, history):
    init = history["init"]
    assert init["chunker"]["avg_size"] == 64 * KiB and "seed" not in init["chunker"]
    assert re.fullmatch(r"[0-9a-f]{32}", init["id"])
    assert_one_line_error(run("init", expect=None), "already exists")


def test_snapshot_json_tags_and_backup_alias(history):
    first, second = history["first"], history["second"]
    for snap in (first, second):
        assert re.fullmatch(r"[0-9a-f]{64}", snap["id"]) and snap["short_id"] == snap["id"][:8]
        assert snap["incomplete"] is False
    assert first["files_total"] == 6 and first["files_new"] == 6
    assert second["files_new"] == 2 and second["files_changed"] == 2
    listed = _json("list")
    assert [s["tags"] for s in listed] == [["v2"], ["nightly", "v1"]]
    assert listed[0]["parent"] == first["id"]


def test_snapshot_text_output(history):
    out = invoke("snapshot").stdout
    assert re.search(r"snapshot [0-9a-f]{8} saved", out)
    assert "files: 6 (0 new, 0 changed, 6 unchanged)" in out


def test_list_text_and_limit(history):
    out = invoke("list").stdout
    assert history["first"]["short_id"] in out and history["second"]["short_id"] in out
    assert history["first"]["id"] not in out
    assert [s["id"] for s in _json("list", "-n", "1")] == [history["second"]["id"]]


def test_show_and_ls(history):
    shown = _json("show", history["first"]["short_id"])
    assert shown["id"] == history["first"]["id"]
    assert {e["path"] for e in shown["entries"]} == {"ai_hub", "market", "notes", "logs", "gone"}
    market = _json("ls", "latest", "market")
    assert {e["path"]: e["size"] for e in market["entries"]} == {"market/big.bin": 600 * KiB,
                                                                 "market/new.json": 10}
    deep = _json("show", "latest", "-r")
    assert "ai_hub/collective_intelligence.json" in {e["path"] for e in deep["entries"]}
    text = invoke("show", "latest", "market").stdout
    assert "market/big.bin" in text and "600.0 KiB" in text and "host testhost" in text


def test_cat_writes_exact_bytes(history):
    proc = run("cat", history["first"]["short_id"], "market/big.bin")
    assert proc.stdout == det_bytes(600 * KiB, "big") and proc.stderr == b""
    assert run("cat", "latest", "ai_hub/collective_intelligence.json").stdout == b'{"collective_iq": 135}'


def test_snapshot_reads_its_settings_once(tmp_path, monkeypatch):
    """`casstore snapshot` reads the environment and .env once and hands the settings on."""
    import casstore.cli.common
    import casstore.repo.core
    import casstore.repo.open
    from casstore.settings import load_settings

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return load_settings(*args, **kwargs)

    for module in (casstore.cli.common, casstore.repo.core, casstore.repo.open):
        monkeypatch.setattr(module, "load_settings", counting)
    write(tmp_path / "data" / "a.json", "{}")
    invoke("snapshot")      # the first one creates ./.casstore
    invoke("snapshot")
    assert len(calls) == 2 and (tmp_path / ".casstore" / "config").is_file()


def test_cat_below_a_file_is_one_line_error(history):
    """A path that goes on below a file names nothing: one error line, not a traceback."""
    proc = run("cat", "latest", "ai_hub/collective_intelligence.json/x", expect=None)
    assert_one_line_error(proc, "ai_hub/collective_intelligence.json is not a directory")


def test_diff_added_removed_modified_metadata(history):
    changes = _json("diff", history["first"]["short_id"], history["second"]["short_id"])
    by_path = {c["path"]: c for c in changes}
    assert by_path["market/new.json"]["change"] == "added" and by_path["market/new.json"]["new_size"] == 10
    assert by_path["market/old.json"]["change"] == "removed" and by_path["market/old.json"]["old_size"] == 9
    assert by_path["gone/"]["change"] == "removed" and by_path["gone/x.txt"]["change"] == "removed"
    assert by_path["added_dir/"]["change"] == "added" and by_path["added_dir/y.txt"]["change"] == "added"
    log = by_path["logs/app.log"]
    assert log["change"] == "modified" and (log["old_size"], log["new_size"]) == (6, 11)
    assert by_path["ai_hub/collective_intelligence.json"]["change"] == "modified"
    assert by_path["notes/todo.txt"]["change"] == "metadata"
    assert "market/big.bin" not in by_path
    text = invoke("diff", history["first"]["short_id"], "latest").stdout
    assert "+  market/new.json" in text and "-  market/old.json" in text
    assert "M  logs/app.log  6 B -> 11 B" in text and "U  notes/todo.txt" in text
    assert re.search(r"3 added, 3 removed, 2 modified, \d+ metadata only", text)
    assert _json("diff", "latest", "latest") == []


def test_restore_whole_path_include_exclude(history, tmp_path):
    data = history["data"]
    result = _json("restore", "latest", tmp_path / "all", "--verify")
    assert result["ok"] and result["files"] == 6
    assert_same_tree(tree_state(data), tree_state(tmp_path / "all"))

    _json("restore", "latest", tmp_path / "one", "--path", "market/new.json")
    assert [str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*") if p.is_file()] == [
        "market/new.json"]

    _json("restore", "latest", tmp_path / "inc", "--include", "*.json")
    files = {str(p.relative_to(tmp_path / "inc")) for p in (tmp_path / "inc").rglob("*") if p.is_file()}
    assert files == {"ai_hub/collective_intelligence.json", "market/new.json"}

    _json("restore", "latest", tmp_path / "exc", "--exclude", "market/", "--exclude", "*.log")
    files = {str(p.relative_to(tmp_path / "exc")) for p in (tmp_path / "exc").rglob("*") if p.is_file()}
    assert files == {"ai_hub/collective_intelligence.json", "notes/todo.txt", "added_dir/y.txt"}


def test_restore_dry_run_writes_nothing(history, tmp_path):
    result = _json("restore", "latest", tmp_path / "dry", "--dry-run")
    assert result["dry_run"] and result["files"] == 6 and result["bytes"] > 600 * KiB
    assert not (tmp_path / "dry").exists()
    assert "would restore 6 files" in invoke("restore", "latest", tmp_path / "dry", "--dry-run").stdout


def test_restore_overwrite_modes(history, tmp_path):
    target = tmp_path / "t"
    _json("restore", "latest", target)
    write(target / "notes" / "todo.txt", "local change\n")
    proc = run("restore", "latest", target, expect=1)
    assert b"already exist" in proc.stderr and b"--overwrite if-changed" in proc.stderr
    assert b"Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert (target / "notes" / "todo.txt").read_text() == "local change\n"
    result = _json("restore", "latest", target, "--overwrite", "if-changed")
    assert result["ok"] and result["skipped"] == 5 and (target / "notes" / "todo.txt").read_text() == "todo\n"
    result = _json("restore", "latest", target, "--overwrite", "always")
    assert result["ok"] and result["skipped"] == 0


def test_check_text_and_json(history):
    assert "no errors found" in invoke("check").stdout
    report = _json("check", "--read-data")
    assert report["ok"] and report["snapshots"] == 2 and report["packs_read"] == report["packs"] > 0


def test_stats_per_source_and_monthly_cost(history):
    stats = _json("stats")
    assert stats["snapshots"] == 2
    assert set(stats["per_source"]) == {"ai_hub", "market", "notes", "logs", "added_dir"}
    assert stats["per_source"]["market"]["files"] == 2
    assert stats["per_source"]["market"]["logical_bytes"] == 600 * KiB + 10
    assert stats["logical_bytes_all_snapshots"] > stats["unique_bytes"] and stats["dedup_ratio"] > 1.5
    assert set(stats["monthly_cost"]) == {"aws", "gcp", "azure"}
    for row in stats["monthly_cost"].values():
        assert row["usd_per_month"] >= 0 and row["usd_per_gb_month"] > 0 and row["prices_as_of"]
    text = invoke("stats").stdout
    for needle in ("AWS S3 Standard", "GCS Standard", "Azure Blob Hot", "/month", "dedup ratio", "market"):
        assert needle in text


# -- settings ----------------------------------------------------------------------------------


def test_dotenv_in_working_directory_sets_source_and_repository(tmp_path):
    write(tmp_path / "app_state" / "kb.json", '{"from": "dotenv"}')
    write(tmp_path / "app_state" / ".env", "SECRET=never stored\n")
    (tmp_path / ".env").write_text("CASSTORE_SOURCE=app_state\nCASSTORE_REPOSITORY=store\n")
    snap = json.loads(run("snapshot", "--json").stdout)
    assert (tmp_path / "store" / "config").is_file() and not (tmp_path / ".casstore").exists()
    assert snap["files_total"] == 1 and snap["excluded"] == 1   # the .env inside the source is left out
    assert run("cat", "latest", "kb.json").stdout == b'{"from": "dotenv"}'
    # the process environment beats .env, and --repo beats both
    other = tmp_path / "other"
    run("--repo", other, "snapshot", "--json")
    assert (other / "config").is_file()
    assert run("list", "--json", env={"CASSTORE_REPOSITORY": str(other)}).stdout.count(b'"id"') == 1


def test_excludes_from_option_environment_and_ignore_file(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for name in ("keep.json", "skip.tmp", "env_skip.log", "ignored/x.json", "unified_backups/old.json.gz",
                 ".env", "cache/big.bin"):
        write(data / name, name)
    write(data / ".casstoreignore", "ignored/\n")
    monkeypatch.setenv("CASSTORE_EXCLUDE", "*.log")
    snap = _json("snapshot", "--exclude", "*.tmp", "--exclude", "cache/")
    assert snap["excluded"] == 6
    names = {e["path"] for e in _json("show", "latest", "-r")["entries"]}
    assert names == {"keep.json", ".casstoreignore"}


def test_hooks_run_around_a_snapshot(tmp_path):
    write(tmp_path / "data" / "a.txt", "a\n")
    invoke("init")
    proc = run("snapshot", "--pre-hook", "exit 3", expect=None)
    assert_one_line_error(proc, "pre-hook")
    assert objects(tmp_path / ".casstore", "snapshots") == []
    run("snapshot", "--pre-hook", f"touch {tmp_path}/pre", "--post-hook", f"touch {tmp_path}/post")
    assert (tmp_path / "pre").exists() and (tmp_path / "post").exists()


# -- user errors -------------------------------------------------------------------------------


def test_missing_source_and_missing_repository_are_one_line_errors(tmp_path):
    assert_one_line_error(run("snapshot", "nowhere", expect=None), "nowhere")
    assert_one_line_error(run("snapshot", expect=None), "data")       # default ./data is missing
    for command in (["list"], ["show"], ["check"], ["stats"], ["cat", "latest", "x"], ["diff", "latest"],
                    ["restore", "latest", "out"]):
        assert_one_line_error(run(*command, expect=None), "no casstore repository")
    assert not (tmp_path / ".casstore").exists() and not (tmp_path / "out").exists()


def test_unknown_ambiguous_and_malformed_ids(history, tmp_path):
    repo = open_repo(tmp_path / ".casstore")
    known = {s.id[:4] for s in repo.snapshots()}
    base = repo.get("latest").manifest
    seen: dict[str, int] = {}
    for n in range(1, 100_000):   # two real manifests whose ids share their first 4 hex digits
        prefix = SnapshotManifest(base.time_ns - n, "otherhost", base.source, base.tree).encode()[0][:4]
        if prefix in seen and prefix not in known:
            break
        seen[prefix] = n
    pair = [SnapshotManifest(base.time_ns - m, "otherhost", base.source, base.tree) for m in (seen[prefix], n)]
    ids = [commit(repo, m) for m in pair]
    assert ids[0][:4] == ids[1][:4] and ids[0] != ids[1]
    assert_one_line_error(run("show", prefix, expect=None), "ambiguous")
    assert json.loads(run("show", ids[1][:12], "--json").stdout)["id"] == ids[1]
    unknown = next(p for p in ("dead", "beef", "f00d", "cafe") if p not in known and p != prefix)
    assert_one_line_error(run("cat", unknown, "x", expect=None), "no snapshot with id")
    assert_one_line_error(run("restore", "zz", tmp_path / "out", expect=None), "not a snapshot id")
    assert_one_line_error(run("show", "latest", "no/such/dir", expect=None), "not in snapshot")
    assert_one_line_error(run("cat", "latest", "market", expect=None), "not a file")


def test_corrupt_object_is_one_line_error(history, tmp_path):
    repo = open_repo(tmp_path / ".casstore")
    loc = repo.load_index().locations(KIND_TREE, repo.get("latest").manifest.tree)[0]
    flip_bit(tmp_path / ".casstore" / "data" / loc.pack_id[:2] / loc.pack_id, loc.offset + 2)
    for command in (["show", "latest"], ["restore", "latest", "out"], ["diff", history["first"]["short_id"]]):
        assert_one_line_error(run(*command, expect=None), "cannot be read")


def test_unreadable_file_makes_an_incomplete_snapshot_and_latest_skips_it(history, monkeypatch):
    real_open = os.open
    victim = str(history["data"] / "market" / "big.bin")

    def refusing_open(path, flags, *args, **kwargs):
        # the walk opens a file by name, relative to its directory's descriptor
        named = os.path.join(os.readlink(f"/proc/self/fd/{kwargs['dir_fd']}"), path) if kwargs.get("dir_fd") else path
        if os.fspath(named) == victim:
            raise PermissionError(errno.EACCES, "Permission denied", victim)
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refusing_open)
        result = invoke("snapshot", "--json", expect=3)
        incomplete = json.loads(result.stdout)
        assert incomplete["incomplete"] and any("market/big.bin" in e for e in incomplete["errors"])
        text = invoke("snapshot", expect=3)
        assert "INCOMPLETE" in text.stderr and "market/big.bin: Permission denied" in text.stderr

    # the other files were stored; the unreadable one is not in the tree
    short = incomplete["short_id"]
    assert invoke("cat", short, "market/new.json").stdout == '{"new": 1}'
    assert "market/big.bin" not in {e["path"] for e in _json("show", short, "-r")["entries"]}
    listed = _json("list")
    assert listed[0]["incomplete"] and "(incomplete)" in invoke("list").stdout
    assert _json("show", "latest")["id"] == history["second"]["id"]   # latest skips incomplete ones


def test_no_progress_bar_or_noise_when_not_a_terminal(tmp_path):
    write(tmp_path / "data" / "a.bin", det_bytes(300 * KiB, "a"))
    proc = run("snapshot")
    assert proc.stderr == b"created repository at " + os.fsencode(str(Path(tmp_path) / ".casstore")) + b"\n"
    assert run("restore", "latest", tmp_path / "out").stderr == b""


def test_cli_does_not_import_cloud_sdks_for_local_work(tmp_path):
    write(tmp_path / "data" / "a.txt", "a\n")
    run("snapshot")
    probe = ("import sys\nfrom casstore.cli.main import main\nsys.argv = ['casstore', '{}']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'boto3', 'botocore', 'google', 'azure'}}))")
    for command in ("list", "check", "stats"):
        out = subprocess.run([sys.executable, "-c", probe.format(command)], capture_output=True, check=True).stdout
        assert out.strip().splitlines()[-1] == b"[]", out


def test_the_cyclic_collector_runs_while_a_command_runs():
    """`main` holds the collector through start-up only: a command (a long `serve`, a `schedule`)
    runs with it on, so reference cycles it makes are freed."""
    probe = ("import gc, sys\nimport click\nfrom casstore.cli import main as cli_main\n"
             "@click.command()\ndef probe():\n    print('collecting', gc.isenabled())\n"
             "cli_main.COMMANDS['probe'] = '__main__:probe'\nsys.argv = ['casstore', 'probe']\n"
             "print('before', gc.isenabled())\ncli_main.main()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True).stdout
    assert out.split() == [b"before", b"True", b"collecting", b"True"], out


def test_progress_bars_on_a_terminal(tmp_path):
    write(tmp_path / "data" / "big.bin", det_bytes(2 * 1024 * KiB, "tty"))
    run("snapshot")   # not a terminal: no bar (checked above); now with stderr on a pseudo-terminal
    for args in (["snapshot"], ["restore", "latest", str(tmp_path / "out")]):
        code, seen = on_a_terminal(*args)
        assert code == 0
        assert args[0].encode() in seen and b"B" in seen, seen[-300:]
