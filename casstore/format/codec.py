"""Blob encoding: one tag byte, then the payload.

The tag makes stored bytes describe themselves (a registry keyed by one byte, as in borg):

    0x00  raw       payload is the plaintext
    0x01  zstd      payload is one zstd frame of the plaintext
    0x02  sealed raw   nonce | AES-256-GCM(raw plaintext) | tag   (encrypted repositories)
    0x03  sealed zstd  nonce | AES-256-GCM(zstd frame) | tag
    0x04  delta        base id (32 bytes) | one zstd frame with the base's plaintext as a raw-content
                       dictionary (format/delta.py; plain repositories only): decoding needs the base

An encrypted repository (format/crypto.py) seals every blob after compressing it, with the blob's
kind, keyed id and tag bound as associated data; its blob ids are keyed BLAKE3. Every function
here takes that repository's `sealer` (None: a plain repository, whose bytes are unchanged).

Each blob is compressed on its own so one blob can be read without its neighbours. A blob that
does not shrink is stored raw. Decoding is bounded by the raw length recorded in the pack
header, so a hostile frame cannot make us allocate more than that, and every decoded blob is
re-hashed against its id: a mismatch is an IntegrityError, never returned data.
"""

from __future__ import annotations

import struct
import threading

import blake3
import zstandard

from casstore.errors import DowngradeError, FormatError, IntegrityError
from casstore.format import delta
from casstore.format.crypto import KIND_DATA_BLOB, Sealer

TAG_RAW = 0x00
TAG_ZSTD = 0x01
TAG_SEALED = 0x02         # OR-ed into the tag of the envelope it seals
_SEALED_TAGS = {0x02, 0x03}

# blake3 releases the GIL above this size; small inputs are cheaper on one thread
_HASH_THREADS_MIN = 1 << 20

VERIFY_PIECE = 256 * 1024   # decoded at a time when verifying a blob just encoded

_local = threading.local()


def blob_id(data: bytes | memoryview, sealer: Sealer | None = None) -> bytes:
    """BLAKE3-256 of the plaintext (the blob id), keyed in an encrypted repository."""
    return sealer.blob_id(data) if sealer is not None else blake3.blake3(data).digest()


# Level 3 (the default) keeps zstd's strategy, window and hash table but matches of at least 6
# bytes and a smaller chain table. Measured on the benchmark data in 1 MiB pieces (RESULTS.md):
# output equal or smaller on JSON, 4-13% faster on JSON and 78% faster on float arrays. Decoding
# does not depend on these parameters; any zstd decoder reads the frames.
_TUNED = {3: {"min_match": 6, "chain_log": 15}}


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        params = zstandard.ZstdCompressionParameters.from_level(level, write_content_size=True,
                                                                **_TUNED.get(level, {}))
        cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


_RAW, _ZSTD = bytes((TAG_RAW,)), bytes((TAG_ZSTD,))


# An envelope in two parts, tag and payload, laid back to back where it is stored: a pack copies
# both into its buffer, so joining them first would copy every blob once more.
Encoded = tuple[bytes, bytes]


def encode_parts(data: bytes | memoryview, level: int) -> Encoded:
    """Compress `data` into (tag, payload), or store it raw when zstd does not shrink it."""
    tag, payload = _encode_parts_view(data, level)
    return tag, bytes(payload)


def _encode_parts_view(data: bytes | memoryview, level: int) -> tuple[bytes, bytes | memoryview]:
    """`encode_parts`, but a raw payload is `data` itself, not a copy: for a caller that seals it
    into new bytes at once (the copy cost an encrypted snapshot a pass over every incompressible
    byte, issue 15)."""
    if level > 0:
        compressed = _compressor(level).compress(data)
        if len(compressed) < len(data):
            return _ZSTD, compressed
    return _RAW, data


def encode(data: bytes | memoryview, level: int) -> bytes:
    """The blob envelope as one byte string."""
    return b"".join(encode_parts(data, level))


def decode(encoded: bytes | memoryview, raw_length: int, sealer: Sealer | None = None, kind: int = 0,
           expected_id: bytes = b"", *, base: bytes | memoryview | None = None) -> bytes:
    """Undo `encode` (and the seal), refusing to produce anything but exactly `raw_length` bytes.
    A delta blob needs its base's plaintext (`base`; the base id is `delta.base_of(encoded)`)."""
    if not encoded:
        raise FormatError("empty blob envelope")
    view = memoryview(encoded)
    tag, payload = _unsealed(view, sealer, kind, expected_id)
    return bytes(_plaintext(tag, payload, raw_length, base))


