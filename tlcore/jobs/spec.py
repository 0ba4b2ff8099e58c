"""The job layer: what the web server hands to a runner and what it reads back.

A page never trains. It hands a ``JobSpec`` (the images, the config, the split, the run folder) to
the process's runner (``tlcore.jobs.runner.get_runner()``: the local worker pool of ``tlcore.jobs.runner``, or
Ray's of ``tlcore.jobs.ray_runner``) and reads snapshots (``JobSnapshot``) from the ``Job`` it gets back. Wherever
the job runs, ``run_job`` trains it: best epochs checkpointed and the finished run saved into
``JobSpec.folder``, small events (never models) streamed back, applied by the runner to its ``JobTracker``.

This module imports neither runner: both import it (no import cycle).
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..data.images import ImageSet
from ..engine.checkpoint import WEIGHTS
from ..engine.config import FROZEN_BODY_MODES, RunState, TrainConfig
from ..engine.events import BY_THE_USER, BatchEnd, EpochEnd, Event, Progress, RunFinished

if TYPE_CHECKING:
    from ..analysis.tasks import Task

log = logging.getLogger(__name__)
TIME_LIMIT_BY = "at this server's limit"  # who stopped a run that reached ``Training.max_seconds`` (``Stop.by``)
SERVER_GONE = "The server stopped while this run was training; its best epoch so far is kept."
OVERRUN_SHARE = 0.15  # a run past its estimate: at least this share of its time so far is said to be left
MAX_CURVE_POINTS = 300  # per-batch losses kept for the live chart (older ones are thinned out)


@dataclass(frozen=True)
class Training:
    """A job's task: train one run (``run_job``) on this split, saving it as run.json and its weights."""

    split: tuple[list[int], list[int]]
    label: str = ""  # the app's name for the run (run.json keeps it)
    val_digests: tuple[str, ...] = ()  # its validation images by content (run.json keeps them)
    max_seconds: float | None = None  # wall clock it may hold a worker (``Limits.run_minutes``); None: no limit


@dataclass(frozen=True)
class Analysis:
    """A job's task: one of the analyses (``tlcore.analysis.tasks``), its result written to the job's folder as
    result.json; no run is saved."""

    kind: Task


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs for one job (its images, the settings, what to do with them, where its files go);
    nothing of the web server's state. As ``executor.submit(fn, ...)``: the runner runs ``task``, whatever it is."""

    name: str  # shown in queues
    owner: str  # whose turn it is: jobs of different owners take turns
    images: ImageSet
    config: TrainConfig
    task: Training | Analysis
    folder: Path  # checkpoints and the finished run (a training), or result.json (an analysis), go here

    @property
    def trains(self) -> bool:
        """It trains a run (a student's: the server's limits count it), not an analysis."""
        return isinstance(self.task, Training)

    @property
    def short(self) -> bool:
        """Seconds of work, not minutes: the express lane takes it."""
        return short_run(self.config)

    @property
    def unasked(self) -> bool:
        """Nobody pressed a button for it (the Data page's check of every upload): work someone waits for
        goes first (six students who upload at once and press Start waited for six checks before their runs)."""
        return isinstance(self.task, Analysis) and self.task.kind == "data-check"

    @property
    def trained_images(self) -> int:
        """The images a training's split uses (an analysis: 0, as the time estimates count it)."""
        return sum(map(len, self.task.split)) if isinstance(self.task, Training) else 0


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for one UI refresh."""

    name: str
    state: RunState
    queue_position: int  # 1 = next in line; 0 = not waiting
    wait_s: float  # estimated seconds until it starts (0 when running or done)
    epochs: tuple[EpochEnd, ...]
    last_batch: BatchEnd | None
    progress: Progress | None
    finished: RunFinished | None  # its ``result`` is None: the run is in ``JobSpec.folder``
    batch_losses: tuple[tuple[float, float], ...]  # (epoch position, loss), at most MAX_CURVE_POINTS
    version: int  # changes whenever anything above does (viewers redraw only then)


@dataclass(frozen=True, eq=False)
class Job:
    """What a runner hands back for a job: its spec, its snapshots, a wait, a stop. Immutable: the job's state
    lives in the runner's ``JobTracker`` alone, which only the runner changes (as ``concurrent.futures.Future``
    is a view of what its executor does)."""

    spec: JobSpec
    _tracker: JobTracker = field(repr=False)

    @property
    def id(self) -> int:
        return self._tracker.id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        """Queued or running."""
        return self._tracker.alive

    @property
    def state(self) -> RunState:
        """queued, running, or how it ended (cheaper than a snapshot: no queue position)."""
        return self._tracker.state

    @property
    def finished(self) -> RunFinished | None:
        """How it ended (its ``result`` is None: the run is in ``spec.folder``), once it has."""
        return self._tracker.finished

    def snapshot(self) -> JobSnapshot:
        return self._tracker.snapshot()

    def stop(self, by: str = "by the user") -> None:
        """Ask the job to stop: a queued job leaves the line, a running one stops before its next batch
        (keeping its best epoch). ``by`` says who stopped it in the run's reason ("by the teacher")."""
        self._tracker.stop(by)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until it has ended; False if ``timeout`` passed first."""
        return self._tracker.join(timeout)

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the job has ended (at once if it has), on the runner's event thread: it must be quick
        (hand real work to another thread), as ``concurrent.futures.Future.add_done_callback``'s must."""
        self._tracker.add_done_callback(fn)

    def remaining_s(self) -> float:
        """About how long until it ends: its estimate, less the time it has run."""
        return self._tracker.remaining_s()


