"""An encrypted repository's keys: the password, its key slots (`keys/<id>`), unlocking the master key.

The password comes from CASSTORE_PASSWORD, CASSTORE_PASSWORD_FILE, CASSTORE_PASSWORD_COMMAND (its
standard output, for a secrets manager) or, in the CLI at a terminal, a prompt. It is held only as
long as a slot is being opened or written: never stored, logged, printed or put in an error.
An unlocked master key is kept in this process's memory by its domain, so the local repository
and its remote (which share the key) are unlocked once per process.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace

from casstore._testing import weak_kdf
from casstore.errors import (
    ConfigError,
    FormatError,
    MissingKey,
    ObjectExists,
    ObjectNotFound,
    WrongPassword,
)
from casstore.format import layout
from casstore.format.crypto import MasterKey, SlotInfo, default_kdf, make_slot, new_slot_id, open_slot, slot_info
from casstore.remotes.base import Remote
from casstore.settings import Settings

log = logging.getLogger(__name__)

#: slots tried with one password at most (each try costs a memory-hard derivation)
MAX_SLOTS_TRIED = 32

_unlocked: dict[str, MasterKey] = {}
_unlocked_lock = threading.Lock()
#: asks for a password at a terminal (set by the CLI); the library itself never prompts
Prompt = Callable[[str, bool], str]
_prompt: Prompt | None = None


def set_prompt(prompt: Prompt | None) -> None:
    global _prompt
    _prompt = prompt


def forget_unlocked() -> None:
    """Drop every master key this process holds (tests; a long-lived process after a key change)."""
    with _unlocked_lock:
        _unlocked.clear()


# -- the password ------------------------------------------------------------------------------

def password(settings: Settings, *, new: bool = False) -> bytes:
    """The repository's password (`new`: the password of a key being added), from the settings'
    sources or the CLI's prompt; MissingKey when there is none."""
    if new:
        given, path, command = settings.new_password, settings.new_password_file, None
        names = "CASSTORE_NEW_PASSWORD or CASSTORE_NEW_PASSWORD_FILE"
    else:
        given, path, command = settings.password, settings.password_file, settings.password_command
        names = "CASSTORE_PASSWORD, CASSTORE_PASSWORD_FILE or CASSTORE_PASSWORD_COMMAND"
    if given:
        return given.encode()
    if path:
        return _from_file(path)
    if command:
        return _from_command(command)
    if _prompt is not None:
        return _prompt("new password" if new else "repository password", new).encode()
    raise MissingKey(f"this repository is encrypted: give its {'new ' if new else ''}password with {names}")


def _from_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            value = fh.read().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the password file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the password file {path} is empty")
    return value


