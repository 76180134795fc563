"""Delta blobs: a chunk stored as zstd with an earlier chunk (its base) as the dictionary.

Envelope (tag 0x04):  0x04 | base id (32 bytes) | one zstd frame

The frame is compressed with the base's plaintext as a raw-content dictionary
(`DICT_TYPE_RAWCONTENT`): zstd copies every run the base shares, so a 1 MiB chunk of minified
JSON in which a few values changed costs a few KiB instead of its whole compressed size. The
blob's id is still the BLAKE3 of its own plaintext, so addressing, dedup and verification do not
change; only decoding needs the base's plaintext first (which may itself be a delta: a chain).
Writers bound chains to the repository's `compression.delta` deltas before a whole blob (config);
readers refuse chains deeper than `MAX_RESOLVE`.

The base id is also recorded beside the blob's location in pack headers and indexes (BlobEntry
`base`), so gc, sync and check know every base without reading a blob.
"""

from __future__ import annotations

from types import ModuleType

import zstandard

from casstore.errors import FormatError, IntegrityError

TAG_DELTA = 0x04
ID_LENGTH = 32
MAX_RESOLVE = 64         # deltas in a row a reader follows before refusing the chain as corrupt

_TAG = bytes((TAG_DELTA,))


class BaseUnreadable(IntegrityError):
    """A delta's base (or one further down its chain) cannot be read: the delta cannot be either.
    Raised once, where the chain breaks, and not retried at every level above it."""


def _window_log(base_length: int, length: int) -> int:
    # the frame's window must reach back over the whole base from the end of the new chunk
    return min(27, max(20, (base_length + length).bit_length()))


# Level 3's own tables (hash_log 17) index too little of a 1-8 MiB dictionary: on real releases a
# 1 MiB chunk with a few edits came out at 861 KiB against its base instead of 7 KiB. Tables of
# 2**20 entries (4 MiB each, freed after the chunk) find the runs (RESULTS.md, issue 17).
_TABLE_LOG = 20
# Up to this level a delta uses zstd's "fast" strategy (one hash table, no chain table) hashing
# 7-byte sequences into 2**19 entries: a delta's matches are long runs of the base, which that one
# table finds about as well as level 3's two of 2**20 (31 changed chunk pairs of the real-data
# releases, 0.4-4 MiB each, 46 MiB: 141 KiB against 138; 158 KiB with 6-byte sequences, 175 with
# 5; 2**18 entries: 403), for about 40% of the CPU and 15 MiB less memory a delta (issue 17).
_FAST_UP_TO_LEVEL = 3
_FAST_TABLE_LOG = 19


def _dictionary(base: bytes | memoryview) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(bytes(base), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def _parameters(level: int, window: int) -> zstandard.ZstdCompressionParameters:
    if level <= _FAST_UP_TO_LEVEL:
        tables = min(window, _FAST_TABLE_LOG)
        return zstandard.ZstdCompressionParameters.from_level(
            max(level, 1), window_log=window, hash_log=tables, chain_log=tables, min_match=7,
            strategy=zstandard.STRATEGY_FAST, write_content_size=True)
    tables = min(window, _TABLE_LOG)
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=window, hash_log=tables, chain_log=tables, write_content_size=True)


def _zstdprefix() -> ModuleType:
    """format/zstdprefix.py, imported where a delta is made or read: it loads ctypes, which a
    command that meets no delta (a no-change snapshot) would import for nothing."""
    from casstore.format import zstdprefix
    return zstdprefix


