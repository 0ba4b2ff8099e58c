"""The projects open in this server process (the server object's ``projects``), and which browser sessions hold
them."""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable

from ..core.errors import TLError
from ..jobs.analyses import LiveAnalyses
from .project import Project, check_project_name, projects_root


class ProjectRegistry:
    """The projects open in this server process, and which browser sessions hold them.

    Reopening a project that is live (a reload, a second tab) returns the same object, running
    jobs included. ``sweep`` lets go of projects whose sessions are all gone: after a grace period
    their jobs are stopped (best epochs kept), their memory is freed, and a project left empty
    (no images, no runs) is deleted from disk.
    """

    def __init__(self, analyses: LiveAnalyses | None = None) -> None:
        self._analyses = LiveAnalyses() if analyses is None else analyses  # the server's: stopped with a project
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
            self.stop(project, f"because no browser had the project open for {gone}")
            if not project.images.items and not project.images.classes and not project.runs:
                shutil.rmtree(project.folder, ignore_errors=True)
        return [p.name for p in released]

    def stop(self, project: Project, by: str = "by the user") -> None:
        """Stop the project's runs (best epochs kept) and its analyses (transferability scores, stage probes,
        learning-rate finders, data checks)."""
        project.stop_all(by)
        self._analyses.stop(project.folder)
