"""Per-student limits on a shared server: each one that is hit says what it is and who can change it;
whatever fits is kept; one student's tabs and projects share one queue."""
from __future__ import annotations

import dataclasses
import io
import threading
import time
import zipfile

import pytest

import tlcore
from tests.conftest import ROOT, class_files
from tests.engine.test_jobs_projects import TINY, spec
from tlcore import ImageSet, LimitError, Limits, Project, settings
from tlcore.jobs.spec import run_job


def test_limits_come_from_the_environment_and_say_who_changes_them(setenv):
    for name in Limits.ENV.values():
        setenv(name, None)
    assert settings().limits == Limits()
    setenv("TLS_MAX_EPOCHS", "12")
    setenv("TLS_MAX_RUN_MINUTES", "0.5")
    limits = settings().limits
    assert (limits.epochs, limits.run_minutes) == (12, 0.5)
    assert "limited to 12 on this server (TLS_MAX_EPOCHS; whoever starts the server" in limits.message("epochs", "x")
    setenv("TLS_MAX_EPOCHS", "lots")
    with pytest.raises(tlcore.TLError, match="TLS_MAX_EPOCHS='lots' is not a number"):
        settings().limits


def test_a_full_project_keeps_what_fits_and_refuses_the_rest_undecoded(setenv):
    setenv("TLS_MAX_IMAGES", "10")
    p = Project.create()
    files = class_files(6)  # 18 images
    rejected = p.images.add(files[:8])
    assert not rejected and p.images.room() == 2
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, label in files[8:]:
            zf.writestr(f"{label}/{name}", data)
    # The zip's images beyond the room are refused before they are decoded, then the merge keeps what fits.
    incoming = tlcore.load_zip(buf.getvalue(), room=p.images.room())
    assert len(incoming) == 2 and len(incoming.rejected) == 8
    p.images.merge(incoming)
    assert len(p.images) == 10
    assert all("TLS_MAX_IMAGES" in r.reason and "10" in r.reason for r in p.images.rejected[-8:])
    p.images = tlcore.load_folder(ROOT / "assets" / "samples" / "digits")  # a sample replaces the set: still bounded
    assert p.images.capacity == 10
    assert ImageSet().capacity is None  # a set outside a project (CLI, benchmark) has no limit


def test_two_sessions_adding_at_once_never_interleave():
    s = ImageSet()
    files = class_files(20)
    threads = [threading.Thread(target=s.add, args=(files,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s) == len(files) and len({i.digest for i in s.items}) == len(files)


def test_runs_are_limited_per_project_and_per_student(setenv, tiny_set):
    setenv("TLS_MAX_QUEUED_RUNS", "2")
    setenv("TLS_MAX_EPOCHS", "50")
    a, b = Project.create(), Project.create()
    for p in (a, b):
        p.images = tiny_set.snapshot()
        p.backbone = "tiny-test"
        tlcore.SERVER.projects.hold(p, f"session-{p.name}")
    long = dataclasses.replace(TINY, epochs=50)
    with pytest.raises(LimitError, match="epochs of one run is limited to 50"):
        a.start_run(dataclasses.replace(TINY, epochs=51), owner="ip:10.0.0.7")
    with pytest.raises(LimitError, match="at once is limited to 2"):  # a ladder of 4 does not fit: none starts
        a.start_comparison(["few-shot", "feature-extraction", "fine-tune", "scratch"], owner="ip:10.0.0.7")
    assert a.runs == []
    first = a.start_run(long, owner="ip:10.0.0.7")
    second = b.start_run(long, owner="ip:10.0.0.7")  # the same student's second project (or tab)
    with pytest.raises(LimitError, match="You have 2 in all your projects"):
        b.start_run(long, owner="ip:10.0.0.7")
    other = b.start_run(long, owner="ip:10.0.0.8")  # another student is not held back by the first one
    for r in (first, second, other):
        r.job.stop()
        assert r.job.join(60)
    setenv("TLS_MAX_PROJECT_MB", "0")
    with pytest.raises(LimitError, match="TLS_MAX_PROJECT_MB.*delete runs"):
        a.start_run(long)
    assert first.job is None or not first.job.alive


def test_a_run_past_the_time_limit_stops_keeping_its_best_epoch_and_says_why(tiny_set, monkeypatch):
    """The limit's clock jumps past the limit once the first epoch has ended: the run stops there, whatever the
    machine's speed (with a real 1 s limit a busy machine had not finished the frozen stages by then)."""
    import tlcore.jobs.spec

    base = spec(tiny_set, dataclasses.replace(TINY, epochs=100_000))
    job = dataclasses.replace(base, task=dataclasses.replace(base.task, max_seconds=60.0))
    events = []

    class Clock:  # the jobs module's clock only: time itself, an hour on once an epoch has ended
        def __getattr__(self, name):
            return getattr(time, name)

        def monotonic(self) -> float:
            return time.monotonic() + (3600.0 if any(isinstance(e, tlcore.EpochEnd) for e in events) else 0.0)

    monkeypatch.setattr(tlcore.jobs.spec, "time", Clock())
    run_job(job, lambda: False, events.append)
    finished = events[-1]
    assert finished.status == "stopped", finished.reason
    assert "limit of 1 min per run (TLS_MAX_RUN_MINUTES" in finished.reason and "user" not in finished.reason
    assert finished.stop.when.startswith("during epoch 2"), finished.stop
    assert tlcore.load_run(job.folder).meta.best_epoch >= 1
