"""What a snapshot leaves out: gitignore-style patterns plus casstore's defaults.

Patterns come from `--exclude`, `CASSTORE_EXCLUDE` and a `.casstoreignore` file at the source
root. By default `.env` files (secrets never go off-site unasked) and the seed's old
`unified_backups/` folder are left out; the repository and cache directories are left out by
identity (device, inode) in the builder, wherever they lie.
"""

from __future__ import annotations

import os

import pathspec

DEFAULT_PATTERNS = (".env", ".env.*", "!.env.example", "unified_backups/")
IGNORE_FILE = ".casstoreignore"


class Excluder:
    def __init__(self, source_root: str, patterns: tuple[str, ...] = ()) -> None:
        lines = list(DEFAULT_PATTERNS) + list(patterns) + _ignore_file_lines(source_root)
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def excluded(self, rel_path: str, is_dir: bool) -> bool:
        return self._spec.match_file(rel_path + "/" if is_dir else rel_path)


def _ignore_file_lines(source_root: str) -> list[str]:
    path = os.path.join(source_root, IGNORE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        return []
