"""Forked worker processes for batches of small files: a restore's writes, a snapshot's reads (issue 14).

A batch of small files is mostly Python (index lookups, envelope checks, stat results) and short
system calls; on threads, one interpreter runs it and the GIL changes hands at every call. Forked
workers run it on every core. Each worker gets jobs over a socket pair: a pickled payload and the
descriptor of the directory to work in (SCM_RIGHTS, so containment stays the parent's: no path is
opened by name in a worker), and answers each job in the order sent, on a pipe (an answer may be
a MiB of compressed blobs: more than a socket pair's message can hold).

The workers are forked while the process has one thread (a fork copies only the calling thread:
a lock another thread held would stay held in the child), so they inherit the open repository,
its loaded index and its keys and never open anything themselves. (Native threads, such as the
BLAKE3 pool that hashed the index table, are not copied either: a worker never reloads the index,
and leaves to the parent any blob it cannot read the fast way.) A worker ignores SIGINT (Ctrl-C
reaches the parent, which ends it), exits when its socket reaches end-of-file (the parent closed
it, or died), and is killed by the kernel when the parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from casstore._testing import pause_point
from casstore.errors import CasstoreError

# A job: a batch of 32 small files' names and chunk ids (a restore), of 128 names and identities
# (a snapshot) is a few KiB (at most ~40 with 255-byte names). Below malloc's mmap threshold, so a
# receive buffer costs no system call. Answers are framed on a pipe, of any size.
MAX_MESSAGE = 64 * 1024
_LENGTH = struct.Struct("<Q")
ANSWER_PIPE = 1024 * 1024    # at most /proc/sys/fs/pipe-max-size (1 MiB by default) for a process without privileges
# Unanswered jobs per worker. A socket pair queues at most net.unix.max_dgram_qlen (10 by default)
# messages each way; with more outstanding, parent and worker could both block sending.
MAX_QUEUED = 8
Handler = Callable[[int, Any], Any]
# Held (blocked) around each fork. A signal that lands while os.fork() runs has its Python handler
# run by the first Python code after it: the at-fork hooks (logging's), whose exceptions Python
# prints and drops, so a Ctrl-C there was lost and the command ran on to exit 0. Held, it is raised
# after the fork, in the parent's own code. SIGTERM too: `serve` raises on a second one.
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    pid: int
    sock: socket.socket           # jobs to the worker
    answers_fd: int               # its answers, framed (`_send_answer`)
    sent: int = 0                 # jobs sent so far; a job's ticket is its number
    answered: int = 0             # answers received so far (they come in the order sent)
    answers: dict[int, tuple[bool, Any]] = field(default_factory=dict)   # received, not yet taken
    exit_status: int | None = None


@dataclass(frozen=True)
class Ticket:
    """A job sent to one worker; `result()` waits for its answer."""

    pool: WorkerPool
    worker: _Worker
    number: int

    def result(self) -> Any:
        return self.pool.result(self)

    def cancel(self) -> bool:
        return False              # a sent job runs; closing the pool with abort=True ends it


class WorkerPool:
    """`count` forked processes each running `handle(dir_fd, payload)` on the jobs sent to it;
    `what` names the operation in errors, raised as `error`; `setup` runs first in each worker."""

    def __init__(self, handle: Handler, count: int, *, what: str, error: type[CasstoreError],
                 setup: Callable[[], None] | None = None) -> None:
        self._workers: list[_Worker] = []
        self.what, self.error, self._setup = what, error, setup
        try:
            for _ in range(count):
                self._fork(handle)
        except BaseException:
            self.close(abort=True)
            raise

    def _fork(self, handle: Handler) -> None:
        """Fork one worker and add it to the pool. Stop signals are held from before the fork until
        the worker is on the list: one that lands meanwhile is raised after, where close() can end it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        answers_in, answers_out = os.pipe()
        _widen(answers_out)
        parent = os.getpid()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            try:
                pid = os.fork()
            except BaseException:
                ours.close()
                theirs.close()
                os.close(answers_in)
                os.close(answers_out)
                raise
            if pid == 0:
                self._run_worker(parent, held, ours, theirs, answers_in, answers_out, handle)
            theirs.close()
            os.close(answers_out)
            self._workers.append(_Worker(pid, ours, answers_in))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)   # a held Ctrl-C is raised here, in the parent

    def _run_worker(self, parent: int, mask: set[int | signal.Signals], ours: socket.socket, theirs: socket.socket,
                    answers_in: int, answers_out: int, handle: Handler) -> NoReturn:
        """The worker, just forked: never returns."""
        status = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the parent, which ends it
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            _die_with(parent)
            ours.close()
            os.close(answers_in)
            for worker in self._workers:     # the earlier workers' parent ends: their EOF is the parent's alone
                worker.sock.close()
                os.close(worker.answers_fd)
            if self._setup is not None:
                self._setup()
            status = _serve(theirs, answers_out, handle, self.what, self.error)
        finally:
            os._exit(status)                 # no atexit handlers, no flushing the parent's buffers

    @property
    def capacity(self) -> int:
        """Jobs that may be outstanding at once (the caller waits for the oldest beyond it)."""
        return MAX_QUEUED * len(self._workers)

    def submit(self, dir_fd: int, payload: Any) -> Ticket:
        """Send a job to the worker with the fewest unanswered jobs (fewer than MAX_QUEUED while
        the caller keeps within `capacity`)."""
        worker = min(self._workers, key=lambda w: w.sent - w.answered)
        data = pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_MESSAGE:
            raise self.error(f"internal error: a {self.what} job of {len(data)} bytes (at most {MAX_MESSAGE})")
        try:
            socket.send_fds(worker.sock, [data], [dir_fd])
        except OSError as exc:
            raise self._lost(worker) from exc
        worker.sent += 1
        return Ticket(self, worker, worker.sent - 1)

    def result(self, ticket: Ticket) -> Any:
        """The answer to a job: its handler's return value, or the exception it raised, raised here."""
        pause_point(f"{self.what}-awaiting-answer")   # tests: a Ctrl-C lands while the workers run
        worker = ticket.worker
        while ticket.number not in worker.answers:
            try:
                header = _read_exactly(worker.answers_fd, _LENGTH.size)
                message = _read_exactly(worker.answers_fd, _LENGTH.unpack(header)[0]) if header else b""
            except OSError as exc:
                raise self._lost(worker) from exc
            if not message:
                raise self._lost(worker)
            worker.answers[worker.answered] = pickle.loads(message)
            worker.answered += 1
        ok, value = worker.answers.pop(ticket.number)
        if not ok:
            raise value
        return value

    def _lost(self, worker: _Worker) -> CasstoreError:
        """The error for a worker that stopped answering (killed, or out of memory)."""
        self._reap(worker)
        status = worker.exit_status
        how = (f"killed by signal {-status}" if status is not None and status < 0
               else f"exit status {status}")
        return self.error(f"a {self.what} worker process ended unexpectedly ({how}); the {self.what} is incomplete")

    def close(self, *, abort: bool = False) -> None:
        """End the workers and wait for them: `abort` stops them at once (a failed or interrupted
        restore), else each finishes what it was sent (it has been answered already) and exits."""
        for worker in self._workers:
            if abort:
                _kill(worker.pid)
            worker.sock.close()
            os.close(worker.answers_fd)
        for worker in self._workers:
            self._reap(worker)
        self._workers.clear()

    @staticmethod
    def _reap(worker: _Worker) -> None:
        """Wait for the worker to end and keep its exit status (once)."""
        if worker.exit_status is not None:
            return
        try:
            _, status = os.waitpid(worker.pid, 0)
        except ChildProcessError:
            worker.exit_status = 0
            return
        worker.exit_status = os.waitstatus_to_exitcode(status)


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when the parent dies (Linux), even if the worker is stuck
    where it would never read its socket's end-of-file; exit now if the parent is gone already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass                      # not Linux: end-of-file on the socket still ends an idle worker
    if os.getppid() != parent:
        os._exit(0)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _widen(pipe_fd: int) -> None:
    """A pipe of ANSWER_PIPE bytes, where the system allows (Linux): a snapshot's answer of about a
    MiB then crosses in one write and a few reads, not sixteen 64 KiB turns of both processes."""
    try:
        fcntl.fcntl(pipe_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), ANSWER_PIPE)
    except OSError:
        pass


def _read_exactly(fd: int, length: int) -> bytes:
    """`length` bytes from the pipe; b"" at its end (a worker that died has written nothing more:
    a cut answer is the same loss)."""
    parts, left = [], length
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return b""
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _serve(sock: socket.socket, answers: int, handle: Handler, what: str, error: type[CasstoreError]) -> int:
    """The worker's loop: answer each job in order until the parent closes the socket."""
    while True:
        message, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        if not message:
            return 0
        try:
            if flags & socket.MSG_TRUNC or len(fds) != 1:
                raise error(f"internal error: a {what} job was cut")
            answer: tuple[bool, Any] = (True, handle(fds[0], pickle.loads(message)))
        except Exception as exc:     # reaches the parent, which raises it as the operation's error
            answer = (False, exc)
        finally:
            for fd in fds:
                os.close(fd)
        try:
            data = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        except Exception:            # an exception that does not pickle: its text still reaches the user
            data = pickle.dumps((False, error(str(answer[1]))), pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(answers, _LENGTH.pack(len(data)) + data)
        except OSError:              # the parent is gone
            return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
