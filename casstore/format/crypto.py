"""Client-side encryption: the master key, the seal every stored object of an encrypted repository
gets, and key slots (the master key wrapped by a key derived from a password).

The scheme (DESIGN.md "Encryption"):

- A repository's *master secret* is 32 random bytes, with a random 16-byte *domain* (the
  encrypted repository's identity, shared by every copy of it: the local repository, its remote,
  other hosts' copies). Three keys are derived from it with BLAKE3's key derivation: the AEAD key
  (AES-256-GCM), the blob-id key (keyed BLAKE3: a blob's id reveals nothing to whoever lacks the
  key) and the chunker's seed (cut points depend on the key).
- A seal is `nonce (12 random bytes) | AES-256-GCM ciphertext and tag (16 bytes)`; its associated
  data binds the scheme version, the domain, the object's kind and, where the object has one that
  does not depend on its ciphertext, its name (a blob's id and envelope tag, a gc plan's key, the
  config's repository id, a key slot's id). So moving sealed bytes to another kind, another
  repository or another name fails authentication, as does any change of a byte or a length.
- Nonces are random: with 96 bits, the chance that any two of n seals under one key share a
  nonce is below n^2 / 2^97; at 2^32 seals (4 billion blobs, far more than the index holds in
  memory) it is 2^-33, the NIST SP 800-38D bound. Deterministic nonces were not chosen: hosts may
  compress the same blob at different levels, so one id does not mean one plaintext to seal.
- A key slot (`keys/<id>`) holds the master secret sealed with a key derived from a password by
  Argon2id (scrypt where OpenSSL lacks it), with its salt and parameters stored in the slot, so
  new slots may use stronger parameters than old ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import blake3
import msgpack

from casstore.errors import DowngradeError, FormatError, IntegrityError, WrongPassword
from casstore.format.fields import is_int
from casstore.format.reasons import unpack_reason

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEME = "aes-256-gcm/blake3-keyed/1"
SEAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
#: sealed whole objects (index, snapshot manifest, gc plan) start with this; a plain decoder that
#: meets it knows the repository is encrypted even when its config says it is not (downgrade)
SEALED_MAGIC = b"CASE\x01"

# object kinds bound into the associated data
KIND_DATA_BLOB = 1
KIND_TREE_BLOB = 2
KIND_PACK_HEADER = 3
KIND_INDEX = 4
KIND_SNAPSHOT = 5
KIND_PLAN = 6
KIND_CONFIG = 7
KIND_FILES_CACHE = 9          # the local files cache (snapshot/filescache.py), not a stored object

# `cryptography` (with OpenSSL, about 8.6 MiB of RSS) is imported where a key or seal is used, never
# by a plain repository: it was 6% of a plain snapshot's peak RSS (issue 17)


def _aesgcm(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag
    return InvalidTag


_CONTEXT = "casstore 2026-12 "   # BLAKE3 derive_key contexts: application, date, purpose


def _derive(master: bytes, purpose: str) -> bytes:
    return blake3.blake3(master, derive_key_context=_CONTEXT + purpose).digest()


def is_sealed_object(body: bytes | memoryview) -> bool:
    return bytes(body[:len(SEALED_MAGIC)]) == SEALED_MAGIC


@dataclass(frozen=True, eq=False)
class MasterKey:
    """A repository's master secret and domain, and the raw key slots it was read from (copied when
    a new repository shares it: a remote created by sync, a local one created by `init --from`)."""

    secret: bytes
    domain: bytes
    slots: dict[str, bytes] = field(default_factory=dict, repr=False)
    slot_id: str | None = None          # the slot the password opened (`key list` marks it)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32), os.urandom(16))

    def __repr__(self) -> str:      # never the secret, wherever an object is printed or logged
        return f"MasterKey(domain={self.domain.hex()})"

    @cached_property
    def sealer(self) -> Sealer:
        return Sealer(self.secret, self.domain)

    def chunker_seed(self) -> int:
        """The FastCDC gear table's seed, from the key: cut points reveal nothing without it."""
        return int.from_bytes(_derive(self.secret, "chunker seed")[:8], "big") & (2**63 - 1) | 1


