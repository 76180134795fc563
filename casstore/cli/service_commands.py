"""status, schedule, serve: casstore as a service."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import threading
import time
from datetime import datetime

import click

from casstore.api.security import allowed_host_names, token_problem
from casstore.cli.common import emit, human, json_option, printable, repo_option, settings
from casstore.client import open_repository
from casstore.errors import ConfigError
from casstore.format import layout
from casstore.service.runs import perform_run
from casstore.service.scheduler import (
    IntervalSchedule,
    Scheduler,
    format_duration,
    human_age,
    install_stop_signals,
    parse_schedule,
)
from casstore.service.status import service_status, stale_reasons
from casstore.settings import parse_duration

SERVE_HINT = "casstore serve needs FastAPI and uvicorn: pip install 'casstore[serve]'"


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "-"
    stamp = datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    delta = human_age(abs(now - timestamp))
    return f"{stamp} ({delta} ago)" if timestamp <= now else f"{stamp} (in {delta})"


# -- status ------------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option("--max-age", metavar="DURATION",
              help="Exit 1 when the last good snapshot, or the oldest snapshot not yet synced, is older (e.g. 36h).")
@json_option
@click.pass_context
def status(ctx, repository, max_age, as_json):
    """Show the last snapshot, sync and scheduled run, and the next run."""
    s = settings(ctx, repository)
    limit = parse_duration(max_age, what="--max-age") if max_age else None
    now = time.time()
    snapshots, stored = _snapshots(s)
    doc = service_status(s, snapshots, now=now, stored_bytes=stored)
    reasons = stale_reasons(doc, limit, now) if limit is not None else []
    doc["stale"] = reasons
    emit(as_json, doc, lambda: _print_status(doc, now))
    if reasons:
        for reason in reasons:
            click.echo(f"casstore: stale: {reason}", err=True)
        sys.exit(1)


def _snapshots(s) -> tuple[list, int]:
    """The local repository's snapshots and size (priced until a sync records the remote's)."""
    if not layout.is_local_repository(s.repository):
        return [], 0
    with open_repository(s, fallback_remote=False) as repo:
        return repo.all_snapshots(), repo.stored_bytes()


def _print_status(doc: dict, now: float) -> None:
    click.echo(f"repository:     {doc['repository']} ({doc['snapshots']} snapshots)")
    last = doc["last_snapshot"]
    if last is None:
        click.echo("last snapshot:  none yet")
    else:
        flag = "  INCOMPLETE" if last["incomplete"] else ""
        click.echo(f"last snapshot:  {last['short_id']}  {_when(last['timestamp'], now)}  {last['files']} files, "
                   f"{human(last['bytes_total'])}{flag}")
    sync = doc["sync"]
    if not sync["configured"]:
        click.echo("last sync:      no remote configured (CLOUD_PROVIDER=local)")
    else:
        click.echo(f"last sync:      {_when(sync['last_success'], now)} to {sync['remote']}; "
                   f"{sync['snapshots_unsynced']} snapshot(s) not synced yet")
        attempt = sync["last_attempt"]
        if attempt and not attempt["ok"]:
            click.echo(f"                last attempt FAILED {_when(attempt['time'], now)}: "
                       + printable(attempt["error"]))
    _print_cost(doc["cost_estimate"])
    _print_schedule(doc["schedule"], now)


def _print_cost(cost: dict) -> None:
    if not cost["providers"]:
        click.echo(f"monthly cost:   {cost['note']}")
        return
    prices = ", ".join(f"{row['label'].split(' (')[0]} ${row['usd_per_month']:.4f}"
                       for row in cost["providers"].values())
    click.echo(f"monthly cost:   {prices} ({human(cost['stored_bytes'])} stored, {cost['requests_per_month']} "
               f"requests in the last 30 days' syncs; prices as of {cost['prices_as_of']})")


def _print_schedule(schedule: dict, now: float) -> None:
    run = schedule["last_run"]
    if run is None:
        click.echo("last scheduled: never")
    else:
        outcome = "ok" if run["ok"] else f"FAILED: {run['error']}" if run["error"] else f"abandoned: {run['abandoned']}"
        click.echo(f"last scheduled: {_when(run['started'], now)} ({run['trigger']}) {outcome}")
    if schedule["running"]:
        click.echo(f"next run:       {_when(schedule['next_run'], now)}  [{schedule['schedule']}, "
                   f"scheduler pid {schedule['pid']}]")
    elif schedule["next_run"]:
        click.echo(f"next run:       {_when(schedule['next_run'], now)}  [{schedule['schedule']}; "
                   "no scheduler is running]")
    else:
        click.echo("next run:       no scheduler is running (casstore schedule --every 24h)")
    click.echo(f"retention:      {schedule['retention']} (CASSTORE_KEEP_LAST)")


# -- schedule ----------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option("--every", metavar="DURATION", help="Run every DURATION (e.g. 24h, 6h, 30m).")
@click.option("--cron", "cron", metavar="EXPR", help='Run on a cron schedule, e.g. "0 3 * * *" (local time).')
@click.option("--source", metavar="PATH", help="Directory to snapshot (default: CASSTORE_SOURCE or ./data).")
@click.option("--once", is_flag=True, help="Do one run now (snapshot, sync, retention) and exit; for cron/systemd.")
@click.option("--print-systemd", is_flag=True, help="Print a systemd service and timer for this schedule.")
@click.option("--print-cron", is_flag=True, help="Print a crontab line for this schedule.")
@click.option("--allow-empty", is_flag=True, default=None,
              help="Snapshot the source even when it is empty (default: refused, CASSTORE_ALLOW_EMPTY).")
@click.pass_context
def schedule(ctx, repository, every, cron, source, once, print_systemd, print_cron, allow_empty):
    """Snapshot, then sync, then apply retention (locally and on the bucket, then the bucket's gc):
    on a schedule, until stopped.

    The schedule comes from --every, --cron or CASSTORE_SCHEDULE. One scheduler runs per
    repository: a second one exits with an error. A run missed while the machine was off or
    asleep runs once at start. SIGTERM/SIGINT stop after the current step.
    """
    if every and cron:
        raise click.UsageError("give --every or --cron, not both")
    s = settings(ctx, repository, source=source, allow_empty=allow_empty)
    s = s.with_overrides(repository=os.path.abspath(s.repository), source=os.path.abspath(s.source))
    text = every or cron or s.schedule
    _verbose_run_logs()
    if once:
        _run_once(s)
        return
    if not text:
        raise click.UsageError("give --every 24h or --cron \"0 3 * * *\" (or set CASSTORE_SCHEDULE)")
    sched = parse_schedule(text)
    if print_systemd or print_cron:
        click.echo(systemd_units(sched, s, _executable()) if print_systemd else cron_line(sched, s, _executable()))
        return
    scheduler = Scheduler(s, sched)
    scheduler.acquire()
    restore = scheduler.install_signal_handlers()
    click.echo(f"casstore: scheduler started ({sched.describe()}) on {s.repository}; source {s.source}", err=True)
    try:
        scheduler.run_forever()
    finally:
        restore()
    click.echo(f"casstore: scheduler stopped after {scheduler.runs} run(s)", err=True)


def _verbose_run_logs() -> None:
    for name in ("casstore.service.scheduler", "casstore.service.runs"):
        logging.getLogger(name).setLevel(logging.INFO)


def _run_once(s) -> None:
    stop = threading.Event()
    restore = install_stop_signals(stop)
    try:
        record = perform_run(s, trigger="once", should_stop=stop.is_set)
    finally:
        restore()
    if not record.ok:
        raise SystemExit(f"casstore: error: run {record.id} failed: {record.error or record.abandoned}")


def _executable() -> str:
    """The casstore command as a quoted command line (absolute: systemd and cron have a bare PATH)."""
    found = shutil.which("casstore")
    return shlex.quote(os.path.abspath(found)) if found else shlex.join([sys.executable, "-m", "casstore.cli.main"])


# -- the system's own schedulers ----------------------------------------------------------------

_DOW = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_NAMES = {n.lower(): i for i, n in enumerate(_DOW[:7])} | {m: i + 1 for i, m in enumerate(_MONTHS)}
_ALIASES = {"@hourly": "hourly", "@daily": "daily", "@midnight": "daily", "@weekly": "weekly",
            "@monthly": "monthly", "@yearly": "yearly", "@annually": "yearly"}


def systemd_units(sched, s, exe: str) -> str:
    """A oneshot service running `schedule --once` and a timer for the schedule (Persistent=true
    catches up a run missed while the machine was off)."""
    command = f"{exe} --repo {_quote(s.repository)} schedule --once --source {_quote(s.source)}"
    return f"""# casstore.service -- one run: snapshot, sync (when a remote is configured), retention.
# Save as ~/.config/systemd/user/casstore.service (or /etc/systemd/system/ for a system unit).
[Unit]
Description=casstore snapshot, sync and retention of {s.source}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory={os.getcwd()}
# settings and secrets are read from .env in WorkingDirectory (or add EnvironmentFile=/path/to/env)
ExecStart={command}
Nice=10
IOSchedulingClass=idle

# casstore.timer -- {sched.describe()}
# Save beside the service, then: systemctl --user daemon-reload && systemctl --user enable --now casstore.timer
[Unit]
Description=casstore {sched.describe()}

[Timer]
{_timer_lines(sched)}

[Install]
WantedBy=timers.target
"""


def _timer_lines(sched) -> str:
    if isinstance(sched, IntervalSchedule):
        calendar = _interval_calendar(sched.seconds)
        if calendar is None:
            return f"OnBootSec=15min\nOnUnitActiveSec={format_duration(sched.seconds)}"
        return f"OnCalendar={calendar}\nPersistent=true"
    return f"OnCalendar={_cron_calendar(sched.expression)}\nPersistent=true"


def _interval_calendar(seconds: float) -> str | None:
    if seconds == 86400:
        return "*-*-* 00:00:00"
    if seconds % 3600 == 0 and 86400 % seconds == 0:
        return f"*-*-* 00/{int(seconds // 3600)}:00:00"
    if seconds % 60 == 0 and 3600 % seconds == 0:
        return f"*-*-* *:00/{int(seconds // 60)}:00"
    return None


def _cron_calendar(expression: str) -> str:
    """A 5-field cron expression as a systemd OnCalendar= value (the common forms)."""
    if expression.startswith("@"):
        if expression.lower() not in _ALIASES:
            raise ConfigError(f"{expression} has no systemd timer equivalent; use --print-cron")
        return _ALIASES[expression.lower()]
    minute, hour, dom, month, dow = expression.split()
    if dom != "*" and dow != "*":
        raise ConfigError("cron with both day-of-month and day-of-week has no OnCalendar equivalent; "
                          "use --print-cron")
    days = "" if dow == "*" else ",".join(_dow_part(p) for p in dow.split(",")) + " "
    return (f"{days}*-{_field(month, 1)}-{_field(dom, 1)} "
            f"{_field(hour, 0)}:{_field(minute, 0)}:00")


def _field(text: str, first: int) -> str:
    """One cron field in systemd syntax: '*', '5', '1,15', '1-5' -> '1..5', '*/15' -> '00/15'."""
    parts = []
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and base != "*":
            raise ConfigError(f"cron field {text!r} (a stepped range) has no OnCalendar equivalent; use --print-cron")
        if base == "*":
            parts.append(f"{first:02d}/{step}" if step else "*")
        elif "-" in base:
            low, high = base.split("-")
            parts.append(f"{_number(low):02d}..{_number(high):02d}")
        else:
            parts.append(f"{_number(base):02d}")
    return ",".join(parts)


def _number(text: str) -> int:
    return _NAMES[text.lower()] if text.lower() in _NAMES else int(text)


def _dow_part(part: str) -> str:
    if "/" in part:
        raise ConfigError("a stepped day-of-week has no OnCalendar equivalent; use --print-cron")
    if "-" in part:
        low, high = part.split("-")
        return f"{_DOW[_number(low)]}..{_DOW[_number(high)]}"
    return _DOW[_number(part)]


def cron_line(sched, s, exe: str) -> str:
    """A crontab line running `schedule --once` on this schedule."""
    if not isinstance(sched, IntervalSchedule):
        timing = sched.expression
    elif sched.seconds % 60 == 0 and 3600 % sched.seconds == 0:
        timing = f"*/{int(sched.seconds // 60)} * * * *" if sched.seconds < 3600 else "0 * * * *"
    elif sched.seconds % 3600 == 0 and 86400 % sched.seconds == 0:
        timing = f"0 */{int(sched.seconds // 3600)} * * *" if sched.seconds < 86400 else "0 0 * * *"
    else:
        raise ConfigError(f"{sched.describe()} has no cron equivalent; use --cron")
    state = os.path.join(s.repository, "state")
    command = (f"cd {_quote(os.getcwd())} && mkdir -p {_quote(state)} && {exe} --repo {_quote(s.repository)} "
               f"schedule --once --source {_quote(s.source)} >> {_quote(os.path.join(state, 'cron.log'))} 2>&1")
    return f"# casstore: {sched.describe()} (add with `crontab -e`)\n{timing} {command.replace('%', chr(92) + '%')}"


def _quote(text: str) -> str:
    return shlex.quote(text)


# -- serve -------------------------------------------------------------------------------------


@click.command()
@repo_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs CASSTORE_API_TOKEN.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--schedule", "schedule_text", metavar="DURATION|CRON",
              help='Also run the scheduler in this process: an interval (24h) or a cron expression ("0 3 * * *").')
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this Host name (a reverse proxy's name); repeatable.")
@click.pass_context
def serve(ctx, repository, host, port, schedule_text, allow_hosts):
    """Serve the HTTP API (the seed's /api/cloud/* endpoints) and the dashboard at /."""
    s = settings(ctx, repository)
    s = s.with_overrides(repository=os.path.abspath(s.repository), source=os.path.abspath(s.source))
    problem = token_problem(s.api_token, host)
    if problem:
        raise ConfigError(problem)
    try:
        import uvicorn  # lazy: optional SDK (the `serve` extra); only `serve` needs it

        from casstore.api.app import create_app  # lazy: imports fastapi (the `serve` extra)
    except ImportError as exc:
        raise ConfigError(f"{SERVE_HINT} ({exc})") from None
    scheduler = _serve_scheduler(s, schedule_text)
    app = create_app(s, allowed_hosts=allowed_host_names(host, allow_hosts), scheduler=scheduler)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"casstore: serving {s.repository} on http://{shown}:{port}/"
               + (f" with the scheduler ({scheduler.schedule.describe()})" if scheduler else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, proxy_headers=False)


def _serve_scheduler(s, text: str | None):
    if not text:
        return None

    _verbose_run_logs()
    scheduler = Scheduler(s, parse_schedule(text))
    scheduler.acquire()  # fail now, clearly, if another scheduler runs on this repository
    return scheduler
