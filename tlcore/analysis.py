"""The insight jobs (transferability score, stage probe, learning-rate finder) as runner jobs, their results on disk.

The web server never computes them: ``start_analysis`` submits a ``JobSpec`` with a ``task`` to the
training runner (a worker process, or Ray), whose worker calls ``run_analysis``; that writes
``result.json`` into the job's folder, ``<project>/analyses/<task>-<key>``, named by what the result
depends on (the task, its settings and every image with its class). The folder is the one owner of a
result: ``analysis_state`` reads it from there, and from the live job only its progress while it runs.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from .data import ImageSet, trainable_subset
from .errors import TLError
from .lrfind import LrFind, lr_find
from .train import Event, Progress, RunFinished, TrainConfig, drive
from .transfer import StageProbe, TransferScore, probe_stages, transfer_score

Task = Literal["transfer-score", "stage-probe", "lr-find"]
TASKS: tuple[Task, ...] = ("transfer-score", "stage-probe", "lr-find")
Result = Union[TransferScore, StageProbe, LrFind]
RESULT_FILE = "result.json"
_READERS: dict[str, Callable[[dict], Result]] = {"transfer-score": TransferScore.from_json,
                                                  "stage-probe": StageProbe.from_json, "lr-find": LrFind.from_json}


def analysis_key(task: Task, images: ImageSet, config: TrainConfig) -> str:
    """What a result depends on: the task, the settings it uses, every labelled image and its class."""
    if task == "lr-find":
        depth = config.resolved_freeze_depth()
        settings = (config.backbone, config.mode, depth, config.batch_size, config.backbone_lr_mult,
                    config.weight_decay, config.augment, config.val_fraction, config.seed)
    else:
        settings = (config.backbone,)
    h = hashlib.sha1(f"{task}|{settings}".encode())
    for item in trainable_subset(images).items:
        h.update(f"{item.digest}\0{item.label}\n".encode())
    return h.hexdigest()[:20]


def analysis_folder(root: Path, task: Task, images: ImageSet, config: TrainConfig) -> Path:
    return Path(root) / "analyses" / f"{task}-{analysis_key(task, images, config)}"


def read_result(folder: Path, task: Task) -> Result | None:
    try:
        return _READERS[task](json.loads((Path(folder) / RESULT_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compute(task: Task, images: ImageSet, config: TrainConfig, should_stop: Callable[[], bool] = lambda: False):
    """The task's generator: yields ``Progress``, returns its result (None if stopped)."""
    if task == "transfer-score":
        return transfer_score(images, config.backbone, should_stop)
    if task == "stage-probe":
        return probe_stages(images, config.backbone, should_stop)
    if task == "lr-find":
        return lr_find(images, config, should_stop)
    raise TLError(f"Unknown analysis {task!r}: use one of {', '.join(TASKS)}.")


def run_analysis(spec, should_stop: Callable[[], bool], emit: Callable[[Event], None]) -> None:
    """In a worker: compute ``spec.task`` on ``spec.images`` and write the result into ``spec.folder``; events
    (``Progress``, then ``RunFinished``) go to ``emit``. Never raises."""
    from .storage import atomic_write

    try:
        result = drive(compute(spec.task, spec.images, spec.config, should_stop), emit)
        if result is None:
            emit(RunFinished("stopped", "Stopped before it finished; nothing was kept."))
            return
        text = json.dumps(result.to_json())
        atomic_write(Path(spec.folder) / RESULT_FILE, lambda p: Path(p).write_text(text))
        emit(RunFinished("completed", "Done."))
    except TLError as e:
        emit(RunFinished("failed", str(e)))
    except Exception as e:  # an analysis must end with a reason, never take a worker down
        emit(RunFinished("failed", f"{spec.task} failed unexpectedly: {type(e).__name__}: {e}"))


# ----------------------------------------------------------------------------- the web server's side

_LIVE: dict[Path, object] = {}  # result folder -> its job (a JobHandle) while queued, running or just failed
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
    snap = job.snapshot()  # type: ignore[attr-defined]
    if snap.finished is None:
        return AnalysisState(None, True, snap.progress, None)
    return AnalysisState(None, False, None, None if snap.finished.status == "stopped" else snap.finished.reason)


def start_analysis(root: Path, task: Task, images: ImageSet, config: TrainConfig, owner: str) -> AnalysisState:
    """Submit ``task`` to the runner unless its result is on disk or it is already queued or running (so a
    double click, a second tab or a rerun starts it once)."""
    from .runner import JobSpec, get_runner

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
        job.stop()  # type: ignore[attr-defined]


def forget_analysis(root: Path, task: Task, images: ImageSet, config: TrainConfig) -> None:
    """Drop a failed job so that the next ``start_analysis`` tries again."""
    with _lock:
        _LIVE.pop(analysis_folder(root, task, images, config), None)


__all__ = ["AnalysisState", "TASKS", "Task", "analysis_folder", "analysis_key", "analysis_state", "compute",
           "forget_analysis", "read_result", "run_analysis", "start_analysis", "stop_analyses"]
