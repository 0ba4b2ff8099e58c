"""One run as the app shows it (``RunRecord``, and the kind of comparison it was trained in), and what the
pages derive from a finished run: its evaluation on images it did not train on, its
familiarity (the "not sure" cue), 2-D embedding maps, checked exports, the downloadable folder and the
model card. Each is computed once per run and server, under the run's own lock (two sessions asking at
once compute it once), and kept in the run's typed ``RunViews``."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..analysis.compare import features_of, project_2d
from ..core.errors import TLError
from ..data.images import ImageItem, ImageSet, trainable_subset
from ..engine.checkpoint import WEIGHTS, archive_run, export_onnx, export_torchscript
from ..engine.config import FROZEN_BODY_MODES, MODE_TITLES, RunState, TrainConfig
from ..engine.evaluate import Evaluation, Familiarity, evaluate
from ..engine.events import RunResult
from ..jobs.spec import Job
from ..models.backbones import get_backbone_spec
from ..models.model import to_float


class Project(Protocol):
    """What a view needs of the project a run belongs to: its images now, and its folder (``runs/<id>``)."""

    images: ImageSet

    @property
    def folder(self) -> Path: ...

Report = tuple[Evaluation, list[ImageItem]]


@dataclass(eq=False)
class RunViews:
    """A run's derived views, each None until first asked for (``report_done``: the report was computed,
    possibly to None when the run has no image it did not train on)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    report: Report | None = None
    report_done: bool = False
    familiarity: Familiarity | None = None
    maps: dict[str, dict] = field(default_factory=dict)  # method -> embedding map


ComparisonKind = Literal["ladder", "study", "race"]
#: each kind of comparison and the prefix of its runs' group id (saved in project.json: never renamed)
GROUP_PREFIXES: dict[ComparisonKind, str] = {"ladder": "compare", "study": "shots", "race": "race"}


def group_kind(group: str) -> ComparisonKind | None:
    """The kind of comparison a run's group id names; None for a run of its own."""
    return next((kind for kind, prefix in GROUP_PREFIXES.items() if group.startswith(prefix + "-")), None)


@dataclass(eq=False)
class RunRecord:
    """One run as the app shows it. Its status and reason have one owner each time they are read: the job
    while this server process has one for it (queued, training, or ended here), else what was saved
    (``saved_status``/``saved_reason``: from project.json and run.json when the project was reopened, or
    given when a run was imported)."""

    id: str
    label: str
    config: TrainConfig
    saved_status: RunState = "queued"  # read only when there is no job (see the class's docstring)
    saved_reason: str = ""
    job: Job | None = field(default=None, repr=False)  # started by this server process (kept once ended)
    result: RunResult | None = field(default=None, repr=False)  # the model and its figures, once it has a best epoch
    group: str = ""  # comparison this run belongs to ("" for a single run)
    shots: int | None = None
    created: float = field(default_factory=time.time)
    images: ImageSet | None = field(default=None, repr=False)  # the images it trained on (this session)
    val_digests: list[str] = field(default_factory=list)  # its validation images, to find them after a restart
    views: RunViews = field(default_factory=RunViews, repr=False)  # what pages derive from it, computed once

    @property
    def status(self) -> RunState:
        return self.saved_status if self.job is None else self.job.state

    @property
    def reason(self) -> str:
        if self.job is None:
            return self.saved_reason
        return self.job.finished.reason if self.job.finished is not None else ""

    @property
    def kind(self) -> ComparisonKind | None:
        """The comparison it was trained in (its group's kind); None for a run of its own."""
        return group_kind(self.group)

    @property
    def live(self) -> bool:
        """Queued or training on the runner."""
        return self.job is not None and self.job.alive


def validation_report(project: Project, record: RunRecord) -> tuple[Evaluation, list[ImageItem]] | None:
    """What the run's model gets right and wrong on images it did not train on (computed once per run), or
    None if it has none: its out-of-fold predictions on every image when it has them (a frozen-body model
    trains on every image in the end; each was predicted by a fold that had not seen it), else its model on
    its validation images."""
    with record.views.lock:
        if not record.views.report_done:
            record.views.report = _report(project, record)
            record.views.report_done = True
        return record.views.report