class JobTracker:
    """A runner's record of one job (runners only: callers hold its ``Job``): its latest state, updated from
    the worker's events."""

    def __init__(self, job_id: int, spec: JobSpec, runner: Runner,
                 on_finish: Callable[[RunFinished], None] | None) -> None:
        self.id, self.spec, self._runner, self._on_finish = job_id, spec, runner, on_finish
        self.job = Job(spec, self)  # what the caller gets
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state: RunState = "queued"
        self._epochs: list[EpochEnd] = []
        self._last_batch: BatchEnd | None = None
        self._progress: Progress | None = None
        self._finished: RunFinished | None = None
        self._losses: list[tuple[float, float]] = []
        self._stride = 1
        self._version = 0
        self.after: Job | None = None  # starts only once this one has ended
        self.estimate_s = 10.0  # how long it should take once started, on a server doing nothing else (the runner's)
        self.started: float | None = None  # when a worker took it
        self.rate = 1.0  # its speed now, as a share of its speed alone (workers sharing the cores: the runner's)
        self._work: tuple[float, float | None] = (0.0, None)  # (work done, when; None: since it started)
        self.stopped_by = "by the user"
        self._callbacks: list[Callable[[], None]] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    @property
    def state(self) -> RunState:
        """queued, running, or how it ended (cheaper than a snapshot: no queue position)."""
        return self._state

    @property
    def finished(self) -> RunFinished | None:
        """How it ended (its ``result`` is None: the run is in ``spec.folder``), once it has."""
        return self._finished

    def stop(self, by: str = "by the user") -> None:
        """Ask the job to stop: a queued job leaves the line, a running one stops before its next batch
        (keeping its best epoch). ``by`` says who stopped it in the run's reason ("by the teacher")."""
        self.stopped_by = by
        self._runner.stop(self)

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def snapshot(self) -> JobSnapshot:
        position, wait = self._runner.queue_info(self) if self._state == "queued" else (0, 0.0)
        with self._lock:
            return JobSnapshot(self.name, self._state, position, wait, tuple(self._epochs), self._last_batch,
                               self._progress, self._finished, tuple(self._losses), self._version)

    def record(self, event: Event) -> None:
        """Take one event (called by the runner, never by pages)."""
        if isinstance(event, RunFinished) and event.stop is not None and event.stop.by == BY_THE_USER:
            event = event.stopped_by(self.stopped_by)  # who pressed Stop: the runner was told (a server limit says so)
        if (isinstance(event, RunFinished) and event.status == "failed" and self.spec.trains
                and (self.spec.folder / WEIGHTS).exists()):  # every failure's words say so here, once
            event = dataclasses.replace(event, reason=f"{event.reason} Its best epoch before that is kept.")
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
            if event.status == "completed" and self.started is not None and self.spec.trains:
                from ..analysis.profile import CALIBRATION

                # as if alone: the sharing is the forecast's to add
                CALIBRATION.observe(self.spec.config, self.spec.trained_images, self.work_done())
            with self._lock:
                self._done.set()
                callbacks, self._callbacks = self._callbacks, []
            for fn in callbacks:
                try:
                    fn()
                except Exception:  # noqa: BLE001  one callback's fault must not stop the event thread
                    log.exception("a done-callback of job %s failed", self.name)

    def work_done(self, now: float | None = None) -> float:
        """Seconds of its estimate it has done: the time it has run, each stretch weighed by its ``rate`` then."""
        if self.started is None:
            return 0.0
        done, since = self._work
        return done + ((time.time() if now is None else now) - (self.started if since is None else since)) * self.rate

    def set_rate(self, rate: float, now: float | None = None) -> None:
        """From ``now`` on it runs at ``rate`` of its speed alone (more or fewer workers share the cores)."""
        now = time.time() if now is None else now
        self._work = (self.work_done(now), now)
        self.rate = rate

    def remaining_s(self) -> float:
        """About how long until it ends: the work its estimate has left, at its present rate. Never nothing
        while it runs: a run past its estimate has at least ``OVERRUN_SHARE`` of the time it has taken left,
        so "about 0 s left" never stays on the screen while it works on."""
        if self.started is None:
            return self.estimate_s
        now = time.time()
        return max((self.estimate_s - self.work_done(now)) / self.rate, OVERRUN_SHARE * (now - self.started), 1.0)

    def mark_running(self) -> None:
        with self._lock:
            self.started = time.time()
            self._work, self.rate = (0.0, None), 1.0  # the runner sets its rate once it knows who shares
            self._state = "running"
            self._version += 1


