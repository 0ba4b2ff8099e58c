"""Running a lesson: the server's addresses for students, the class kit, the class's progress, teacher links.

* Addresses: students join from their own devices, so every link the app shows names this machine's
  network address (or ``TLS_PUBLIC_URL`` when set, e.g. behind a proxy), never ``localhost``.
* The class kit: one dataset (and optionally a backbone and a strategy) that every student who joins
  copies into a project of their own. It lives in ``<home>/kit/`` (``data.zip`` + ``kit.json``, each
  written atomically), beside ``<home>/challenges/``.
* Teacher links: after the password, the teacher's address carries a random key kept in this server's
  memory, so a reload (the projector tab) needs no password; logging out forgets the key.
"""
from __future__ import annotations

import dataclasses
import functools
import hmac
import io
import json
import secrets
import socket
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import TLError
from ..core.measure import Score
from ..core.settings import settings
from ..core.storage import atomic_write
from ..data.images import IMAGE_SUFFIXES, ImageSet, load_zip
from ..engine.config import MODES
from .project import Project, projects_root

# ----------------------------------------------------------------------------- addresses


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses that other devices on its networks can reach (no loopback), the one
    that routes outwards first. Found without the internet: nothing is sent."""
    found: list[str] = []
    try:  # connecting a UDP socket only picks the outgoing interface; no packet leaves
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            found.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        found += [str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    return [a for a in dict.fromkeys(found) if not a.startswith(("127.", "0."))]


def server_urls(port: int, https: bool, path: str = "") -> list[str]:
    """The addresses of this server's ``path`` as students' devices reach it: ``TLS_PUBLIC_URL`` when set,
    else one per network address (``localhost`` when the machine has none)."""
    path = path.lstrip("/")
    if public := settings().public_url:
        return [f"{public.rstrip('/')}/{path}"]
    return [f"{'https' if https else 'http'}://{host}:{port}/{path}" for host in lan_addresses() or ["localhost"]]


# ----------------------------------------------------------------------------- the class kit


@dataclass(frozen=True)
class ClassKit:
    name: str  # what the teacher chose (a sample's name or the zip's file name)
    counts: dict[str, int]  # images per class
    backbone: str | None  # given to every student's project; None: the project's default
    mode: str | None  # the strategy (a ``TrainConfig.mode``); None: the default
    created: float

    def images(self) -> ImageSet:
        """The kit's decoded images (decoded once per kit, shared read-only by every copy)."""
        with _LOCK:  # 30 students joining at once wait for one decoding, not 30
            return _kit_images(self.created)

    def start(self, project: Project) -> None:
        """Give ``project`` its own copy of the kit: the images (replacing any), the backbone, the strategy."""
        kit = self.images()
        project.images = ImageSet(kit.items, (), kit.classes)
        if self.backbone:  # as the Backbone page sets it
            project.backbone = self.backbone
            project.settings = dataclasses.replace(project.settings, backbone=self.backbone, freeze_depth=None)
        if self.mode:
            project.settings = dataclasses.replace(project.settings, mode=self.mode)
        project.save()


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)  # the current kit's only: a new kit replaces it
def _kit_images(created: float) -> ImageSet:
    return load_zip((kit_root() / "data.zip").read_bytes())


def kit_root() -> Path:
    return projects_root().parent / "kit"


def folder_zip(folder: Path) -> bytes:
    """A folder of class folders (e.g. a bundled sample) as the zip a teacher would upload."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.glob("*/*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                zf.write(f, f"{f.parent.name}/{f.name}")
    return out.getvalue()


def create_kit(name: str, zip_bytes: bytes, backbone: str | None = None, mode: str | None = None) -> ClassKit:
    """The class kit from a zip of class folders; it replaces the previous one (projects made from it keep
    their copies)."""
    if mode is not None and mode not in MODES:
        raise TLError(f"'{mode}' is not a strategy: choose one of {', '.join(MODES)}.")
    images = load_zip(zip_bytes)
    counts = {c: n for c, n in images.counts().items() if n}
    if len(counts) < 2:
        raise TLError(f"The class kit '{name}' needs images of at least two classes (one folder per class).")
    kit = ClassKit(name, counts, backbone, mode, time.time())
    atomic_write(kit_root() / "data.zip", lambda p: Path(p).write_bytes(zip_bytes))
    text = json.dumps(dataclasses.asdict(kit), indent=1)
    atomic_write(kit_root() / "kit.json", lambda p: Path(p).write_text(text))
    return kit


def current_kit() -> ClassKit | None:
    """This server's class kit, or None."""
    try:
        return ClassKit(**json.loads((kit_root() / "kit.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------- the class's progress


@dataclass(frozen=True)
class StudentProgress:
    student: str  # the name they gave, or their project's name until they give one
    project: str
    step: str  # the step they are on: Data, Train, Evaluate, Challenge (entered)
    images: int
    runs: int  # finished runs
    best: Score | None  # their best run's score (right of n photos it had not trained on), as their pages show it
    idle: bool  # still no images, ``stuck_after_s`` after their project was made


def class_progress(projects: list[Project], entered: set[str], stuck_after_s: float,
                   now: float | None = None) -> list[StudentProgress]:
    """Where each project's student is, judged as the step bar judges it (images in two classes, then a
    finished run), then whether the project is on the challenge's board (``entered``: project names)."""
    now = time.time() if now is None else now
    rows = []
    for p in projects:
        finished = p.finished_runs()
        scores = [r.result.score for r in finished if r.result.score is not None]
        has_data = sum(n > 0 for n in p.images.counts().values()) >= 2
        step = ("Challenge" if p.name in entered else "Evaluate" if finished else "Train" if has_data else "Data")
        rows.append(StudentProgress(p.student or p.name, p.name, step, len(p.images), len(finished),
                                    max(scores, key=lambda s: (s.accuracy, s.n), default=None),
                                    not len(p.images) and now - p.created > stuck_after_s))
    return sorted(rows, key=lambda r: r.student.lower())


# ----------------------------------------------------------------------------- teacher links

#: Teacher keys valid at once (the teacher's laptop, phone, projector...): a new login beyond them ends the oldest.
TEACHER_KEYS_KEPT = 16


class TeacherKeys:
    """The teacher's keys given out by this server (the server object's ``teacher``), oldest first and at most
    ``TEACHER_KEYS_KEPT``, and the projector view's key (one per server run): it opens the leaderboard alone, what
    the room sees anyway, never the Teacher page. The projector's address bar, in every student's view, gives
    nothing away."""

    def __init__(self) -> None:
        self._keys: dict[str, None] = {}
        self._lock = threading.Lock()
        self.board_key = secrets.token_urlsafe(12)

    def __len__(self) -> int:
        return len(self._keys)

    def login(self, typed: str, password: str) -> str | None:
        """A new teacher key (for the teacher's address) if ``typed`` is the password, else None."""
        if not password or not hmac.compare_digest(typed.encode(), password.encode()):
            return None
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._keys[key] = None
            while len(self._keys) > TEACHER_KEYS_KEPT:
                del self._keys[next(iter(self._keys))]
        return key

    def ok(self, key: str | None) -> bool:
        return bool(key) and key in self._keys

    def logout(self, key: str | None) -> None:
        with self._lock:
            self._keys.pop(key or "", None)

    def board_ok(self, key: str | None) -> bool:
        return bool(key) and hmac.compare_digest(str(key).encode(), self.board_key.encode())
