"""Scheduled runs: snapshot, then sync (when a remote is configured), then retention (when a policy is set).

    casstore schedule --every 24h          # or --cron "0 3 * * *", or CASSTORE_SCHEDULE
    casstore serve --schedule 24h          # the same loop in a thread of the HTTP server

- Runs never overlap: each run holds `state/run.lock` (fcntl), in every process; one scheduler
  loop per repository holds `state/scheduler.lock` and a second one exits with a clear message.
- A slot missed while the machine was off or asleep runs once at start (or on waking); the slots
  in between are not replayed. `--every` keeps its phase: after a catch-up the next run is on the
  original grid. With no previous run, `--every` starts now and `--cron` waits for its next slot.
- A failed run is logged with its cause, CASSTORE_NOTIFY_CMD runs with the error in its
  environment, and the next run is at its usual time. The loop never dies of a failed run.
- SIGTERM/SIGINT while idle: exit at once. During a run: the step under way (a snapshot commits
  atomically) finishes, the remaining steps are skipped and the run is recorded as abandoned; a
  second signal aborts at once (an unfinished snapshot leaves only unreferenced packs, which gc
  removes).
- Time is wall-clock (cron slots are wall-clock). The loop naps at most a minute at a time and
  re-reads the clock, so a suspended machine is noticed soon after it wakes. Clock and sleep are
  injectable: tests simulate a month of runs in milliseconds.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from casstore.errors import ConfigError, LockError
from casstore.service.runs import STEPS, RunLog, RunRecord, SchedulerState, perform_run, scheduler_lock
from casstore.settings import Settings, parse_duration

log = logging.getLogger(__name__)

MAX_NAP = 60.0            # seconds between clock checks while idle
CATCH_UP_AFTER = 300.0    # a slot started this late was missed (machine off or asleep)


# -- schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalSchedule:
    """Every `seconds`, on a grid anchored at a previous slot."""

    seconds: float

    def describe(self) -> str:
        return f"every {format_duration(self.seconds)}"

    def next_after(self, t: float, anchor: float | None = None) -> float:
        if anchor is None:
            return t + self.seconds
        return anchor + (math.floor((t - anchor) / self.seconds) + 1) * self.seconds

    def latest_at_or_before(self, t: float, anchor: float) -> float:
        return anchor + math.floor((t - anchor) / self.seconds) * self.seconds


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression in local time (croniter does the calendar, DST included)."""

    expression: str

    def describe(self) -> str:
        return f"cron {self.expression}"

    def next_after(self, t: float, anchor: float | None = None) -> float:
        return self._iter(t).get_next(float)

    def latest_at_or_before(self, t: float, anchor: float | None = None) -> float:
        return self._iter(t + 1e-6).get_prev(float)

    def _iter(self, t: float):
        from croniter import croniter  # lazy: 30 ms to import; only cron schedules need it
        from dateutil.tz import tzlocal  # lazy: only cron schedules need it

        return croniter(self.expression, datetime.fromtimestamp(t, tzlocal()))


Schedule = IntervalSchedule | CronSchedule


def parse_schedule(text: str) -> Schedule:
    """'24h', 'every 6h', '0 3 * * *' or '@daily' -> a schedule; a bare number ('24') is refused."""
    text = " ".join(str(text).split())
    body = text[6:] if text.lower().startswith("every ") else text
    if body.replace(".", "", 1).isdigit():
        parse_duration(body, what="schedule")   # raises: did you mean 24h?
    try:
        seconds = parse_duration(body)
    except ConfigError:
        return _cron(text)
    if seconds < 60:
        raise ConfigError(f"schedule {text!r} is too frequent (at least 1m between runs)")
    return IntervalSchedule(seconds)


def _cron(text: str) -> CronSchedule:
    from croniter import croniter  # lazy: 30 ms to import; only cron schedules need it

    if (text.startswith("@") or len(text.split()) == 5) and croniter.is_valid(text):
        return CronSchedule(text)
    raise ConfigError(f"not a schedule: {text!r} (use an interval such as 24h or 6h, "
                      "or a 5-field cron expression such as \"0 3 * * *\")")


