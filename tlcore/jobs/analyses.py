"""The web server's side of the analyses before training (``tlcore.analysis.tasks``): start one as a job on the
process's runner once (a double click, a second tab or a rerun starts it once), read its state, stop a
project's analyses. The work itself runs in a worker (``tlcore.jobs.spec.run_job``)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..analysis.tasks import Result, Task, analysis_folder, read_result
from ..data.images import ImageSet
from ..engine.config import TrainConfig
from ..engine.events import Progress
from .runner import get_runner
from .spec import Job, JobSpec

_LIVE: dict[Path, Job] = {}  # result folder -> its job while queued, running or just failed
_lock = threading.RLock()


@dataclass(frozen=True)
class AnalysisState:
    """What a page shows of one analysis: its result, else its live progress, else why it failed."""

    result: Result | None
    running: bool
    progress: Progress | None  # while running, once it has reported
    error: str | None  # it failed (it is not retried by itself)


def analysis_state(root: Path, task: Task, images: ImageSet, config: TrainConfig) -> AnalysisState:
    folder = analysis_folder(root, task, images, config)
    result = read_result(folder, task)
    with _lock:
        job = _LIVE.get(folder)
    if result is not None or job is None:
        return AnalysisState(result, False, None, None)
    snap = job.snapshot()
    if snap.finished is None:
        return AnalysisState(None, True, snap.progress, None)
    return AnalysisState(None, False, None, None if snap.finished.status == "stopped" else snap.finished.reason)


def start_analysis(root: Path, task: Task, images: ImageSet, config: TrainConfig, owner: str) -> AnalysisState:
    """Submit ``task`` to the runner unless its result is on disk or it is already queued or running (so a
    double click, a second tab or a rerun starts it once)."""
    folder = analysis_folder(root, task, images, config)
    with _lock:
        state = analysis_state(root, task, images, config)
        if state.result is not None or state.running:
            return state
        config.validate()
        spec = JobSpec(f"{task} of {config.backbone}", owner, images.snapshot(), config, ([], []), folder,
                       task=task)
        _LIVE[folder] = get_runner().submit(spec)
    return analysis_state(root, task, images, config)


def stop_analyses(root: Path) -> None:
    """Stop every analysis of the project in ``root`` (its sessions have gone)."""
    with _lock:
        jobs = [job for folder, job in _LIVE.items() if Path(root) in folder.parents]
    for job in jobs:
        job.stop()


def forget_analysis(root: Path, task: Task, images: ImageSet, config: TrainConfig) -> None:
    """Drop a failed job so that the next ``start_analysis`` tries again."""
    with _lock:
        _LIVE.pop(analysis_folder(root, task, images, config), None)
