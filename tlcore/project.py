"""A user's work: classes, images, settings and runs, saved on the server as they go.

Layout of a project folder (every write is atomic: a temporary file, then a rename)::

    <home>/projects/<name>/project.json      classes, image manifest, settings, run records
    <home>/projects/<name>/images/<digest>.png decoded images (lossless), shared by name
    <home>/projects/<name>/runs/<run id>/     weights + run.json (see ``checkpoint``)

A run still training when the server stops is shown as *interrupted* when the project is
reopened; its best epoch so far was checkpointed and is loaded.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backbones import DEFAULT_BACKBONE, get_backbone_spec
from .checkpoint import FORMAT, load_run, result_from_saved, save_run, write_weights_and_meta
from .data import ImageItem, ImageSet, Rejected
from .errors import TLError
from .jobs import TrainingJob
from .train import EpochEnd, Event, RunFinished, RunResult, TrainConfig, train

HOME_ENV = "TLS_HOME"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def projects_root() -> Path:
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".transfer-learning-studio")
    root = home / "projects"
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_project_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name) or name in (".", ".."):
        raise TLError(f"'{name}' cannot be a project name: use 1-64 letters, digits, spaces, '-', '_' or '.', "
                      f"starting with a letter or digit.")
    return name


def list_projects() -> list[str]:
    return sorted(p.parent.name for p in projects_root().glob("*/project.json"))


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass
class RunRecord:
    """One training run of a project: live (a job), finished (a result) or interrupted."""

    id: str
    label: str
    config: TrainConfig
    status: str = "queued"  # queued | running | completed | stopped | failed | interrupted
    reason: str = ""
    job: TrainingJob | None = field(default=None, repr=False)
    result: RunResult | None = field(default=None, repr=False)
    group: str = ""  # comparison this run belongs to ("" for a single run)
    shots: int | None = None
    created: float = field(default_factory=time.time)

    def refresh(self) -> None:
        """Take the job's final state once it has one."""
        if self.job is None:
            return
        snap = self.job.snapshot()
        self.status = snap.state
        if snap.finished is not None:
            self.reason = snap.finished.reason
            self.result = snap.finished.result
            self.job = None


