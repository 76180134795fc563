"""zstd with a raw-content prefix, through the system's libzstd (ctypes), for delta blobs.

python-zstandard makes a delta the long way: `ZstdCompressionDict` copies the base, the
compressor turns it into a CDict (every position of the base hashed) and then copies the CDict's
tables into a fresh compression context; decoding copies the base again. libzstd's
`ZSTD_CCtx_refPrefix` / `ZSTD_DCtx_refPrefix` use the base in place, index it once into the
context's own tables, and the contexts are kept per thread (their tables are not allocated and
faulted in again for every chunk). The frames are the same zstd frames a raw-content dictionary
gives (either side decodes the other's). Measured on the 33 changed chunks of one real-data
version (40 MiB), compressed and verified: 202 → 66 CPU-ms and 50k → 10k page faults (before
long-distance matching, which format/delta.py turns on: see its numbers there; issue 17).

`native()` is None where libzstd (1.4 or later) cannot be loaded: format/delta.py then uses
python-zstandard.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Iterable

# zstd.h's stable parameter numbers
C_LEVEL, C_WINDOW_LOG, C_HASH_LOG, C_CHAIN_LOG, C_SEARCH_LOG, C_MIN_MATCH, C_TARGET_LENGTH, C_STRATEGY = range(100, 108)
C_CONTENT_SIZE, C_CHECKSUM, C_DICT_ID = 200, 201, 202
C_LONG_DISTANCE_MATCHING = 160
D_WINDOW_LOG_MAX = 100
_RESET_SESSION_AND_PARAMETERS = 3
_DCT_RAW_CONTENT = 1
_MIN_VERSION = 10400           # refPrefix and the advanced parameters are stable from zstd 1.4.0


class ZstdError(Exception):
    """libzstd refused or failed a call (its own error name in the message)."""


class _Contexts:
    """One thread's compression and decompression contexts, freed with the thread's locals."""

    def __init__(self, lib: ctypes.CDLL, window_log_max: int) -> None:
        self._lib = lib
        self.cctx, self.dctx = lib.ZSTD_createCCtx(), lib.ZSTD_createDCtx()
        if not self.cctx or not self.dctx:
            raise MemoryError("libzstd could not allocate its contexts")
        lib.ZSTD_DCtx_setParameter(self.dctx, D_WINDOW_LOG_MAX, window_log_max)

    def __del__(self) -> None:
        self._lib.ZSTD_freeCCtx(self.cctx)
        self._lib.ZSTD_freeDCtx(self.dctx)


class Native:
    def __init__(self, lib: ctypes.CDLL, window_log_max: int) -> None:
        size, ptr, cptr = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p
        for name, restype, argtypes in (
                ("ZSTD_createCCtx", ptr, []), ("ZSTD_createDCtx", ptr, []),
                ("ZSTD_freeCCtx", size, [ptr]), ("ZSTD_freeDCtx", size, [ptr]),
                ("ZSTD_CCtx_reset", size, [ptr, ctypes.c_int]),
                ("ZSTD_CCtx_setParameter", size, [ptr, ctypes.c_int, ctypes.c_int]),
                ("ZSTD_DCtx_setParameter", size, [ptr, ctypes.c_int, ctypes.c_int]),
                ("ZSTD_CCtx_refPrefix_advanced", size, [ptr, ptr, size, ctypes.c_int]),
                ("ZSTD_DCtx_refPrefix_advanced", size, [ptr, ptr, size, ctypes.c_int]),
                ("ZSTD_compress2", size, [ptr, ptr, size, ptr, size]),
                ("ZSTD_decompressDCtx", size, [ptr, ptr, size, ptr, size]),
                ("ZSTD_compressBound", size, [size]),
                ("ZSTD_isError", ctypes.c_uint, [size]), ("ZSTD_getErrorName", cptr, [size])):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
        self._lib, self._window_log_max = lib, window_log_max
        self._local = threading.local()

    def _contexts(self) -> _Contexts:
        contexts = getattr(self._local, "contexts", None)
        if contexts is None:
            contexts = self._local.contexts = _Contexts(self._lib, self._window_log_max)
        return contexts

    def _check(self, result: int) -> int:
        if self._lib.ZSTD_isError(result):
            raise ZstdError(self._lib.ZSTD_getErrorName(result).decode("ascii", "replace"))
        return result

    def compress(self, data: bytes | memoryview, prefix: bytes | memoryview,
                 parameters: Iterable[tuple[int, int]]) -> bytes:
        """One frame of `data` with `prefix` as its raw-content dictionary, under `parameters`
        ((zstd parameter, value) pairs; the rest at their defaults)."""
        cctx, lib = self._contexts().cctx, self._lib
        self._check(lib.ZSTD_CCtx_reset(cctx, _RESET_SESSION_AND_PARAMETERS))
        for parameter, value in parameters:
            self._check(lib.ZSTD_CCtx_setParameter(cctx, parameter, value))
        source, base = _pinned(data), _pinned(prefix)
        start, base_start = _address(source) or 0, _address(base) or 0
        if start < base_start + len(prefix) and base_start < start + len(data):
            # zstd drops a prefix that overlaps the input (a chunk against itself): use a copy
            base = bytearray(base)     # (bytes(a bytes object) would be the same object)
            base_start = _address(base) or 0
        self._check(lib.ZSTD_CCtx_refPrefix_advanced(cctx, base_start, len(prefix), _DCT_RAW_CONTENT))
        bound = lib.ZSTD_compressBound(len(data))
        out, address = _uninitialized(bound)     # only the frame's pages are touched, not the bound's
        written = self._check(lib.ZSTD_compress2(cctx, address, bound, start, len(data)))
        return out[:written]

    def decompress(self, frame: bytes | memoryview, size: int, prefix: bytes | memoryview) -> bytes:
        """The frame's content, decoded with `prefix`; it must be exactly `size` bytes."""
        dctx, lib = self._contexts().dctx, self._lib
        source, base = _pinned(frame), _pinned(prefix)
        self._check(lib.ZSTD_DCtx_refPrefix_advanced(dctx, _address(base), len(prefix), _DCT_RAW_CONTENT))
        out, address = _uninitialized(size)
        written = self._check(lib.ZSTD_decompressDCtx(dctx, address, size, _address(source), len(frame)))
        if written != size:
            raise ZstdError(f"the frame holds {written} bytes, {size} expected")
        return out


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype, _new_bytes.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]


