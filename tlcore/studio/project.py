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
import logging
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..analysis.compare import plan, shared_split
from ..core.errors import TLError
from ..core.limits import LimitError, folder_mb
from ..core.settings import settings
from ..core.storage import atomic_write, atomic_write_all
from ..data.images import ImageItem, ImageSet, Rejected, image_to_tensor, tensor_to_image, trainable_subset
from ..engine.checkpoint import WEIGHTS, RunMeta, lazy_result, result_from_saved, unpack_run_archive
from ..engine.config import FROZEN_BODY_MODES, TrainConfig
from ..engine.events import RunFinished, RunResult
from ..engine.train import run_split
from ..jobs.runner import get_runner
from ..jobs.spec import SERVER_GONE, JobSpec, Training, short_run
from ..models.backbones import DEFAULT_BACKBONE
from .run_views import GROUP_PREFIXES, ComparisonKind, RunRecord, describe

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def projects_root() -> Path:
    root = settings().home / "projects"
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
            value.capacity = settings().limits.images_per_project
        super().__setattr__(name, value)

    # ----------------------------------------------------------------- runs

    def run(self, run_id: str | None) -> RunRecord | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def finished_runs(self) -> list[RunRecord]:
        """Runs with a model (completed, or stopped, failed or interrupted after a best epoch)."""
        return [r for r in list(self.runs) if r.result is not None and not r.live]

    def active_runs(self) -> list[RunRecord]:
        """Runs queued or training."""
        return [r for r in list(self.runs) if r.live]

    def check_room(self, config: TrainConfig, runs: int = 1, owner: str | None = None) -> None:
        """Raise ``LimitError`` if starting ``runs`` runs of ``config`` for ``owner`` (a student: every tab and
        project of theirs together) would pass one of this server's limits (``Limits``)."""
        limits = settings().limits
        if config.epochs > limits.epochs:
            raise LimitError(limits.message("epochs", "The number of epochs of one run") + " Choose fewer.")
        mine = len(self.active_runs())
        if mine + runs > limits.queued_runs:
            raise LimitError(limits.message("queued_runs", "The number of runs queued or training at once") +
                             f" This project has {mine}: wait for one to finish, or stop one.")
        theirs = get_runner().active(owner or self.name)
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

        def on_finish(_finished: RunFinished) -> None:  # on the runner's event thread, once: nothing heavy
            record.result = _load_result(folder)  # run.json and the weights' header (the weights load when used)

        spec = JobSpec(record.label, owner or self.name, images, config,
                       Training((list(split[0]), list(split[1])), record.label, tuple(record.val_digests),
                                settings().limits.run_minutes * 60), folder)
        with self._lock:
            self.runs.append(record)
            self.selected_run = record.id
            record.job = get_runner().submit(spec, on_finish, after=after.job if after is not None else None)
        record.job.add_done_callback(lambda: save_soon(self))  # its final status, on the saver's thread
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

        Returns the group id that tags the runs (its prefix says their ``ComparisonKind``: ``GROUP_PREFIXES``).
        """
        base = self._comparison_base(epochs)
        planned_runs = plan(strategies, base, shots, backbones)
        self.check_room(base, len(planned_runs), owner)  # all of it, or none
        split = shared_split(self.images, base)
        kind: ComparisonKind = "race" if backbones else "study" if shots else "ladder"
        group = f"{GROUP_PREFIXES[kind]}-{secrets.token_hex(3)}"
        previous = None
        for planned in planned_runs:
            previous = self.start_run(planned.config, planned.label, group, planned.shots, previous,
                                      None if planned.shots else split, owner, checked=True)
        return group

    def comparison_runs(self, strategies: list[str], shots: list[int | None] | None = None,
                        backbones: list[str] | None = None) -> int:
        """How many runs ``start_comparison`` would queue (in a study zero-shot runs once: it uses no photo)."""
        return len(plan(strategies, self._comparison_base(None), shots, backbones))

    def comparison_seconds(self, strategies: list[str], shots: list[int | None] | None = None,
                           epochs: int | None = None, backbones: list[str] | None = None,
                           owner: str | None = None, wait: bool = True) -> float:
        """About how long ``start_comparison(strategies, shots, epochs)`` takes here, from now: the runs one
        after another (the features computed once, by its first frozen-body run), taking turns with the
        work the server's workers already have (``forecast``). ``wait=False`` (a page's path): raises
        ``SpeedUnknown`` rather than time a backbone, which on a busy server held the page's run for minutes."""
        from ..analysis.profile import estimate_run_seconds

        base = self._comparison_base(epochs)
        train, val = shared_split(self.images, base)
        classes = self.images.filled_classes()
        runs, cached = [], set()
        for p in plan(strategies, base, shots, backbones):
            n = len(val) + len(train) if p.shots is None else min(len(train) + len(val), p.shots * classes)
            seconds = estimate_run_seconds(p.config, n, features_cached=p.config.backbone in cached, wait=wait,
                                           classes=classes)
            runs.append((owner or self.name, short_run(p.config), seconds))
            if p.config.mode in FROZEN_BODY_MODES:
                cached.add(p.config.backbone)
        _ends, planned = get_runner().forecast(runs)
        return planned[-1] if planned else 0.0

    def group_seconds_left(self, group: str) -> float:
        """About how long until the group's last run ends, the other owners' queued work counted."""
        live = [r.job.id for r in self.group_runs(group) if r.job is not None and r.job.alive]
        if not live:
            return 0.0
        ends, _ = get_runner().forecast()
        return max(ends.get(i, 0.0) for i in live)

    def group_runs(self, group: str) -> list[RunRecord]:
        return [r for r in list(self.runs) if r.group == group]

    def latest_group(self, kind: ComparisonKind) -> str | None:
        """The group id of the project's latest comparison of ``kind`` (None: it has none)."""
        return next((r.group for r in reversed(list(self.runs)) if r.kind == kind), None)

    def stop_all(self, by: str = "by the user") -> None:
        """Stop its runs (best epochs kept); its analyses are the server's (``ProjectRegistry.stop``)."""
        for r in self.active_runs():
            assert r.job is not None
            r.job.stop(by)

    def delete_run(self, run_id: str) -> None:
        record = self.run(run_id)
        if record is None:
            return
        if record.live:
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
            atomic_write_all([(path, lambda p, item=item: tensor_to_image(item.pixels).save(p, "PNG", compress_level=1))
                              for item in items if not (path := folder / "images" / f"{item.digest}.png").exists()])
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
            project.runs.append(_saved_run(folder / "runs" / r["id"], r, TrainConfig(
                **{k: v for k, v in r["config"].items() if k in known})))
        return project


