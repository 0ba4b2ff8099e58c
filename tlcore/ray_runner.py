"""Training on Ray: the same ``Runner`` interface as the local worker pool, for a cluster.

Used when ``TLS_RAY_ADDRESS`` is set: ``local`` starts a Ray instance on this machine, anything else
is a cluster address (``ray://head:10001`` or ``head:6379``). Each job is one Ray actor:

* the job (its images included) goes through Ray's object store, never through the pages;
* the actor runs ``runner.run_job`` (the same code as a local worker) into a folder of its own node,
  and the server polls it a few times a second for events and for the checkpoint files, which it
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
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray

from .errors import TLError
from .runner import JobHandle, JobSpec, estimate_seconds, run_job
from .train import Event, RunFinished

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
        return events, files, done


class RayRunner:
    """Runs training jobs as Ray actors on a local Ray instance or a cluster."""

    def __init__(self, address: str = "local", cpus_per_run: int | None = None, gpus_per_run: float | None = None,
                 fan_out: bool | None = None) -> None:
        self.address = address
        self.cpus = cpus_per_run or int(os.environ.get("TLS_RAY_CPUS_PER_RUN", 1))
        self.gpus = gpus_per_run if gpus_per_run is not None else float(os.environ.get("TLS_RAY_GPUS_PER_RUN", 0))
        self.fan_out = address != "local" if fan_out is None else fan_out
        if not ray.is_initialized():
            if address == "local":
                code = str(Path(__file__).resolve().parent.parent)  # workers import tlcore from here
                path = os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH", "")) if p)
                ray.init(num_cpus=int(os.environ.get("TLS_RAY_CPUS", os.cpu_count() or 2)), include_dashboard=False,
                         _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:  # the cluster gets this project's engine with each job; its weights come with the packages
                tlcore_dir = str(Path(__file__).resolve().parent)
                ray.init(address=address, runtime_env={"py_modules": [tlcore_dir]}, log_to_driver=False,
                         configure_logging=False)
        self._actor = ray.remote(_Job)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: list[JobHandle] = []  # submitted, not yet placed on a node
        self._actors: dict[int, object] = {}
        self._stopped: set[int] = set()

    # -- the Runner interface

    def submit(self, spec: JobSpec, on_finish: Callable[[RunFinished], None] | None = None,
               after: JobHandle | None = None) -> JobHandle:
        job = JobHandle(next(self._ids), spec, self, on_finish)
        job.after = None if self.fan_out else after
        job.estimate_s = estimate_seconds(spec)
        with self._lock:
            self._waiting.append(job)
        threading.Thread(target=self._drive, args=(job,), name=f"tlcore-ray-{job.id}", daemon=True).start()
        return job

    def stop(self, job: JobHandle) -> None:
        with self._lock:
            self._stopped.add(job.id)
            actor = self._actors.get(job.id)
        if actor is not None:
            actor.stop.remote()

    def queue_info(self, job: JobHandle) -> tuple[int, float]:
        with self._lock:
            if job not in self._waiting:
                return 0, 0.0
            k = self._waiting.index(job)
            return k + 1, sum(j.estimate_s for j in self._waiting[:k])  # rough: Ray places them

    def backlog_seconds(self) -> float:
        """Rough: what still waits for a place on the cluster (Ray decides where and when each starts)."""
        with self._lock:
            return sum(j.estimate_s for j in self._waiting)

    def idle(self) -> bool:
        """Nothing waiting and nothing training."""
        with self._lock:
            return not self._waiting and not self._actors

    def worker_pid(self, job: JobHandle) -> int | None:
        """The process training ``job`` (tests kill it)."""
        actor = self._actors.get(job.id)
        return None if actor is None else ray.get(actor.pid.remote(), timeout=POLL_TIMEOUT_S)

    # -- one job

    def _drive(self, job: JobHandle) -> None:
        """Place the job's actor, start it, relay its events and files until it ends or is lost."""
        actor = None
        try:
            if job.after is not None:
                job.after.join()
            if job.id in self._stopped:
                job.record(RunFinished("stopped", "Stopped while waiting for a free training worker."))
                return
            options = {"num_cpus": self.cpus, "max_concurrency": 4, "max_restarts": 0}
            if self.gpus:
                options["num_gpus"] = self.gpus
            actor = self._actor.options(**options).remote(self.cpus)
            with self._lock:
                self._actors[job.id] = actor
            ray.get(actor.pid.remote())  # returns once Ray has placed it on a node with room
            with self._lock:
                self._waiting.remove(job)
            if job.id in self._stopped:
                job.record(RunFinished("stopped", "Stopped while waiting for a free training worker."))
                return
            job.mark_running()
            actor.run.remote(ray.put(job.spec))  # the images go through the object store
            self._relay(job, actor)
        except Exception as e:  # a lost actor or node: fail the run, keep what was copied, never hang
            with self._lock:
                if job in self._waiting:
                    self._waiting.remove(job)
            kept = (job.spec.folder / "model.safetensors").exists()
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip(": ")
            log.warning("Ray job %s lost: %s", job.name, why)
            if job.alive:
                job.record(RunFinished("failed", f"The Ray worker training this run was lost ({why[:200]}); "
                                       + ("its best epoch so far is kept." if kept else "no epoch had finished.")))
        finally:
            with self._lock:
                self._actors.pop(job.id, None)
                self._stopped.discard(job.id)  # a long-lived server does not keep every stopped job's id
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # already gone
                    pass

    def _relay(self, job: JobHandle, actor) -> None:
        seen = 0
        stop_sent = False
        while True:
            if job.id in self._stopped and not stop_sent:
                actor.stop.remote()
                stop_sent = True
            events, files, done = ray.get(actor.poll.remote(seen), timeout=POLL_TIMEOUT_S)
            seen += len(events)
            _write_files(job.spec.folder, files)
            for event in events:
                job.record(event)  # RunFinished last: its files were written just above
            if done or any(isinstance(e, RunFinished) for e in events):
                return
            time.sleep(POLL_S)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """The run folder's files from the actor, each replaced atomically (metadata last: it names the weights)."""
    from .storage import atomic_write

    if not files:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n.endswith(".json")):
        if "/" in name or name.startswith("."):
            raise TLError(f"Unexpected file {name!r} from a Ray worker.")
        atomic_write(folder / name, lambda p, data=files[name]: Path(p).write_bytes(data))