def _uninitialized(size: int) -> tuple[bytes, int]:
    """A new bytes object of `size` bytes, not yet written (C's PyBytes_FromStringAndSize(NULL, n),
    to be filled before anyone else sees it), and its buffer's address: zeroing it first, as
    bytearray(n) does, would touch every page of a buffer libzstd writes anyway."""
    out = _new_bytes(None, size)
    return out, _address(out) or 0


def _pinned(buffer: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """`buffer` in a form whose address ctypes can take without copying where it can: bytes and
    writable buffers as they are, a read-only view copied."""
    if isinstance(buffer, bytes | bytearray) or not memoryview(buffer).readonly:
        return buffer
    return bytes(buffer)


def _address(buffer: bytes | bytearray | memoryview) -> int | None:
    if isinstance(buffer, bytes):
        # c_char_p of a bytes object points at its own buffer (passing the bytes object for a
        # c_void_p argument did not reliably: deltas came out as large as the chunk compressed alone)
        return ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value
    view = memoryview(buffer).cast("B")
    if not len(view):
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


# the library's names on Linux, macOS and Windows (found on the loader's own path: no search here)
_NAMES = ("libzstd.so.1", "libzstd.1.dylib", "libzstd.dylib", "zstd.dll", "libzstd.dll")
WINDOW_LOG_MAX = 27            # what a reader accepts (format/delta.py's frames reach 2**27)


@functools.cache
def native() -> Native | None:
    """libzstd's prefix calls, loaded on first use; None where there is no usable libzstd."""
    for name in _NAMES:
        try:
            lib = ctypes.CDLL(name)
            lib.ZSTD_versionNumber.restype = ctypes.c_uint
            if lib.ZSTD_versionNumber() >= _MIN_VERSION:
                return Native(lib, WINDOW_LOG_MAX)
        except (OSError, AttributeError):
            continue
    return None
