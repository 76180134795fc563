"""What a new user hit on the way (issue 12), each fixed and shown here through the real CLI:
symlink targets in `show`, what changed in `diff`, `--every 24`, a file as the source, restoring
into a non-empty folder, `casstore ls | head`, progress with a total and ETA, `--json` as the
README promises it, and no cloud price for a directory remote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import click
import pytest

from casstore.cli.main import COMMANDS
from tests.helpers import CASSTORE, KiB, assert_one_line_error, det_bytes, invoke, on_a_terminal, run, write

README = Path(__file__).resolve().parent.parent / "README.md"


def _json(*args, expect: int = 0):
    return json.loads(invoke(*args, "--json", expect=expect).stdout)


def _snapshot(tmp_path: Path) -> str:
    return _json("snapshot", str(tmp_path / "data"))["id"]


# -- show: symlink targets ---------------------------------------------------------------------


def test_show_prints_a_symlinks_target(tmp_path):
    write(tmp_path / "data" / "ai_hub" / "state.json", "{}")
    os.symlink("ai_hub/state.json", tmp_path / "data" / "current")
    snapshot_id = _snapshot(tmp_path)
    text = invoke("show", snapshot_id).stdout
    assert re.search(r"^l .*  current -> ai_hub/state\.json$", text, re.M), text
    rows = {row["path"]: row for row in _json("show", snapshot_id, "-r")["entries"]}
    assert rows["current"]["target"] == "ai_hub/state.json"
    assert "target" not in rows["ai_hub/state.json"]


# -- diff: what changed ------------------------------------------------------------------------


def test_diff_says_what_changed_for_modified_and_metadata_only(tmp_path):
    data = tmp_path / "data"
    write(data / "mode.txt", "same\n", mtime_ns=1_700_000_000 * 10**9)
    write(data / "touched.txt", "same\n", mtime_ns=1_700_000_000 * 10**9)
    write(data / "grown.txt", "short\n", mtime_ns=1_700_000_000 * 10**9)
    os.symlink("mode.txt", data / "link")
    first = _snapshot(tmp_path)
    (data / "mode.txt").chmod(0o600)
    os.utime(data / "touched.txt", ns=(1_700_000_500 * 10**9, 1_700_000_500 * 10**9))
    write(data / "grown.txt", "much longer now\n", mtime_ns=1_700_000_000 * 10**9)
    (data / "link").unlink()
    os.symlink("touched.txt", data / "link")
    second = _snapshot(tmp_path)

    lines = {line.split()[1]: line for line in invoke("diff", first, second).stdout.splitlines()[:-1]}
    assert lines["mode.txt"].startswith("U") and lines["mode.txt"].endswith("(mode)")
    assert lines["touched.txt"].startswith("U") and lines["touched.txt"].endswith("(mtime)")
    assert lines["grown.txt"].startswith("M") and lines["grown.txt"].endswith("(content, size)")
    assert lines["link"].startswith("M") and "(target" in lines["link"]
    by_path = {c["path"]: c for c in _json("diff", first, second)}
    assert by_path["mode.txt"]["what"] == ["mode"] and by_path["grown.txt"]["what"] == ["content", "size"]


# -- --every 24 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["schedule", "--every", "24"], ["schedule", "--every", "24", "--print-cron"],
                                  ["serve", "--schedule", "24"], ["status", "--max-age", "36"],
                                  ["gc", "--grace", "24"]])
def test_a_bare_number_as_a_duration_asks_did_you_mean_hours(tmp_path, args):
    write(tmp_path / "data" / "a.txt", "a\n")
    run("snapshot")
    number = args[2]
    assert_one_line_error(run(*args, expect=None), f"did you mean {number}h?")


def test_a_bare_number_in_casstore_schedule_is_refused_too(tmp_path):
    write(tmp_path / "data" / "a.txt", "a\n")
    assert_one_line_error(run("schedule", expect=None, env={"CASSTORE_SCHEDULE": "6"}), "did you mean 6h?")
    assert "0 */6 * * *" in run("schedule", "--every", "6h", "--print-cron").stdout.decode()


# -- a file as the source ------------------------------------------------------------------------


def test_a_file_given_as_the_source_is_called_a_file_not_missing(tmp_path):
    write(tmp_path / "report.json", "{}")
    line = assert_one_line_error(run("snapshot", "report.json", expect=None), "report.json is a file")
    assert "does not exist" not in line and "directory" in line
    assert not (tmp_path / ".casstore").exists()          # nothing created for a refused source
    assert_one_line_error(run("snapshot", "nowhere", expect=None), "does not exist")


# -- restore into a non-empty folder -------------------------------------------------------------


def test_restore_into_a_non_empty_folder_prints_one_summary_line(tmp_path):
    for i in range(40):
        write(tmp_path / "data" / "docs" / f"f{i:02}.json", json.dumps({"i": i}))
    run("snapshot")
    run("restore", "latest", "out")
    write(tmp_path / "out" / "docs" / "f07.json", '{"mine": true}')
    proc = run("restore", "latest", "out", expect=1)
    line = assert_one_line_error(proc, "40 file(s) already exist", "--overwrite if-changed", "--overwrite always")
    assert "out" in line
    assert (tmp_path / "out" / "docs" / "f07.json").read_text() == '{"mine": true}'
    doc = json.loads(run("restore", "latest", "out", "--json", expect=1).stdout)
    assert doc["existing"] == 40 and not doc["ok"] and doc["errors"] == [] and len(doc["existing_paths"]) == 20
    run("restore", "latest", "out", "--overwrite", "if-changed")
    assert (tmp_path / "out" / "docs" / "f07.json").read_text() == '{"i": 7}'


# -- casstore ls | head --------------------------------------------------------------------------


def _until_closed(command: list[str], lines: int) -> subprocess.CompletedProcess:
    """Run `command` with stdout into a pipe whose reader reads `lines` lines and goes away, as `head` does."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(60)
    return subprocess.CompletedProcess(command, proc.returncode, b"", err)


