"""Background jobs of the API (backup, sync): started at once, polled at /api/jobs/<id>.

A job holds the repository's run lock (state/run.lock) from the moment it is accepted, so two
backups never run at once, nor a backup beside a scheduled run, in this process or another:
the second request is refused (409) with the running job's id when it is ours.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from casstore.service.runs import RunBusy, RunRecord, run_lock, run_locked
from casstore.settings import Settings

KEEP_JOBS = 200
log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    kind: str                         # backup | sync
    state: str = "running"            # running | succeeded | failed
    created: float = field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    result: dict | None = None        # the run record
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def as_dict(self) -> dict:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "done"}
        doc["backup_id"] = ((self.result or {}).get("snapshot") or {}).get("id")
        return doc


class JobManager:
    def __init__(self, settings: Settings, on_finished: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.on_finished = on_finished
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.current: Job | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casstore-job")

    def start(self, kind: str, steps, settings: Settings | None = None) -> Job:
        """Accept a job now (holding the run lock) and run it in the background; RunBusy if a run is on.
        `settings` (default: the server's) are the run's."""
        lock = run_lock(self.settings.repository)
        with self._lock:
            if not lock.try_acquire():
                running = self.current.id if self.current else None
                what = f"job {running}" if running else f"another process (pid {lock.holder()})"
                raise RunBusy(f"a backup or sync is already running ({what}); try again when it has finished")
            job = Job(id=secrets.token_hex(16), kind=kind)
            self.current = job
            self.jobs[job.id] = job
            while len(self.jobs) > KEEP_JOBS:
                self.jobs.popitem(last=False)
        try:
            self._executor.submit(self._run, job, lock, steps, settings or self.settings)
        except RuntimeError:  # shutting down
            lock.release()
            raise RunBusy("the server is shutting down") from None
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def _run(self, job: Job, lock, steps, settings: Settings) -> None:
        try:
            record = run_locked(settings, RunRecord.begin("api", time.time()), clock=time.time, steps=steps,
                                should_stop=self._stopping.is_set)
            job.result, job.error = record.as_dict(), record.error or record.abandoned
            job.state = "succeeded" if record.ok else "failed"
        except Exception as exc:  # recorded by run_locked; the job must still end
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                lock.release()
                if self.current is job:
                    self.current = None
            job.ended = time.time()
            job.done.set()
            self.on_finished()

    def shutdown(self, grace: float) -> None:
        """Let the running job finish its current step (up to `grace` s), skip the rest."""
        self._stopping.set()
        current = self.current
        self._executor.shutdown(wait=False, cancel_futures=True)
        if current is not None and not current.done.wait(grace):
            log.warning("job %s did not finish within %.0f s; abandoning it", current.id, grace)
