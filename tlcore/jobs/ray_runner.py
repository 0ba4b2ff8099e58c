"""Training on Ray: the same ``Runner`` interface as the local worker pool, for a cluster.

Used when ``TLS_RAY_ADDRESS`` is set: ``local`` starts a Ray instance on this machine, anything else
is a cluster address (``ray://head:10001`` or ``head:6379``). Each job is one Ray actor:

* the job (its images included) goes through Ray's object store, never through the pages;
* the actor runs ``jobs.run_job`` (the same code as a local worker) into a folder of its own node,
  and the server's one loop polls it a few times a second for events and for the checkpoint files, which it
  writes into the run's folder here: the best epoch is on the server as soon as it is saved there;
* Stop sets a flag the training loop checks before every batch;
* a lost actor or node (killed, out of memory, a node gone) ends the run as failed, keeping the best
  epoch already copied, and never hangs the page (polls have a timeout);
* Ray queues actors until a node has the CPUs (and GPUs) a run asks for: the queue is Ray's.

Actors ask for ``TLS_RAY_CPUS_PER_RUN`` CPUs (default 1) and ``TLS_RAY_GPUS_PER_RUN`` GPUs (default 0;
on a GPU the run uses CUDA and bf16 autocast by itself). On a cluster (not ``local``) comparisons and
studies fan out: their runs train at the same time on different workers, each timed on its own.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray

from ..core.errors import TLError
from ..core.settings import settings
from ..core.storage import child_env
from ..engine.events import Event, RunFinished
from .spec import Job, JobSpec, JobTracker, estimate_seconds, queue_position, run_job

log = logging.getLogger(__name__)
POLL_S = 0.25
POLL_TIMEOUT_S = 60.0  # a poll that takes longer means the actor's node is gone


class _Job:
    """The Ray actor that trains one job (threaded: ``run`` trains while ``poll`` and ``stop`` answer)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.folder = Path(tempfile.mkdtemp(prefix="tls-ray-run-"))
        self.events: list[Event] = []
        self.stopping = False
        self.done = False
        self._sent: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def run(self, spec: JobSpec) -> None:
        spec = dataclasses.replace(spec, folder=self.folder)  # everything else as sent: the time limit too

        def emit(event: Event) -> None:
            with self._lock:
                self.events.append(event)

        run_job(spec, lambda: self.stopping, emit)
        self.done = True

    def stop(self) -> None:
        self.stopping = True

    def poll(self, since: int) -> tuple[list[Event], dict[str, bytes], bool]:
        """Events from ``since`` on, the run folder's files that changed since the last poll, and
        whether the run has ended (its last files are then in this answer)."""
        done = self.done
        with self._lock:
            events = self.events[since:]
        files = {}
        for path in self.folder.iterdir():
            if path.name.startswith(".") or path.suffix == ".tmp":
                continue  # being written
            stat = path.stat()
            mark = (stat.st_mtime_ns, stat.st_size)
            if self._sent.get(path.name) != mark:
                files[path.name] = path.read_bytes()
                self._sent[path.name] = mark
        if done:  # its last files are in this answer: the node keeps nothing of a finished run
            shutil.rmtree(self.folder, ignore_errors=True)
        return events, files, done


