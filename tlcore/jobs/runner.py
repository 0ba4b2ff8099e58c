"""The embedded runner: a pool of training worker processes on this machine (``LocalRunner``).

It is two parts. The *scheduler* (``submit``, ``stop``, ``queue_info``, ``forecast``, ``_dispatch``) decides which
job a free worker takes; the *supervisor* (one thread) blocks on the workers' connections and
applies what they send: events to the jobs' handles, a closed connection as a dead worker (its run
failed with a plain reason, the worker replaced). Nothing sleep-polls. Workers are
``python -m tlcore.jobs.worker`` processes (their own entry point: they never import the app's script).

Thread policy: ``TLCORE_WORKERS`` workers (default: half the cores, at least 2). Before every batch
a worker takes ``cores // busy workers`` torch threads (at least 1): a run on a quiet server uses
every core, and busy workers share them without oversubscribing; the web server's own work
(pages, polling) is light and runs between them.

Scheduling is fair and keeps short work short: a free worker takes the next *short* job (feature
extraction, few-shot: seconds) before any long one (fine-tune, from scratch), a job someone pressed a button
for before one nobody waits for (the check that follows every upload), and among jobs of one kind the
owner (project) whose last job of that kind started longest ago goes first, not the oldest job (a
student's quick runs on the express lane do not cost their turn for a long one). With two or more
workers the last one is an express lane that only takes short jobs, so a class's
five-second feature extractions never wait behind someone's ten-minute fine-tune. A queued job
holds nothing but its place in line.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe, wait

from ..core.errors import TLError
from ..core.settings import settings
from ..core.storage import below_the_server, child_env
from ..engine.events import RunFinished
from .spec import Job, JobSpec, JobTracker, Runner, estimate_seconds, queue_position, receive, send

log = logging.getLogger(__name__)
#: t threads run a job about t ** THREAD_SCALING times as fast as one (measured: see ``share_rate``).
THREAD_SCALING = 0.8
MAX_CRASHES = 3  # deaths in a row before a worker slot is given up (it cannot even start)


class LocalRunner:
    """A pool of worker processes on this machine, with fair, short-first scheduling."""

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        cores = os.cpu_count() or 2
        self.workers = workers or settings().workers or max(2, cores // 2)
        self.threads = threads or max(1, cores // self.workers)  # each worker's share when all are busy
        self.max_threads = threads or cores  # what a worker takes when it trains alone
        self._lock = threading.RLock()  # the scheduler's state, and every send to a worker
        self._procs: list[subprocess.Popen | None] = [None] * self.workers
        self._conns: list[Connection | None] = [None] * self.workers
        self._busy: list[JobTracker | None] = [None] * self.workers
        self._crashes = [0] * self.workers  # per worker: deaths since it last started properly
        self._pending: list[JobTracker] = []
        self._jobs: dict[int, JobTracker] = {}
        self._served: dict[tuple[str, bool], float] = {}  # (owner, short) -> when its last such job started
        # (when, ends, starts): ``_played``'s last answer
        self._forecast: tuple[float, dict[int, float], dict[int, float]] | None = None
        self._ids = itertools.count(1)
        self.broken: str | None = None  # why no worker can start, once that is clear
        self._ready: set[int] = set()  # workers that have warmed up (only they are given jobs)
        self._all_ready = threading.Event()
        self._wake_r, self._wake_w = Pipe(duplex=False)  # tells the supervisor its connections changed
        self._started = False
        self._closing = False

    # -- lifecycle

    def start(self) -> None:
        """Start the workers now (the app does at start-up, so the first run does not wait for them)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            for i in range(self.workers):
                self._spawn(i)
            threading.Thread(target=self._supervise, name="tlcore-runner-supervisor", daemon=True).start()
            atexit.register(self.shutdown)

    def _spawn(self, i: int) -> None:
        """Start worker ``i`` (``python -m tlcore.jobs.worker``) on one end of a fresh connection."""
        ours, theirs = Pipe()
        env = child_env()  # the worker imports this tlcore
        # training yields the cores to the web server (pages and a teacher's clicks stay quick however
        # busy), from the worker's start: importing torch takes seconds of both cores too
        self._procs[i] = subprocess.Popen(
            below_the_server([sys.executable, "-m", "tlcore.jobs.worker", str(theirs.fileno()), str(self.threads),
                              str(self.max_threads)]), pass_fds=(theirs.fileno(),), env=env)
        theirs.close()
        self._conns[i] = ours
        self._ready.discard(i)
        self._wake_w.send(None)

    def shutdown(self) -> None:
        """End the workers (a run in progress stops; its best epoch is on disk)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            for conn in self._conns:
                self._send(conn, None)
            self._wake_w.send(None)
        deadline = time.monotonic() + 5  # one deadline for all: waited for one after another, two took 10 s
        for proc in self._procs:
            if proc is not None:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker has warmed up (at start-up they keep the cores busy for a while)."""
        self.start()
        return self._all_ready.wait(timeout)

    def idle(self) -> bool:
        """Nothing queued and nothing training."""
        with self._lock:
            return not self._pending and not any(self._busy)

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs if p is not None]

    # -- the Runner interface

    def submit(self, spec: JobSpec, on_finish: Callable[[RunFinished], None] | None = None,
               after: Job | None = None) -> Job:
        if self.broken:
            raise TLError(self.broken)
        self.start()
        job = JobTracker(next(self._ids), spec, self, on_finish)
        job.after = after
        job.estimate_s = estimate_seconds(spec)
        with self._lock:
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forecast = None
            self._dispatch()
        return job.job

    def stop(self, job: JobTracker) -> None:
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
                self._forecast = None
                finished = True
            else:
                finished = False
                for i, running in enumerate(self._busy):
                    if running is job:
                        self._send(self._conns[i], ("stop", job.id))
        if finished:
            job.record(RunFinished.stopped("while waiting for a free training worker"))

    def active(self, owner: str) -> int:
        with self._lock:
            jobs = self._pending + [j for j in self._busy if j is not None]
        return sum(1 for j in jobs if j.spec.owner == owner and j.spec.trains and j.alive)

    def queue_info(self, job: JobTracker) -> tuple[int, float]:
        """(position in line, estimated seconds until it starts, as ``forecast`` plays the queue). A
        run's position counts the runs ahead of it, not the seconds-long analyses (a Data page's check) that
        its wait includes."""
        with self._lock:
            order = self._order()
            if job not in order:
                return 0, 0.0
            return queue_position(order, job), self._played()[1].get(job.id, 0.0)

    def forecast(self, planned: Sequence[tuple[str, bool, float]] = ()) -> tuple[dict[int, float], list[float]]:
        """When each queued or running job should end, in seconds from now: the scheduler played forward on
        the jobs' estimates (the express lane, owners' turns, a comparison's runs one after another, busy
        workers sharing the cores: ``share_rate``), so a ladder's estimate counts the other ladders its runs
        will take turns with, and the fine-tunes that slow it down. ``planned``: jobs not
        submitted yet, each (owner, short, seconds) and each after the one before (a comparison about to be
        started); their ends come second. Without ``planned`` the answer is reused for up to a second while
        the queue stays as it was (every queued run's snapshot asks, on every page refresh)."""
        if not planned:
            return dict(self._played()[0]), []
        with self._lock:
            first = max([*self._jobs, *(j.id for j in self._pending), 0]) + 1
            ends, _starts = self._play(planned)
        return ends, [ends.get(first + k, math.inf) for k in range(len(planned))]

    def _played(self) -> tuple[dict[int, float], dict[int, float]]:
        """``_play`` of the queue as it is, reused for up to a second while the queue stays as it was (every
        queued run's snapshot asks, on every page refresh)."""
        with self._lock:
            if self._forecast is None or time.time() - self._forecast[0] >= 1.0:
                self._forecast = (time.time(), *self._play())
            return self._forecast[1], self._forecast[2]

    def _play(self, planned: Sequence[tuple[str, bool, float]] = ()) -> tuple[dict[int, float], dict[int, float]]:
        """(when each job should end, when each waiting job should start), in seconds from now; ``planned`` as
        ``forecast``'s, with ids after every real one."""
        with self._lock:
            now = time.time()
            # each worker's job as [id, seconds of work alone left], or None
            work: list[list | None] = [None if b is None else [b.id, b.remaining_s() * b.rate] for b in self._busy]
            served = dict(self._served)
            # (id, owner, short, seconds, the id it waits for): the planned ones get ids after every real one
            line = [(j.id, j.spec.owner, j.spec.short, j.estimate_s,
                     j.after.id if j.after is not None and j.after.alive else None, j.spec.unasked)
                    for j in self._pending]
            first = max([*self._jobs, *(j.id for j in self._pending), 0]) + 1
            line += [(first + k, owner, short, seconds, first + k - 1 if k else None, False)
                     for k, (owner, short, seconds) in enumerate(planned)]
        return _play(work, line, served, now, self.workers, self._rate)

    # -- scheduling

    def _allowed(self, worker: int, job: JobTracker) -> bool:
        return _takes(self.workers, worker, job.spec.short)

    def _order(self) -> list[JobTracker]:
        """Pending jobs in the order they will start: short before long, then the owner served longest
        ago, then first come."""
        ready = [j for j in self._pending if _ready(j)]
        waiting = [j for j in self._pending if not _ready(j)]  # behind a job of their own comparison
        return sorted(ready, key=lambda j: _turn(j.spec.owner, j.spec.short, j.id, self._served, j.spec.unasked)) + \
            sorted(waiting, key=lambda j: j.id)

    def _dispatch(self) -> None:
        """Give each free, warmed-up worker the first job it may take."""
        with self._lock:
            for i in sorted(self._ready):
                if self._busy[i] is not None:
                    continue
                job = next((j for j in self._order() if _ready(j) and self._allowed(i, j)), None)
                if job is None:
                    continue
                self._pending.remove(job)
                self._busy[i] = job
                self._forecast = None
                if not job.spec.unasked:  # a check nobody asked for costs no turn
                    self._served[(job.spec.owner, job.spec.short)] = time.time()
                job.mark_running()
                job.estimate_s = estimate_seconds(job.spec)  # its backbone may have been timed since
                self._send(self._conns[i], ("job", job.id, job.spec))
            self._share()

    def _rate(self, busy: int) -> float:
        return share_rate(busy, self.max_threads, self.threads)

    def _share(self) -> None:
        """Tell the workers how many of them train now (their thread share), and the jobs how fast that lets
        them go; under ``_lock``."""
        busy = sum(b is not None for b in self._busy)
        now, rate = time.time(), self._rate(busy)
        for job in self._busy:
            if job is not None:
                job.set_rate(rate, now)
        for conn in self._conns:
            self._send(conn, ("share", busy))

    @staticmethod
    def _send(conn: Connection | None, message: object) -> None:
        """Send under ``_lock``; a worker that just died is the supervisor's to handle."""
        if conn is not None:
            try:
                send(conn, message)
            except OSError:
                pass

    # -- the supervisor

    def _supervise(self) -> None:
        """Block until a worker sends something or its connection closes; apply it; repeat."""
        while not self._closing:
            with self._lock:
                conns = {conn: i for i, conn in enumerate(self._conns) if conn is not None}
            for conn in wait([*conns, self._wake_r]):
                if conn is self._wake_r:
                    self._wake_r.recv()
                    continue
                i = conns[conn]
                try:
                    message = receive(conn)
                except (EOFError, OSError):
                    self._lost(i, conn)
                    continue
                self._take(i, message)

    def _take(self, i: int, message: tuple) -> None:
        """One message from worker ``i``: ready, an event of its job, or idle again."""
        if message[0] == "event":
            job = self._jobs.get(message[1])
            if job is not None and job.alive:
                job.record(message[2])
                if isinstance(message[2], RunFinished):
                    self._jobs.pop(message[1], None)
            return
        with self._lock:
            if message[0] == "ready":
                self._crashes[i] = 0
                self._ready.add(i)
                if len(self._ready) >= self.workers:
                    self._all_ready.set()
            elif message[0] == "idle" and self._busy[i] is not None and self._busy[i].id == message[1]:
                self._busy[i] = None
                self._forecast = None
            self._dispatch()

    def _lost(self, i: int, conn: Connection) -> None:
        """Worker ``i``'s connection closed: it died (out of memory, a crash). Fail its run with a plain
        reason and replace it, unless it keeps dying before it can start."""
        conn.close()
        proc = self._procs[i]
        try:
            code = proc.wait(10) if proc is not None else None
        except subprocess.TimeoutExpired:  # it closed its end but lives on: it is no use to anyone
            proc.kill()
            code = proc.wait()
        if self._closing:
            return
        log.warning("training worker %d (pid %s) died with exit code %s", i, proc and proc.pid, code)
        with self._lock:
            job, self._busy[i], self._conns[i], self._procs[i] = self._busy[i], None, None, None
            self._ready.discard(i)
            self._crashes[i] += 1
            if self._crashes[i] < MAX_CRASHES:
                self._spawn(i)
            lost = [(job, code)] if job is not None else []
            if all(p is None for p in self._procs):
                self.broken = ("The training workers cannot start on this server (they exited during start-up; "
                               "see the server log).")
                lost += [(j, None) for j in self._pending]
                self._pending.clear()
        for job, code in lost:
            self._jobs.pop(job.id, None)
            if job.alive and code is None:
                job.record(RunFinished("failed", self.broken or "No training worker is available."))
            elif job.alive:
                why = "it was probably out of memory" if code in (-9, 137) else f"exit code {code}"
                job.record(RunFinished("failed", f"The training process stopped unexpectedly ({why})."))
        with self._lock:
            self._dispatch()