def is_sealed(encoded: bytes | memoryview) -> bool:
    """Whether an envelope is sealed (an encrypted repository's blob)."""
    return len(encoded) > 0 and encoded[0] in _SEALED_TAGS


def _blob_ad_name(blob_id: bytes, tag: int) -> bytes:
    return blob_id + bytes((tag,))


def _unsealed(view: memoryview, sealer: Sealer | None, kind: int, expected_id: bytes) -> tuple[int, bytes | memoryview]:
    """(inner tag, payload) of an envelope: opened first in an encrypted repository."""
    tag = view[0]
    if sealer is None:
        return tag, view[1:]
    if tag not in _SEALED_TAGS:
        raise IntegrityError(f"blob {expected_id.hex()[:16]} is not sealed in an encrypted repository")
    what = f"blob {expected_id.hex()[:16]}"
    return tag & ~TAG_SEALED, sealer.open(KIND_DATA_BLOB + kind, _blob_ad_name(expected_id, tag), view[1:], what)


def _plaintext(tag: int, payload: bytes | memoryview, raw_length: int,
               base: bytes | memoryview | None = None) -> bytes | memoryview:
    """The decoded payload; a raw payload is returned as it is, not copied."""
    if _check_tag(tag) == TAG_RAW:
        data = payload
    elif tag == delta.TAG_DELTA:
        if base is None:
            raise FormatError("a delta blob cannot be decoded without its base")
        data = delta.decode_payload(payload, raw_length, base)
    else:
        _check_declared_size(payload, raw_length)
        try:
            data = _decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"corrupt zstd blob: {exc}") from exc
    if len(data) != raw_length:
        raise IntegrityError(f"blob decodes to {len(data)} bytes, index says {raw_length}")
    return data


def _plaintext_id(tag: int, payload: bytes | memoryview, raw_length: int, sealer: Sealer | None) -> bytes:
    """BLAKE3 of the decoded payload, decoded in pieces: a plaintext larger than one piece is never
    held whole.

    Verification on write needs only the hash, so a worker decodes into one reused buffer
    instead of allocating every chunk's size again (a max-size chunk is 8 MiB).
    """
    if _check_tag(tag) == TAG_RAW:
        if len(payload) != raw_length:
            raise IntegrityError(f"blob decodes to {len(payload)} bytes, index says {raw_length}")
        return blob_id(payload, sealer)
    if raw_length <= VERIFY_PIECE:
        # decoded in one call: a stream reader for each 1-4 KB file cost a quarter of its check
        return blob_id(_plaintext(tag, payload, raw_length), sealer)
    _check_declared_size(payload, raw_length)
    hasher, piece = (sealer.hasher() if sealer is not None else blake3.blake3()), _verify_buffer()
    total = 0
    try:
        with _decompressor().stream_reader(payload) as reader:
            while n := reader.readinto(piece):
                total += n
                if total > raw_length:
                    break
                hasher.update(piece[:n])
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt zstd blob: {exc}") from exc
    if total != raw_length:
        raise IntegrityError(f"blob decodes to {total} bytes or more, index says {raw_length}")
    return hasher.digest()


def _check_tag(tag: int) -> int:
    if tag in (TAG_RAW, TAG_ZSTD, delta.TAG_DELTA):
        return tag
    if tag in _SEALED_TAGS:
        raise DowngradeError("an encrypted blob in a repository whose config says it is not encrypted: "
                             "the config may have been replaced (downgrade); refusing to read")
    raise FormatError(f"unknown blob tag 0x{tag:02x}")


def _check_declared_size(payload: bytes | memoryview, raw_length: int) -> None:
    # zstandard allocates a frame's declared content size up front and ignores max_output_size
    # then: refuse a declared size other than the recorded one first
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt zstd blob: {exc}") from exc
    if declared not in (-1, raw_length):
        raise IntegrityError(f"zstd frame declares {declared} bytes, index says {raw_length}")


def _verify_buffer() -> memoryview:
    piece = getattr(_local, "verify_piece", None)
    if piece is None:
        piece = _local.verify_piece = memoryview(bytearray(VERIFY_PIECE))
    return piece


def decode_verified(encoded: bytes | memoryview, raw_length: int, expected_id: bytes,
                    sealer: Sealer | None = None, kind: int = 0, *, base: bytes | memoryview | None = None) -> bytes:
    """Decode (opening the seal) and check the plaintext hashes to `expected_id`."""
    data = decode(encoded, raw_length, sealer, kind, expected_id, base=base)
    if blob_id(data, sealer) != expected_id:
        raise IntegrityError(f"blob {expected_id.hex()[:16]} does not match its id")
    return data