class Runner(Protocol):
    """Runs training jobs somewhere else than the web server."""

    def submit(self, spec: JobSpec, on_finish: Callable[[RunFinished], None] | None = None,
               after: Job | None = None) -> Job:
        """Queue a job; it starts once a worker is free and ``after`` (if given) has ended."""

    def stop(self, job: JobTracker) -> None:
        """Queued: leave the line. Running: stop before the next batch, keeping the best epoch."""

    def queue_info(self, job: JobTracker) -> tuple[int, float]:
        """(position in line, 1 = next; estimated seconds until it starts)."""

    def forecast(self, planned: Sequence[tuple[str, bool, float]] = ()) -> tuple[dict[int, float], list[float]]:
        """Seconds from now until each queued or running job (by id) should end; and until each of ``planned``
        (owner, short, seconds: not submitted yet, one after another) would."""

    def active(self, owner: str) -> int:
        """Training runs (not analyses) queued or running for ``owner``: the server's limits count them."""


def queue_position(line: Sequence[JobTracker], job: JobTracker) -> int:
    """``job``'s place in ``line`` (a runner's pending jobs in the order they will start), 1 = next: a run
    counts only the runs ahead of it, not the seconds-long analyses (a Data page's check) its wait includes."""
    ahead = line[:line.index(job)]
    return 1 + sum(1 for j in ahead if not job.spec.trains or j.spec.trains)


def short_run(config: TrainConfig) -> bool:
    """A run of seconds, not minutes (a frozen body): the express lane's kind of job."""
    return config.mode in FROZEN_BODY_MODES


def estimate_seconds(spec: JobSpec) -> float:
    """A rough duration for wait estimates: measured speed of the backbone times the work. On a click's
    path: it never measures (a backbone not timed yet gets a guess while it is timed off this thread)."""
    from ..analysis.profile import estimate_run_seconds

    try:
        return estimate_run_seconds(spec.config, spec.trained_images, wait=False, classes=spec.images.filled_classes())
    except Exception:  # not timed yet, or a backbone that cannot be timed here: a guess beats no estimate
        return 10.0


def _transportable(event: Event) -> Event:
    """Events without models: a finished run is saved by the worker and loaded from disk by the server."""
    if isinstance(event, EpochEnd):
        return dataclasses.replace(event, model=None)
    if isinstance(event, RunFinished):
        return dataclasses.replace(event, result=None)
    return event


def run_job(spec: JobSpec, should_stop: Callable[[], bool], emit: Callable[[Event], None],
            server_gone: Callable[[], bool] = lambda: False) -> None:
    """Run one job's task where this runs (a worker process, a Ray actor): an ``Analysis`` writes its result, a
    ``Training`` has its best epochs checkpointed and the finished run saved into ``spec.folder``; events without
    models go to ``emit``. Never raises:
    a failure ends the job as failed, with the reason. A run that stops because ``server_gone()``
    is saved as interrupted, never as stopped by its user (nobody pressed Stop)."""
    from ..engine.checkpoint import Checkpointer, save_run
    from ..engine.train import train

    if isinstance(spec.task, Analysis):
        from ..analysis.tasks import run_analysis

        return run_analysis(spec.task.kind, spec.images, spec.config, spec.folder, should_stop, emit)
    run = spec.task
    deadline = None if run.max_seconds is None else time.monotonic() + run.max_seconds

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    try:
        checkpoint = Checkpointer(spec.folder, spec.config, list(spec.images.classes), run.label, run.val_digests)
        for event in train(spec.images, spec.config, lambda: should_stop() or out_of_time(), split=run.split):
            if isinstance(event, RunFinished) and out_of_time() and not should_stop():
                event = event.stopped_by(f"{TIME_LIMIT_BY} of {run.max_seconds / 60:g} min per run "
                                         "(TLS_MAX_RUN_MINUTES, which whoever starts the server can change)")
            checkpoint(event)
            if isinstance(event, RunFinished):
                status: RunState = event.status
                reason = event.reason
                if status == "stopped" and server_gone():
                    status, reason = "interrupted", SERVER_GONE
                if event.result is not None:
                    save_run(event.result, spec.folder, status, reason, run.label, run.val_digests)
                else:
                    checkpoint.flush()
            emit(_transportable(event))
            if isinstance(event, RunFinished):
                return
    except Exception as e:  # the worker survives a failed job
        log.error("job %s failed: %s", spec.name, traceback.format_exc())
        emit(RunFinished("failed", f"Training failed unexpectedly: {type(e).__name__}: {e}"))


def send(conn: Connection, message: object) -> None:
    """One message, plainly pickled: tensors travel by value (``Connection.send`` would share them
    through file descriptors only processes started by ``multiprocessing`` can open)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> object:
    """The next message ``send`` sent (raises ``EOFError`` once the other end has closed)."""
    return pickle.loads(conn.recv_bytes())