class Sealer:
    """Seals and opens objects of one encrypted repository; computes its keyed blob ids."""

    def __init__(self, secret: bytes, domain: bytes) -> None:
        self.domain = domain
        self._aead = _aesgcm(_derive(secret, "aead key"))
        self._invalid_tag = _invalid_tag()
        self._id_key = _derive(secret, "blob id key")

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._id_key).digest()

    def hasher(self) -> Any:
        return blake3.blake3(key=self._id_key)

    def associated(self, kind: int, name: bytes) -> bytes:
        return b"casstore\0%c%s%c%s" % (SEAL_VERSION, self.domain, kind, name)

    def seal_parts(self, kind: int, name: bytes, plaintext: bytes | memoryview) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag): two parts, so a pack copies them in without a join."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce, self._aead.encrypt(nonce, plaintext, self.associated(kind, name))

    def seal(self, kind: int, name: bytes, plaintext: bytes | memoryview) -> bytes:
        return b"".join(self.seal_parts(kind, name, plaintext))

    def open(self, kind: int, name: bytes, sealed: bytes | memoryview, what: str) -> bytes:
        """The plaintext, or IntegrityError: damaged, truncated, renamed, swapped or forged bytes."""
        view = memoryview(sealed)
        if len(view) < OVERHEAD:
            raise IntegrityError(f"{what}: sealed object too short (truncated)")
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], self.associated(kind, name))
        except self._invalid_tag:
            raise IntegrityError(f"{what}: authentication failed (tampered, truncated, renamed or "
                                 "from another repository)") from None

    def seal_object(self, kind: int, body: bytes, name: bytes = b"") -> bytes:
        """A whole object (index, manifest, plan): magic, then the seal."""
        return SEALED_MAGIC + self.seal(kind, name, body)

    def open_object(self, kind: int, body: bytes | memoryview, what: str, name: bytes = b"") -> bytes:
        if not is_sealed_object(body):
            raise IntegrityError(f"{what} is not sealed in an encrypted repository (planted or downgraded)")
        return self.open(kind, name, memoryview(body)[len(SEALED_MAGIC):], what)


# -- key slots ---------------------------------------------------------------------------------

SLOT_VERSION = 1
#: defaults for new slots: OWASP's first recommended Argon2id configuration (46 MiB, one pass, one
#: lane), about 0.1 s here. Every command of an encrypted repository derives once, so this is paid
#: per command; RFC 9106's 64 MiB, 3 passes cost 0.25-0.45 s here (benchmarks/RESULTS.md, issue 15)
ARGON2_DEFAULT = {"algorithm": "argon2id", "iterations": 1, "memory_kib": 46 * 1024, "lanes": 1}
SCRYPT_DEFAULT = {"algorithm": "scrypt", "n": 2**17, "r": 8, "p": 1}
#: the cheapest parameters, for tests only (CASSTORE_TEST_WEAK_KDF): never for real slots
WEAK_ARGON2 = {"algorithm": "argon2id", "iterations": 1, "memory_kib": 64, "lanes": 1}
# a hostile slot must not make an open allocate or spin without bound
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_ITERATIONS = 64


def _kdf_key(password: bytes, salt: bytes, params: dict[str, Any]) -> bytes:
    algorithm = params.get("algorithm")
    if algorithm == "argon2id":
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # lazy: only when unlocking

        memory, iterations, lanes = params["memory_kib"], params["iterations"], params["lanes"]
        if not (is_int(memory) and is_int(iterations) and is_int(lanes)
                and 8 * lanes <= memory <= _MAX_MEMORY_KIB and 1 <= iterations <= _MAX_ITERATIONS
                and 1 <= lanes <= 64):
            raise FormatError("key slot has argon2id parameters out of range")
        return Argon2id(salt=salt, length=32, iterations=iterations, lanes=lanes,
                        memory_cost=memory).derive(password)
    if algorithm == "scrypt":
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # lazy: only when unlocking

        n, r, p = params["n"], params["r"], params["p"]
        if not (is_int(n) and is_int(r) and is_int(p) and 2 <= n <= 2**22
                and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise FormatError("key slot has scrypt parameters out of range")
        return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password)
    raise FormatError(f"key slot uses an unknown key derivation {algorithm!r}")


