"""The web server's side of the analyses before training (``tlcore.analysis.tasks``): ``LiveAnalyses`` starts one
as a job on the process's runner once (a double click, a second tab or a rerun starts it once), reads its state,
stops a project's analyses; time a backbone (``time_on_runner``). The work itself runs in a worker
(``tlcore.jobs.spec.run_job``)."""
from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..analysis.profile import SpeedProfile
from ..analysis.tasks import Result, Task, analysis_folder, read_result
from ..core.errors import TLError
from ..data.images import ImageSet
from ..engine.config import TrainConfig
from ..engine.events import Progress
from .runner import get_runner
from .spec import Analysis, Job, JobSpec

#: Failed analyses remembered at most (the oldest is forgotten first, and tried again when next asked for). A job
#: holds a snapshot of its project's images: a server running for weeks keeps no more of them than this.
FAILED_KEPT = 32


@dataclass(frozen=True)
class AnalysisState:
    """What a page shows of one analysis: its result, else its live progress, else why it failed."""

    result: Result | None
    running: bool
    progress: Progress | None  # while running, once it has reported
    error: str | None  # it failed (it is not retried by itself)


class LiveAnalyses:
    """The analyses this server has started and not yet let go of (the server object's ``analyses``): result
    folder -> its job while queued or running, or failed (its reason is shown). Bounded: ended jobs are let go
    at the next start, but the last ``FAILED_KEPT`` failed ones."""

    def __init__(self) -> None:
        self._live: dict[Path, Job] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._live)

    def state(self, root: Path, task: Task, images: ImageSet, config: TrainConfig) -> AnalysisState:
        folder = analysis_folder(root, task, images, config)
        result = read_result(folder, task)
        with self._lock:
            job = self._live.get(folder)
            if result is not None and job is not None and job.finished is not None:
                self._forget(folder, job)  # done: its result is on disk
        if result is not None or job is None:
            return AnalysisState(result, False, None, None)
        snap = job.snapshot()
        if snap.finished is None:
            return AnalysisState(None, True, snap.progress, None)
        if snap.finished.status == "stopped":
            with self._lock:
                self._forget(folder, job)
            return AnalysisState(None, False, None, None)
        return AnalysisState(None, False, None, snap.finished.reason)

    def start(self, root: Path, task: Task, images: ImageSet, config: TrainConfig, owner: str) -> AnalysisState:
        """Submit ``task`` to the runner unless its result is on disk or it is already queued or running (so a
        double click, a second tab or a rerun starts it once)."""
        folder = analysis_folder(root, task, images, config)
        with self._lock:
            state = self.state(root, task, images, config)
            if state.result is not None or state.running:
                return state
            config.validate()
            self._prune()
            spec = JobSpec(f"{task} of {config.backbone}", owner, images.snapshot(), config, Analysis(task), folder)
            self._live[folder] = get_runner().submit(spec)
        return self.state(root, task, images, config)

    def stop(self, root: Path) -> None:
        """Stop every analysis of the project in ``root`` (its sessions have gone) and let go of them."""
        with self._lock:
            jobs = {folder: job for folder, job in self._live.items() if Path(root) in folder.parents}
            for folder in jobs:
                del self._live[folder]
        for job in jobs.values():
            job.stop()

    def forget(self, root: Path, task: Task, images: ImageSet, config: TrainConfig) -> None:
        """Drop a failed job so that the next ``start`` tries again."""
        with self._lock:
            self._live.pop(analysis_folder(root, task, images, config), None)

    def _forget(self, folder: Path, job: Job) -> None:
        if self._live.get(folder) is job:
            del self._live[folder]

    def _prune(self) -> None:
        """Let go of the jobs that have ended, but the last ``FAILED_KEPT`` failed ones: a finished analysis's
        result is on disk, a stopped one starts again when asked for. (Under ``_lock``.)"""
        ended = [(folder, job) for folder, job in self._live.items() if job.finished is not None]
        failed = [(folder, job) for folder, job in ended if job.finished.status == "failed"]
        for folder, job in [e for e in ended if e not in failed] + failed[:max(0, len(failed) - FAILED_KEPT)]:
            self._forget(folder, job)


#: What the server's own timing jobs are queued as (they take turns with the students' jobs).
SERVER_OWNER = "the server"


def time_on_runner(backbone: str, timeout_s: float = 600.0) -> SpeedProfile:
    """Time ``backbone`` (``measure_speed``'s default timing) as a job on the process's runner: in a worker, below
    the server, on the express lane, where every other piece of work runs. The web server's ``via`` for
    ``measure_speed_elsewhere``. Raises ``TLError`` when the job fails or does not end in ``timeout_s``."""
    folder = Path(tempfile.mkdtemp(prefix="tls-speed-"))
    try:
        spec = JobSpec(f"timing {backbone}", SERVER_OWNER, ImageSet(),
                       TrainConfig(backbone=backbone, mode="feature-extraction"), Analysis("speed"), folder)
        job = get_runner().submit(spec)
        if not job.join(timeout_s):
            job.stop("by the server")
            raise TLError(f"Timing {backbone} took over {timeout_s:.0f} s.")
        result = read_result(folder, "speed")
        if not isinstance(result, SpeedProfile):
            raise TLError(job.finished.reason if job.finished else f"Timing {backbone} left no result.")
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
