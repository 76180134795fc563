"""Shared CLI pieces: settings from the context, output in text or JSON, progress bars, sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")
repo_option = click.option("--repo", "repository", metavar="PATH",
                           help="Local repository (default: CASSTORE_REPOSITORY or ./.casstore).")


def settings(ctx: click.Context, repository: str | None = None, **overrides):
    from casstore.settings import load_settings

    repo = repository or (ctx.obj or {}).get("repository")
    if repo:
        overrides["repository"] = repo
    return load_settings(overrides)


def open_repo(ctx: click.Context, repository: str | None = None, *, remote: str | None = None, **overrides):
    """The local repository, or the configured remote read-only when there is no local one."""
    from casstore.repo.open import open_repository

    s = settings(ctx, repository, **overrides)
    return open_repository(s.repository, remote=remote, **{k: v for k, v in overrides.items() if v is not None})


def emit(as_json: bool, payload: object, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        text()


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """`text` safe for a terminal: control characters (C0, DEL, C1) and undecodable bytes (lone
    surrogates from surrogateescape) as escapes, so a hostile file name cannot move the cursor,
    retitle the terminal or hide another line of the listing (issue 13, case 12)."""
    return "".join(_escape(c) for c in str(text))


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return _ESCAPES.get(c, f"\\x{code:02x}")
    if 0xDC80 <= code <= 0xDCFF:            # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return c


def human(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class Progress:
    """A byte-counting progress bar on a terminal, nothing otherwise."""

    def __init__(self, total: int | None, description: str) -> None:
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                             leave=False, file=sys.stderr)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
