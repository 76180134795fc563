"""Where each object lives in a repository: every object key and key prefix, spelled here alone.

    config                      the repository config (format/config.py)
    data/<2 hex>/<pack id>      packs (format/pack.py); the two-digit folder spreads listings
    index/<index id>            index objects (format/index.py)
    snapshots/<snapshot id>     snapshot manifests (format/snapshot.py)
    gc/<utc stamp>-<random>     gc plans (format/plan.py)
    gc/lease                    the gc lease (gc/lease.py)
    keys/<slot id>              key slots of an encrypted repository (format/crypto.py)
    clock                       written by gc to read the storage's clock (its last-modified) when a
                                lease is already there (gc/lease.py); outside every listed prefix,
                                so no listing sees it (an older casstore would read gc/<x> as a plan)

A local repository is a directory holding these keys as files (remotes/local.py), so it exists
when `config` exists in it. The local object cache (repo/objectcache.py) names its folders after
the folder part of a key (`index`, `snapshots`).
"""

from __future__ import annotations

import os
import time

CONFIG_KEY = "config"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
SNAPSHOTS_PREFIX = "snapshots/"
GC_PREFIX = "gc/"
LEASE_KEY = "gc/lease"
KEYS_PREFIX = "keys/"
CLOCK_KEY = "clock"

#: the flat folders by name, for key() and the local object cache's folder names
INDEX = INDEX_PREFIX.rstrip("/")
SNAPSHOTS = SNAPSHOTS_PREFIX.rstrip("/")
#: every prefix whose objects count as stored repository data (packs and metadata)
STORED_PREFIXES = (DATA_PREFIX, INDEX_PREFIX, SNAPSHOTS_PREFIX)


def key(folder: str, name: str) -> str:
    """The key of object `name` in a flat folder (INDEX or SNAPSHOTS)."""
    return f"{folder}/{name}"


def pack_key(pack_id: str) -> str:
    return f"{DATA_PREFIX}{pack_id[:2]}/{pack_id}"


def index_key(index_id: str) -> str:
    return key(INDEX, index_id)


def snapshot_key(snapshot_id: str) -> str:
    return key(SNAPSHOTS, snapshot_id)


def key_slot_key(slot_id: str) -> str:
    return f"{KEYS_PREFIX}{slot_id}"


def plan_key(now: float | None = None) -> str:
    """A new gc plan's key: sorted by creation time, unique by its random tail."""
    stamp = time.strftime("%Y%m%dt%H%M%Sz", time.gmtime(now if now is not None else time.time()))
    return f"{GC_PREFIX}{stamp}-{os.urandom(6).hex()}"


def is_plan_key(listed_key: str) -> bool:
    """Whether a key listed under GC_PREFIX is a plan (the lease lives there too)."""
    return listed_key != LEASE_KEY


def name_of(listed_key: str) -> str:
    """The id at the end of a pack, index or snapshot key."""
    return listed_key.rsplit("/", 1)[1]


def config_path(directory: str) -> str:
    """The config file of a local repository in `directory`."""
    return os.path.join(directory, CONFIG_KEY)


def is_local_repository(directory: str) -> bool:
    return os.path.isfile(config_path(directory))
