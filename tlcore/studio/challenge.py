"""A class challenge: the teacher's hidden test set, students' entries, a leaderboard.

The hidden images live under ``<home>/challenges/<id>/`` (the uploaded zip, checked as every zip is),
apart from every project. Students never see them: an entry is scored on the server and only the
scores come back (accuracy and per-class recall). Class names match case-insensitively; a run that
lacks one of the challenge's classes is told which.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import TLError
from ..core.measure import Score
from ..core.storage import atomic_write
from ..data.images import ImageItem, ImageSet, load_zip
from ..engine.evaluate import evaluate
from ..engine.events import RunResult
from ..models.backbones import get_backbone_spec
from .project import Project, projects_root
from .run_views import RunRecord, describe

_LOCK = threading.Lock()  # one board edit at a time in this process (two sessions entering at once)
HIDDEN_KEPT = 2  # decoded sets kept (the current challenge and one more): a server running for weeks stays bounded


class HiddenSets:
    """The challenges' decoded hidden images (the server object's ``hidden``), the least recently used forgotten
    beyond ``HIDDEN_KEPT`` and decoded again from the challenge's zip when next needed."""

    def __init__(self) -> None:
        self._sets: OrderedDict[str, ImageSet] = OrderedDict()  # challenge id -> its images, newest used last
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sets)

    def ids(self) -> list[str]:
        """The challenges whose images are kept, least recently used first."""
        return list(self._sets)

    def of(self, challenge: Challenge) -> ImageSet:
        with self._lock:
            images = self._sets.get(challenge.id)
            if images is None:
                images = load_zip((challenge.folder / "hidden.zip").read_bytes())
            self._keep(challenge.id, images)
            return images

    def keep(self, challenge: Challenge, images: ImageSet) -> None:
        """Keep a new challenge's images as decoded when it was made (its first score decodes nothing again)."""
        with self._lock:
            self._keep(challenge.id, images)

    def _keep(self, challenge_id: str, images: ImageSet) -> None:
        self._sets[challenge_id] = images
        self._sets.move_to_end(challenge_id)
        while len(self._sets) > HIDDEN_KEPT:
            self._sets.popitem(last=False)


@dataclass(frozen=True)
class Entry:
    student: str
    project: str  # the project's name (never its key: the board is public)
    run_id: str
    strategy: str
    mode: str
    train_images: int
    accuracy: float
    recall: dict[str, float]
    entered: float = field(default_factory=time.time)
    right: int = 0  # of ``hidden``: "on the teacher's hidden photos: 9 of 11"
    hidden: int = 0

    def text(self) -> str:
        return f"{self.right} of {self.hidden}"


@dataclass
class Challenge:
    id: str
    name: str
    classes: list[str]
    counts: dict[str, int]
    created: float
    entries: list[Entry] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return challenges_root() / self.id

    def leaderboard(self) -> list[Entry]:
        """Best accuracy first; at equal accuracy, the entry that needed fewer training images."""
        return sorted(self.entries, key=lambda e: (-e.accuracy, e.train_images, e.entered))

    def best_entries(self) -> list[Entry]:
        """One row per student: each project's best entry, in leaderboard order."""
        best: dict[str, Entry] = {}
        for e in self.leaderboard():
            best.setdefault(e.project, e)
        return list(best.values())

    def rank(self, accuracy: float) -> int:
        """The board's rank of a score: 1 + the number of students who did better, so ties share a rank."""
        return 1 + sum(e.accuracy > accuracy for e in self.best_entries())

    def _save(self) -> None:
        data = {**asdict(self), "entries": [asdict(e) for e in self.entries]}
        atomic_write(self.folder / "challenge.json", lambda p: Path(p).write_text(json.dumps(data, indent=1)))

    def score(self, result: RunResult, hidden: HiddenSets) -> tuple[Score, dict[str, float]]:
        """A finished run's accuracy on the hidden images (``hidden.of(self)``, with its interval) and its recall
        per challenge class: the common yardstick when runs are compared. Nothing is stored."""
        own = {c.lower(): c for c in result.classes}
        missing = [c for c in self.classes if c.lower() not in own]
        if missing:
            raise TLError(f"Your model has no class for {', '.join(missing)}: the challenge's classes are "
                          f"{', '.join(self.classes)}. Name your classes the same (capitals do not matter).")
        items = [ImageItem(i.name, own[i.label.lower()], i.digest, i.pixels) for i in hidden.of(self).items]
        ev = evaluate(result.model, ImageSet(items, (), list(result.classes)), result.classes,
                      get_backbone_spec(result.config.backbone).preprocess)
        recall = {c: r for c, _, r, support in ev.precision_recall() if support}
        return (ev.score(f"the challenge's {len(items)} hidden images"),
                {c: recall.get(own[c.lower()], 0.0) for c in self.classes})

    def enter(self, project: Project, record: RunRecord, student: str, hidden: HiddenSets) -> Entry:
        """Score a finished run on the hidden images and put it on the board (again: it replaces the
        student's earlier entry of the same run)."""
        student = " ".join(student.split())[:40]
        if not student:
            raise TLError("Type a name for the leaderboard first.")
        result = record.result
        if result is None:
            raise TLError("This run has no trained model to enter.")
        score, recall = self.score(result, hidden)
        entry = Entry(student, project.name, record.id, describe(result.config), result.config.mode,
                      len(result.train_indices), score.accuracy, recall, right=score.right, hidden=score.n)
        with _LOCK:  # entries of other sessions made meanwhile are on disk: merge with those
            self.entries = [e for e in _read(self.folder).entries
                            if (e.project, e.run_id) != (project.name, record.id)] + [entry]
            self._save()
        return entry


def challenges_root() -> Path:
    root = projects_root().parent / "challenges"
    root.mkdir(parents=True, exist_ok=True)
    return root


def create_challenge(name: str, zip_bytes: bytes, hidden: HiddenSets | None = None) -> Challenge:
    """A new challenge from a zip of class folders; it becomes the current one. ``hidden`` (the server's) keeps
    its decoded images."""
    name = " ".join(name.split())[:60]
    if not name:
        raise TLError("Give the challenge a name.")
    images = load_zip(zip_bytes)
    counts = {c: n for c, n in images.counts().items() if n}
    if len(counts) < 2:
        raise TLError("A challenge needs hidden images of at least two classes (one folder per class in the zip).")
    challenge = Challenge(f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}", name, list(counts), counts,
                          time.time())
    challenge.folder.mkdir(parents=True)
    atomic_write(challenge.folder / "hidden.zip", lambda p: Path(p).write_bytes(zip_bytes))
    with _LOCK:
        challenge._save()
    if hidden is not None:
        hidden.keep(challenge, images)
    return challenge


def current_challenge() -> Challenge | None:
    """The newest challenge on this server, or None."""
    found = [_read(p) for p in challenges_root().iterdir() if (p / "challenge.json").exists()]
    return max(found, key=lambda c: c.created, default=None)


def _read(folder: Path) -> Challenge:
    data = json.loads((folder / "challenge.json").read_text())
    hidden = sum(data.get("counts", {}).values())
    # entries made before they kept their count: the accuracy of the hidden photos, in whole photos
    data["entries"] = [Entry(**{"right": round(e["accuracy"] * hidden), "hidden": hidden, **e})
                       for e in data.get("entries", [])]
    return Challenge(**data)
