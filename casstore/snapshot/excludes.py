"""What a snapshot leaves out: gitignore-style patterns plus casstore's defaults.

Patterns come from `--exclude`, `CASSTORE_EXCLUDE` and a `.casstoreignore` file at the source
root. By default `.env` files (secrets never go off-site unasked) and the seed's old
`unified_backups/` folder are left out; the repository and cache directories are left out by
identity (device, inode) in the builder, wherever they lie.
"""

from __future__ import annotations

import os

DEFAULT_PATTERNS = (".env", ".env.*", "!.env.example", "unified_backups/")
IGNORE_FILE = ".casstoreignore"


class Excluder:
    def __init__(self, source_root: str, patterns: tuple[str, ...] = ()) -> None:
        extra = list(patterns) + _ignore_file_lines(source_root)
        self._spec = None
        if any(line.strip() and not line.lstrip().startswith("#") for line in extra):
            import pathspec  # lazy: start-up time; only patterns beyond the defaults need it

            self._spec = pathspec.GitIgnoreSpec.from_lines(list(DEFAULT_PATTERNS) + extra)
        else:       # the walk calls this for every entry: the defaults' check directly, one call less
            self.excluded_entry = _default_excluded_entry  # type: ignore[method-assign]

    def excluded(self, rel_path: str, is_dir: bool) -> bool:
        if self._spec is not None:
            return self._spec.match_file(rel_path + "/" if is_dir else rel_path)
        return _default_excluded_entry(None, rel_path.rsplit("/", 1)[-1], is_dir)

    def excluded_entry(self, rel: bytes, name: str, is_dir: bool) -> bool:
        """`excluded` for a walked entry, its path as bytes: decoded only when a pattern needs the
        path (the defaults match by name alone; a decode per file was a measurable part of a walk
        of small files)."""
        if self._spec is not None:
            return self.excluded(rel.decode("utf-8", "surrogateescape"), is_dir)
        return _default_excluded_entry(rel, name, is_dir)


def _default_excluded_entry(rel: bytes | None, name: str, is_dir: bool) -> bool:
    """DEFAULT_PATTERNS, matched by name without pathspec (the same answers, checked by a test);
    `Excluder.excluded_entry` itself when there are no other patterns (the path is not needed)."""
    if is_dir:
        return name in ("unified_backups", ".env") or (name.startswith(".env.") and name != ".env.example")
    return name == ".env" or (name.startswith(".env.") and name != ".env.example")


def _ignore_file_lines(source_root: str) -> list[str]:
    path = os.path.join(source_root, IGNORE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except (FileNotFoundError, NotADirectoryError):    # no ignore file; or the source is not a directory,
        return []                                      # which the walk reports as one error line
