"""Where training runs: worker processes behind one small interface (submit, snapshot, stop).

The web server never trains. It hands a ``JobSpec`` (the images, the config, the split, the run
folder) to a runner and polls ``JobHandle.snapshot()``; a worker process runs ``train()``, writes
best-epoch checkpoints and the finished run into the run folder, and streams small events back
(no models: the server loads a finished run from its folder). ``LocalRunner`` is the embedded
default, a pool of spawned worker processes; a cluster runner implements the same ``Runner``.

Thread policy: ``TLCORE_WORKERS`` workers (default: half the cores, at least 2). Before every batch
a worker takes ``cores // busy workers`` torch threads (at least 1): a run on a quiet server uses
every core, and busy workers share them without oversubscribing; the web server's own work
(pages, polling) is light and runs between them.

Scheduling is fair and keeps short work short: a free worker takes the next *short* job (feature
extraction, few-shot: seconds) before any long one (fine-tune, from scratch), and among jobs of
one kind the owner (project) that was served longest ago goes first, not the oldest job. With two
or more workers the last one is an express lane that only takes short jobs, so a class's
five-second feature extractions never wait behind someone's ten-minute fine-tune. A queued job
holds nothing but its place in line.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import multiprocessing as mp
import multiprocessing.spawn as mp_spawn
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from .data import ImageSet
from .errors import TLError
from .train import FROZEN_BODY_MODES, BatchEnd, EpochEnd, Event, Progress, RunFinished, TrainConfig

JobState = Literal["queued", "running", "completed", "stopped", "failed"]
log = logging.getLogger(__name__)
TIME_LIMIT_STOP = "Stopped at this server's limit"  # how a run stopped by ``JobSpec.max_seconds`` says so
WORKER_NICENESS = 10  # training workers run below the web server's priority (Unix niceness)
MAX_CURVE_POINTS = 300  # per-batch losses kept for the live chart (older ones are thinned out)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to train one run; nothing of the web server's state."""

    name: str  # shown in queues
    owner: str  # whose turn it is: jobs of different owners take turns
    images: ImageSet
    config: TrainConfig
    split: tuple[list[int], list[int]]
    folder: Path  # checkpoints and the finished run go here
    meta: dict = field(default_factory=dict)  # extra run.json entries (label, validation digests)
    max_seconds: float | None = None  # wall clock it may hold a worker (``Limits.run_minutes``); None: no limit
    # "train", or one of ``tlcore.analysis.TASKS`` (a transferability score, a stage probe, a learning-rate
    # range test on ``images`` with ``config``): its result goes to ``folder``/result.json, no run is saved.
    task: str = "train"

    @property
    def short(self) -> bool:
        """Seconds of work, not minutes: the express lane takes it."""
        return self.config.mode in FROZEN_BODY_MODES


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for one UI refresh."""

    name: str
    state: JobState
    queue_position: int  # 1 = next in line; 0 = not waiting
    wait_s: float  # estimated seconds until it starts (0 when running or done)
    epochs: tuple[EpochEnd, ...]
    last_batch: BatchEnd | None
    progress: Progress | None
    finished: RunFinished | None  # its ``result`` is None: the run is in ``JobSpec.folder``
    batch_losses: tuple[tuple[float, float], ...]  # (epoch position, loss), at most MAX_CURVE_POINTS
    version: int  # changes whenever anything above does (viewers redraw only then)


class JobHandle:
    """The web server's view of one job: its latest state, updated from the worker's events."""

    def __init__(self, job_id: int, spec: JobSpec, runner: Runner,
                 on_finish: Callable[[RunFinished], None] | None) -> None:
        self.id, self.spec, self._runner, self._on_finish = job_id, spec, runner, on_finish
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state: JobState = "queued"
        self._epochs: list[EpochEnd] = []
        self._last_batch: BatchEnd | None = None
        self._progress: Progress | None = None
        self._finished: RunFinished | None = None
        self._losses: list[tuple[float, float]] = []
        self._stride = 1
        self._version = 0
        self.after: JobHandle | None = None  # starts only once this one has ended
        self.estimate_s = 10.0  # how long it should take once started (set by the runner)
        self.started: float | None = None  # when a worker took it
        self.stopped_by = "by the user"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    def stop(self, by: str = "by the user") -> None:
        """Ask the job to stop: a queued job leaves the line, a running one stops before its next batch
        (keeping its best epoch). ``by`` says who stopped it in the run's reason ("by the teacher")."""
        self.stopped_by = by
        self._runner.stop(self)

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def snapshot(self) -> JobSnapshot:
        position, wait = self._runner.queue_info(self) if self._state == "queued" else (0, 0.0)
        with self._lock:
            return JobSnapshot(self.name, self._state, position, wait, tuple(self._epochs), self._last_batch,
                               self._progress, self._finished, tuple(self._losses), self._version)

    def record(self, event: Event) -> None:
        """Take one event (called by the runner, never by pages)."""
        if (isinstance(event, RunFinished) and event.status == "stopped" and event.reason.startswith("Stopped ")
                and not event.reason.startswith(TIME_LIMIT_STOP)):
            rest = event.reason.removeprefix("Stopped ").removeprefix("by the user ")
            event = dataclasses.replace(event, reason=f"Stopped {self.stopped_by} {rest}")  # who stopped it
        if isinstance(event, RunFinished) and self._on_finish is not None:
            try:
                self._on_finish(event)  # before the state flips, so a finished job is fully taken in
            except Exception as e:
                event = RunFinished("failed", f"The run finished but could not be loaded: {e}")
        with self._lock:
            self._version += 1
            if isinstance(event, EpochEnd):
                self._epochs.append(event)
            elif isinstance(event, BatchEnd):
                self._last_batch = event
                self._state = "running"
                if event.batch % self._stride == 0 or event.batch == event.num_batches:
                    self._losses.append((event.epoch - 1 + event.batch / event.num_batches, event.loss))
                if len(self._losses) > MAX_CURVE_POINTS:  # keep the curve's shape, not every point
                    self._losses = self._losses[::2]
                    self._stride *= 2
            elif isinstance(event, Progress):
                self._progress = event
                self._state = "running"
            elif isinstance(event, RunFinished):
                self._finished = event
                self._state = event.status
        if isinstance(event, RunFinished):
            # estimates learn from real runs (not from analyses, which train no run)
            if event.status == "completed" and self.started is not None and self.spec.task == "train":
                from .profile import CALIBRATION

                CALIBRATION.observe(self.spec.config, len(self.spec.split[0]) + len(self.spec.split[1]),
                                    time.time() - self.started)
            self._done.set()

    def remaining_s(self) -> float:
        """About how long until it ends: its estimate, less the time it has run."""
        return max(0.0, self.estimate_s - (time.time() - self.started if self.started else 0.0))

    def mark_running(self) -> None:
        with self._lock:
            self.started = time.time()
            self._state = "running"
            self._version += 1


