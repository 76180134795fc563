"""The seed's three Python examples run against casstore with only their import line changed.

The examples are copied verbatim from `cloud-storage-seed.md` (section "Comment les IA Utilisent
les Backups"); `test_examples_are_verbatim_copies_of_the_seed` re-reads the seed when it is
available and fails if the copies drift. `from cloud_storage_manager import cloud_storage` becomes
`from casstore import cloud_storage`; examples 2 and 3 have no import line of their own, so they
run after that same import. Example 2 calls an undefined `ai.train`: a stand-in `ai` records what
it is given. Example 3 ends in a comment: its locals are captured when the function returns, to
check it reached the data it read. The data folder is shaped like the seed's `data/`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import invoke, run, write

SEED = Path(os.environ.get("CASSTORE_SEED_DOC", "/work/shared/seed/cloud-storage-seed.md"))
OLD_IMPORT = "from cloud_storage_manager import cloud_storage"
NEW_IMPORT = "from casstore import cloud_storage"

# verbatim from the seed (trailing spaces included)
EXAMPLE_1 = (
    'from cloud_storage_manager import cloud_storage\n'
    '\n'
    '# Liste les 5 derniers backups\n'
    'backups = cloud_storage.list_backups(limit=5)\n'
    '\n'
    'for backup_meta in backups:\n'
    '    # Charge les données\n'
    "    data = cloud_storage.get_backup(backup_meta['backup_id'])\n"
    '    \n'
    '    # Accède aux données IA\n'
    "    ai_hub = data['data_sources']['ai_hub']\n"
    "    collective_iq = ai_hub['collective_intelligence']['collective_iq']\n"
    '    \n'
    '    print(f"Backup {backup_meta[\'timestamp\']}: IQ {collective_iq}")\n'
)
EXAMPLE_2 = (
    '# Les IA peuvent apprendre des patterns passés\n'
    'def ai_learn_from_history():\n'
    '    backups = cloud_storage.list_backups(limit=10)\n'
    '    \n'
    '    for backup_meta in backups:\n'
    "        data = cloud_storage.get_backup(backup_meta['backup_id'])\n"
    '        \n'
    '        # Extraire les patterns appris\n'
    "        market_data = data['data_sources']['total_market_intelligence']\n"
    "        patterns = market_data.get('learned_patterns', [])\n"
    '        \n'
    "        # Entraîner l'IA avec ces patterns\n"
    '        for pattern in patterns:\n'
    '            ai.train(pattern)\n'
)
EXAMPLE_3 = (
    "# Si l'app crash, restaurer depuis dernier backup\n"
    'def restore_ai_state():\n'
    '    latest = cloud_storage.list_backups(limit=1)[0]\n'
    "    data = cloud_storage.get_backup(latest['backup_id'])\n"
    '    \n'
    "    # Restaurer l'état complet\n"
    "    ai_hub_data = data['data_sources']['ai_hub']\n"
    '    # ... restaurer toutes les IA\n'
)


def _seed_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", SEED.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(not SEED.is_file(), reason="the seed document is not beside this checkout")
def test_examples_are_verbatim_copies_of_the_seed():
    assert _seed_blocks()[:3] == [EXAMPLE_1, EXAMPLE_2, EXAMPLE_3]


def _with_casstore_import(example: str) -> str:
    assert example.count(OLD_IMPORT) <= 1
    changed = example.replace(OLD_IMPORT, NEW_IMPORT)
    return changed if NEW_IMPORT in changed else f"{NEW_IMPORT}\n{changed}"


def _seed_shaped_data(root: Path, version: int) -> dict:
    """The seed's data/ layout; `version` changes the values each 'day'."""
    iq = 100 + version
    patterns = [{"pattern": f"p{version}-{k}", "confidence": 0.5 + k / 10} for k in range(3)]
    write(root / "ai_hub" / "shared_knowledge.json", json.dumps({"patterns": [f"k{i}" for i in range(50)]}))
    write(root / "ai_hub" / "collective_intelligence.json", json.dumps({"collective_iq": iq, "accuracy": 0.9}))
    write(root / "ai_hub" / "communication_log.json", json.dumps([{"from": "a", "to": "b", "day": version}]))
    write(root / "total_market_intelligence" / "learned_patterns.json", json.dumps(patterns))
    write(root / "total_market_intelligence" / "ai_brain_state.json", json.dumps({"state": version}))
    write(root / "total_market_intelligence" / "learning" / "evolution.jsonl",
          "".join(json.dumps({"gen": g}) + "\n" for g in range(version + 1)))
    write(root / "total_market_intelligence" / f"complete_market_data_2026020{version}.json", json.dumps({"v": 1}))
    write(root / "notification_ai" / "history.json", json.dumps([]))
    write(root / "ai_learning_data" / "training.json", json.dumps([{"x": i} for i in range(100)]))
    write(root / "discovered_gems" / "gems.json", json.dumps({"gems": ["g1"]}))
    write(root / "universal_market_analysis" / "top.json", json.dumps({"assets": 1316}))
    write(root / "unified_backups" / "backup_index.json", json.dumps({"old": True}))  # the seed's old backups
    return {"iq": iq, "patterns": patterns}


