"""What one web server process keeps for its class, in one owner: ``Server`` (the process's is ``SERVER``).

Each part is a class of its own layer, bounded, and made here once: the live projects and the sessions that
hold them (``ProjectRegistry``, released by its sweep), the analyses started for them (``LiveAnalyses``: ended
ones let go, at most ``FAILED_KEPT`` failed ones kept), the teacher's keys (``TeacherKeys``: at most
``TEACHER_KEYS_KEPT``) and the challenges' decoded hidden images (``HiddenSets``: at most ``HIDDEN_KEPT``). The
runner the work goes to is the process's ``get_runner()`` (a test or a cluster sets another with ``set_runner``).
A test that wants a server of its own makes a ``Server()``.
"""
from __future__ import annotations

from ..jobs.analyses import LiveAnalyses
from ..jobs.runner import get_runner
from ..jobs.spec import Runner
from .challenge import HiddenSets
from .lesson import TeacherKeys
from .registry import ProjectRegistry


class Server:
    """The web server's state: its projects, their analyses, the teacher's keys, the hidden challenge sets."""

    def __init__(self) -> None:
        self.analyses = LiveAnalyses()
        self.teacher = TeacherKeys()
        self.hidden = HiddenSets()
        self.projects = ProjectRegistry(self.analyses)  # a project's analyses stop with it

    @property
    def runner(self) -> Runner:
        """Where its work runs: the process's runner (a worker pool, or Ray)."""
        return get_runner()

    def sizes(self) -> dict[str, int]:
        """How much of each part it holds now (each is bounded; the Teacher page and the tests read them)."""
        return {"projects": len(self.projects.live()), "analyses": len(self.analyses),
                "teacher_keys": len(self.teacher), "hidden_sets": len(self.hidden)}


SERVER = Server()  # this process's

__all__ = ["SERVER", "Server"]