@dataclass
class Project:
    """Everything one user works on; the app keeps one per browser session."""

    name: str
    images: ImageSet = field(default_factory=ImageSet)
    backbone: str = DEFAULT_BACKBONE
    settings: TrainConfig = field(default_factory=TrainConfig)  # mode, freeze depth, epochs, ...
    runs: list[RunRecord] = field(default_factory=list)
    selected_run: str | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def folder(self) -> Path:
        return projects_root() / self.name

    # ----------------------------------------------------------------- runs

    def run(self, run_id: str | None) -> RunRecord | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def finished_runs(self) -> list[RunRecord]:
        for r in self.runs:
            r.refresh()
        return [r for r in self.runs if r.result is not None]

    def active_runs(self) -> list[RunRecord]:
        for r in self.runs:
            r.refresh()
        return [r for r in self.runs if r.job is not None]

    def start_run(self, config: TrainConfig, label: str = "", group: str = "", shots: int | None = None,
                  after: RunRecord | None = None, split: tuple[list[int], list[int]] | None = None) -> RunRecord:
        """Start training ``config`` on this project's images in the background.

        ``after`` makes the run wait for another to finish (comparisons run one at a time so
        their wall-clock times compare); best epochs are checkpointed into the run's folder.
        """
        config.validate()
        run_id = f"run-{len(self.runs) + 1:03d}-{secrets.token_hex(2)}"
        record = RunRecord(run_id, label or describe(config), config, group=group, shots=shots)
        images = self.images  # the set as it is now; later edits do not change a running job
        folder = self.folder / "runs" / run_id
        waiting_for = after.job if after is not None else None

        def work(should_stop: Callable[[], bool]) -> Iterator[Event]:
            if waiting_for is not None:
                while waiting_for.alive and not should_stop():
                    time.sleep(0.1)
            for event in train(images, config, should_stop, split=split):
                if isinstance(event, EpochEnd) and event.best and event.model is not None:
                    write_weights_and_meta(folder, event.model, partial_meta(config, images.classes, event))
                yield event

        def on_finish(finished: RunFinished) -> None:
            if finished.result is not None:
                save_run(finished.result, folder, finished.status, {"label": record.label})
            record.status, record.reason, record.result = finished.status, finished.reason, finished.result
            self.save()

        record.job = TrainingJob(record.label, work, on_finish=on_finish)
        with self._lock:
            self.runs.append(record)
            self.selected_run = record.id
        self.save()
        return record

    def stop_all(self) -> None:
        for r in self.active_runs():
            assert r.job is not None
            r.job.stop()

    def delete_run(self, run_id: str) -> None:
        record = self.run(run_id)
        if record is None:
            return
        if record.job is not None:
            record.job.stop()
        with self._lock:
            self.runs.remove(record)
        shutil.rmtree(self.folder / "runs" / run_id, ignore_errors=True)
        self.save()

    # ----------------------------------------------------------------- persistence

    def save(self) -> None:
        """Write the project atomically: images first, then the manifest that points at them."""
        with self._lock:
            folder = self.folder
            (folder / "images").mkdir(parents=True, exist_ok=True)
            for item in self.images.items:
                path = folder / "images" / f"{item.digest}.png"
                if not path.exists():
                    buf = io.BytesIO()
                    Image.fromarray(item.pixels.permute(1, 2, 0).numpy()).save(buf, "PNG", compress_level=1)
                    _atomic_bytes(path, buf.getvalue())
            manifest = {
                "format": "tls-project/1", "name": self.name, "saved": time.time(),
                "classes": self.images.classes,
                "images": [{"name": i.name, "label": i.label, "digest": i.digest} for i in self.images.items],
                "rejected": [dataclasses.asdict(r) for r in self.images.rejected[-200:]],
                "backbone": self.backbone, "settings": dataclasses.asdict(self.settings),
                "selected_run": self.selected_run,
                "runs": [{"id": r.id, "label": r.label, "status": r.status, "reason": r.reason,
                          "group": r.group, "shots": r.shots, "created": r.created,
                          "config": dataclasses.asdict(r.config)} for r in self.runs],
            }
            _atomic_bytes(folder / "project.json", json.dumps(manifest, indent=1).encode())
            keep = {f"{i.digest}.png" for i in self.images.items}
            for path in (folder / "images").glob("*.png"):
                if path.name not in keep:
                    path.unlink(missing_ok=True)

    @classmethod
    def create(cls, name: str | None = None) -> Project:
        name = check_project_name(name or f"project-{time.strftime('%Y%m%d')}-{secrets.token_hex(3)}")
        if (projects_root() / name / "project.json").exists():
            raise TLError(f"A project called '{name}' already exists: open it, or choose another name.")
        project = cls(name)
        project.save()
        return project

    @classmethod
    def open(cls, name: str) -> Project:
        """Reopen a saved project; runs that were training when the server stopped become interrupted."""
        name = check_project_name(name)
        folder = projects_root() / name
        try:
            manifest = json.loads((folder / "project.json").read_text())
        except FileNotFoundError:
            raise TLError(f"There is no project called '{name}'.") from None
        except ValueError as e:
            raise TLError(f"The project '{name}' is damaged ({e}).") from None
        items = []
        rejected = [Rejected(**r) for r in manifest.get("rejected", [])]
        for entry in manifest.get("images", []):
            path = folder / "images" / f"{entry['digest']}.png"
            try:
                with Image.open(path) as img:
                    pixels = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
            except OSError:
                rejected.append(Rejected(entry["name"], "its saved copy is missing or damaged; add it again"))
                continue
            items.append(ImageItem(entry["name"], entry["label"], entry["digest"], pixels))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        settings = TrainConfig(**{k: v for k, v in manifest.get("settings", {}).items() if k in known})
        project = cls(name, ImageSet(items, rejected, manifest.get("classes", [])),
                      manifest.get("backbone", DEFAULT_BACKBONE), settings, selected_run=manifest.get("selected_run"))
        for r in manifest.get("runs", []):
            config = TrainConfig(**{k: v for k, v in r["config"].items() if k in known})
            record = RunRecord(r["id"], r["label"], config, r["status"], r.get("reason", ""), group=r.get("group", ""),
                               shots=r.get("shots"), created=r.get("created", 0.0))
            if record.status in ("queued", "running"):
                record.status = "interrupted"
                record.reason = "The server stopped while this run was training; its best epoch so far is kept."
            run_folder = folder / "runs" / record.id
            if (run_folder / "model.safetensors").exists():
                try:
                    record.result = result_from_saved(load_run(run_folder))
                except TLError as e:
                    record.reason = f"{record.reason} (its weights could not be loaded: {e})".strip()
            elif record.status == "interrupted":
                record.reason = "The server stopped before this run finished its first epoch; nothing to keep."
            project.runs.append(record)
        return project


def partial_meta(config: TrainConfig, classes: list[str], epoch: EpochEnd) -> dict:
    """Metadata of a run still in progress: enough to reload its best epoch after a crash."""
    spec = get_backbone_spec(config.backbone)
    return {"format": FORMAT, "status": "interrupted", "classes": classes, "backbone": config.backbone,
            "preprocess": dataclasses.asdict(spec.preprocess), "config": dataclasses.asdict(config),
            "metrics": {"val_accuracy": epoch.val_acc, "best_epoch": epoch.epoch, "train_seconds": epoch.seconds},
            "history": []}


def describe(config: TrainConfig) -> str:
    """A short human label for a run's strategy."""
    spec = get_backbone_spec(config.backbone)
    n = len(spec.stage_names)
    if config.mode == "fine-tune":
        depth = config.resolved_freeze_depth()
        what = "full fine-tuning" if depth == 0 else f"fine-tuning, {depth}/{n} stages frozen"
    else:
        what = {"feature-extraction": "feature extraction", "scratch": "from scratch",
                "few-shot": "few-shot prototypes"}[config.mode]
    return f"{spec.title}, {what}"
