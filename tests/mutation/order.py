"""pytest plugin of the full mutation run: the tests that killed the most mutants so far run first.

Loaded with `-p tests.mutation.order` when CASSTORE_MUTATION_ORDER names a file of test node ids, one a
line, most kills first. With `-x` a mutant stops at its first failing test, so a killed mutant costs
the tests before its killer: putting the usual killers first makes most kills cost one or two tests.
Tests not listed keep their order, after the listed ones. Only the order changes, never the selection.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    listed = os.environ.get("CASSTORE_MUTATION_ORDER")
    if not listed or not Path(listed).exists():
        return
    rank = {nodeid: n for n, nodeid in enumerate(Path(listed).read_text().splitlines())}
    first = len(rank)
    items.sort(key=lambda item: rank.get(item.nodeid, first))    # stable: the rest keep their order