@pytest.fixture
def seed_history(tmp_path):
    """Six daily snapshots of a seed-shaped ./data (one through the CLI, the rest via the facade)."""
    from casstore import cloud_storage

    (tmp_path / ".env").write_text("CLOUD_PROVIDER=local\nCASSTORE_SOURCE=./data\n")
    days = []
    for version in range(6):
        days.append(_seed_shaped_data(tmp_path / "data", version))
        if version == 0:
            run("snapshot", "--json")
        else:
            assert cloud_storage.create_backup()["success"]
    return days[::-1]   # newest first, like list_backups


def test_example_1_loads_history(seed_history, capsys):
    from casstore import cloud_storage

    namespace: dict = {}
    exec(compile(_with_casstore_import(EXAMPLE_1), "seed-example-1", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    expected = [f"Backup {b['timestamp']}: IQ {day['iq']}"
                for b, day in zip(cloud_storage.list_backups(limit=5), seed_history, strict=False)]
    assert lines == expected and len(lines) == 5
    assert [int(line.rsplit(" ", 1)[1]) for line in lines] == [105, 104, 103, 102, 101]
    assert "unified_backups" not in namespace["data"]["data_sources"]


class StandInAI:
    def __init__(self) -> None:
        self.trained: list = []

    def train(self, pattern) -> None:
        self.trained.append(pattern)


def test_example_2_learns_from_history(seed_history):
    ai = StandInAI()
    namespace: dict = {"ai": ai}
    exec(compile(_with_casstore_import(EXAMPLE_2), "seed-example-2", "exec"), namespace)
    namespace["ai_learn_from_history"]()
    assert ai.trained == [p for day in seed_history for p in day["patterns"]]
    assert len(ai.trained) == 18


def test_example_3_restores_ai_state(seed_history):
    namespace: dict = {}
    exec(compile(_with_casstore_import(EXAMPLE_3), "seed-example-3", "exec"), namespace)
    captured: dict = {}

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code.co_name == "restore_ai_state":
            captured.update(frame.f_locals)

    sys.setprofile(profiler)
    try:
        assert namespace["restore_ai_state"]() is None
    finally:
        sys.setprofile(None)
    from casstore import cloud_storage

    assert captured["latest"]["backup_id"] == cloud_storage.list_backups(limit=1)[0]["backup_id"]
    ai_hub = captured["ai_hub_data"]
    assert ai_hub["collective_intelligence"]["collective_iq"] == seed_history[0]["iq"] == 105
    assert sorted(ai_hub) == ["collective_intelligence", "communication_log", "shared_knowledge"]
    assert ai_hub["communication_log"] == [{"from": "a", "to": "b", "day": 5}]


def test_seed_dict_shape_for_every_source(seed_history):
    from casstore import cloud_storage

    data = cloud_storage.get_backup(cloud_storage.list_backups(limit=1)[0]["backup_id"])
    assert {"snapshot_id", "timestamp", "data_sources"} <= set(data)
    sources = data["data_sources"]
    assert sorted(sources) == ["ai_hub", "ai_learning_data", "discovered_gems", "notification_ai",
                               "total_market_intelligence", "universal_market_analysis"]
    market = sources["total_market_intelligence"]
    assert market["learning"]["evolution"] == [{"gen": g} for g in range(6)]
    assert market["complete_market_data_20260205"] == {"v": 1}
    assert sources["universal_market_analysis"]["top"]["assets"] == 1316
    assert invoke("list", "--json").stdout.count('"id"') == 6