def _from_command(command: str) -> bytes:
    # no shell: the command is split like a shell would, and its output never reaches a log
    import shlex  # lazy, as subprocess: start-up time of every command
    import subprocess

    try:
        done = subprocess.run(shlex.split(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CASSTORE_PASSWORD_COMMAND cannot run: {exc}") from None
    value = done.stdout.rstrip(b"\r\n")
    if done.returncode != 0 or not value:
        raise ConfigError(f"CASSTORE_PASSWORD_COMMAND failed (exit code {done.returncode}, "
                          f"{'no output' if not value else 'output ignored'})")
    return value


# -- slots -------------------------------------------------------------------------------------

def read_slots(remote: Remote) -> dict[str, bytes]:
    slots = {}
    for info in remote.list(layout.KEYS_PREFIX):
        try:
            slots[layout.name_of(info.key)] = remote.get(info.key)
        except ObjectNotFound:
            continue   # removed meanwhile
    return slots


def has_slots(remote: Remote) -> bool:
    return any(True for _ in remote.list(layout.KEYS_PREFIX))


def unlock(remote: Remote, domain: str, settings: Settings, *, cached: bool = True) -> MasterKey:
    """The master key of the encrypted repository at `remote` (domain `domain`): held already by this
    process, or opened from one of its key slots with the password."""
    if cached:
        with _unlocked_lock:
            if domain in _unlocked:
                return _unlocked[domain]
    slots = read_slots(remote)
    if not slots:
        raise MissingKey(f"{remote.url} is encrypted but holds no key slot (keys/ is empty): it cannot be opened")
    secret = password(settings)
    for slot_id in sorted(slots)[:MAX_SLOTS_TRIED]:
        try:
            master, slot_domain = open_slot(slot_id, slots[slot_id], secret)
        except WrongPassword:
            continue
        except FormatError as exc:
            log.warning("skipping key slot %s: %s", slot_id[:8], exc)
            continue
        if slot_domain.hex() != domain:
            continue    # a slot of another repository (planted, or left by a lost race at init)
        key = MasterKey(master, slot_domain, slots=slots, slot_id=slot_id)
        with _unlocked_lock:
            _unlocked[domain] = key
        return key
    raise WrongPassword(f"wrong password: no key slot of {remote.url} opens with it")


def new_key(settings: Settings, host: str) -> MasterKey:
    """A new master key with one slot, for the password the settings (or the prompt) give."""
    key = MasterKey.generate()
    slot_id = new_slot_id()
    slot = make_slot(key, password(settings), slot_id, default_kdf(weak_kdf()), host)
    key = replace(key, slots={slot_id: slot}, slot_id=slot_id)
    with _unlocked_lock:
        _unlocked[key.domain.hex()] = key
    return key


def add_slot(remote: Remote, key: MasterKey, secret: bytes, host: str) -> str:
    """Write a new slot of `key` for `secret`; its id. New slots take the current KDF parameters,
    so adding a key (or changing a password) raises the cost of guessing it as machines get faster."""
    slot_id = new_slot_id()
    remote.put(layout.key_slot_key(slot_id), make_slot(key, secret, slot_id, default_kdf(weak_kdf()), host),
               if_absent=True)
    return slot_id


def list_slots(remote: Remote) -> list[SlotInfo]:
    infos = []
    for slot_id, body in sorted(read_slots(remote).items()):
        try:
            infos.append(slot_info(slot_id, body))
        except FormatError as exc:
            log.warning("skipping key slot %s: %s", slot_id[:8], exc)
    return sorted(infos, key=lambda i: (i.created_ns, i.id))


def remove_slot(remote: Remote, slot_id: str, current: str | None) -> None:
    """Delete a slot; never the one in use nor the last one (that would lose the data)."""
    slots = read_slots(remote)
    if slot_id not in slots:
        raise MissingKey(f"no key slot {slot_id[:8]} in {remote.url}")
    if slot_id == current:
        raise ConfigError("refusing to remove the key slot this password opened (add another key and use it, "
                          "or use `casstore key passwd`)")
    if len(slots) <= 1:
        raise ConfigError("refusing to remove the last key slot: the repository could never be opened again")
    remote.delete(layout.key_slot_key(slot_id))


def resolve_slot(remote: Remote, prefix: str) -> str:
    """A slot id from a unique prefix of at least 4 hex digits."""
    prefix = prefix.lower()
    matches = [s for s in read_slots(remote) if s.startswith(prefix)] if len(prefix) >= 4 else []
    if len(matches) != 1:
        raise MissingKey(f"no key slot is named {prefix!r} (give 4 or more digits of one `casstore key list` shows)"
                         if not matches else f"key slot prefix {prefix!r} is ambiguous")
    return matches[0]


def write_slots(remote: Remote, key: MasterKey) -> list[str]:
    """Copy `key`'s slots into a repository being created (before its config, so an encrypted
    config never exists without a way to open it); the ids written."""
    if not key.slots:
        raise MissingKey("internal error: an encrypted repository would be created without a key slot")
    written = []
    for slot_id, body in key.slots.items():
        try:
            remote.put(layout.key_slot_key(slot_id), body, if_absent=True)
            written.append(slot_id)
        except ObjectExists:
            pass
    return written


def undo_slots(remote: Remote, slot_ids: list[str]) -> None:
    """Best effort: remove slots copied into a repository another host created first."""
    for slot_id in slot_ids:
        try:
            remote.delete(layout.key_slot_key(slot_id))
        except Exception as exc:  # noqa: BLE001 - the slot is harmless (wrong domain), only untidy
            log.warning("could not remove key slot %s: %s", slot_id[:8], exc)


def host_name(settings: Settings) -> str:
    return settings.host or os.uname().nodename