def share_rate(busy: int, cores: int, threads: int) -> float:
    """How fast each of ``busy`` workers goes, as a share of one worker alone on all ``cores``: they take
    ``cores // busy`` threads each, at least ``threads``, and threads beyond the cores take turns.
    ``THREAD_SCALING``: on this project's 2-core machine a fine-tune epoch ran 1.7x as fast on two threads
    as on one (2026-12-06), so two busy workers go at 0.57 of a lone one's speed each."""
    if busy <= 1:
        return 1.0
    each = max(threads, cores // busy)
    return (each / cores) ** THREAD_SCALING * min(1.0, cores / (busy * each))


def _play(work: list[list | None], line: list[tuple], served: dict[tuple[str, bool], float], now: float,
          workers: int, rate: Callable[[int], float]) -> tuple[dict[int, float], dict[int, float]]:
    """The scheduler played forward: ``work`` each worker's job (``[id, seconds of work alone left]`` or None),
    ``line`` the jobs waiting ``(id, owner, short, seconds alone, the id it waits for, unasked)``. Free workers take
    jobs as ``_dispatch`` does (the express lane, owners' turns, a job after the one it waits for); the busy
    ones share the cores (``rate`` of the number busy). Returns when each job should end and when each waiting
    one should start, in seconds from now."""
    ends: dict[int, float] = {}
    starts: dict[int, float] = {}
    t = 0.0
    while True:
        for i in range(workers):  # the free workers in order, as ``_dispatch`` goes through them
            if work[i] is not None:
                continue
            ready = [x for x in line if x[4] is None or ends.get(x[4], math.inf) <= t]
            ready.sort(key=lambda x: _turn(x[1], x[2], x[0], served, x[5]))
            x = next((x for x in ready if _takes(workers, i, x[2])), None)
            if x is not None:
                line.remove(x)
                work[i] = [x[0], x[3]]
                starts[x[0]] = t
                if not x[5]:
                    served[(x[1], x[2])] = now + t
        busy = [w for w in work if w is not None]
        if not busy:
            return ends, starts  # what is left waits for a job this runner does not know (cannot happen)
        r = rate(len(busy))
        step = min(w[1] for w in busy) / r
        t += step
        for i, w in enumerate(work):
            if w is not None:
                w[1] -= step * r
                if w[1] <= 1e-9:
                    ends[w[0]] = t
                    work[i] = None


def _turn(owner: str, short: bool, job_id: int, served: dict[tuple[str, bool], float], unasked: bool = False
          ) -> tuple[bool, bool, float, int]:
    """A ready job's place in line: short before long, then work someone asked for before work nobody waits
    for (``JobSpec.unasked``: a Data page's check), then the owner whose last job of that kind started longest
    ago (``served``), then first come."""
    return not short, unasked, served.get((owner, short), 0.0), job_id


def _takes(workers: int, worker: int, short: bool) -> bool:
    """Whether ``worker`` of ``workers`` may take a (``short``) job: with two or more, the last one is an
    express lane for short jobs only."""
    return short or workers < 2 or worker != workers - 1


def _ready(job: JobTracker) -> bool:
    """Free to start: it waits for no other job (a comparison's previous run) that is still alive."""
    return job.after is None or not job.after.alive


_RUNNER: Runner | None = None
_runner_lock = threading.Lock()


def get_runner() -> Runner:
    """The process's runner: ``RayRunner`` when ``TLS_RAY_ADDRESS`` is set (an address, or ``local``),
    else ``LocalRunner``. Without the variable nothing of Ray is imported."""
    global _RUNNER
    with _runner_lock:
        if _RUNNER is None:
            if address := settings().ray_address:
                from .ray_runner import RayRunner

                _RUNNER = RayRunner(address)
            else:
                _RUNNER = LocalRunner()
        return _RUNNER


def set_runner(runner: Runner | None) -> None:
    """Use another runner from now on (tests; a cluster)."""
    global _RUNNER
    with _runner_lock:
        _RUNNER = runner
