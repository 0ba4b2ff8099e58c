"""What one student may use of a shared server: limits whoever starts the server sets by environment
variables (README, *Settings*). Each default lets a class's lesson run untouched and stops one greedy or
unlucky student (ten runs, a 500-epoch run, a folder of 30,000 photos) from taking the server from the
others. A limit that is hit raises ``LimitError``, whose message says the limit and who can change it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import TLError


class LimitError(TLError):
    """A per-student limit of this server was reached."""


@dataclass(frozen=True)
class Limits:
    #: Decoded images stay in the server's memory (about 0.2 MB each), so one project's images are bounded.
    images_per_project: int = 1000
    #: Disk per project: its saved images and every run's weights; new runs are refused beyond it.
    project_mb: int = 1000
    #: Runs queued or training at once, per student (all their projects and tabs together) and per project:
    #: a ladder and a study fit; ten extra tabs do not buy ten times the queue.
    queued_runs: int = 20
    #: Epochs one run may ask for (the Train page allows 500).
    epochs: int = 200
    #: Wall-clock minutes one run may hold a worker; past it the run stops, keeping its best epoch.
    run_minutes: float = 30.0
    #: Frames per second the camera records into a class (each is decoded and stored by the server).
    camera_fps: float = 3.0

    ENV = {"images_per_project": "TLS_MAX_IMAGES", "project_mb": "TLS_MAX_PROJECT_MB",
           "queued_runs": "TLS_MAX_QUEUED_RUNS", "epochs": "TLS_MAX_EPOCHS", "run_minutes": "TLS_MAX_RUN_MINUTES",
           "camera_fps": "TLS_CAMERA_FPS"}

    def message(self, field: str, what: str) -> str:
        """'<what> is limited to <value> on this server (TLS_…; whoever starts the server can change it).'"""
        value = getattr(self, field)
        shown = f"{value:g}" if isinstance(value, float) else f"{value:,}"
        return (f"{what} is limited to {shown} on this server ({self.ENV[field]}; whoever starts the server, "
                f"usually the teacher, can change it).")


def folder_mb(path: os.PathLike | str) -> float:
    """Megabytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 2**20
