"""The web server's side of the analyses (``tlcore.jobs.analyses``): each started once, and let go of once it has
ended, so that a server running for weeks does not keep every version of every project's images."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from tests.conftest import eventually
from tests.engine.test_jobs_projects import TINY
from tlcore.jobs import analyses
from tlcore.studio.registry import ProjectRegistry


def test_an_analysis_starts_once_and_is_let_go_of_when_its_result_is_on_disk(tiny_set, tmp_path):
    config = dataclasses.replace(TINY, mode="feature-extraction")
    live = analyses.LiveAnalyses()
    first = live.start(tmp_path, "data-check", tiny_set, config, "student")
    again = live.start(tmp_path, "data-check", tiny_set, config, "student")  # a double click
    assert (first.running or first.result) and len(live) <= 1
    state = eventually(lambda: (s := live.state(tmp_path, "data-check", tiny_set, config)).result and s,
                       timeout=120, what="the data check's result")
    assert state.result is not None and again.error is None
    assert len(live) == 0  # its job (and its images' snapshot) let go


def test_ended_jobs_are_let_go_of_but_the_last_failures(monkeypatch):
    def job(status):
        return SimpleNamespace(finished=None if status is None else SimpleNamespace(status=status))

    live = {}
    live.update({f"failed {k}": job("failed") for k in range(5)})
    live.update({"running": job(None), "done": job("completed"), "stopped": job("stopped")})
    live.update({f"failed {k}": job("failed") for k in range(5, 8)})
    analysed = analyses.LiveAnalyses()
    monkeypatch.setattr(analysed, "_live", live)
    monkeypatch.setattr(analyses, "FAILED_KEPT", 3)
    analysed._prune()
    assert list(live) == ["running", "failed 5", "failed 6", "failed 7"]  # the newest failures, shown until forgotten


def test_a_projects_analyses_are_stopped_and_let_go_of_when_its_sessions_have_gone(monkeypatch, tmp_path):
    stopped = []
    mine = SimpleNamespace(finished=None, stop=lambda: stopped.append("mine"))
    theirs = SimpleNamespace(finished=None, stop=lambda: stopped.append("theirs"))
    live = {tmp_path / "a" / "analyses" / "x": mine, tmp_path / "b" / "analyses" / "x": theirs}
    analysed = analyses.LiveAnalyses()
    monkeypatch.setattr(analysed, "_live", live)
    projects = ProjectRegistry(analysed)  # the server's: it stops a project's analyses with its runs
    projects.stop(SimpleNamespace(folder=tmp_path / "a", stop_all=lambda by: stopped.append(f"runs {by}")))
    assert stopped == ["runs by the user", "mine"] and list(live) == [tmp_path / "b" / "analyses" / "x"]