def test_ls_into_head_ends_quietly_as_unix_tools_do(tmp_path):
    for i in range(3000):   # a listing far larger than a pipe's buffer
        write(tmp_path / "data" / f"a_rather_long_file_name_number_{i:05}.json", "{}")
    run("snapshot")
    proc = _until_closed([CASSTORE, "ls", "latest", "-r"], lines=2)
    assert proc.stderr == b"", proc.stderr
    assert proc.returncode == -signal.SIGPIPE      # as cat or git: killed by SIGPIPE, status 141 in a shell
    # --json is one large write: the kernel reports the reader's departure as a short write, which
    # CPython's buffered writer does not raise, so casstore may also just end normally; never with 1
    proc = _until_closed([CASSTORE, "show", "latest", "--json"], lines=2)
    assert proc.stderr == b"" and proc.returncode in (0, -signal.SIGPIPE), (proc.returncode, proc.stderr)
    shell = subprocess.run(["bash", "-c", f"set -o pipefail; {CASSTORE} ls latest -r | head -n 1; "
                            "echo status ${PIPESTATUS[0]}"], capture_output=True)
    assert shell.stderr == b"" and shell.stdout.decode().splitlines()[-1] == "status 141"


def test_a_reader_gone_before_a_short_output_is_also_quiet(tmp_path):
    """Output shorter than the buffer meets the closed pipe only at exit, when Python flushes."""
    write(tmp_path / "data" / "a.txt", "a\n")
    run("snapshot")
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([CASSTORE, "list"], stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    assert proc.stderr == b"" and proc.returncode == -signal.SIGPIPE


# -- progress with a total and an ETA ------------------------------------------------------------


def _on_a_terminal(args: list[str]) -> tuple[int, str]:
    code, seen = on_a_terminal(*args, columns=120)
    return code, seen.decode(errors="replace")


def _bar_with_total(shown: str, verb: str) -> str:
    """The first progress line that has a percentage, a known total and an ETA (tqdm's `a/b [t<eta`)."""
    for line in re.split(r"[\r\n]", shown):
        if line.startswith(f"{verb}:") and re.search(r"\d+%\|.*\| [\d.]+\w?/[\d.]+\w? \[[\d:]+<", line):
            return line
    raise AssertionError(f"no {verb} bar with a total and ETA in: {shown[-600:]!r}")


def test_snapshot_and_sync_progress_show_a_total_and_time_left(tmp_path):
    write(tmp_path / "data" / "big.bin", det_bytes(6 * 1024 * KiB, "p1"))
    write(tmp_path / "data" / "small.json", "{}")
    code, shown = _on_a_terminal(["snapshot"])            # first snapshot: the total comes from a scan
    assert code == 0
    assert "6.00M" in _bar_with_total(shown, "snapshot")
    write(tmp_path / "data" / "more.bin", det_bytes(2 * 1024 * KiB, "p2"))
    code, shown = _on_a_terminal(["snapshot"])            # next ones: the parent's total, unchanged files count
    assert code == 0 and _bar_with_total(shown, "snapshot")
    code, shown = _on_a_terminal(["sync", "--remote", (tmp_path / "remote").as_uri()])
    assert code == 0
    assert "8.00M" in _bar_with_total(shown, "sync")      # the plan's bytes to send


# -- --json as the README says ---------------------------------------------------------------------


NO_JSON = {"cat", "serve", "schedule"}   # raw bytes out, or long-running


def test_every_command_but_the_documented_ones_takes_json():
    from casstore.cli.main import cli

    for name in COMMANDS:
        command = cli.get_command(None, name)   # type: ignore[arg-type]
        # a group (`cache`) takes --json on each of its subcommands
        leaves = list(command.commands.values()) if isinstance(command, click.Group) else [command]
        for leaf in leaves:
            has_json = any("--json" in p.opts for p in leaf.params)
            assert has_json == (name not in NO_JSON), f"{name} {leaf.name}"
    readme = README.read_text()
    sentence = re.search(r"Every command takes `--repo PATH`[^.]*\.", readme)
    assert sentence, "README's sentence on common options is gone"
    assert all(f"`{name}`" in sentence.group(0) for name in NO_JSON), sentence.group(0)


# -- no cloud price for a directory --------------------------------------------------------------


def test_stats_and_sync_quote_no_cloud_price_for_a_directory(tmp_path):
    write(tmp_path / "data" / "a.bin", det_bytes(64 * KiB, "s"))
    run("snapshot")
    assert "AWS S3" in run("stats").stdout.decode()        # no remote yet: what each provider would charge
    remote = (tmp_path / "nas").as_uri()
    sync = run("sync", "--remote", remote).stdout.decode()
    assert "no provider price for a local directory" in sync and "AWS" not in sync
    assert json.loads(run("sync", "--remote", remote, "--json").stdout)["monthly_cost_after"] == {}
    for args, env in ((["stats", "--remote", remote], None), (["stats"], {"CASSTORE_REMOTE": remote})):
        out = run(*args, env=env).stdout.decode()
        assert "no provider price for a local directory" in out and "AWS" not in out and "$" not in out
    assert json.loads(run("stats", "--remote", remote, "--json").stdout)["monthly_cost"] == {}
