"""Helpers cloud backends share: mapping repository keys to bucket keys under a prefix."""

from __future__ import annotations


class KeyPrefix:
    """Adds and strips the repository's key prefix inside a bucket (e.g. 'casstore/')."""

    def __init__(self, prefix: str) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix

    def full(self, key: str) -> str:
        return self.prefix + key

    def strip(self, full_key: str) -> str | None:
        """The repository key for a bucket key, or None if it is outside the prefix."""
        if not full_key.startswith(self.prefix):
            return None
        return full_key[len(self.prefix):]
