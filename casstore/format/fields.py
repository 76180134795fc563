"""Type checks of decoded msgpack fields that the format decoders share."""

from __future__ import annotations

from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """An integer field as the format writes one. msgpack decodes `true`/`false` as Python's bool,
    an int subclass (`isinstance(True, int)` holds, and True == 1), so a hostile object's `true`
    would pass as 1 where a length, offset, size or parameter belongs; msgpack decodes its integers
    as exactly `int`, so nothing the format writes is refused."""
    return type(value) is int
