"""The seed's cost promise, verified in dollars (issue 17).

    python benchmarks/cost.py --scale 0.2 --days 30       # about 200 MB; the issue's full scale is --scale 5

A seed-like folder (`generate.py`, 1 GB per unit of scale) changed by a day of change
(`mutate.py day`: about 2% of the small files edited, appends, an insert, files added and
deleted) every day for `--days` days, a casstore snapshot after each day with keep-last-30, and a
sync to a moto S3 server (server mode, on loopback, started by tests/servers.py) after each day
through a counting wrapper: requests by kind and bytes per sync. At the end: the bytes stored in
the bucket (listed), and the monthly bill computed from them and from the counted requests with
the dated price table (casstore/repo/pricing.py); beside it what casstore estimates (`stats` of
the remote repository, `sync --dry-run`, `status`, the dashboard's API), and the seed's scheme: a
full compressed copy of the folder per backup, 30 kept.

The reference for "stored" is one compressed copy (zstd 3 of every file of the first day) plus
each day's compressed changes: for every file changed that day, zstd 3 of the span between its
first and last differing byte (a new file whole), measured against a shadow copy of the day before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import generate  # noqa: E402
import mutate  # noqa: E402
from run import BenchServer, log  # noqa: E402

from casstore.client import Repository  # noqa: E402
from casstore.format.config import RepoConfig  # noqa: E402
from casstore.gc.retention import apply_retention  # noqa: E402
from casstore.gc.run import collect_garbage  # noqa: E402
from casstore.remotes.wrappers import CountingRemote  # noqa: E402
from casstore.repo.pricing import PRICES, PRICES_AS_OF  # noqa: E402
from casstore.settings import load_settings  # noqa: E402

MiB, GB = 1024 * 1024, 1024**3
PROVIDER = "aws"
SECTION = "## Cost over a month: 30 days of change synced to S3 (issue 17)"
SECTION_END = "<!-- end of the cost section -->"


# -- what changed ------------------------------------------------------------------------------

def files_of(root: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(root)): p.stat() for p in root.rglob("*") if p.is_file()}


def changed_span(old: bytes, new: bytes) -> bytes:
    """The new bytes between the first and the last byte that differ from `old`."""
    limit = min(len(old), len(new))
    start = _common(lambda i, n: old[i:i + n] == new[i:i + n], limit)
    tail = _common(lambda i, n: old[len(old) - i - n:len(old) - i] == new[len(new) - i - n:len(new) - i],
                   limit - start)
    return new[start:len(new) - tail]


def _common(same, limit: int) -> int:
    """How many leading units agree, found in 64 KiB steps then bytes (`same(at, n)` compares n units)."""
    at = 0
    for step in (1 << 16, 1):
        while at + step <= limit and same(at, step):
            at += step
    return at


def compressed_changes(source: Path, shadow: Path, before: dict[str, os.stat_result]) -> tuple[int, int]:
    """(raw, zstd 3) bytes of today's changes against the shadow copy, which is then brought up to date."""
    cctx = zstandard.ZstdCompressor(level=3)
    raw = packed = 0
    now = files_of(source)
    for rel, st in now.items():
        old = before.get(rel)
        if old is not None and (old.st_size, old.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue
        new = (source / rel).read_bytes()
        span = new if old is None else changed_span((shadow / rel).read_bytes(), new)
        raw += len(span)
        packed += len(cctx.compress(span)) if span else 0
        (shadow / rel).parent.mkdir(parents=True, exist_ok=True)
        (shadow / rel).write_bytes(new)
    for rel in set(before) - set(now):
        (shadow / rel).unlink()
    return raw, packed


def compressed_copy(root: Path) -> int:
    """zstd 3 of every file, one frame each: the seed's "full compressed copy" of the folder."""
    cctx = zstandard.ZstdCompressor(level=3)
    total = 0
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                total += len(cctx.compress(fh.read()))
    return total


# -- the bill ----------------------------------------------------------------------------------

def bill(stored: int, puts: int, gets: int) -> dict:
    _, per_gb, per_1k_put, per_1k_get = PRICES[PROVIDER]
    storage, put_cost, get_cost = stored / GB * per_gb, puts / 1000 * per_1k_put, gets / 1000 * per_1k_get
    return {"storage_usd": storage, "put_list_usd": put_cost, "get_usd": get_cost,
            "total_usd": storage + put_cost + get_cost}


def bucket_bytes(remote) -> int:
    return sum(info.size for info in remote.list(""))


def estimates(local: Repository, remote, settings) -> dict:
    """What casstore itself shows, each as $ per month for the provider (None: it shows none)."""
    from casstore.api.views import status_view
    from casstore.service.status import service_status

    out: dict = {}
    # the bucket as the configured remote (CASSTORE_REMOTE): how stats, status and the dashboard
    # know where the off-site copy is, and so which sync record prices it
    local.settings = replace(local.settings, remote=remote.url)
    on_remote = Repository.open_remote(remote, settings)
    out["stats (of the bucket)"] = on_remote.stats()["monthly_cost"].get(PROVIDER, {}).get("usd_per_month")
    out["stats (local repository)"] = local.stats()["monthly_cost"].get(PROVIDER, {}).get("usd_per_month")
    dry = local.sync(remote, dry_run=True)
    out["sync --dry-run"] = dry.monthly_cost_after.get(PROVIDER, {}).get("usd_per_month")
    stored = local.stored_bytes()
    status = service_status(local.settings, local.all_snapshots(), stored_bytes=stored)
    out["status"] = status["cost_estimate"]["providers"].get(PROVIDER, {}).get("usd_per_month")
    view = status_view(local.settings, local.all_snapshots(), stored, running_job=None)
    out["dashboard (GET /api/cloud/status cost_estimate)"] = view["cost_estimate"]["providers"].get(
        PROVIDER, {}).get("usd_per_month")
    return out


def gc_bucket(remote, settings) -> dict:
    """keep-last-30 and an exclusive gc (no grace: this run is the bucket's only user) on the bucket
    itself, after the estimates: what it stores once the snapshots forgotten locally go there too."""
    on_remote = Repository.open_remote(remote, settings)
    forgotten = len(apply_retention(on_remote, {"keep_last": 30}, all_hosts=True).removed)
    report = collect_garbage(on_remote, grace=0, exclusive=True)
    stored = bucket_bytes(remote)
    log(f"bucket gc: {forgotten} snapshots forgotten, bucket {stored / MiB:.1f} MiB")
    return {"forgotten": forgotten, "bucket_bytes": stored, "report": str(report)[:500]}


# -- the run -----------------------------------------------------------------------------------

def run(args, work: Path, results: dict) -> None:
    source, shadow = work / "data", work / "shadow"
    for p in (source, shadow, work / "repo", work / "cache", work / "server"):
        shutil.rmtree(p, ignore_errors=True)
    info = generate.generate(str(source), args.scale, 1, log=log)
    results["data"] = {"files": info.get("files"), "bytes": info.get("bytes")}
    shutil.copytree(source, shadow)
    results["compressed_copy"] = compressed_copy(source)
    log(f"data {info.get('bytes', 0) / MiB:.0f} MiB, one compressed copy {results['compressed_copy'] / MiB:.1f} MiB")
    settings = load_settings({"host": "cost", "repository": str(work / "repo"), "cache_dir": str(work / "cache")})
    repo = Repository.init_local(str(work / "repo"), settings, RepoConfig.new())
    server = BenchServer("moto", work / "server")
    try:
        s3 = server.s3.open(server.bucket, "casstore")
        for day in range(args.days + 1):
            change = (0, 0)
            if day:
                before = files_of(source)
                mutate.day_of_change(str(source), seed=day)
                change = compressed_changes(source, shadow, before)
                time.sleep(2.1)      # past the files cache's racy window, as a day would be
            snap = repo.snapshot(str(source))
            forgotten = len(apply_retention(repo, {"keep_last": 30}).removed)
            counting = CountingRemote(s3)
            started = time.perf_counter()
            repo.sync(counting)
            row = {"day": day, "changed_raw": change[0], "changed_zstd": change[1],
                   "snapshot_added_stored": snap.summary.bytes_added_stored, "forgotten": forgotten,
                   "sync_seconds": time.perf_counter() - started, "requests": dict(counting.counts),
                   "requests_total": counting.total(), "bytes_up": counting.bytes_up,
                   "bucket_bytes": bucket_bytes(s3)}
            results["days"].append(row)
            log(f"day {day:2}: changed {change[0] / MiB:6.2f} MiB raw, {change[1] / MiB:6.2f} MiB zstd; "
                f"sync {row['requests_total']} requests {row['requests']}, up {counting.bytes_up / MiB:.2f} MiB; "
                f"bucket {row['bucket_bytes'] / MiB:.1f} MiB")
        counting = CountingRemote(s3)
        repo.sync(counting)
        results["unchanged_sync"] = {"requests": dict(counting.counts), "total": counting.total()}
        results["estimates"] = estimates(repo, s3, settings)
        results["after_bucket_gc"] = gc_bucket(s3, settings)
    finally:
        server.stop()


def summarise(results: dict) -> dict:
    days = results["days"]
    stored = days[-1]["bucket_bytes"]
    puts = sum(d["requests"]["put"] + d["requests"]["list"] for d in days)
    gets = sum(d["requests"]["get"] + d["requests"]["stat"] for d in days)
    reference = results["compressed_copy"] + sum(d["changed_zstd"] for d in days)
    seed_stored = results["compressed_copy"] * 30
    return {"stored": stored, "reference": reference, "ratio": stored / reference, "puts": puts, "gets": gets,
            "bill": bill(stored, puts, gets), "seed_bill": bill(seed_stored, 30, 0), "seed_stored": seed_stored,
            "max_daily_requests": max(d["requests_total"] for d in days[1:]) if len(days) > 1 else None}


def render(results: dict) -> str:
    s = summarise(results)
    b = s["bill"]
    first = results["days"][0]
    lines = [SECTION, "", f"Generated by `benchmarks/cost.py` on {results['date']}. Command:", "",
             f"    {results['command']}", "",
             f"- Data: `generate.py --scale {results['args']['scale']}`: {results['data']['files']} files, "
             f"{results['data']['bytes'] / MiB:.0f} MiB; one compressed copy (zstd 3 per file) "
             f"{results['compressed_copy'] / MiB:.1f} MiB. {results['args']['days']} days of `mutate.py day`, "
             "a snapshot and keep-last-30 after each, then a sync to moto (server mode, loopback).",
             f"- Prices: {PRICES[PROVIDER][0]}, list prices as of {PRICES_AS_OF}: "
             f"${PRICES[PROVIDER][1]}/GB-month, ${PRICES[PROVIDER][2]} per 1,000 PUT/LIST, "
             f"${PRICES[PROVIDER][3]} per 1,000 GET/HEAD.", "",
             "| day | changed MiB (raw / zstd) | snapshot added MiB | sync requests | put / get / stat / list / delete "
             "| uploaded MiB | bucket MiB |", "|---|---|---|---|---|---|---|"]
    for d in results["days"]:
        r = d["requests"]
        lines.append(f"| {d['day']} | {d['changed_raw'] / MiB:.2f} / {d['changed_zstd'] / MiB:.2f} | "
                     f"{(d['snapshot_added_stored'] or 0) / MiB:.2f} | {d['requests_total']} | "
                     f"{r['put']} / {r['get']} / {r['stat']} / {r['list']} / {r['delete']} | "
                     f"{d['bytes_up'] / MiB:.2f} | {d['bucket_bytes'] / MiB:.1f} |")
    lines += ["", f"- Stored after {results['args']['days']} days: {s['stored'] / MiB:.1f} MiB against one compressed "
              f"copy + the compressed daily changes {s['reference'] / MiB:.1f} MiB: **{s['ratio']:.2f}×** "
              "(target ≤ 1.1×).",
              *([f"- After keep-last-30 and an exclusive gc on the bucket itself ({g['forgotten']} snapshots "
                 f"forgotten there): {g['bucket_bytes'] / MiB:.1f} MiB = "
                 f"**{g['bucket_bytes'] / s['reference']:.2f}×**; "
                 f"bill ${bill(g['bucket_bytes'], s['puts'], s['gets'])['total_usd']:.4f}."]
               if (g := results.get("after_bucket_gc")) else []),
              f"- Requests: at most {s['max_daily_requests']} per daily sync (target ≤ 100); a sync with nothing new "
              f"{results['unchanged_sync']['total']} ({results['unchanged_sync']['requests']}; target ≤ 5). The first "
              f"sync (day 0, the whole folder) took {first['requests_total']} ({first['requests']['put']} PUT, "
              f"{first['bytes_up'] / MiB:.0f} MiB: one PUT a pack).",
              f"- Bill for the month from the counts: storage ${b['storage_usd']:.4f} + PUT/LIST "
              f"${b['put_list_usd']:.4f} ({s['puts']}) + GET/HEAD ${b['get_usd']:.4f} ({s['gets']}) = "
              f"**${b['total_usd']:.4f}**.",
              f"- The seed's scheme (a full compressed copy per backup, 30 kept): {s['seed_stored'] / GB:.2f} GB, "
              f"**${s['seed_bill']['total_usd']:.4f}** a month.",
              "- casstore's own estimates (storage, and the requests of the last 30 days' syncs; `stats` of the "
              "bucket prices its listed size): " + "; ".join(
                  f"{k} " + (f"${v:.4f} ({v / b['total_usd']:.2f}× the bill)" if isinstance(v, float) else str(v))
                  for k, v in results["estimates"].items()) + ".", ""]
    return "\n".join(lines)


def write_section(text: str, output: Path) -> None:
    current = output.read_text() if output.exists() else ""
    block = text.rstrip("\n") + "\n\n" + SECTION_END + "\n"
    if SECTION in current and SECTION_END in current:
        head, rest = current.split(SECTION, 1)
        current = head + block + rest.split(SECTION_END, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    output.write_text(current)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=0.2, help="GB of generated data (the issue's full scale: 5)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--work", default=str(HERE / "work" / "cost"))
    p.add_argument("--output", default=str(HERE / "RESULTS.md"))
    p.add_argument("--results-json", default=str(HERE / "cost-results.json"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = p.parse_args(argv)
    if args.report_only:
        write_section(render(json.loads(Path(args.results_json).read_text())), Path(args.output))
        return
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict = {"command": command.strip(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                     "args": {"scale": args.scale, "days": args.days}, "days": [],
                     "load": {"start": os.getloadavg()}}
    try:
        run(args, work, results)
    finally:
        results["load"]["end"] = os.getloadavg()
        Path(args.results_json).write_text(json.dumps(results, indent=1, default=str))
        for sub in ("data", "shadow", "repo", "cache", "server"):
            shutil.rmtree(work / sub, ignore_errors=True)
    if not args.no_results:
        write_section(render(results), Path(args.output))
    log("done")


if __name__ == "__main__":
    main()
