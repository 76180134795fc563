"""Remotes: byte objects under string keys, one backend per storage kind.

`open_remote(url)` picks the backend by URL scheme. Cloud SDKs are imported only by the backend
that needs them, so importing casstore (and starting the CLI) never pays for them.
"""

from __future__ import annotations

from casstore.remotes.base import ObjectInfo, Remote, validate_key
from casstore.remotes.registry import open_remote

__all__ = ["ObjectInfo", "Remote", "open_remote", "validate_key"]