class Runner(Protocol):
    """Runs training jobs somewhere else than the web server."""

    def submit(self, spec: JobSpec, on_finish: Callable[[RunFinished], None] | None = None,
               after: JobHandle | None = None) -> JobHandle:
        """Queue a job; it starts once a worker is free and ``after`` (if given) has ended."""

    def stop(self, job: JobHandle) -> None:
        """Queued: leave the line. Running: stop before the next batch, keeping the best epoch."""

    def queue_info(self, job: JobHandle) -> tuple[int, float]:
        """(position in line, 1 = next; estimated seconds until it starts)."""

    def backlog_seconds(self) -> float:
        """About how long until a long job submitted now would start."""


def estimate_seconds(spec: JobSpec) -> float:
    """A rough duration for wait estimates: measured speed of the backbone times the work. On a click's
    path: it never measures (a backbone not timed yet gets a guess while it is timed off this thread)."""
    from .profile import estimate_run_seconds

    try:
        return estimate_run_seconds(spec.config, len(spec.split[0]) + len(spec.split[1]), wait=False)
    except Exception:  # not timed yet, or a backbone that cannot be timed here: a guess beats no estimate
        return 10.0


# ----------------------------------------------------------------------------- the worker process


def _transportable(event: Event) -> Event:
    """Events without models: a finished run is saved by the worker and loaded from disk by the server."""
    if isinstance(event, EpochEnd):
        return dataclasses.replace(event, model=None)
    if isinstance(event, RunFinished):
        return RunFinished(event.status, event.reason)
    return event


