"""The repository's `config` object: fixed at init, shared by every host that writes to it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import msgpack

from casstore.errors import (
    ConfigError,
    DowngradeError,
    EncryptionError,
    FormatError,
    IncompatibleRepository,
    IntegrityError,
    MissingKey,
)
from casstore.format.crypto import KIND_CONFIG, SCHEME, MasterKey, Sealer
from casstore.format.fields import is_int
from casstore.format.reasons import unpack_reason

if TYPE_CHECKING:
    from casstore.chunker import Chunker

FORMAT_VERSION = 1
KiB, MiB = 1024, 1024 * 1024

DEFAULT_CHUNK_SIZES = {"min_size": 256 * KiB, "avg_size": 1 * MiB, "max_size": 8 * MiB}
DEFAULT_PACK_SIZE = 16 * MiB
DEFAULT_COMPRESSION_LEVEL = 3
#: deltas in a row before a whole blob, in a new repository (format/delta.py; absent in a repository
#: made before delta blobs, where none are written, so older casstore versions keep reading it).
#: 4, not 8: reading a delta decodes its chain, so restore and each delta's base cost grow with
#: it; on the real-data releases 8 took restore to 1.69x the CPU of no deltas, 4 to 1.04x, for
#: 7% more bytes (RESULTS.md, issue 17)
DEFAULT_DELTA_CHAIN = 4
MAX_DELTA_CHAIN = 64
#: the grace period of a repository whose config predates the setting (design 9)
DEFAULT_GRACE_SECONDS = 24 * 3600
#: the shortest grace period a repository may be created with: a writer checkpoints every quarter
MIN_GRACE_SECONDS = 10
# The format's stated ranges (DESIGN.md, config). A config outside them is refused when the
# repository is opened: a hostile `max_size = 2**40` would otherwise let 1 GiB blobs in, and a
# huge `pack_size` would size every pack buffer.
CHUNK_RANGE = (64, 64 * MiB)
PACK_SIZE_RANGE = (4 * KiB, 1024 * MiB)
LEVEL_RANGE = (-(1 << 17), 22)         # zstd's levels


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: dict[str, Any]
    pack_size: int = DEFAULT_PACK_SIZE
    compression: dict[str, Any] = field(
        default_factory=lambda: {"algorithm": "zstd", "level": DEFAULT_COMPRESSION_LEVEL})
    encryption: dict[str, Any] | None = None
    version: int = FORMAT_VERSION
    #: gc's grace period on a shared remote, fixed at init like the chunker: every writer and every
    #: gc host uses this one, so no host's setting can make gc delete what a writer still protects
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    #: an encrypted repository's master key, once unlocked: never encoded, never compared or printed
    keys: MasterKey | None = field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, *, min_size: int | None = None, avg_size: int | None = None, max_size: int | None = None,
            pack_size: int = DEFAULT_PACK_SIZE, compression_level: int = DEFAULT_COMPRESSION_LEVEL,
            grace_seconds: float = DEFAULT_GRACE_SECONDS, keys: MasterKey | None = None,
            delta_chain: int = DEFAULT_DELTA_CHAIN) -> RepoConfig:
        avg = avg_size or DEFAULT_CHUNK_SIZES["avg_size"]
        lo = min_size or (DEFAULT_CHUNK_SIZES["min_size"] if avg_size is None else max(64, avg // 4))
        hi = max_size or (DEFAULT_CHUNK_SIZES["max_size"] if avg_size is None else min(16 * MiB, avg * 8))
        from casstore.chunker.fastcdc import FastCDCChunker, new_seed  # lazy: compiled chunker, writers only

        _check_sizes({"min_size": lo, "avg_size": avg, "max_size": hi}, pack_size, compression_level)
        # an encrypted repository's gear table is seeded from its key (the seed is in the sealed part)
        chunker = FastCDCChunker(lo, avg, hi, keys.chunker_seed() if keys is not None else new_seed())
        if grace_seconds < MIN_GRACE_SECONDS:
            raise ConfigError(f"a grace period shorter than {MIN_GRACE_SECONDS} s is not safe for writers")
        encryption = None if keys is None else {"scheme": SCHEME, "domain": keys.domain.hex()}
        return cls(id=os.urandom(16).hex(), chunker=chunker.params(), pack_size=pack_size,
                   compression={"algorithm": "zstd", "level": compression_level,
                                # no deltas in an encrypted repository (not designed for sealed blobs yet)
                                **({"delta": delta_chain} if delta_chain and keys is None else {})},
                   grace_seconds=int(grace_seconds), encryption=encryption, keys=keys)

    @property
    def delta_chain(self) -> int:
        """Deltas in a row before a whole blob; 0 (a repository made before delta blobs, or an
        encrypted one): none written."""
        return 0 if self.encryption is not None else int(self.compression.get("delta", 0))

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def sealer(self) -> Sealer | None:
        """What seals this repository's objects (None: a plain repository)."""
        if self.encryption is None:
            return None
        if self.keys is None:
            raise MissingKey("internal error: an encrypted repository's config was used before it was unlocked")
        return self.keys.sealer

    def make_chunker(self) -> Chunker:
        """The chunker these parameters describe (imported on first use: it is a compiled module)."""
        from casstore.chunker import chunker_from_params  # lazy: compiled chunker, writers only

        return chunker_from_params(self.chunker)

    @property
    def max_blob_size(self) -> int:
        """No blob's raw length may exceed this; larger claims are refused before allocating."""
        return max(int(self.chunker.get("max_size", self.chunker.get("size", 0))), 8 * MiB)

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "keys"}

    def encode(self) -> bytes:
        doc = self._fields()
        if self.encryption is not None:
            # public: version, id and the scheme; the chunker (its seed), pack and compression
            # settings and the grace period are sealed, bound to this repository's id
            secret = {k: doc.pop(k) for k in _SECRET_FIELDS}
            sealer = self.sealer
            assert sealer is not None
            doc["encryption"] = {**self.encryption, "sealed": sealer.seal(KIND_CONFIG, self.id.encode(),
                                                                            msgpack.packb(secret))}
        body: bytes = msgpack.packb(doc)
        return body

    def encode_verified(self) -> bytes:
        """The encoding, decoded back before it leaves the process (design 5.5)."""
        body = self.encode()
        try:
            back = RepoConfig.decode(body, self.keys)
        except FormatError as exc:
            raise IntegrityError(f"internal error: the repository config does not decode: {exc}") from exc
        if back != self:
            raise IntegrityError("internal error: the repository config does not decode to what was encoded")
        return body

    @classmethod
    def decode(cls, body: bytes, keys: MasterKey | None = None) -> RepoConfig:
        """Decode a stored config; an encrypted one needs its repository's unlocked `keys`."""
        try:
            doc = msgpack.unpackb(body)
            if not isinstance(doc, dict):
                raise ValueError("not a map")
            if doc.get("version") != FORMAT_VERSION:
                raise FormatError(f"unsupported repository format version {doc.get('version')}")
            if "keys" in doc:
                raise ValueError("unknown field 'keys'")
            if doc.get("encryption") is not None:
                doc = _unsealed_fields(doc, keys)
            config = cls(**doc, keys=keys if doc.get("encryption") is not None else None)
            _check_chunker(config.chunker)
            _check_rest(config)
            if not is_int(config.grace_seconds) or config.grace_seconds < MIN_GRACE_SECONDS:
                raise FormatError(f"bad grace period in repository config: {config.grace_seconds!r}")
        except (TypeError, ValueError, KeyError, msgpack.UnpackException) as exc:
            raise FormatError(f"corrupt repository config: {unpack_reason(exc)}") from exc
        return config

    def check_compatible(self, other: RepoConfig, other_name: str) -> None:
        """Refuse to exchange blobs with a repository that cuts chunks or encrypts differently."""
        if self.encrypted and not other.encrypted:
            raise DowngradeError(f"{other_name} is not encrypted but this repository is: refusing to exchange "
                                 "data with it (a config replaced by a plain one would be a downgrade)")
        if self.encryption != other.encryption:
            raise IncompatibleRepository(f"{other_name} is encrypted with another key than this repository; "
                                         f"run `casstore init --from {other_name}` to share its key")
        if self.chunker != other.chunker:
            raise IncompatibleRepository(
                f"{other_name} uses different chunker parameters or seed; "
                f"run `casstore init --from {other_name}` to create a local repository that shares them "
                "(`casstore init --replace-empty` replaces an empty local repository by one that does)")