class RayRunner:
    """Runs training jobs as Ray actors on a local Ray instance or a cluster.

    One thread (``_loop``) drives every job with one ``ray.wait`` over the calls in flight: an actor being
    placed (its ``pid`` call returns once Ray has found it room), or a poll of a training actor. A job
    whose ``after`` is still alive waits in ``_waiting`` without an actor."""

    def __init__(self, address: str = "local", cpus_per_run: int | None = None, gpus_per_run: float | None = None,
                 fan_out: bool | None = None) -> None:
        self.address = address
        self.cpus = cpus_per_run or settings().ray_cpus_per_run
        self.gpus = gpus_per_run if gpus_per_run is not None else settings().ray_gpus_per_run
        self.fan_out = address != "local" if fan_out is None else fan_out
        if not ray.is_initialized():
            if address == "local":
                path = child_env()["PYTHONPATH"]  # workers import this tlcore
                ray.init(num_cpus=settings().ray_cpus or os.cpu_count() or 2, include_dashboard=False,
                         _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:  # the cluster gets this project's engine with each job; its weights come with the packages
                tlcore_dir = str(Path(__file__).resolve().parent.parent)
                ray.init(address=address, runtime_env={"py_modules": [tlcore_dir]}, log_to_driver=False,
                         configure_logging=False)
        self._actor = ray.remote(_Job)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ids = itertools.count(1)
        self._waiting: list[JobTracker] = []  # submitted, not yet placed on a node (queue_info's line)
        self._live: dict[int, _Live] = {}  # jobs with an actor: being placed, or training
        self._stopped: set[int] = set()
        threading.Thread(target=self._loop, name="tlcore-ray-loop", daemon=True).start()

    # -- the Runner interface

    def submit(self, spec: JobSpec, on_finish: Callable[[RunFinished], None] | None = None,
               after: Job | None = None) -> Job:
        job = JobTracker(next(self._ids), spec, self, on_finish)
        job.after = None if self.fan_out else after
        job.estimate_s = estimate_seconds(spec)
        with self._lock:
            self._waiting.append(job)
        self._wake.set()
        return job.job

    def stop(self, job: JobTracker) -> None:
        with self._lock:
            self._stopped.add(job.id)
            live = self._live.get(job.id)
        if live is not None:
            live.actor.stop.remote()
        self._wake.set()

    def queue_info(self, job: JobTracker) -> tuple[int, float]:
        with self._lock:
            if job not in self._waiting:
                return 0, 0.0
            position = queue_position(self._waiting, job)
        ends, _ = self.forecast()
        return position, max(0.0, ends.get(job.id, job.estimate_s) - job.estimate_s)  # rough: Ray places them

    def forecast(self, planned: Sequence[tuple[str, bool, float]] = ()) -> tuple[dict[int, float], list[float]]:
        """Rough (Ray decides where and when each job starts): a waiting job ends after those before it in line
        and its own estimate, a placed one after what is left of it; ``planned`` jobs after all that, one after
        another."""
        with self._lock:
            ends = {live.job.id: live.job.remaining_s() for live in self._live.values()}
            wait = 0.0
            for job in self._waiting:
                ends[job.id] = wait + job.estimate_s
                wait += job.estimate_s
        return ends, [wait + s for s in itertools.accumulate(seconds for _owner, _short, seconds in planned)]

    def active(self, owner: str) -> int:
        with self._lock:
            jobs = self._waiting + [live.job for live in self._live.values() if live.job not in self._waiting]
        return sum(1 for j in jobs if j.spec.owner == owner and j.spec.trains and j.alive)

    def idle(self) -> bool:
        """Nothing waiting and nothing training."""
        with self._lock:
            return not self._waiting and not self._live

    def worker_pid(self, job: Job) -> int | None:
        """The process training ``job`` (tests kill it)."""
        live = self._live.get(job.id)
        return None if live is None else ray.get(live.actor.pid.remote(), timeout=POLL_TIMEOUT_S)

    # -- the loop

    def _loop(self) -> None:
        """Start the jobs that may start, then wait for whichever call in flight answers first; repeat. An
        unexpected error is logged and the loop goes on: every job on Ray depends on it."""
        while True:
            try:
                self._tick()
            except Exception:  # noqa: BLE001
                log.exception("the Ray runner's loop hit an error; it carries on")
                time.sleep(POLL_S)

    def _tick(self) -> None:
        """One round: start what may start, wait up to POLL_S for answers, send the polls that are due."""
        self._start_ready()
        with self._lock:
            calls = {live.call: live for live in self._live.values() if live.call is not None}
        if not calls:
            self._wake.wait(POLL_S)
            self._wake.clear()
        else:
            done, _ = ray.wait(list(calls), num_returns=len(calls), timeout=POLL_S)
            for ref in done:
                self._answer(calls[ref], ref)
        now = time.monotonic()
        for live in list(self._live.values()):
            if live.call is None and live.running and now >= live.next_poll:
                try:
                    live.poll()
                except Exception as e:  # noqa: BLE001  its actor, or Ray itself, is gone: fail the run once
                    self._end(live, e)
            elif live.call is not None and live.running and now - live.sent > POLL_TIMEOUT_S:
                self._end(live, TimeoutError(f"no answer in {POLL_TIMEOUT_S:.0f} s: its node is gone"))

    def _start_ready(self) -> None:
        """Jobs whose ``after`` has ended get an actor (or end, if stopped while waiting)."""
        with self._lock:
            ready = [j for j in self._waiting if j.id not in self._live
                     and (j.id in self._stopped or j.after is None or not j.after.alive)]
        for job in ready:
            if job.id in self._stopped:
                self._forget(job)
                job.record(RunFinished.stopped("while waiting for a free training worker"))
                continue
            options = {"num_cpus": self.cpus, "max_concurrency": 4, "max_restarts": 0}
            if self.gpus:
                options["num_gpus"] = self.gpus
            actor = self._actor.options(**options).remote(self.cpus)
            with self._lock:
                self._live[job.id] = _Live(job, actor, actor.pid.remote())  # answers once Ray has placed it

    def _answer(self, live: _Live, ref: object) -> None:
        """One call answered: the actor was placed (start training), or a poll came back (apply it)."""
        live.call = None
        try:
            answer = ray.get(ref)
            if not live.running:
                with self._lock:
                    self._waiting.remove(live.job)
                if live.job.id in self._stopped:
                    return self._end(live, RunFinished.stopped("while waiting for a free training worker"))
                live.job.mark_running()
                live.actor.run.remote(ray.put(live.job.spec))  # the images go through the object store
                live.running = True
                return live.poll()
            events, files, done = answer
            live.seen += len(events)
            _write_files(live.job.spec.folder, files)
            for event in events:
                live.job.record(event)  # RunFinished last: its files were written just above
            if done or any(isinstance(e, RunFinished) for e in events):
                return self._end(live, None)
            live.next_poll = time.monotonic() + POLL_S
        except Exception as e:  # a lost actor or node: fail the run, keep what was copied, never hang
            self._end(live, e)

    def _end(self, live: _Live, why: RunFinished | Exception | None) -> None:
        """The job is over: record how (a lost actor fails the run) and free its actor."""
        job = live.job
        self._forget(job)
        if isinstance(why, Exception):  # ``JobTracker.record`` adds that its best epoch is kept, if one is
            text = f"{type(why).__name__}: {str(why).splitlines()[0] if str(why) else ''}".strip(": ")
            log.warning("Ray job %s lost: %s", job.name, text)
            why = RunFinished("failed", f"The Ray worker training this run was lost ({text[:200]}).")
        if why is not None and job.alive:
            job.record(why)
        try:
            ray.kill(live.actor)
        except Exception:  # already gone
            pass

    def _forget(self, job: JobTracker) -> None:
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
            self._live.pop(job.id, None)
            self._stopped.discard(job.id)  # a long-lived server does not keep every stopped job's id


@dataclass(eq=False)
class _Live:
    """A job that has an actor: the call in flight to it, and how far its events have been read."""

    job: JobTracker
    actor: object
    call: object | None  # the ObjectRef being waited for (placement, then a poll), None between polls
    running: bool = False  # placed and training (else: still being placed)
    seen: int = 0  # events already applied
    sent: float = field(default_factory=time.monotonic)  # when ``call`` was made
    next_poll: float = 0.0

    def poll(self) -> None:
        self.call, self.sent = self.actor.poll.remote(self.seen), time.monotonic()


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """The run folder's files from the actor, each replaced atomically (metadata last: it names the weights)."""
    from ..core.storage import atomic_write

    if not files:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        if "/" in name or name.startswith("."):
            raise TLError(f"Unexpected file {name!r} from a Ray worker.")
        atomic_write(folder / name, lambda p, data=files[name]: Path(p).write_bytes(data))
