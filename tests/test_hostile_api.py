"""The HTTP API and the CLI's listings against an attacker's small tricks (issue 13, case 12).

A page on another localhost port must not drive a tokenless API; a server reachable from other
machines needs a real token; the API's pooled readers and cached listing survive a CLI gc; and
no listing the CLI prints passes a file name's control characters to the terminal.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from casstore.cli.main import cli
from tests.helpers import det_bytes, invoke, run, write
from tests.test_api import make_settings, running_server, take_snapshots


def test_a_tokenless_server_refuses_writes_from_another_local_port(tmp_path):
    settings = make_settings(tmp_path)
    take_snapshots(settings)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        port = urlsplit(url).port
        for origin in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port + 1}", "http://127.0.0.1"):
            refused = client.post("/api/cloud/sync", headers={"Origin": origin})
            assert refused.status_code == 403 and "cross-site" in refused.json()["error"], origin
        same = client.post("/api/cloud/sync", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code != 403


def test_a_public_bind_needs_a_token_of_16_characters(monkeypatch):
    def never(*args, **kwargs):       # the server must not start: fail instead of serving
        raise SystemExit(99)

    monkeypatch.setattr(uvicorn, "run", never)
    for token in ("x", "fifteen-chars!!"):
        monkeypatch.setenv("CASSTORE_API_TOKEN", token)
        result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
        assert result.exit_code == 2 and "at least 16 characters" in result.output, result.output
    monkeypatch.setenv("CASSTORE_API_TOKEN", "x")
    assert CliRunner().invoke(cli, ["serve", "--host", "127.0.0.1"]).exit_code == 99   # loopback: any token
    monkeypatch.setenv("CASSTORE_API_TOKEN", "sixteen-chars-ok")
    assert CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"]).exit_code == 99


def test_the_api_answers_right_after_a_gc_moved_or_deleted_what_it_had_loaded(tmp_path):
    settings = make_settings(tmp_path)
    write(tmp_path / "data" / "big.bin", det_bytes(2_000_000, "big"))
    old = take_snapshots(settings)[0]
    (tmp_path / "data" / "big.bin").unlink()
    new = take_snapshots(settings)[0]
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        before = client.get(f"/api/cloud/backup/{new}")        # warms a pooled reader's index
        assert before.status_code == 200
        assert client.get(f"/api/cloud/backup/{old}").status_code == 200
        packs = {p.name for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()}
        run("forget", "--keep-last", "1", "--prune", "--repo", settings.repository)
        assert packs - {p.name for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file()}, \
            "gc deleted no pack: the test would prove nothing"
        after = client.get(f"/api/cloud/backup/{new}")
        assert after.status_code == 200 and after.json() == before.json()
        gone = client.get(f"/api/cloud/backup/{old}")
        assert gone.status_code == 404


EVIL = "evil\x1b]0;pwned\x07\x1b[2J\r\x9b.txt"


@pytest.fixture
def evil_repo(tmp_path):
    write(tmp_path / "data" / "plain.txt", b"one")
    invoke("init")
    first = json.loads(invoke("snapshot", "--json").stdout)["id"]
    write(tmp_path / "data" / EVIL, b"two")
    second = json.loads(invoke("snapshot", "--json", "--tag", "t\x1b[31m").stdout)["id"]
    return first, second


@pytest.mark.parametrize("command", [["ls", "latest"], ["show", "latest", "-r"], ["list"], ["diff"]])
def test_listings_escape_control_characters(evil_repo, command):
    first, second = evil_repo
    args = command + ([first[:8], second[:8]] if command == ["diff"] else [])
    output = invoke(*args).stdout
    assert not any(c in output for c in "\x1b\x07\r\x9b"), repr(output)
    if command != ["list"]:
        assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\x9b.txt" in output
    else:
        assert "t\\x1b[31m" in output


BIDI = "name\u202etxt.exe"      # shows as "nameexe.txt" unless escaped


@pytest.fixture
def evil_names_repo(tmp_path, monkeypatch):
    """Two snapshots from a host and with a tag full of controls, holding a symlink whose target,
    a JSON file whose name, key and value, and a name with a bidi override are hostile."""
    monkeypatch.setenv("CASSTORE_HOST", "host\x1b[2J")
    data = tmp_path / "data"
    write(data / f"{EVIL}.json", json.dumps({"k\x1b[31m": "v\x9b1"}).encode())
    write(data / BIDI, b"x")
    (data / "link").symlink_to("target\x1b]0;pwned\x07\r")
    invoke("init")
    first = json.loads(invoke("snapshot", "--json", "--tag", "t\x1b[31m").stdout)["id"]
    write(data / f"{EVIL}.json", json.dumps({"k\x1b[31m": "w\x9b2"}).encode())
    second = json.loads(invoke("snapshot", "--json", "--tag", "t\x1b[31m").stdout)["id"]
    return first, second


def _no_controls(output: str) -> None:
    assert not any(c in output for c in "\x1b\x07\r\x9b\u202e"), repr(output)


def test_show_escapes_a_symlink_target_and_a_bidi_override(evil_names_repo):
    output = invoke("show", "latest", "-r").stdout
    _no_controls(output)
    assert "link -> target\\x1b]0;pwned\\x07\\r" in output
    assert "name\\u202etxt.exe" in output
    _no_controls(invoke("ls", "latest").stdout)


@pytest.mark.parametrize("command", [["find", "evil*"], ["find", "--path-only", "evil*"],
                                     ["history", f"{EVIL}.json"], ["history", f"{EVIL}.json", "--key", "k\x1b[31m"],
                                     ["forget", "--keep-last", "1", "--dry-run"]],
                         ids=["find", "find-path-only", "history", "history-key", "forget"])
def test_queries_and_forget_escape_stored_names(evil_names_repo, command):
    output = invoke(*command).stdout
    _no_controls(output)
    if command[0] == "find":
        assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\x9b.txt.json" in output
    elif command[0] == "history":
        assert ("v\\x9b1" in output) and ("w\\x9b2" in output)
    else:
        assert "host\\x1b[2J:" in output and "t\\x1b[31m" in output


def test_a_value_diff_escapes_the_path_key_and_values(evil_names_repo):
    first, second = evil_names_repo
    output = invoke("diff", first[:8], second[:8], "--values").stdout
    _no_controls(output)
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\x9b.txt.json" in output
    assert "k\\x1b[31m" in output and "v\\x9b1" in output and "w\\x9b2" in output


def test_restore_escapes_the_existing_path_it_names(evil_names_repo, tmp_path):
    invoke("restore", "latest", str(tmp_path / "out"))
    result = invoke("restore", "latest", str(tmp_path / "out"), expect=None)
    assert result.exit_code != 0 and "already exist" in result.stderr
    _no_controls(result.stderr)


def test_a_directory_holding_a_name_that_is_not_utf8_lists_it(tmp_path):
    """The dashboard's listing of a directory with such a name is JSON (the byte as \\udcXX), not a 500."""
    settings = make_settings(tmp_path)
    write(tmp_path / "data" / os.fsdecode(b"bad\xffname"), b"x")
    snapshot = take_snapshots(settings)[0]
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.get(f"/api/cloud/backup/{snapshot}/tree")
        assert response.status_code == 200, response.text
        assert "bad\udcffname" in [e["name"] for e in response.json()["entries"]]
