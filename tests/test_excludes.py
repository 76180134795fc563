"""The fast default-exclude path answers exactly as pathspec does for the default patterns."""

from __future__ import annotations

import pathspec
import pytest

from casstore.snapshot.excludes import DEFAULT_PATTERNS, Excluder

NAMES = [".env", ".env.local", ".env.example", "env", "a.env", ".envrc", "unified_backups", "unified_backups.json",
         "data.json", ".env.production.json", "x"]


@pytest.mark.parametrize("is_dir", [False, True])
@pytest.mark.parametrize("parent", ["", "ai_hub/", "deep/er/"])
def test_default_fast_path_matches_pathspec(tmp_path, parent, is_dir):
    spec = pathspec.GitIgnoreSpec.from_lines(DEFAULT_PATTERNS)
    excluder = Excluder(str(tmp_path))
    for name in NAMES:
        rel = parent + name
        expected = spec.match_file(rel + "/" if is_dir else rel)
        assert excluder.excluded(rel, is_dir) == expected, rel


def test_user_patterns_and_ignore_file(tmp_path):
    (tmp_path / ".casstoreignore").write_text("# comment\n*.tmp\n")
    excluder = Excluder(str(tmp_path), ("cache/",))
    assert excluder.excluded("a/b.tmp", False)
    assert excluder.excluded("x/cache", True)
    assert excluder.excluded(".env", False)
    assert not excluder.excluded("keep.json", False)