def run_job(spec: JobSpec, should_stop: Callable[[], bool], emit: Callable[[Event], None]) -> None:
    """Train one job where this runs (a worker process, a Ray actor): best epochs checkpointed and the
    finished run saved into ``spec.folder``, events without models passed to ``emit``. Never raises:
    a failure ends the job as failed, with the reason."""
    from .checkpoint import Checkpointer, save_run
    from .train import train

    if spec.task != "train":
        from .analysis import run_analysis

        return run_analysis(spec, should_stop, emit)
    deadline = None if spec.max_seconds is None else time.monotonic() + spec.max_seconds

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    try:
        checkpoint = Checkpointer(spec.folder, spec.config, list(spec.images.classes), spec.meta)
        for event in train(spec.images, spec.config, lambda: should_stop() or out_of_time(), split=spec.split):
            if isinstance(event, RunFinished) and event.status == "stopped" and out_of_time() and not should_stop():
                rest = event.reason.removeprefix("Stopped by the user ")
                event = dataclasses.replace(event, reason=(
                    f"{TIME_LIMIT_STOP} of {spec.max_seconds / 60:g} min per run (TLS_MAX_RUN_MINUTES, "
                    f"which whoever starts the server can change) {rest}"))
            checkpoint(event)
            if isinstance(event, RunFinished):
                if event.result is not None:
                    save_run(event.result, spec.folder, event.status, spec.meta)
                else:
                    checkpoint.flush()
            emit(_transportable(event))
            if isinstance(event, RunFinished):
                return
    except Exception as e:  # the worker survives a failed job
        log.error("job %s failed: %s", spec.name, traceback.format_exc())
        emit(RunFinished("failed", f"Training failed unexpectedly: {type(e).__name__}: {e}"))