# A delta this many times smaller than its plaintext is kept without compressing the chunk whole to
# compare: zstd level 3 rarely reaches 64x on real data, and where it does the delta costs at most
# 1/64 of the chunk. On real releases a changed chunk's delta is 30-1000x smaller, and compressing
# it whole as well was a third of a delta's CPU (issue 17).
_SURELY_SMALLER = 64


def encode_verified(data: bytes | memoryview, level: int, expected_id: bytes,
                    sealer: Sealer | None = None, kind: int = 0, *,
                    base: tuple[bytes, bytes | memoryview] | None = None) -> Encoded:
    """Encode, then decode the result and re-hash it before it may leave the process (design 5.5);
    in an encrypted repository the verified envelope is then sealed (tag | nonce, ciphertext).

    With `base` (its id and plaintext; plain repositories only), a delta against it is kept when
    it is smaller than the blob compressed whole, or without compressing it whole when the delta is
    at most 1/64 of the plaintext (`_SURELY_SMALLER`)."""
    if sealer is not None:
        return _encode_sealed(data, level, expected_id, sealer, kind)
    if base is not None and level > 0:
        delta_tag, frame = delta.encode_parts(data, level, *base)
        surely = len(frame) <= len(data) // _SURELY_SMALLER
        tag, payload = (b"", b"") if surely else encode_parts(data, level)
        if surely or len(delta_tag) + len(frame) < len(tag) + len(payload):
            if blob_id(delta.decode_frame(frame, len(data), base[1])) != expected_id:
                raise IntegrityError(f"blob {expected_id.hex()[:16]} does not survive its own delta encoding")
            return delta_tag, frame
    else:
        tag, payload = encode_parts(data, level)
    _check_survives(tag[0], payload, len(data), None, expected_id)
    return tag, payload


def encode_verified_many(datas: list[bytes], level: int, expected_ids: list[bytes]) -> list[Encoded]:
    """`encode_verified` of many small plaintexts of a plain repository (no seal, no delta base):
    compressed in one zstd call and decoded back in one, each checked against its id (design 5.5).
    The frames are the ones `encode_parts` makes; a batch of small files costs about a third of
    one call per file each way, and releases the GIL twice instead of twice a file (issue 14)."""
    if level <= 0 or not datas:
        return [encode_verified(data, level, blob_id) for data, blob_id in zip(datas, expected_ids, strict=True)]
    inputs: list[bytes | bytearray | memoryview] = list(datas)
    frames = _compressor(level).multi_compress_to_buffer(inputs)
    encoded: list[Encoded] = []
    packed: list[int] = []          # the compressed ones, checked below
    for i, data in enumerate(datas):
        frame = frames[i]
        if len(frame) < len(data):
            encoded.append((_ZSTD, frame.tobytes()))
            packed.append(i)
        else:
            encoded.append((_RAW, bytes(data)))
            _check_survives(TAG_RAW, data, len(data), None, expected_ids[i])
    if packed:
        sizes = struct.pack(f"={len(packed)}Q", *(len(datas[i]) for i in packed))
        try:
            decoded = _decompressor().multi_decompress_to_buffer([encoded[i][1] for i in packed],
                                                                 decompressed_sizes=sizes)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"a blob does not survive its own encoding: {exc}") from exc
        for j, i in enumerate(packed):
            if blob_id(decoded[j].tobytes()) != expected_ids[i]:
                raise IntegrityError(f"blob {expected_ids[i].hex()[:16]} does not survive its own encoding")
    return encoded


def _encode_sealed(data: bytes | memoryview, level: int, expected_id: bytes, sealer: Sealer, kind: int) -> Encoded:
    """`encode_verified` in an encrypted repository: the envelope checked, then sealed into new bytes
    (tag | nonce, ciphertext); `data` is not referred to afterwards."""
    tag, payload = _encode_parts_view(data, level)
    _check_survives(tag[0], payload, len(data), sealer, expected_id)
    sealed_tag = tag[0] | TAG_SEALED
    nonce, ciphertext = sealer.seal_parts(KIND_DATA_BLOB + kind, _blob_ad_name(expected_id, sealed_tag), payload)
    return bytes((sealed_tag,)) + nonce, ciphertext


def _check_survives(tag: int, payload: bytes | memoryview, raw_length: int, sealer: Sealer | None,
                    expected_id: bytes) -> None:
    if _plaintext_id(tag, payload, raw_length, sealer) != expected_id:
        raise IntegrityError(f"blob {expected_id.hex()[:16]} does not survive its own encoding")
