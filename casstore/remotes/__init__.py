"""Remotes: byte objects under string keys, one backend per storage kind.

`open_remote(url)` picks the backend by URL scheme. Cloud SDKs are imported only by the backend
that needs them, so importing casstore (and starting the CLI) never pays for them.
"""

from __future__ import annotations

from casstore.remotes.base import ObjectInfo, Remote, validate_key

__all__ = ["ObjectInfo", "Remote", "open_remote", "validate_key"]


def open_remote(url: str, **options: object) -> Remote:
    """Open the remote a URL names: file:///path, memory://name, s3://, gs://, az://."""
    from casstore.remotes.registry import open_remote as open_url  # lazy: start-up time (runs on every remotes import)

    return open_url(url, **options)