_SECRET_FIELDS = ("chunker", "pack_size", "compression", "grace_seconds")


def encryption_domain(body: bytes) -> str | None:
    """The domain of an encrypted repository's stored config (None: plain), read before unlocking."""
    try:
        doc = msgpack.unpackb(body)
        encryption = doc.get("encryption") if isinstance(doc, dict) else None
    except (ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt repository config: {unpack_reason(exc)}") from exc
    return _domain_of(encryption)


def _domain_of(encryption: object) -> str | None:
    """The domain an `encryption` field names (None: plain), refusing an unknown scheme."""
    if encryption is None:
        return None
    if not isinstance(encryption, dict) or encryption.get("scheme") != SCHEME:
        raise FormatError(f"unknown encryption scheme in repository config: {encryption.get('scheme')!r}"
                          if isinstance(encryption, dict) else "bad encryption field in repository config")
    domain = encryption.get("domain")
    if not isinstance(domain, str) or len(domain) != 32 or any(c not in "0123456789abcdef" for c in domain):
        raise FormatError("bad encryption domain in repository config")
    return domain


def _unsealed_fields(doc: dict[str, Any], keys: MasterKey | None) -> dict[str, Any]:
    """An encrypted config's fields: the public ones and the opened secret part."""
    encryption = doc["encryption"]
    domain = _domain_of(encryption)
    if keys is None:
        raise MissingKey("this repository is encrypted: its key is needed to read its config")
    if keys.domain.hex() != domain:
        raise EncryptionError("the key given belongs to another encrypted repository")
    if set(doc) - {"version", "id", "encryption"} or not isinstance(doc.get("id"), str):
        raise ValueError("an encrypted config has fields outside its sealed part")
    sealed = encryption.get("sealed")
    if not isinstance(sealed, bytes):
        raise ValueError("missing sealed part")
    secret = msgpack.unpackb(keys.sealer.open(KIND_CONFIG, doc["id"].encode(), sealed, "repository config"))
    if not isinstance(secret, dict) or set(secret) != set(_SECRET_FIELDS):
        raise ValueError("bad sealed part")
    return {"version": doc["version"], "id": doc["id"], "encryption": {"scheme": SCHEME, "domain": domain},
            **secret}


def _check_chunker(params: object) -> None:
    """Refuse chunker parameters that are not a known algorithm with integer sizes (no import needed)."""
    if not isinstance(params, dict) or params.get("algorithm") not in ("fastcdc-2020", "fixed"):
        raise FormatError(f"unknown chunker in repository config: {params!r}")
    sizes = ("min_size", "avg_size", "max_size", "seed") if params["algorithm"] == "fastcdc-2020" else ("size",)
    if not all(is_int(params.get(k)) and params[k] > 0 for k in sizes):
        raise FormatError("bad chunker sizes in repository config")


def _check_rest(config: RepoConfig) -> None:
    compression = config.compression
    if not isinstance(compression, dict) or compression.get("algorithm") != "zstd" \
            or not is_int(compression.get("level")):
        raise FormatError(f"unknown compression in repository config: {compression!r}")
    chain = compression.get("delta", 0)
    if not is_int(chain) or not 0 <= chain <= MAX_DELTA_CHAIN:
        raise FormatError(f"delta chain bound {chain!r} is outside the format's range (0 to {MAX_DELTA_CHAIN})")
    if config.encryption is not None and set(config.encryption) != {"scheme", "domain"}:
        raise FormatError("bad encryption field in repository config")
    if not isinstance(config.id, str) or len(config.id) != 32:
        raise FormatError("bad repository id in config")
    params = config.chunker
    sizes: dict[str, int] = {k: params[k] for k in ("min_size", "avg_size", "max_size", "size") if k in params}
    _check_sizes(sizes, config.pack_size, compression["level"])


def _check_sizes(sizes: dict[str, int], pack_size: object, level: object) -> None:
    """Chunk sizes, pack size and compression level inside the format's stated ranges."""
    lo, hi = CHUNK_RANGE
    for name, value in sizes.items():
        if not lo <= value <= hi:
            raise FormatError(f"chunker {name} {value} is outside the format's range ({lo} to {hi} bytes)")
    if "max_size" in sizes and not sizes["min_size"] <= sizes["avg_size"] <= sizes["max_size"]:
        raise FormatError("chunker sizes must satisfy min_size <= avg_size <= max_size")
    if not is_int(pack_size) or not PACK_SIZE_RANGE[0] <= pack_size <= PACK_SIZE_RANGE[1]:
        raise FormatError(f"pack_size {pack_size} is outside the format's range "
                          f"({PACK_SIZE_RANGE[0]} to {PACK_SIZE_RANGE[1]} bytes)")
    if not is_int(level) or not LEVEL_RANGE[0] <= level <= LEVEL_RANGE[1]:
        raise FormatError(f"compression level {level} is outside zstd's range")
