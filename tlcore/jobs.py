"""Background training: a job runs an event generator on a thread and keeps its event log.

The UI never blocks on training: it polls ``job.snapshot()``. Jobs from every session share a
``SlotPool`` (default: one job per two cores); a job waits in line for a slot, shows its
position, and frees the slot when it finishes, fails or is stopped.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from .train import BatchEnd, EpochEnd, Event, Progress, RunFinished

JobState = Literal["queued", "running", "completed", "stopped", "failed"]


class SlotPool:
    """A fair (first come, first served) limit on how many jobs train at once."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._cond = threading.Condition()
        self._queue: list[int] = []  # ticket numbers waiting, in order
        self._running: set[int] = set()
        self._tickets = itertools.count(1)

    def ticket(self) -> int:
        with self._cond:
            t = next(self._tickets)
            self._queue.append(t)
            return t

    def position(self, ticket: int) -> int:
        """1 = next in line; 0 = not waiting."""
        with self._cond:
            return self._queue.index(ticket) + 1 if ticket in self._queue else 0

    def acquire(self, ticket: int, cancelled: Callable[[], bool]) -> bool:
        """Wait until ``ticket`` is first in line and a slot is free; False if cancelled first."""
        with self._cond:
            while not (self._queue[0] == ticket and len(self._running) < self.slots):
                if cancelled():
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    return False
                self._cond.wait(timeout=0.1)
            self._queue.pop(0)
            self._running.add(ticket)
            self._cond.notify_all()
            return True

    def release(self, ticket: int) -> None:
        with self._cond:
            self._running.discard(ticket)
            self._cond.notify_all()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)


SLOTS = SlotPool(int(os.environ.get("TLCORE_MAX_JOBS", 0)) or max(1, (os.cpu_count() or 2) // 2))


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state for one UI refresh."""

    name: str
    state: JobState
    queue_position: int
    epochs: tuple[EpochEnd, ...]
    last_batch: BatchEnd | None
    progress: Progress | None
    finished: RunFinished | None
    batch_losses: tuple[tuple[float, float], ...]  # (epoch position, e.g. 2.5 = half-way through epoch 3; loss)


class TrainingJob:
    """Runs ``work(should_stop)`` (an event iterator ending in ``RunFinished``) on a daemon thread.

    No UI calls happen on the thread; the event log is guarded by a lock.
    """

    def __init__(self, name: str, work: Callable[[Callable[[], bool]], Iterator[Event]],
                 pool: SlotPool | None = None, on_finish: Callable[[RunFinished], None] | None = None) -> None:
        self.name = name
        self._work = work
        self._pool = pool or SLOTS
        self._on_finish = on_finish
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._epochs: list[EpochEnd] = []
        self._last_batch: BatchEnd | None = None
        self._batch_losses: list[tuple[float, float]] = []
        self._progress: Progress | None = None
        self._finished: RunFinished | None = None
        self._state: JobState = "queued"
        self._ticket = self._pool.ticket()
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"train-{name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the job to stop; it does so before its next batch and keeps its best weights."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(self.name, self._state, self._pool.position(self._ticket), tuple(self._epochs),
                               self._last_batch, self._progress, self._finished, tuple(self._batch_losses))

    def _run(self) -> None:
        if not self._pool.acquire(self._ticket, self._stop.is_set):
            self._record(RunFinished("stopped", "Stopped while waiting for a free training slot."))
            return
        try:
            with self._lock:
                self._state = "running"
            finished = None
            for event in self._work(self._stop.is_set):
                self._record(event)
                if isinstance(event, RunFinished):
                    finished = event
                    break
            if finished is None:
                self._record(RunFinished("failed", "The training ended without a result."))
        except Exception as e:  # the thread must always leave a final state behind
            self._record(RunFinished("failed", f"{type(e).__name__}: {e}"))
        finally:
            self._pool.release(self._ticket)

    def _record(self, event: Event) -> None:
        if isinstance(event, RunFinished) and self._on_finish is not None:
            try:
                self._on_finish(event)  # before the state flips, so a finished job is fully saved
            except Exception as e:
                event = RunFinished("failed", f"The run finished but could not be saved: {e}", event.result)
        with self._lock:
            if isinstance(event, EpochEnd):
                self._epochs.append(event)
            elif isinstance(event, BatchEnd):
                self._last_batch = event
                self._batch_losses.append((event.epoch - 1 + event.batch / event.num_batches, event.loss))
            elif isinstance(event, Progress):
                self._progress = event
            elif isinstance(event, RunFinished):
                self._finished = event
                self._state = event.status