def format_duration(seconds: float) -> str:
    """86400 -> '24h', 172800 -> '2d', 1800 -> '30m' (hours up to a day, as people write them)."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def human_age(seconds: float) -> str:
    """'3d 4h', '40h 12m' style: the two largest units."""
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def expected_next_run(settings: Settings, now: float) -> tuple[str, float]:
    """The configured schedule (CASSTORE_SCHEDULE) and when it would run next if a scheduler ran."""
    schedule = parse_schedule(settings.schedule or "")
    due, _ = Scheduler(settings, schedule).first_due(now)
    return schedule.describe(), due


def install_stop_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set `stop` (the current step finishes, the rest is skipped); a second one
    aborts at once. Returns a function that restores the previous handlers (main thread only)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("received %s: finishing the current step, then stopping", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


# -- the loop ----------------------------------------------------------------------------------


class SchedulerBusy(LockError):
    """Another scheduler already runs on this repository."""


class Scheduler:
    """The loop. `clock()` gives epoch seconds; `sleep(s)` waits (tests advance a fake clock)."""

    def __init__(self, settings: Settings, schedule: Schedule, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None, steps=STEPS, max_nap: float = MAX_NAP) -> None:
        self.settings, self.schedule, self.clock, self.steps = settings, schedule, clock, steps
        self.stop_event = threading.Event()
        self.sleep = sleep or self.stop_event.wait
        self.max_nap = max_nap
        self.state = SchedulerState(settings.repository)
        self.runs = 0
        self.next_run: float | None = None
        self.on_run: Callable[[RunRecord], None] = lambda record: None   # serve refreshes its listing
        self.thread: threading.Thread | None = None
        self._lock = scheduler_lock(settings.repository)

    # -- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT stop the loop after the current step (see `install_stop_signals`)."""
        return install_stop_signals(self.stop_event)

    # -- running -------------------------------------------------------------------------------

    def run_forever(self, until: float | None = None) -> int:
        """Run the schedule until stopped (or until the clock reaches `until`); return the runs made."""
        self.acquire()
        try:
            self.state.update(schedule=self.schedule.describe(), pid=os.getpid(), started=self.clock(),
                              stopped=None)
            due, trigger = self.first_due(self.clock())
            while not self.stopping and (until is None or self.clock() < until):
                due, trigger = self._step(due, trigger)
        finally:
            self.state.update(pid=None, next_run=None, stopped=self.clock())
            self._lock.release()
        return self.runs

    def acquire(self) -> None:
        """Become the repository's one scheduler, or raise SchedulerBusy with a clear message."""
        if not self._lock.held and not self._lock.try_acquire():
            raise SchedulerBusy(f"another scheduler (pid {self._lock.holder()}) already runs on "
                                f"{self.settings.repository}; stop it first (see `casstore status`)")

    def first_due(self, now: float) -> tuple[float, str]:
        """When the first run is due and why: a missed slot is caught up at once."""
        doc = self.state.load()
        last = doc.get("last_due") if doc.get("schedule") == self.schedule.describe() else None
        if last is None:
            last = self._last_scheduled_run()
        if last is None:
            return (now, "schedule") if isinstance(self.schedule, IntervalSchedule) else \
                (self.schedule.next_after(now), "schedule")
        upcoming = self.schedule.next_after(last, anchor=last)
        if upcoming > now:
            return upcoming, "schedule"
        return self.schedule.latest_at_or_before(now, anchor=last), "catch-up"

    def _last_scheduled_run(self) -> float | None:
        record = RunLog(self.settings.repository).last(lambda r: r.scheduled)
        return (record.due or record.started) if record else None

    def _step(self, due: float, trigger: str) -> tuple[float, str]:
        now = self.clock()
        if now < due:
            self._announce(due)
            self.sleep(min(due - now, self.max_nap))
            return due, trigger
        if trigger == "schedule" and now - due > CATCH_UP_AFTER:   # we slept through it
            trigger = "catch-up"
            due = self.schedule.latest_at_or_before(now, anchor=due)
        # the slot after this one is known before the run starts: status shows it throughout the
        # run, and as soon as the run's record appears (a reader never sees a record and no next run)
        self._announce(self.schedule.next_after(max(due, now), anchor=due))
        self.run_once(trigger, due)
        following = self.schedule.next_after(max(due, self.clock()), anchor=due)
        self._announce(following)
        return following, "schedule"

    def _announce(self, next_run: float) -> None:
        if self.next_run != next_run:
            self.next_run = next_run
            self.state.update(next_run=next_run)

    def run_once(self, trigger: str, due: float | None = None) -> RunRecord:
        record = perform_run(self.settings, trigger=trigger, due=due, clock=self.clock, steps=self.steps,
                             should_stop=lambda: self.stopping, sleep=lambda s: self.sleep(min(s, self.max_nap)))
        self.runs += 1
        self.on_run(record)
        if record.snapshot is not None or not record.abandoned:  # a run stopped before it began stays due
            self.state.update(last_due=due, last_run=record.id, last_ok=record.ok)
        return record

    # -- in a thread (serve --schedule) --------------------------------------------------------

    def start_thread(self) -> threading.Thread:
        """Run the loop in a daemon thread; fail here (not in the thread) if another scheduler runs."""
        self.acquire()
        self.thread = threading.Thread(target=self._thread_main, name="casstore-scheduler", daemon=True)
        self.thread.start()
        return self.thread

    def stop_thread(self, grace: float) -> None:
        """Stop the loop; wait up to `grace` seconds for a run to finish its step, then abandon it."""
        self.stop()
        if self.thread is not None:
            self.thread.join(grace)
            if self.thread.is_alive():
                log.warning("the scheduled run did not finish within %.0f s; abandoning it", grace)

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except Exception:
            log.exception("the scheduler thread stopped")