def _report(project: Project, record: RunRecord) -> Report | None:
    assert record.result is not None
    res = record.result
    pool = (record.images.items if record.images is not None else []) + project.images.items
    by_digest = {i.digest: i for i in reversed(pool)}
    if res.heldout:
        kept = [(by_digest[d], t, p) for d, t, p in res.heldout if d in by_digest]
        return None if not kept else (Evaluation(
            classes=res.classes, labels=tuple(t for _, t, _ in kept),
            predictions=tuple(max(range(len(p)), key=p.__getitem__) for _, _, p in kept),
            probabilities=tuple(p for _, _, p in kept), names=tuple(i.name for i, _, _ in kept)),
            [i for i, _, _ in kept])
    if record.images is not None and res.val_indices:
        items = [trainable_subset(record.images).items[i] for i in res.val_indices]
    else:  # reopened after a restart, or a checkpoint: find the validation images by content
        items = [by_digest[d] for d in record.val_digests if d in by_digest]
    items = [i for i in items if i.label in res.classes]
    if not items:
        return None
    spec = get_backbone_spec(record.config.backbone)
    return evaluate(res.model, ImageSet(items, (), res.classes), res.classes, spec.preprocess), items


def familiarity(project: Project, record: RunRecord) -> Familiarity:
    """What the run's training images look like to its model (computed once per run), for the "not sure"
    cue on new images."""
    with record.views.lock:
        if record.views.familiarity is None:
            record.views.familiarity = _familiarity(project, record)
        return record.views.familiarity


def _familiarity(project: Project, record: RunRecord) -> Familiarity:
    assert record.result is not None
    if record.images is not None and record.result.train_indices:
        items = [trainable_subset(record.images).items[i] for i in record.result.train_indices]
    else:  # reopened: the images it was fitted on (a frozen body's final head: every image)
        val = (set() if record.config.mode in FROZEN_BODY_MODES and record.config.max_images_per_class is None
               else set(record.val_digests))
        items = [i for i in (record.images or project.images).items if i.digest not in val]
    spec = get_backbone_spec(record.config.backbone)
    return Familiarity.of(record.result.model, ImageSet(items), record.result.classes, spec.preprocess)


def export_model(project: Project, record: RunRecord, kind: str) -> tuple[Path, float]:
    """Export a run's model to TorchScript or ONNX inside its folder, checked against the in-app model
    on its validation images (training images when it has none). Returns (file, max difference)."""
    assert record.result is not None
    report = validation_report(project, record)
    items = report[1] if report else (record.images.items if record.images is not None else project.images.items)
    if not items:
        raise TLError("There are no images to check the export against.")
    spec = get_backbone_spec(record.config.backbone)
    check = to_float(ImageSet(items[:64]).stack(spec.preprocess), channels_last=False)
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
    with record.views.lock:
        if method not in record.views.maps:
            record.views.maps[method] = _embedding_map(project, record, method)
        return record.views.maps[method]


def _embedding_map(project: Project, record: RunRecord, method: str) -> dict:
    report = validation_report(project, record)
    items = report[1] if report else []
    if len(items) < 3:
        raise TLError("An embedding map needs at least three validation images: add images and train again.")
    images = ImageSet(items, (), record.result.classes)
    backbone = record.config.backbone
    return {
        "labels": [i.label for i in items], "names": [i.name for i in items],
        "pretrained": project_2d(features_of(None, images, backbone), method).tolist(),
        "trained": project_2d(features_of(record.result.model, images, backbone), method).tolist()}


def describe(config: TrainConfig) -> str:
    """A short human label for a run's strategy."""
    spec = get_backbone_spec(config.backbone)
    n = len(spec.stage_names)
    if config.mode == "fine-tune":
        depth = config.resolved_freeze_depth()
        what = "full fine-tuning" if depth == 0 else f"fine-tuning, {depth}/{n} stages frozen"
    else:
        what = MODE_TITLES[config.mode] + (" (no training images)" if config.mode == "zero-shot" else "")
    return f"{spec.title}, {what}"