def default_kdf(weak: bool = False) -> dict[str, Any]:
    """Argon2id where this OpenSSL has it, else scrypt."""
    if weak:
        return dict(WEAK_ARGON2)
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        _kdf_key(b"probe", b"0" * 16, WEAK_ARGON2)
        return dict(ARGON2_DEFAULT)
    except UnsupportedAlgorithm:
        return dict(SCRYPT_DEFAULT)


def new_slot_id() -> str:
    return os.urandom(16).hex()


def _slot_ad(slot_id: str) -> bytes:
    return b"casstore key slot\0%c%s" % (SLOT_VERSION, slot_id.encode())


def make_slot(key: MasterKey, password: bytes, slot_id: str, kdf: dict[str, Any], host: str) -> bytes:
    """A key slot object: `key`'s secret and domain sealed under a key derived from `password`."""
    salt = os.urandom(16)
    wrapping = _aesgcm(_kdf_key(password, salt, kdf))
    nonce = os.urandom(NONCE_SIZE)
    secret = msgpack.packb({"secret": key.secret, "domain": key.domain})
    body: bytes = msgpack.packb({"version": SLOT_VERSION, "kdf": kdf, "salt": salt, "host": host,
                                 "created_ns": time.time_ns(),
                                 "sealed": nonce + wrapping.encrypt(nonce, secret, _slot_ad(slot_id))})
    return body


class SlotInfo(NamedTuple):
    """What a key slot shows without its password (`key list`; a named tuple: a frozen dataclass
    cost every command's start-up ~4M instructions)."""

    id: str
    host: str
    created_ns: int
    kdf: dict[str, Any]


def _slot_doc(slot_id: str, body: bytes) -> dict[str, Any]:
    try:
        doc = msgpack.unpackb(body, max_bin_len=4096)
        if not isinstance(doc, dict) or doc.get("version") != SLOT_VERSION:
            raise ValueError("not a key slot of a known version")
        if not isinstance(doc.get("kdf"), dict) or not isinstance(doc.get("salt"), bytes) \
                or not isinstance(doc.get("sealed"), bytes) or len(doc["salt"]) < 16:
            raise ValueError("missing fields")
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt key slot {slot_id[:8]}: {unpack_reason(exc)}") from exc
    return doc


def slot_info(slot_id: str, body: bytes) -> SlotInfo:
    doc = _slot_doc(slot_id, body)
    return SlotInfo(slot_id, str(doc.get("host", "")), int(doc.get("created_ns", 0)), dict(doc["kdf"]))


def open_slot(slot_id: str, body: bytes, password: bytes) -> tuple[bytes, bytes]:
    """(secret, domain) of a slot; WrongPassword when `password` does not open it."""
    doc = _slot_doc(slot_id, body)
    sealed = doc["sealed"]
    if len(sealed) < OVERHEAD:
        raise FormatError(f"corrupt key slot {slot_id[:8]}: too short")
    wrapping = _aesgcm(_kdf_key(password, doc["salt"], doc["kdf"]))
    try:
        inner = msgpack.unpackb(wrapping.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _slot_ad(slot_id)))
    except _invalid_tag():
        raise WrongPassword("wrong password for this key slot") from None
    secret, domain = inner.get("secret"), inner.get("domain")
    if not (isinstance(secret, bytes) and len(secret) == 32 and isinstance(domain, bytes) and len(domain) == 16):
        raise FormatError(f"corrupt key slot {slot_id[:8]}: bad master key")
    return secret, domain


# -- whole objects, plain or sealed ------------------------------------------------------------

def seal_if(sealer: Sealer | None, kind: int, body: bytes, name: bytes = b"") -> bytes:
    """`body` as stored: sealed in an encrypted repository, as it is in a plain one."""
    return body if sealer is None else sealer.seal_object(kind, body, name)


def unseal_if(sealer: Sealer | None, kind: int, body: bytes, what: str, name: bytes = b"") -> bytes:
    """The plaintext of a stored whole object. A plain repository refuses a sealed one: its config
    must have been replaced by a plain one (downgrade), so nothing is read from it."""
    if sealer is not None:
        return sealer.open_object(kind, body, what, name)
    if is_sealed_object(body):
        raise DowngradeError(f"{what} is encrypted but the repository config says it is not: the config "
                             "may have been replaced (downgrade); refusing to read")
    return body
