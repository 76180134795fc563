"""The API's guard, as plain ASGI middleware in front of every route.

- Host header: only the bound address, `localhost` and the loopback addresses (plus any
  `--allow-host` names) are answered; anything else gets 403, which defeats DNS rebinding.
  A wildcard bind (0.0.0.0, ::) needs a token and answers any Host unless `--allow-host` is given.
- Cross-site writes: a POST whose Origin (or Sec-Fetch-Site) says it comes from another site is
  refused with 403, so a web page cannot make the browser trigger backups on a tokenless loopback API.
- Bearer token (CASSTORE_API_TOKEN) on every /api/ route, compared with hmac.compare_digest.
  The dashboard page itself and the OpenAPI description carry no data and need none.
- Request bodies are read up to MAX_BODY bytes (413 beyond); NUL or control characters in the
  path give 400. No CORS headers are ever sent. The token is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024
MIN_TOKEN_LENGTH = 16            # for a server reachable from other machines
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> set[str] | None:
    """Host header names to answer; None means any (a wildcard bind without --allow-host)."""
    extra = {h.lower().strip("[]") for h in extra}
    if is_wildcard(bind_host) and not extra:
        return None
    return {bind_host.lower().strip("[]")} | LOOPBACK_NAMES | extra


def host_name(value: str) -> str:
    """The name part of a Host header: 'localhost:5000' -> 'localhost', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_port(value: str) -> int | None:
    """The explicit port of a Host header ('localhost:5000' -> 5000); None when it names none (a
    reverse proxy may pass the bare name, and the scheme it was reached by is unknown here)."""
    value = value.strip()
    tail = value[value.find("]") + 1:] if value.startswith("[") else value
    if tail.count(":") != 1:
        return None
    port = tail.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def token_problem(token: str | None, bind_host: str) -> str | None:
    """Why `token` cannot guard a server bound to `bind_host`, or None."""
    if is_loopback(bind_host):
        return None
    if not token:
        return (f"refusing to listen on {bind_host} without a token: set CASSTORE_API_TOKEN, "
                "or listen on 127.0.0.1 (the default)")
    if len(token) < MIN_TOKEN_LENGTH:
        return (f"refusing to listen on {bind_host} with a {len(token)}-character token: CASSTORE_API_TOKEN "
                f"needs at least {MIN_TOKEN_LENGTH} characters (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(24))'`)")
    return None


def token_matches(header: str | None, token: str) -> bool:
    if not header or header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


class GuardMiddleware:
    def __init__(self, app, *, token: str | None, allowed_hosts: set[str] | None, max_body: int = MAX_BODY) -> None:
        self.app, self.token, self.allowed_hosts, self.max_body = app, token, allowed_hosts, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is None:
            body, refusal = await self._read_body(receive, headers)
        if refusal is not None:
            await _reply(send, *refusal)
            return
        await self.app(scope, _replay(body, receive), _with_headers(send, scope["path"]))

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, list] | None:
        path = scope["path"]
        if "\x00" in path or any(ord(c) < 32 for c in path) or b"%00" in scope.get("raw_path", b"").lower():
            return 400, "invalid path", []
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return 403, "this server does not answer for that Host (DNS rebinding protection)", []
        if scope["method"] not in SAFE_METHODS and self._cross_site(headers):
            return 403, "cross-site requests are refused", []
        if self.token and path.startswith("/api/") and not token_matches(headers.get("authorization"), self.token):
            return 401, "a valid bearer token is required (CASSTORE_API_TOKEN)", [(b"www-authenticate", b"Bearer")]
        length = headers.get("content-length", "0") or "0"
        if not length.isdigit():
            return 400, "invalid Content-Length", []
        if int(length) > self.max_body:
            return 413, f"request body larger than {self.max_body} bytes", []
        return None

    def _cross_site(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site") == "cross-site":
            return True
        origin = headers.get("origin")
        if not origin:
            return False
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return True
        if origin == "null" or not origin_host:
            return True
        # another port of the same host is another site: a page served on localhost:8080 must not
        # drive a tokenless API on localhost:5000 (issue 13, case 12)
        port = host_port(headers.get("host", ""))
        if port is not None and origin_port != port:
            return True
        same = origin_host == host_name(headers.get("host", ""))
        return not same and (self.allowed_hosts is None or origin_host not in self.allowed_hosts)

    async def _read_body(self, receive, headers) -> tuple[bytes, tuple | None]:
        """Buffer the (small) body so its size is checked whatever the client claimed."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", (413, f"request body larger than {self.max_body} bytes", [])
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), None


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_headers(send, path: str):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", [])) + SECURITY_HEADERS
            if path.startswith("/api/"):
                headers += [API_CSP, (b"cache-control", b"no-store")]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _reply(send, status: int, error: str, extra_headers: list) -> None:
    body = json.dumps({"success": False, "error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS, *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
