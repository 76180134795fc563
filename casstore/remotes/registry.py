"""URL scheme -> backend. Backends are imported lazily (cloud SDKs are slow to import)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from urllib.parse import urlparse

from casstore.errors import ConfigError
from casstore.remotes.base import Remote
from casstore.remotes.local import LocalRemote
from casstore.remotes.memory import MemoryRemote
from casstore.remotes.timeouts import Timeouts
from casstore.remotes.wrappers import faults_from_env

# scheme -> (module, factory function taking (bucket, prefix, **options))
_BACKENDS = {
    "s3": ("casstore.remotes.s3", "open_s3"),
    "gs": ("casstore.remotes.gcs", "open_gcs"),
    "az": ("casstore.remotes.azure", "open_azure"),
}
# scheme -> the PyPI package of its SDK (a dependency of casstore; named when it is missing anyway)
SDK_PACKAGES = {"s3": "boto3", "gs": "google-cloud-storage", "az": "azure-storage-blob"}

_MEMORY: dict[str, Remote] = {}


def open_remote(url: str, **options: object) -> Remote:
    """Open the backend for `url`. `options` may be flat, or keyed by scheme ({"s3": {...}, "gs": {...}})
    as Settings.remote_options() gives them; only the options of the URL's scheme reach its backend."""
    return faults_from_env(_open_backend(url, **options))   # the test hook is a no-op unless set


def _open_backend(url: str, **options: object) -> Remote:
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file" or (scheme == "" and url.startswith("/")):
        return LocalRemote(parsed.path if scheme else url)
    if scheme == "memory":
        return _MEMORY.setdefault(parsed.netloc, MemoryRemote(name=parsed.netloc))
    if scheme not in _BACKENDS:
        raise ConfigError(f"unknown remote URL scheme {scheme!r} in {url!r} (use s3://, gs://, az://, file://)")
    if not parsed.netloc:
        raise ConfigError(f"remote URL {url!r} names no bucket or container")
    factory = _BACKENDS[scheme][1]
    if any(key in _BACKENDS for key in options):
        options = dict(options.get(scheme) or {})  # type: ignore[call-overload]
    if isinstance(options.get("timeouts"), dict):     # as Settings.remote_options() gives them
        options = {**options, "timeouts": Timeouts(**options["timeouts"])}  # type: ignore[arg-type]
    remote: Remote = getattr(backend_module(scheme), factory)(parsed.netloc, prefix_of(parsed.path), **options)
    return remote


def backend_module(scheme: str) -> ModuleType:
    """The backend of `scheme`, imported now; a missing SDK is one ConfigError naming its install command."""
    try:
        return importlib.import_module(_BACKENDS[scheme][0])
    except ImportError as exc:
        package = SDK_PACKAGES[scheme]
        raise ConfigError(f"{scheme}:// remotes need the {package} package, which is not installed here "
                          f"({exc.name or exc}): run `pip install {package}` (or reinstall casstore, "
                          "which depends on it)") from None


def normalized_remote_url(url: str) -> str:
    """The URL a remote calls itself (what SyncState is keyed by), without opening it:
    no SDK, no credentials, no network (`forget`'s unsynced check, `status`, the cost estimate)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return f"file://{os.path.abspath(parsed.path if parsed.scheme else url)}"
    if parsed.scheme == "memory":
        return f"memory://{parsed.netloc}"
    return f"{parsed.scheme}://{parsed.netloc}/{prefix_of(parsed.path)}"


def prefix_of(path: str) -> str:
    """A URL path as a key prefix: '' or 'a/b/' (no leading slash, one trailing slash)."""
    path = path.strip("/")
    return f"{path}/" if path else ""
