"""The insight jobs (transferability score, stage probe, learning-rate finder, the Data page's data check, a
backbone's timing) as runner jobs, their results on disk.

The web server never computes them: ``LiveAnalyses.start`` submits a ``JobSpec`` with a ``task`` to the
training runner (a worker process, or Ray), whose worker calls ``run_analysis``; that writes
``result.json`` into the job's folder, ``<project>/analyses/<task>-<key>``, named by what the result
depends on (the task, its settings and every image with its class). The folder is the one owner of a
result: ``LiveAnalyses.state`` reads it from there, and from the live job only its progress while it runs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Union, get_args

from ..core.errors import TLError
from ..data.images import ImageSet, trainable_subset
from ..engine.config import TrainConfig
from ..engine.events import Event, RunFinished
from ..engine.train import drive
from .clean import DataCheck, checking
from .lrfind import LrFind, lr_find
from .profile import SpeedProfile, timing
from .transfer import StageProbe, TransferScore, probe_stages, transfer_score

Task = Literal["transfer-score", "stage-probe", "lr-find", "data-check", "speed"]  # a job's ``Analysis.kind``
TASKS: tuple[Task, ...] = get_args(Task)
Result = Union[TransferScore, StageProbe, LrFind, DataCheck, SpeedProfile]
RESULT_FILE = "result.json"
_READERS: dict[str, Callable[[dict], Result]] = {"transfer-score": TransferScore.from_json,
                                                  "stage-probe": StageProbe.from_json, "lr-find": LrFind.from_json,
                                                  "data-check": DataCheck.from_record, "speed": SpeedProfile.from_json}


def analysis_key(task: Task, images: ImageSet, config: TrainConfig) -> str:
    """What a result depends on: the task, the settings it uses, every labelled image and its class."""
    if task == "lr-find":
        depth = config.resolved_freeze_depth()
        settings = (config.backbone, config.mode, depth, config.batch_size, config.backbone_lr_mult,
                    config.weight_decay, config.augment, config.val_fraction, config.seed)
    elif task == "data-check":  # "names": the check with the class names' opinion (issue 39); earlier results are stale
        settings = (config.backbone, "names")
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
    if task == "data-check":
        return checking(images, config.backbone, should_stop)
    if task == "speed":
        return timing(config.backbone)
    raise TLError(f"Unknown analysis {task!r}: use one of {', '.join(TASKS)}.")


def run_analysis(task: Task, images: ImageSet, config: TrainConfig, folder: Path, should_stop: Callable[[], bool],
                 emit: Callable[[Event], None]) -> None:
    """In a worker (a job's ``Analysis``): compute ``task`` on ``images`` and write the result into ``folder``;
    events (``Progress``, then ``RunFinished``) go to ``emit``. Never raises."""
    from ..core.storage import atomic_write

    try:
        result = drive(compute(task, images, config, should_stop), emit)
        if result is None:
            emit(RunFinished.stopped("before it finished", "nothing was kept"))
            return
        text = json.dumps(result.to_record() if isinstance(result, DataCheck) else result.to_json())
        atomic_write(Path(folder) / RESULT_FILE, lambda p: Path(p).write_text(text))
        emit(RunFinished("completed", "Done."))
    except TLError as e:
        emit(RunFinished("failed", str(e)))
    except Exception as e:  # an analysis must end with a reason, never take a worker down
        emit(RunFinished("failed", f"{task} failed unexpectedly: {type(e).__name__}: {e}"))


__all__ = ["TASKS", "Result", "Task", "analysis_folder", "analysis_key", "compute", "read_result", "run_analysis"]
