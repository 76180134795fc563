"""The HTTP API and the CLI's listings against an attacker's small tricks (issue 13, case 12).

A page on another localhost port must not drive a tokenless API; a server reachable from other
machines needs a real token; the API's pooled readers and cached listing survive a CLI gc; and
no listing the CLI prints passes a file name's control characters to the terminal.
"""

from __future__ import annotations

import json
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
