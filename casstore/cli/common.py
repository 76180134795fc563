"""Shared CLI pieces: settings from the context, output in text or JSON, progress bars, sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from casstore.client import Repository, open_repository
from casstore.settings import Settings, load_settings

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON for scripts.")
repo_option = click.option("--repo", "repository", metavar="PATH",
                           help="Local repository (default: CASSTORE_REPOSITORY or ./.casstore).")


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
            from tqdm import tqdm  # lazy: 60 ms to import; only a terminal shows a bar

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
