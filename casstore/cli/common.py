"""Shared CLI pieces: settings from the context, output in text or JSON, progress bars, sizes."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from casstore.client import Repository, open_repository
from casstore.settings import Settings, load_settings

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")
repo_option = click.option("--repo", "repository", metavar="PATH",
                           help="Local repository (default: CASSTORE_REPOSITORY or ./.casstore).")
# the read commands' options, shared by read_commands and query_commands
remote_option = click.option("--remote", "--from", "remote", metavar="URL",
                             help="Read from this remote repository instead of the local one.")
host_options = [
    click.option("--host", help="Snapshots of this host (default: this host's (CASSTORE_HOST or the hostname) "
                                "when it has any, else every host's)."),
    click.option("--all-hosts", is_flag=True, help="Snapshots of every host."),
]


def _host_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(host_options):
        fn = option(fn)
    return fn


def settings(ctx: click.Context, repository: str | None = None, **overrides: Any) -> Settings:
    repo = repository or (ctx.obj or {}).get("repository")
    if repo:
        overrides["repository"] = repo
    return load_settings(overrides)


def open_repo(ctx: click.Context, repository: str | None = None, *, remote: str | None = None,
              **overrides: Any) -> Repository:
    """The local repository, or the configured remote read-only when there is no local one."""
    return open_repository(settings(ctx, repository, **overrides), remote=remote)


def emit(as_json: bool, payload: object, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        text()


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# bidirectional overrides and marks: they reorder what follows them ("evil\u202etxt.exe" shows as
# "evilexe.txt"), so they are escaped too (the dashboard escapes the same set)
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def printable(text: object) -> str:
    """`text` safe for a terminal: control characters (C0, DEL, C1) and undecodable bytes (lone
    surrogates from surrogateescape) as escapes, so a hostile file name cannot move the cursor,
    retitle the terminal, hide another line of the listing or reorder a name (issue 13, case 12)."""
    return "".join(_escape(c) for c in str(text))


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return _ESCAPES.get(c, f"\\x{code:02x}")
    if 0xDC80 <= code <= 0xDCFF:            # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF or code in _BIDI:
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
    """A byte-counting progress bar on a terminal, nothing otherwise. With a total it shows the
    percentage and the time left; the library calls `set_total` once it knows the total (sync,
    after planning), and the CLI may set it from a background scan (snapshot)."""

    def __init__(self, total: int | None, description: str) -> None:
        self._bar = None
        self._lock = threading.Lock()
        if sys.stderr.isatty():
            from tqdm import tqdm  # lazy: 60 ms to import; only a terminal shows a bar

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                             leave=False, file=sys.stderr)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:   # reused files count on the walk's thread, read ones on the pipeline's
                self._bar.update(n)

    def set_total(self, total: int) -> None:
        if self._bar is not None and total > 0:
            with self._lock:
                self._bar.total = total
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def estimate_total(progress: Progress, repo: Repository, source: str) -> None:
    """Give a snapshot's bar its total: the bytes of this host's last snapshot of `source`, or for a
    first snapshot a quick scan's (file sizes, in a background thread, so nothing waits for it)."""
    if not progress.shown:
        return
    source = os.path.abspath(source)
    previous = repo.snapshots(limit=1, source=source)
    if previous:   # exact for an unchanged source, and it honours the excludes a scan would not
        progress.set_total(int(previous[0].manifest.summary.get("bytes_total", 0)))
        return
    threading.Thread(target=lambda: progress.set_total(_tree_bytes(source)), daemon=True,
                     name="casstore-scan").start()


def _tree_bytes(root: str) -> int:
    """Sizes of the regular files below `root` (excludes are not applied: an estimate)."""
    total, stack = 0, [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total
