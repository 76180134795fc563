"""gc plans: `gc/<yyyymmddthhmmssz>-<id>`, written by gc's mark phase (design section 9).

msgpack {"version": 1, "host": str, "condemned_packs": [pack id, ...],
         "superseded_indexes": [index id, ...]}

`superseded_indexes` records, for diagnosis (reading a bucket's plans by hand), the
indexes that listed a condemned pack when the plan was made; the sweep does not trust it but
recomputes the doomed indexes from its own listing, because an index written after the mark (a
writer's, a copier's) may name the same packs.

Writers read every plan: a blob whose only copies lie in condemned packs counts as missing and
is uploaded again into a fresh pack, never by re-sending a condemned pack's name.

In an encrypted repository a plan is sealed with its key bound, so an old plan replayed under a
new key is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgpack

from casstore.errors import FormatError, IntegrityError, ObjectNotFound
from casstore.format.crypto import KIND_PLAN, Sealer, seal_if, unseal_if
from casstore.format.layout import GC_PREFIX, is_plan_key
from casstore.format.reasons import unpack_reason
from casstore.remotes.base import Remote
from casstore.remotes.fanout import each_concurrently

log = logging.getLogger(__name__)
PLAN_VERSION = 1


@dataclass
class GcPlan:
    condemned_packs: list[str] = field(default_factory=list)
    superseded_indexes: list[str] = field(default_factory=list)
    host: str = ""
    version: int = PLAN_VERSION

    def encode(self) -> bytes:
        body: bytes = msgpack.packb({"version": self.version, "host": self.host,
                                     "condemned_packs": sorted(self.condemned_packs),
                                     "superseded_indexes": sorted(self.superseded_indexes)})
        return body


def encode_plan_verified(plan: GcPlan, key: str = "", sealer: Sealer | None = None) -> bytes:
    """A plan's stored bytes (under `key`), decoded back before they leave the process (design 5.5)."""
    body = seal_if(sealer, KIND_PLAN, plan.encode(), key.encode())
    back = decode_plan(body, key, sealer)
    if (sorted(back.condemned_packs), sorted(back.superseded_indexes)) != (
            sorted(plan.condemned_packs), sorted(plan.superseded_indexes)):
        raise IntegrityError("internal error: a gc plan does not decode to what was encoded")
    return body


def decode_plan(body: bytes, key: str = "", sealer: Sealer | None = None) -> GcPlan:
    body = unseal_if(sealer, KIND_PLAN, body, f"gc plan {key}", key.encode())
    try:
        doc = msgpack.unpackb(body)
        if not isinstance(doc, dict):
            raise ValueError("not a map")
        if doc.get("version") != PLAN_VERSION:
            raise FormatError(f"unsupported gc plan version {doc.get('version')}")
        return GcPlan(_names(doc["condemned_packs"]), _names(doc["superseded_indexes"]), str(doc.get("host", "")))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"corrupt gc plan: {unpack_reason(exc)}") from exc


def _names(value: object) -> list[str]:
    """A plan's list of object names (found by fuzzing: anything else was accepted or crashed)."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError("object names must be a list of strings")
    return list(value)


def list_plan_keys(remote: Remote) -> list[str]:
    return sorted(info.key for info in remote.list(GC_PREFIX) if is_plan_key(info.key))


def load_plans(remote: Remote, keys: list[str] | None = None, sealer: Sealer | None = None) -> dict[str, GcPlan]:
    """Every gc plan. A plan that cannot be read is an error: writers must not guess (design 5.6)."""
    keys = keys if keys is not None else list_plan_keys(remote)

    def read(key: str) -> GcPlan | None:
        try:
            return decode_plan(remote.get(key), key, sealer)
        except ObjectNotFound:
            return None  # swept meanwhile: a plan that is gone condemns nothing any more

    # independent reads, issued together (a sync's first reads, issue 20)
    return {key: plan for key, plan in zip(keys, each_concurrently(read, keys), strict=True) if plan is not None}


def condemned_packs(plans: dict[str, GcPlan]) -> set[str]:
    return {pack for plan in plans.values() for pack in plan.condemned_packs}