class _Saver:
    """One thread that saves projects off the threads that ask (the runner's event thread must never wait
    on a disk write): a project asked for twice before its turn is saved once."""

    def __init__(self) -> None:
        self._due: dict[int, Project] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, project: Project) -> None:
        with self._cond:
            self._due[id(project)] = project
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tls-project-saver", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                project = self._due.pop(next(iter(self._due)))
            try:
                project.save()
            except Exception:  # noqa: BLE001  a full disk must not end the saver; the next save tries again
                logging.getLogger(__name__).exception("could not save project %s", project.name)


save_soon = _Saver().submit  # save a project on the saver's thread, soon


def _saved_run(run_folder: Path, entry: dict, config: TrainConfig) -> RunRecord:
    """A run of a reopened project: project.json's entry, its status and reason as saved; a run that was
    queued or training then either finished before the server stopped (its run.json says how) or was
    interrupted (its best epoch checkpointed, if it had one)."""
    status, reason = entry["status"], entry.get("reason", "")
    result, meta = None, None
    if (run_folder / WEIGHTS).exists():
        try:  # the weights themselves load when the model is first used
            meta = RunMeta.read(run_folder)
            result = lazy_result(run_folder, meta)
        except TLError as e:
            reason = f"{reason} (its weights could not be loaded: {e})".strip()
    if status in ("queued", "running"):
        if meta is not None and meta.status in ("completed", "stopped", "failed"):
            status, reason = meta.status, meta.reason or "It finished before the server stopped."
        elif result is not None:
            status, reason = "interrupted", SERVER_GONE
        else:
            status, reason = "interrupted", "The server stopped before this run finished its first epoch; nothing to keep."
    return RunRecord(entry["id"], entry["label"], config, status, reason, result=result, group=entry.get("group", ""),
                     shots=entry.get("shots"), created=entry.get("created", 0.0),
                     val_digests=list(meta.val_digests) if meta is not None else [])


def _load_result(folder: Path) -> RunResult | None:
    """A run's result from its folder (complete, or the best epoch checkpointed before it ended)."""
    if not (folder / WEIGHTS).exists():
        return None
    try:
        return lazy_result(folder)
    except TLError:
        return None


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
    record = RunRecord(run_id, "imported: " + (saved.meta.label or saved.backbone), result.config,
                       "completed", "Loaded from a saved run.", result=result,
                       val_digests=list(saved.meta.val_digests))
    with project._lock:
        project.runs.append(record)
        project.selected_run = run_id
    project.save()
    return record
