"""Repacking: copy the blobs still needed out of packs that are mostly dead, into new packs.

Each old pack is downloaded once and verified by its name; each blob copied is decoded and
re-hashed before it goes into a new pack (design 5.5), so a damaged pack stops gc instead of
spreading. The new packs get fresh nonces, so fresh names; the old ones are condemned (remote)
or deleted (local) only after the new packs, and the index listing them, are stored.
"""

from __future__ import annotations

from casstore.errors import CasstoreError
from casstore.format import codec
from casstore.format.index import Location, MasterIndex
from casstore.format.layout import pack_key
from casstore.format.pack import BlobEntry, verify_pack_id
from casstore.gc.context import REPACK_DEAD_FRACTION, GcAborted, GcContext
from casstore.gc.listing import BlobKey, RepoView, reader
from casstore.repo.blobstore import BlobStore


def mostly_dead(usage: dict[str, tuple[int, int]], packs: set[str]) -> set[str]:
    """Packs among `packs` that keep something but whose dead blobs reach the repack threshold."""
    return {pack for pack in packs
            if usage[pack][0] > 0 and usage[pack][1] - usage[pack][0] >= REPACK_DEAD_FRACTION * usage[pack][1]}


def dead_bytes(usage: dict[str, tuple[int, int]], packs: set[str]) -> int:
    return sum(usage[pack][1] - usage[pack][0] for pack in packs)


def repack(ctx: GcContext, view: RepoView, packs: set[str], needed: dict[BlobKey, Location],
           *, index_kind: str | None) -> dict[str, list[BlobEntry]]:
    """Copy the needed blobs of `packs` into new packs; return the new packs' entries.

    With `index_kind`, also write the index listing the new packs (packs first, design 5.1).
    """
    by_pack: dict[str, list[tuple[BlobKey, Location]]] = {}
    for key, location in needed.items():
        if location.pack_id in packs:
            by_pack.setdefault(location.pack_id, []).append((key, location))
    store = BlobStore(ctx.remote, ctx.repo.config, MasterIndex(), origin=ctx.origin(),
                      compression_level=ctx.repo.settings.compression_level)
    bases = reader(ctx, view.index)       # delta blobs are verified with their bases' plaintext
    try:
        for pack_id in sorted(by_pack):
            _copy_pack(ctx, store, pack_id, by_pack[pack_id], bases)
        store.wait_uploads()
        new_packs = store.unindexed()
        if index_kind is not None:
            ctx.keep_lease()
            store.write_index(index_kind)
    finally:
        store.close()
        bases.close()
    report = ctx.report
    report.packs_repacked += len(packs)
    report.bytes_repacked += sum(view.packs[p].size for p in packs)
    report.packs_written += store.packs_written
    report.bytes_written += store.bytes_written
    return new_packs


def _copy_pack(ctx: GcContext, store: BlobStore, pack_id: str, blobs: list[tuple[BlobKey, Location]],
               bases: BlobStore) -> None:
    ctx.keep_lease()
    try:
        data = ctx.remote.get(pack_key(pack_id), large=True)
        verify_pack_id(pack_id, data)
        for (kind, blob_id), loc in sorted(blobs, key=lambda item: item[1].offset):
            encoded = data[loc.offset:loc.offset + loc.length]
            base = None if loc.base is None else bases.base_plaintext(loc.base)
            codec.decode_verified(encoded, loc.raw_length, blob_id, ctx.repo.config.sealer, kind, base=base)
            store.add_encoded(kind, blob_id, encoded, loc.raw_length)
    except CasstoreError as exc:
        raise GcAborted(f"gc stopped: pack {pack_id[:16]} cannot be repacked ({exc}); run `casstore check`") from exc