def _worker_main(index: int, threads: int, max_threads: int, busy, inbox: mp.Queue, outbox: mp.Queue,
                 stop_flags) -> None:
    """A worker process: takes jobs from ``inbox`` one at a time, sends ``(job id, event)`` to ``outbox``.

    Before every batch it takes the cores the other busy workers leave free (``busy``: how many are
    training): all ``max_threads`` on a quiet server, its share of them when the class is training."""
    import torch

    try:  # training yields the cores to the web server: pages and a teacher's clicks stay quick however busy
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):
        pass

    def share() -> None:
        want = max(threads, max_threads // max(1, busy.value))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)

    try:  # warm up: the default backbone's pretrained body and its runtime, so a first run starts at once
        from .backbones import DEFAULT_BACKBONE, get_backbone_spec
        from .runtime import frozen_forward

        size = get_backbone_spec(DEFAULT_BACKBONE).preprocess.input_size
        for n in sorted({max_threads, threads}):  # the runtime compiles once per thread count
            torch.set_num_threads(n)
            frozen_forward(DEFAULT_BACKBONE, torch.zeros((1, 3, size, size), dtype=torch.uint8))
    except Exception as e:  # a warm-up is an optimisation: runs still work (and report) without it
        log.warning("worker %d could not warm up: %s", index, e)
    torch.set_num_threads(threads)
    outbox.put(("ready", index, os.getpid()))
    parent = os.getppid()
    orphaned = lambda: os.getppid() != parent  # noqa: E731  the server is gone: stop, never train for nobody
    while not orphaned():
        try:
            message = inbox.get(timeout=1.0)
        except queue.Empty:
            continue
        if message is None:
            return
        job_id, spec = message

        def should_stop() -> bool:
            share()
            return stop_flags[index] == job_id or orphaned()  # noqa: B023

        share()
        run_job(spec, should_stop, lambda event: outbox.put((job_id, event)))  # noqa: B023
        outbox.put(("idle", index, job_id))


# ----------------------------------------------------------------------------- the local pool


def _without_main(get_preparation_data: Callable[[str], dict]) -> Callable[[str], dict]:
    """A spawned child normally re-runs the parent's ``__main__`` first. Under Streamlit that is the
    app script (the script runner installs it as ``__main__``), which must never run in a worker:
    workers need only ``tlcore``, so their preparation leaves ``__main__`` out."""
    def prepare(name: str) -> dict:
        data = get_preparation_data(name)
        if name.startswith(WORKER_NAME):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data
    return prepare


WORKER_NAME = "tlcore-worker"
if not getattr(mp_spawn.get_preparation_data, "_tlcore", False):
    mp_spawn.get_preparation_data = _without_main(mp_spawn.get_preparation_data)
    mp_spawn.get_preparation_data._tlcore = True  # type: ignore[attr-defined]


class LocalRunner:
    """A pool of spawned worker processes on this machine, with fair, short-first scheduling."""

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        cores = os.cpu_count() or 2
        self.workers = workers or int(os.environ.get("TLCORE_WORKERS", 0)) or max(2, cores // 2)
        self.threads = threads or max(1, cores // self.workers)  # each worker's share when all are busy
        self.max_threads = threads or cores  # what a worker takes when it trains alone
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._outbox: mp.Queue | None = None
        self._stop_flags = None
        self._procs: list = []
        self._inboxes: list = []
        self._busy: list[JobHandle | None] = []
        self._pending: list[JobHandle] = []
        self._jobs: dict[int, JobHandle] = {}
        self._served: dict[str, float] = {}  # owner -> when one of its jobs last started
        self._ids = itertools.count(1)
        self._crashes: list[int] = []  # per worker: deaths since it last started properly
        self.broken: str | None = None  # why no worker can start, once that is clear
        self._ready: set[int] = set()  # workers that have warmed up
        self._all_ready = threading.Event()
        self._closing = False

    # -- lifecycle

    def start(self) -> None:
        """Start the workers now (the app does at start-up, so the first run does not wait for them)."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._outbox is not None:
                return
            self._outbox = self._ctx.Queue()
            self._stop_flags = self._ctx.Array("q", self.workers, lock=False)
            self._busy_count = self._ctx.Value("i", 0, lock=False)  # workers training now (their thread share)
            for i in range(self.workers):
                self._procs.append(None)
                self._inboxes.append(None)
                self._busy.append(None)
                self._crashes.append(0)
                self._spawn(i)
            threading.Thread(target=self._collect, name="tlcore-runner-events", daemon=True).start()
            threading.Thread(target=self._watch, name="tlcore-runner-watchdog", daemon=True).start()
            atexit.register(setattr, self, "_closing", True)  # workers ended at exit are not replaced

    def _spawn(self, i: int) -> None:
        inbox = self._ctx.Queue()
        proc = self._ctx.Process(target=_worker_main, name=f"{WORKER_NAME}-{i}", daemon=True,
                                 args=(i, self.threads, self.max_threads, self._busy_count, inbox, self._outbox,
                                       self._stop_flags))
        proc.start()
        self._procs[i], self._inboxes[i] = proc, inbox

    def shutdown(self) -> None:
        with self._lock:
            self._closing = True
            for inbox in self._inboxes:
                if inbox is not None:
                    inbox.put(None)
            for proc in self._procs:
                if proc is not None:
                    proc.join(5)
                    if proc.is_alive():
                        proc.kill()

    def _count_busy(self) -> None:
        """Tell the workers how many of them train now (their thread share); under ``_lock``."""
        self._busy_count.value = sum(b is not None for b in self._busy)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker has warmed up (at start-up they keep the cores busy for a while)."""
        self._ensure_started()
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
               after: JobHandle | None = None) -> JobHandle:
        if self.broken:
            raise TLError(self.broken)
        self._ensure_started()
        job = JobHandle(next(self._ids), spec, self, on_finish)
        job.after = after
        job.estimate_s = estimate_seconds(spec)
        with self._lock:
            self._jobs[job.id] = job
            self._pending.append(job)
            self._dispatch()
        return job

    def stop(self, job: JobHandle) -> None:
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
                finished = True
            else:
                finished = False
                for i, running in enumerate(self._busy):
                    if running is job:
                        self._stop_flags[i] = job.id
        if finished:
            job.record(RunFinished("stopped", "Stopped while waiting for a free training worker."))

    def backlog_seconds(self) -> float:
        """About how long until a long job submitted now would start: what the workers that take long jobs
        still have to do, running and queued (short jobs have the express lane)."""
        with self._lock:
            lanes = [i for i in range(self.workers) if not (self.workers >= 2 and i == self.workers - 1)]
            busy = sum(self._busy[i].remaining_s() for i in lanes if self._busy[i] is not None)
            queued = sum(j.estimate_s for j in self._pending if not j.spec.short)
            return (busy + queued) / max(1, len(lanes))

    def queue_info(self, job: JobHandle) -> tuple[int, float]:
        """(position in line, estimated seconds until it starts)."""
        with self._lock:
            order = self._order()
            if job not in order:
                return 0, 0.0
            k = order.index(job)
            lanes = [i for i in range(self.workers) if self._allowed(i, job)]
            free_at = sorted(self._busy[i].remaining_s() if self._busy[i] is not None else 0.0 for i in lanes)
            for ahead in order[:k]:
                if any(self._allowed(i, ahead) for i in lanes):
                    free_at[0] += ahead.estimate_s
                    free_at.sort()
            return k + 1, free_at[0]

    # -- scheduling

    def _allowed(self, worker: int, job: JobHandle) -> bool:
        express = self.workers >= 2 and worker == self.workers - 1
        return job.spec.short or not express

    def _order(self) -> list[JobHandle]:
        """Pending jobs in the order they will start: short before long, then the owner served longest
        ago, then first come."""
        ready = [j for j in self._pending if _ready(j)]
        waiting = [j for j in self._pending if not _ready(j)]  # behind a job of their own comparison
        return sorted(ready, key=lambda j: (not j.spec.short, self._served.get(j.spec.owner, 0.0), j.id)) + \
            sorted(waiting, key=lambda j: j.id)

    def _dispatch(self) -> None:
        with self._lock:
            for i in range(self.workers):
                if self._busy[i] is not None or self._procs[i] is None:
                    continue
                job = next((j for j in self._order() if _ready(j) and self._allowed(i, j)), None)
                if job is None:
                    continue
                self._pending.remove(job)
                self._busy[i] = job
                self._served[job.spec.owner] = time.time()
                self._stop_flags[i] = 0
                job.mark_running()
                job.estimate_s = estimate_seconds(job.spec)  # its backbone may have been timed since
                self._count_busy()
                self._inboxes[i].put((job.id, job.spec))

    def _collect(self) -> None:
        assert self._outbox is not None
        while True:
            try:
                message = self._outbox.get()
            except (EOFError, OSError):
                return
            if message[0] == "ready":
                with self._lock:
                    self._crashes[message[1]] = 0
                    self._ready.add(message[1])
                    if len(self._ready) >= self.workers:
                        self._all_ready.set()
                continue
            if message[0] == "idle":
                _, i, job_id = message
                with self._lock:
                    if self._busy[i] is not None and self._busy[i].id == job_id:
                        self._busy[i] = None
                    self._count_busy()
                    self._dispatch()
                continue
            job_id, event = message
            job = self._jobs.get(job_id)
            if job is None or not job.alive:
                continue
            job.record(event)
            if isinstance(event, RunFinished):
                self._jobs.pop(job_id, None)

    def _watch(self) -> None:
        """A worker that dies (out of memory, a crash) fails its run with a plain reason and is replaced."""
        while True:
            time.sleep(0.5)
            lost = []
            if self._closing:
                return
            with self._lock:
                for i, proc in enumerate(self._procs):
                    if proc is None or proc.is_alive() or self._closing:
                        continue
                    log.warning("training worker %d (pid %s) died with exit code %s", i, proc.pid, proc.exitcode)
                    if self._busy[i] is not None:
                        lost.append((self._busy[i], proc.exitcode))
                        self._jobs.pop(self._busy[i].id, None)
                    self._busy[i] = None
                    self._count_busy()
                    self._crashes[i] += 1
                    if self._crashes[i] < 3:
                        self._spawn(i)
                    else:  # it dies before it can start: say so rather than respawn forever
                        self._procs[i] = None
                if all(p is None for p in self._procs) and self._procs:
                    self.broken = ("The training workers cannot start on this server (they exited during start-up; "
                                   "see the server log).")
                    lost += [(job, None) for job in self._pending]
                    self._pending.clear()
            for job, code in lost:
                if job.alive and code is None:
                    job.record(RunFinished("failed", self.broken or "No training worker is available."))
                elif job.alive:
                    why = "it was probably out of memory" if code in (-9, 137) else f"exit code {code}"
                    job.record(RunFinished("failed", f"The training process stopped unexpectedly ({why})."))
            if lost:
                with self._lock:
                    self._dispatch()


def _ready(job: JobHandle) -> bool:
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
            if address := os.environ.get("TLS_RAY_ADDRESS"):
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