def _native_parameters(params: zstandard.ZstdCompressionParameters) -> list[tuple[int, int]]:
    """The same parameters for libzstd (format/zstdprefix.py), every one set, and long-distance
    matching: a prefix is indexed at every third position only (a CDict at every one), so on
    self-similar JSON the fast strategy took short local matches over the base's long run (a 415
    KiB table with two values changed: 4488 bytes against python-zstandard's 71); long-distance
    matching finds the run (74 bytes). The 33 changed chunks of one real-data version: 127 KiB
    against 155 without it and 185 through python-zstandard, at 67 CPU-ms against 32 and 165."""
    z = _zstdprefix()
    return [(z.C_LONG_DISTANCE_MATCHING, 1), (z.C_WINDOW_LOG, params.window_log), (z.C_HASH_LOG, params.hash_log),
            (z.C_CHAIN_LOG, params.chain_log), (z.C_SEARCH_LOG, params.search_log),
            (z.C_MIN_MATCH, params.min_match), (z.C_TARGET_LENGTH, params.target_length),
            (z.C_STRATEGY, params.strategy), (z.C_CONTENT_SIZE, 1), (z.C_CHECKSUM, params.write_checksum),
            (z.C_DICT_ID, params.write_dict_id)]


def encode_parts(data: bytes | memoryview, level: int, base_id: bytes,
                 base: bytes | memoryview) -> tuple[bytes, bytes]:
    """(tag and base id, frame) of `data` compressed against `base` (through libzstd where it can
    be loaded: format/zstdprefix.py; else python-zstandard, the same frames)."""
    params = _parameters(level, _window_log(len(base), len(data)))
    native = _zstdprefix().native()
    if native is not None:
        return _TAG + base_id, native.compress(data, base, _native_parameters(params))
    frame = zstandard.ZstdCompressor(dict_data=_dictionary(base), compression_params=params).compress(data)
    return _TAG + base_id, frame


def base_of(envelope: bytes | memoryview | tuple[bytes, ...]) -> bytes | None:
    """The base id a delta envelope names, or None for any other envelope (whole, or as the parts
    `encode_parts` and codec.encode_parts return: the first part holds the tag and any base id)."""
    head = envelope[0] if isinstance(envelope, tuple) else envelope
    if not len(head) or head[0] != TAG_DELTA:
        return None
    if len(head) < 1 + ID_LENGTH:
        raise FormatError("delta blob envelope too short for its base id")
    return bytes(head[1:1 + ID_LENGTH])


def decode_payload(payload: bytes | memoryview, raw_length: int, base: bytes | memoryview) -> bytes:
    """Plaintext of a delta payload (base id, frame), given the base's plaintext."""
    if len(payload) <= ID_LENGTH:
        raise IntegrityError("delta blob too short")
    return decode_frame(payload[ID_LENGTH:], raw_length, base)


def check_frame(envelope: bytes | memoryview, raw_length: int) -> None:
    """Without the base: the envelope holds one zstd frame that declares `raw_length` bytes."""
    frame = memoryview(envelope)[1 + ID_LENGTH:]
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt delta blob: {exc}") from exc
    if declared != raw_length:
        raise IntegrityError(f"delta frame declares {declared} bytes, index says {raw_length}")


def decode_frame(frame: bytes | memoryview, raw_length: int, base: bytes | memoryview) -> bytes:
    """Plaintext of a delta's zstd frame, given the base's plaintext."""
    zstdprefix = _zstdprefix()
    data: bytes
    try:
        declared = zstandard.frame_content_size(frame)
        if declared not in (-1, raw_length):   # zstandard allocates the declared size up front
            raise IntegrityError(f"zstd frame declares {declared} bytes, index says {raw_length}")
        native = zstdprefix.native()
        if native is not None:
            data = native.decompress(frame, raw_length, base)     # exactly `raw_length` bytes, or fails
        else:
            dctx = zstandard.ZstdDecompressor(dict_data=_dictionary(base),
                                              max_window_size=1 << zstdprefix.WINDOW_LOG_MAX)
            data = dctx.decompress(frame, max_output_size=raw_length)
    except (zstandard.ZstdError, zstdprefix.ZstdError) as exc:
        raise IntegrityError(f"corrupt delta blob: {exc}") from exc
    if len(data) != raw_length:
        raise IntegrityError(f"delta blob decodes to {len(data)} bytes, index says {raw_length}")
    return data
