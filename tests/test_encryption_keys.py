"""`casstore key list|add|remove|passwd` as real processes, the password sources, and key slots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from casstore.errors import FormatError, WrongPassword
from casstore.format.crypto import ARGON2_DEFAULT, MasterKey, default_kdf, make_slot, open_slot, slot_info
from casstore.repo import keys
from tests.helpers import assert_one_line_error, run_isolated

OLD, NEW, OTHER = "the first password", "a better password", "a colleague's password"


cli = run_isolated


@pytest.fixture
def base_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASSTORE_PASSWORD", "CASSTORE_NEW_PASSWORD"))}
    env["CASSTORE_TEST_WEAK_KDF"] = "1"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("content\n")
    return env


def with_password(env: dict[str, str], password: str, new: str | None = None) -> dict[str, str]:
    return {**env, "CASSTORE_PASSWORD": password, **({"CASSTORE_NEW_PASSWORD": new} if new else {})}


def slots(tmp_path: Path, env: dict[str, str]) -> list[dict]:
    rows: list[dict] = json.loads(cli(tmp_path, env, "key", "list", "--json").stdout)
    return rows


def test_add_list_passwd_and_remove_keys(tmp_path, base_env):
    cli(tmp_path, with_password(base_env, OLD), "init", "--encrypt")
    cli(tmp_path, with_password(base_env, OLD), "snapshot")
    first = slots(tmp_path, with_password(base_env, OLD))
    assert len(first) == 1 and first[0]["current"]

    cli(tmp_path, with_password(base_env, OLD, OTHER), "key", "add", "--host", "colleague")
    both = slots(tmp_path, with_password(base_env, OTHER))      # the new password opens the repository
    assert len(both) == 2 and [r["host"] for r in both if r["current"]] == ["colleague"]
    assert cli(tmp_path, with_password(base_env, OTHER), "list").stdout.count(b"\n") == 2

    # the key in use and the last key are never removed
    assert_one_line_error(cli(tmp_path, with_password(base_env, OLD), "key", "remove", first[0]["id"][:8],
                              expect=None), "this password opened")

    cli(tmp_path, with_password(base_env, OLD, NEW), "key", "passwd")
    assert_one_line_error(cli(tmp_path, with_password(base_env, OLD), "list", expect=None), "wrong password")
    after = slots(tmp_path, with_password(base_env, NEW))
    assert len(after) == 2 and first[0]["id"] not in {r["id"] for r in after}

    colleague = next(r for r in after if r["host"] == "colleague")
    cli(tmp_path, with_password(base_env, NEW), "key", "remove", colleague["id"][:8])
    assert_one_line_error(cli(tmp_path, with_password(base_env, OTHER), "list", expect=None), "wrong password")
    last = slots(tmp_path, with_password(base_env, NEW))
    assert len(last) == 1
    # a key added and used, the old one removed: the one left is the one in use, never removed
    cli(tmp_path, with_password(base_env, NEW, OTHER), "key", "add")
    other_id = next(r["id"] for r in slots(tmp_path, with_password(base_env, NEW)) if r["id"] != last[0]["id"])
    cli(tmp_path, with_password(base_env, OTHER), "key", "remove", last[0]["id"][:8])
    assert_one_line_error(cli(tmp_path, with_password(base_env, OTHER), "key", "remove", other_id[:8],
                              expect=None), "this password opened")
    assert cli(tmp_path, with_password(base_env, OTHER), "list").returncode == 0


def test_password_file_and_command_sources(tmp_path, base_env):
    secret = tmp_path / "secret"
    secret.write_text(OLD + "\n")
    cli(tmp_path, {**base_env, "CASSTORE_PASSWORD_FILE": str(secret)}, "init", "--encrypt")
    command = f"{sys.executable} -c \"print(open('{secret}').read().strip())\""
    cli(tmp_path, {**base_env, "CASSTORE_PASSWORD_COMMAND": command}, "snapshot")
    failing = f"{sys.executable} -c \"import sys; sys.exit(3)\""
    assert_one_line_error(cli(tmp_path, {**base_env, "CASSTORE_PASSWORD_COMMAND": failing}, "list", expect=None),
                          "CASSTORE_PASSWORD_COMMAND failed", "exit code 3")
    assert_one_line_error(cli(tmp_path, {**base_env, "CASSTORE_PASSWORD_FILE": str(tmp_path / "missing")}, "list",
                              expect=None), "cannot read the password file")


def test_key_commands_refuse_a_plain_repository(tmp_path, base_env):
    cli(tmp_path, base_env, "init")
    assert_one_line_error(cli(tmp_path, base_env, "key", "list", expect=None), "not encrypted")


def test_new_slots_use_a_memory_hard_kdf_and_a_hostile_slot_is_refused():
    assert default_kdf() == ARGON2_DEFAULT     # 46 MiB: the real parameters, once
    key = MasterKey.generate()
    body = make_slot(key, b"pw", "ab" * 16, default_kdf(), "h")
    assert slot_info("ab" * 16, body).kdf["memory_kib"] == 46 * 1024
    assert open_slot("ab" * 16, body, b"pw") == (key.secret, key.domain)
    with pytest.raises(WrongPassword):
        open_slot("ab" * 16, body, b"not it")
    with pytest.raises(WrongPassword):          # a slot renamed: its id is bound to what it seals
        open_slot("cd" * 16, body, b"pw")
    hostile = make_slot(key, b"pw", "ab" * 16, {"algorithm": "argon2id", "iterations": 1,
                                                 "memory_kib": 64, "lanes": 1}, "h")
    import msgpack

    doc = msgpack.unpackb(hostile)
    doc["kdf"]["memory_kib"] = 1 << 40       # would allocate a TiB before failing
    with pytest.raises(FormatError, match="out of range"):
        open_slot("ab" * 16, msgpack.packb(doc), b"pw")
    keys.forget_unlocked()


@pytest.mark.parametrize("kdf, name", [
    ({"algorithm": "argon2id", "iterations": 1, "memory_kib": 64, "lanes": 1}, "iterations"),
    ({"algorithm": "argon2id", "iterations": 1, "memory_kib": 64, "lanes": 1}, "lanes"),
    ({"algorithm": "scrypt", "n": 2, "r": 1, "p": 1}, "r"),
], ids=["argon2id iterations", "argon2id lanes", "scrypt r"])
def test_a_key_slot_whose_kdf_parameter_is_a_boolean_is_refused(kdf, name):
    """msgpack's `true` decodes as Python's True, an int equal to 1: a parameter must be an integer."""
    import msgpack

    doc = msgpack.unpackb(make_slot(MasterKey.generate(), b"pw", "ab" * 16, kdf, "h"))
    doc["kdf"][name] = True
    with pytest.raises(FormatError, match="out of range"):
        open_slot("ab" * 16, msgpack.packb(doc), b"pw")
