"""pytest plugin of the full mutation run: a mutant's tests, and the ones that killed the most mutants first.

Loaded with `-p tests.mutation.order`.
- CASSTORE_MUTATION_SELECT names a file of test node ids, one a line: only those of the collected tests
  run (the others are deselected), the tests that reach the mutated function (tests/mutation/coverage.py).
  No such file: every collected test runs.
- CASSTORE_MUTATION_ORDER names a file of test node ids, one a line, most kills first. With `-x` a
  mutant stops at its first failing test, so a killed mutant costs the tests before its killer: putting
  the usual killers first makes most kills cost one or two tests. Tests not listed keep their order,
  after the listed ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _listed(variable: str) -> list[str] | None:
    listed = os.environ.get(variable)
    if not listed or not Path(listed).exists():
        return None
    return Path(listed).read_text().splitlines()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = _listed("CASSTORE_MUTATION_SELECT")
    if selected is not None:
        keep = set(selected)
        dropped = [item for item in items if item.nodeid not in keep]
        items[:] = [item for item in items if item.nodeid in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
    ranked = _listed("CASSTORE_MUTATION_ORDER")
    if ranked:
        rank = {nodeid: n for n, nodeid in enumerate(ranked)}
        first = len(rank)
        items.sort(key=lambda item: rank.get(item.nodeid, first))    # stable: the rest keep their order
