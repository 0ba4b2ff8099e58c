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
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .backbones import DEFAULT_BACKBONE, get_backbone_spec
from .checkpoint import (WEIGHTS, archive_run, export_onnx, export_torchscript, lazy_result, read_meta,
                         result_from_saved, unpack_run_archive)
from .compare import features_of, plan, project_2d, shared_split
from .data import (ImageItem, ImageSet, Rejected, image_to_tensor, tensor_to_image,
                   trainable_subset)
from .evaluate import Evaluation, Familiarity, evaluate
from .errors import TLError
from .analysis_jobs import stop_analyses
from .limits import LimitError, Limits, folder_mb
from .jobs import JobHandle, JobSpec
from .runner import get_runner
from .storage import atomic_write
from .train import FROZEN_BODY_MODES, RunFinished, RunResult, TrainConfig, run_split

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


@dataclass
class RunRecord:
    """One training run of a project: live (a job), finished (a result) or interrupted."""

    id: str
    label: str
    config: TrainConfig
    status: str = "queued"  # queued | running | completed | stopped | failed | interrupted
    reason: str = ""
    job: JobHandle | None = field(default=None, repr=False)  # while queued or training (on the runner)
    result: RunResult | None = field(default=None, repr=False)
    group: str = ""  # comparison this run belongs to ("" for a single run)
    shots: int | None = None
    created: float = field(default_factory=time.time)
    images: ImageSet | None = field(default=None, repr=False)  # the images it trained on (this session)
    val_digests: list[str] = field(default_factory=list)  # its validation images, to find them after a restart
    cache: dict = field(default_factory=dict, repr=False)  # derived views (evaluation), computed once

    def refresh(self) -> None:
        """Take the job's final state once it has one."""
        if self.job is None:
            return
        snap = self.job.snapshot()
        self.status = snap.state
        if snap.finished is not None:  # the result itself was loaded from the run folder on finishing
            self.reason = snap.finished.reason
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
    student: str = ""  # the student's name (given once, in the sidebar): the teacher's page and the board show it
    created: float = field(default_factory=time.time)  # the teacher's page flags who has no images after a while
    # Projects are reached by unguessable links, never by their (displayed) name: ``key`` lets its holder
    # work on the project, ``view_key`` only look at it and test its models.
    key: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    view_key: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def folder(self) -> Path:
        return projects_root() / self.name

    def __setattr__(self, name: str, value: object) -> None:
        if name == "images":  # whatever set a project holds (reopened, a sample, a new one) has its limit
            assert isinstance(value, ImageSet)
            value.capacity = Limits.from_env().images_per_project
        super().__setattr__(name, value)

    # ----------------------------------------------------------------- runs

    def run(self, run_id: str | None) -> RunRecord | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def _refreshed(self) -> list[RunRecord]:
        """The runs, each having taken its job's final state if it has one now."""
        for r in self.runs:
            r.refresh()
        return list(self.runs)

    def finished_runs(self) -> list[RunRecord]:
        return [r for r in self._refreshed() if r.result is not None]

    def active_runs(self) -> list[RunRecord]:
        return [r for r in self._refreshed() if r.job is not None]

    def check_room(self, config: TrainConfig, runs: int = 1, owner: str | None = None) -> None:
        """Raise ``LimitError`` if starting ``runs`` runs of ``config`` for ``owner`` (a student: every tab and
        project of theirs together) would pass one of this server's limits (``Limits``)."""
        limits = Limits.from_env()
        if config.epochs > limits.epochs:
            raise LimitError(limits.message("epochs", "The number of epochs of one run") + " Choose fewer.")
        mine = len(self.active_runs())
        if mine + runs > limits.queued_runs:
            raise LimitError(limits.message("queued_runs", "The number of runs queued or training at once") +
                             f" This project has {mine}: wait for one to finish, or stop one.")
        theirs = PROJECTS.active_runs_of(owner or self.name)
        if theirs + runs > limits.queued_runs:
            raise LimitError(limits.message("queued_runs", "The number of runs queued or training at once") +
                             f" You have {theirs} in all your projects and tabs: wait for one to finish, or stop one.")
        used = folder_mb(self.folder)
        if used > limits.project_mb:
            raise LimitError(limits.message("project_mb", "The disk space of one project, in MB,") +
                             f" This project uses {used:,.0f} MB: delete runs you no longer need (Train page).")

    def start_run(self, config: TrainConfig, label: str = "", group: str = "", shots: int | None = None,
                  after: RunRecord | None = None, split: tuple[list[int], list[int]] | None = None,
                  owner: str | None = None, checked: bool = False) -> RunRecord:
        """Start training ``config`` on this project's images in the background.

        ``after`` makes the run wait for another to finish (comparisons run one at a time so
        their wall-clock times compare); best epochs are checkpointed into the run's folder.
        ``owner`` is the student it is for (default: this project): owners take turns for the
        workers, and the server's limits (``check_room``; skipped when ``checked``) count per owner.
        """
        config.validate()
        if not checked:
            self.check_room(config, 1, owner)
        run_id = f"run-{len(self.runs) + 1:03d}-{secrets.token_hex(2)}"
        images = self.images.snapshot()  # the set as it is now; later edits do not change this run
        data = trainable_subset(images)
        if split is None:  # the split train() would draw, fixed now so a checkpoint can name its images
            split = run_split(data.labels(), config)
        record = RunRecord(run_id, label or describe(config), config, group=group, shots=shots, images=images,
                           val_digests=[data.items[i].digest for i in split[1]])
        folder = self.folder / "runs" / run_id
        meta = {"label": record.label, "val_digests": record.val_digests}

        def on_finish(finished: RunFinished) -> None:  # on the runner's thread, once
            record.result = _load_result(folder)
            record.status, record.reason = finished.status, finished.reason
            if record.result is not None and finished.status == "failed":
                record.reason += " Its best epoch before that is kept."
            self.save()

        spec = JobSpec(record.label, owner or self.name, images, config, (list(split[0]), list(split[1])), folder,
                       meta, max_seconds=Limits.from_env().run_minutes * 60)
        with self._lock:
            self.runs.append(record)
            self.selected_run = record.id
            record.job = get_runner().submit(spec, on_finish, after=after.job if after is not None else None)
        self.save()
        return record

    def _comparison_base(self, epochs: int | None) -> TrainConfig:
        base = dataclasses.replace(self.settings, backbone=self.backbone)
        return base if epochs is None else dataclasses.replace(base, epochs=epochs)

    def start_comparison(self, strategies: list[str], shots: list[int | None] | None = None,
                         epochs: int | None = None, owner: str | None = None,
                         backbones: list[str] | None = None) -> str:
        """Queue one run per strategy (and shot count, or backbone: the race), one after another on one
        shared split; ``epochs`` (default: the project's setting) bounds every run's epochs.

        Returns the group id that tags the runs (``compare-``, ``shots-`` or ``race-``).
        """
        base = self._comparison_base(epochs)
        planned_runs = plan(strategies, base, shots, backbones)
        self.check_room(base, len(planned_runs), owner)  # all of it, or none
        split = shared_split(self.images, base)
        group = f"{'race' if backbones else 'shots' if shots else 'compare'}-{secrets.token_hex(3)}"
        previous = None
        for planned in planned_runs:
            previous = self.start_run(planned.config, planned.label, group, planned.shots, previous,
                                      None if planned.shots else split, owner, checked=True)
        return group

    def comparison_seconds(self, strategies: list[str], shots: list[int | None] | None = None,
                           epochs: int | None = None, backbones: list[str] | None = None) -> float:
        """About how long ``start_comparison(strategies, shots, epochs)`` takes here, from now: the runs one
        after another (the features computed once, by its first frozen-body run), after what the server's
        workers already have to do."""
        from .profile import estimate_run_seconds

        base = self._comparison_base(epochs)
        train, val = shared_split(self.images, base)
        classes = sum(1 for n in self.images.counts().values() if n)
        total, cached = 0.0, set()
        for p in plan(strategies, base, shots, backbones):
            n = len(val) + len(train) if p.shots is None else min(len(train) + len(val), p.shots * classes)
            total += estimate_run_seconds(p.config, n, features_cached=p.config.backbone in cached)
            if p.config.mode in FROZEN_BODY_MODES:
                cached.add(p.config.backbone)
        backlog = getattr(get_runner(), "backlog_seconds", lambda: 0.0)()
        return backlog + total

    def group_runs(self, group: str) -> list[RunRecord]:
        return [r for r in self._refreshed() if r.group == group]

    def stop_all(self, by: str = "by the user") -> None:
        for r in self.active_runs():
            assert r.job is not None
            r.job.stop(by)
        stop_analyses(self.folder)  # its transferability scores, stage probes and learning-rate finders too

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
            started = time.time()
            folder = self.folder
            # One view of the images for the whole save: a page may replace or edit them meanwhile (a
            # save from the runner's thread), and the manifest must name only images written here.
            images = self.images
            items, classes, rejected = list(images.items), images.classes, list(images.rejected[-200:])
            (folder / "images").mkdir(parents=True, exist_ok=True)
            for item in items:
                path = folder / "images" / f"{item.digest}.png"
                if not path.exists():
                    image = tensor_to_image(item.pixels)
                    atomic_write(path, lambda p: image.save(p, "PNG", compress_level=1))
            manifest = {
                "format": "tls-project/1", "name": self.name, "saved": time.time(),
                "key": self.key, "view_key": self.view_key,
                "classes": classes,
                "images": [{"name": i.name, "label": i.label, "digest": i.digest} for i in items],
                "rejected": [dataclasses.asdict(r) for r in rejected],
                "backbone": self.backbone, "settings": dataclasses.asdict(self.settings),
                "selected_run": self.selected_run, "student": self.student, "created": self.created,
                "runs": [{"id": r.id, "label": r.label, "status": r.status, "reason": r.reason,
                          "group": r.group, "shots": r.shots, "created": r.created,
                          "config": dataclasses.asdict(r.config)} for r in self.runs],
            }
            text = json.dumps(manifest, indent=1)
            atomic_write(folder / "project.json", lambda p: Path(p).write_text(text))
            # Unused image files go, but never one that the images now hold or that appeared during
            # this save (another save's new image).
            keep = {f"{i.digest}.png" for i in items + list(self.images.items)}
            for path in (folder / "images").glob("*.png"):
                try:
                    if path.name not in keep and path.stat().st_mtime < started:
                        path.unlink()
                except OSError:
                    pass

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
        return cls.read(projects_root() / check_project_name(name))

    @classmethod
    def read(cls, folder: Path) -> Project:
        """A saved project from its folder (wherever it is: ``open`` reads those of this server)."""
        name = folder.name
        try:
            manifest = json.loads((folder / "project.json").read_text())
        except FileNotFoundError:
            raise TLError(f"There is no project called '{name}'.") from None
        except ValueError as e:
            raise TLError(f"The project '{name}' is damaged: its project.json is not valid JSON ({e}).") from None
        try:
            return cls._from_manifest(name, folder, manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TLError(f"The project '{name}' is damaged or was not made by this app: its project.json has a "
                          f"missing or wrong entry ({type(e).__name__}: {e}). Open another project, or start a "
                          f"new one.") from None

    @classmethod
    def _from_manifest(cls, name: str, folder: Path, manifest: dict) -> Project:
        if not isinstance(manifest, dict) or manifest.get("format") != "tls-project/1":
            raise ValueError("it has no 'format': 'tls-project/1'")
        items = []
        rejected = [Rejected(**r) for r in manifest.get("rejected", [])]
        for entry in manifest.get("images", []):
            path = folder / "images" / f"{entry['digest']}.png"
            try:
                with Image.open(path) as img:
                    pixels = image_to_tensor(img.convert("RGB"))
            except OSError:
                rejected.append(Rejected(entry["name"], "its saved copy is missing or damaged; add it again"))
                continue
            items.append(ImageItem(entry["name"], entry["label"], entry["digest"], pixels))
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        settings = TrainConfig(**{k: v for k, v in manifest.get("settings", {}).items() if k in known})
        project = cls(name, ImageSet(items, rejected, manifest.get("classes", [])),
                      manifest.get("backbone", DEFAULT_BACKBONE), settings, selected_run=manifest.get("selected_run"),
                      student=str(manifest.get("student", "")), created=float(manifest.get("created", 0.0)))
        for k in ("key", "view_key"):  # projects saved before links had keys get them now
            if isinstance(manifest.get(k), str) and len(manifest[k]) >= 16:
                setattr(project, k, manifest[k])
        for r in manifest.get("runs", []):
            config = TrainConfig(**{k: v for k, v in r["config"].items() if k in known})
            record = RunRecord(r["id"], r["label"], config, r["status"], r.get("reason", ""), group=r.get("group", ""),
                               shots=r.get("shots"), created=r.get("created", 0.0))
            if record.status in ("queued", "running"):
                record.status = "interrupted"
                record.reason = "The server stopped while this run was training; its best epoch so far is kept."
            run_folder = folder / "runs" / record.id
            if (run_folder / WEIGHTS).exists():
                try:  # the weights themselves load when the model is first used
                    record.result = lazy_result(run_folder)
                    record.val_digests = list(read_meta(run_folder).get("val_digests", []))
                except TLError as e:
                    record.reason = f"{record.reason} (its weights could not be loaded: {e})".strip()
            elif record.status == "interrupted":
                record.reason = "The server stopped before this run finished its first epoch; nothing to keep."
            project.runs.append(record)
        return project


def _load_result(folder: Path) -> RunResult | None:
    """A run's result from its folder (complete, or the best epoch checkpointed before it ended)."""
    if not (folder / WEIGHTS).exists():
        return None
    try:
        return lazy_result(folder)
    except TLError:
        return None


def validation_report(project: Project, record: RunRecord) -> tuple[Evaluation, list[ImageItem]] | None:
    """What the run's model gets right and wrong on images it did not train on (computed once per run), or
    None if it has none: its out-of-fold predictions on every image when it has them (a frozen-body model
    trains on every image in the end; each was predicted by a fold that had not seen it), else its model on
    its validation images."""
    if "eval" not in record.cache:
        assert record.result is not None
        res = record.result
        pool = (record.images.items if record.images is not None else []) + project.images.items
        by_digest = {i.digest: i for i in reversed(pool)}
        if res.heldout:
            kept = [(by_digest[d], t, p) for d, t, p in res.heldout if d in by_digest]
            record.cache["eval"] = None if not kept else (Evaluation(
                classes=res.classes, labels=tuple(t for _, t, _ in kept),
                predictions=tuple(max(range(len(p)), key=p.__getitem__) for _, _, p in kept),
                probabilities=tuple(p for _, _, p in kept), names=tuple(i.name for i, _, _ in kept)),
                [i for i, _, _ in kept])
            return record.cache["eval"]
        if record.images is not None and res.val_indices:
            items = [trainable_subset(record.images).items[i] for i in res.val_indices]
        else:  # reopened after a restart, or a checkpoint: find the validation images by content
            items = [by_digest[d] for d in record.val_digests if d in by_digest]
        items = [i for i in items if i.label in res.classes]
        if not items:
            record.cache["eval"] = None
        else:
            spec = get_backbone_spec(record.config.backbone)
            ev = evaluate(res.model, ImageSet(items, (), res.classes), res.classes, spec.preprocess)
            record.cache["eval"] = (ev, items)
    return record.cache["eval"]


def familiarity(project: Project, record: RunRecord) -> Familiarity:
    """What the run's training images look like to its model (computed once per run), for the "not sure"
    cue on new images."""
    if "familiarity" not in record.cache:
        assert record.result is not None
        if record.images is not None and record.result.train_indices:
            items = [trainable_subset(record.images).items[i] for i in record.result.train_indices]
        else:  # reopened: the images it was fitted on (a frozen body's final head: every image)
            val = (set() if record.config.mode in FROZEN_BODY_MODES and record.config.max_images_per_class is None
                   else set(record.val_digests))
            items = [i for i in (record.images or project.images).items if i.digest not in val]
        spec = get_backbone_spec(record.config.backbone)
        record.cache["familiarity"] = Familiarity.of(record.result.model, ImageSet(items), record.result.classes,
                                                     spec.preprocess)
    return record.cache["familiarity"]


def export_model(project: Project, record: RunRecord, kind: str) -> tuple[Path, float]:
    """Export a run's model to TorchScript or ONNX inside its folder, checked against the in-app model
    on its validation images (training images when it has none). Returns (file, max difference)."""
    assert record.result is not None
    report = validation_report(project, record)
    items = report[1] if report else (record.images.items if record.images is not None else project.images.items)
    if not items:
        raise TLError("There are no images to check the export against.")
    spec = get_backbone_spec(record.config.backbone)
    check = ImageSet(items[:64]).stack(spec.preprocess).float().div(255.0)
    folder = project.folder / "runs" / record.id
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "torchscript":
        path = folder / "model.torchscript.pt"
        diff = export_torchscript(record.result.model, path, check)
    elif kind == "onnx":
        path = folder / "model.onnx"
        diff = export_onnx(record.result.model, path, check)
    else:
        raise TLError(f"Unknown export format {kind!r}: use 'torchscript' or 'onnx'.")
    return path, diff


def run_archive(project: Project, record: RunRecord) -> bytes | None:
    """The run's folder as zip bytes for a download, or None while it has no saved weights."""
    folder = project.folder / "runs" / record.id
    return archive_run(folder) if (folder / WEIGHTS).exists() else None


def import_run(project: Project, data: bytes) -> RunRecord:
    """Add a run from a zip made by the Export page; anything else is refused, nothing is executed."""
    run_id = f"run-{len(project.runs) + 1:03d}-{secrets.token_hex(2)}"
    folder = project.folder / "runs" / run_id
    try:
        saved = unpack_run_archive(data, folder)
    except TLError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    result = result_from_saved(saved)
    record = RunRecord(run_id, "imported: " + str(saved.meta.get("label") or saved.backbone), result.config,
                       "completed", "Loaded from a saved run.", result=result,
                       val_digests=list(saved.meta.get("val_digests", [])))
    with project._lock:
        project.runs.append(record)
        project.selected_run = run_id
    project.save()
    return record


def model_card(record: RunRecord) -> str:
    """A short Markdown model card for a finished run."""
    r = record.result
    assert r is not None
    spec = get_backbone_spec(r.config.backbone)
    acc = "n/a" if r.score is None else f"{r.score.text()} ({r.score.method})"
    p = spec.preprocess
    return (f"# Model card: {record.label}\n\n"
            f"- **Task:** image classification into {len(r.classes)} classes: {', '.join(r.classes)}\n"
            f"- **Backbone:** {spec.title}, pretrained on ImageNet-1k"
            f"{' (not used: trained from scratch)' if r.config.mode == 'scratch' else ''}\n"
            f"- **Strategy:** {describe(r.config)}; {r.trainable_params:,} of {r.total_params:,} parameters trained\n"
            f"- **Data:** {r.num_images} images, {len(r.val_indices)} held out for validation\n"
            f"- **Accuracy on held-out images:** {acc}\n"
            f"- **Input:** RGB, shorter side resized to {p.resize_size} px ({p.interpolation}), centre crop "
            f"{p.input_size} px, values scaled to [0, 1]; normalisation (mean {p.mean}, std {p.std}) is inside "
            f"the model\n"
            f"- **Limits:** trained on few images; it only knows these classes and will pick one of them for any "
            f"picture. Check it on your own test images before relying on it.\n")


def embedding_map(project: Project, record: RunRecord, method: str = "pca") -> dict:
    """2-D maps of the run's validation images: as the pretrained backbone sees them, and as the run's
    model does. Returns ``{"labels", "names", "pretrained": [N, 2], "trained": [N, 2]}`` (cached per method)."""
    key = f"map-{method}"
    if key not in record.cache:
        report = validation_report(project, record)
        items = report[1] if report else []
        if len(items) < 3:
            raise TLError("An embedding map needs at least three validation images: add images and train again.")
        images = ImageSet(items, (), record.result.classes)
        backbone = record.config.backbone
        record.cache[key] = {
            "labels": [i.label for i in items], "names": [i.name for i in items],
            "pretrained": project_2d(features_of(None, images, backbone), method).tolist(),
            "trained": project_2d(features_of(record.result.model, images, backbone), method).tolist()}
    return record.cache[key]


def describe(config: TrainConfig) -> str:
    """A short human label for a run's strategy."""
    spec = get_backbone_spec(config.backbone)
    n = len(spec.stage_names)
    if config.mode == "fine-tune":
        depth = config.resolved_freeze_depth()
        what = "full fine-tuning" if depth == 0 else f"fine-tuning, {depth}/{n} stages frozen"
    else:
        what = {"feature-extraction": "feature extraction", "scratch": "from scratch",
                "few-shot": "few-shot prototypes", "zero-shot": "zero-shot (no training images)"}[config.mode]
    return f"{spec.title}, {what}"


class ProjectRegistry:
    """The projects open in this server process, and which browser sessions hold them.

    Reopening a project that is live (a reload, a second tab) returns the same object, running
    jobs included. ``sweep`` lets go of projects whose sessions are all gone: after a grace period
    their jobs are stopped (best epochs kept), their memory is freed, and a project left empty
    (no images, no runs) is deleted from disk.
    """

    def __init__(self) -> None:
        self._live: dict[str, Project] = {}
        self._holders: dict[str, set[str]] = {}
        self._orphaned: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self, name: str, session_id: str) -> Project:
        name = check_project_name(name)
        with self._lock:
            project = self._live.get(name)
        if project is None:
            project = Project.open(name)
        return self.hold(project, session_id)

    def create(self, session_id: str, name: str | None = None) -> Project:
        return self.hold(Project.create(name), session_id)

    def hold(self, project: Project, session_id: str) -> Project:
        """Mark ``project`` as held by ``session_id`` (a session holds one project) and return the live
        object of that name. Pages call it on every run, so a session that lost its connection and came
        back, even after its project was released, holds the one live object again (never a second
        object on the same folder)."""
        with self._lock:
            project = self._live.setdefault(project.name, project)
            for holders in self._holders.values():
                holders.discard(session_id)
            self._holders.setdefault(project.name, set()).add(session_id)
            self._orphaned.pop(project.name, None)
        return project

    def open_link(self, key: str, session_id: str) -> tuple[Project, bool]:
        """The project a link's key gives: ``(project, read_only)``. Raises ``TLError`` for an unknown key."""
        if len(key) >= 16:
            with self._lock:
                live = next((p for p in self._live.values() if key in (p.key, p.view_key)), None)
            if live is not None:
                return self.hold(live, session_id), key == live.view_key
            for path in projects_root().glob("*/project.json"):
                try:
                    manifest = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(manifest, dict) and key in (manifest.get("key"), manifest.get("view_key")):
                    return self.open(path.parent.name, session_id), key == manifest.get("view_key")
        raise TLError("This link does not lead to a project on this server (it may have been deleted, or the "
                      "address was mistyped).")

    def get(self, name: str) -> Project | None:
        """The live project called ``name``, if any session holds it."""
        with self._lock:
            return self._live.get(name)

    def live(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def active_runs_of(self, owner: str) -> int:
        """Runs queued or training for ``owner`` (see ``Project.start_run``) in every live project."""
        with self._lock:
            projects = list(self._live.values())
        return sum(1 for p in projects for r in p.active_runs() if r.job is not None and r.job.spec.owner == owner)

    def sweep(self, is_alive: Callable[[str], bool], grace_s: float) -> list[str]:
        """Release projects no live session has held for ``grace_s`` seconds; returns their names."""
        now = time.time()
        released = []
        with self._lock:
            for name in list(self._live):
                # A session that is not alive now may only have lost its connection (Wi-Fi, a sleeping
                # laptop): it stays a holder and counts again once it reconnects.
                if any(is_alive(s) for s in self._holders.get(name, set())):
                    self._orphaned.pop(name, None)
                    continue
                since = self._orphaned.setdefault(name, now)
                if now - since >= grace_s:
                    released.append(self._live.pop(name))
                    self._holders.pop(name, None)
                    self._orphaned.pop(name, None)
        for project in released:
            gone = f"{grace_s:.0f} s" if grace_s < 120 else f"{grace_s / 60:.0f} min"
            project.stop_all(f"because no browser had the project open for {gone}")
            if not project.images.items and not project.images.classes and not project.runs:
                shutil.rmtree(project.folder, ignore_errors=True)
        return [p.name for p in released]


PROJECTS = ProjectRegistry()
