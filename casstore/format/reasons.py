"""Why a stored msgpack object could not be read, as the end of one error line."""

from __future__ import annotations

import msgpack


def unpack_reason(exc: Exception) -> str:
    """`exc`'s own text, or what msgpack meant when it gave none: its FormatError (a byte that starts
    no msgpack value, such as 0xc1) and StackError (arrays or maps nested past its limit) have no
    message, which left "corrupt pack header: " saying nothing."""
    if str(exc):
        return str(exc)
    if isinstance(exc, msgpack.StackError):
        return "msgpack nested too deeply"
    if isinstance(exc, msgpack.FormatError):
        return "not msgpack (a byte that starts no msgpack value)"
    return type(exc).__name__
