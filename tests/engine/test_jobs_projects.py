"""Background jobs share a fair slot pool; projects save atomically and survive a restart."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

import tlcore
from tlcore.jobs import SlotPool, TrainingJob
from tlcore.project import Project, validation_report
from tlcore.train import RunFinished, TrainConfig, train

TINY = TrainConfig(backbone="tiny-test", mode="fine-tune", epochs=3, batch_size=8)


def slow_work(seconds: float):
    def work(should_stop):
        end = time.time() + seconds
        while time.time() < end:
            if should_stop():
                yield RunFinished("stopped", "asked to stop")
                return
            time.sleep(0.01)
        yield RunFinished("completed", "done")
    return work


def test_jobs_queue_for_slots_in_order_and_free_them():
    pool = SlotPool(2)
    jobs = [TrainingJob(f"j{i}", slow_work(0.6), pool) for i in range(5)]
    time.sleep(0.2)
    states = [j.snapshot() for j in jobs]
    assert [s.state for s in states] == ["running", "running", "queued", "queued", "queued"]
    assert [s.queue_position for s in states] == [0, 0, 1, 2, 3]
    jobs[3].stop()  # a queued job that is stopped leaves the line
    assert jobs[3].join(2) and jobs[3].snapshot().state == "stopped"
    jobs[0].stop()
    assert jobs[0].join(2)
    time.sleep(0.2)
    assert jobs[2].snapshot().state == "running" and jobs[4].snapshot().queue_position == 1
    for j in jobs:
        assert j.join(5)
    assert pool.running == 0
    assert [j.snapshot().state for j in jobs] == ["stopped", "completed", "completed", "stopped", "completed"]


def test_a_training_job_records_events_and_stops(tiny_set):
    job = TrainingJob("t", lambda stop: train(tiny_set, dataclasses.replace(TINY, epochs=200), stop), SlotPool(1))
    deadline = time.time() + 30
    while not job.snapshot().epochs and time.time() < deadline:
        time.sleep(0.05)
    job.stop()
    assert job.join(10)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.finished.result is not None and snap.batch_losses
    assert snap.finished.result.best_epoch >= 1


def test_a_crashing_job_ends_failed():
    def boom(stop):
        raise RuntimeError("kaput")
        yield  # pragma: no cover

    job = TrainingJob("b", boom, SlotPool(1))
    assert job.join(5)
    assert job.snapshot().state == "failed" and "kaput" in job.snapshot().finished.reason


def _wait(record, timeout=60):
    deadline = time.time() + timeout
    while record.job is not None and time.time() < deadline:
        record.refresh()
        time.sleep(0.05)
    assert record.job is None


def test_project_round_trip(tiny_set):
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.images.add_class("empty one")
    p.backbone = "tiny-test"
    p.settings = dataclasses.replace(TINY, epochs=2)
    p.save()
    record = p.start_run(p.settings)
    _wait(record)
    assert record.status == "completed"
    q = Project.open(p.name)
    assert q.images.classes == p.images.classes and [i.digest for i in q.images.items] == [i.digest for i in p.images.items]
    assert q.settings == p.settings and q.backbone == "tiny-test"
    [loaded] = q.runs
    assert loaded.status == "completed" and loaded.result.val_accuracy == record.result.val_accuracy
    ev_before, _ = validation_report(p, record)
    ev_after, _ = validation_report(q, loaded)  # found again by image content after the "restart"
    assert ev_after.probabilities == ev_before.probabilities


def test_interrupted_run_keeps_its_best_epoch(tiny_set):
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.save()
    record = p.start_run(dataclasses.replace(TINY, epochs=500))
    deadline = time.time() + 30
    while len(record.job.snapshot().epochs) < 2 and time.time() < deadline:
        time.sleep(0.05)
    q = Project.open(p.name)  # what a restarted server sees while the run is still going
    record.job.stop()
    _wait(record)
    [r] = q.runs
    assert r.status == "interrupted" and "best epoch" in r.reason
    assert r.result is not None and r.result.best_epoch >= 1
    report = validation_report(q, r)  # its validation images are found again, so it can be evaluated
    assert report is not None and len(report[1]) == 6


def test_saving_is_atomic(tiny_set, monkeypatch):
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.save()
    good = (p.folder / "project.json").read_text()
    import tlcore.project as proj_mod

    def crash(path, write):
        raise OSError("disk full")

    monkeypatch.setattr(proj_mod, "atomic_write", crash)
    p.images.add_class("new")
    with pytest.raises(OSError):
        p.save()
    assert (p.folder / "project.json").read_text() == good
    assert not list(p.folder.glob("*.tmp")) and not list(p.folder.glob(".*.tmp"))
    assert json.loads(good)["classes"] == ["class0", "class1", "class2"]


def test_project_names_are_checked():
    for bad in ("   ", "../etc", "a/b", ".hidden", "x" * 80):
        with pytest.raises(tlcore.TLError):
            Project.create(bad)
    with pytest.raises(tlcore.TLError, match="no project"):
        Project.open("does-not-exist")
    p = Project.create("My class 7B")
    with pytest.raises(tlcore.TLError, match="already exists"):
        Project.create("My class 7B")
    assert Project.open("My class 7B").name == p.name


def test_comparison_runs_share_one_split_and_run_one_after_another(tiny_set):
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.backbone = "tiny-test"
    p.settings = dataclasses.replace(TINY, epochs=2)
    group = p.start_comparison(["feature-extraction", "fine-tune", "scratch", "few-shot"])
    records = p.group_runs(group)
    assert len(records) == 4
    overlaps = 0
    deadline = time.time() + 120
    while any(r.job is not None for r in records) and time.time() < deadline:
        overlaps = max(overlaps, sum(1 for r in records if r.job is not None and r.job.snapshot().state == "running"
                                     and r.job.snapshot().last_batch is not None))
        for r in records:
            r.refresh()
        time.sleep(0.02)
    assert overlaps <= 1
    assert all(r.status == "completed" for r in records)
    assert len({r.result.val_indices for r in records}) == 1
    assert len({r.result.train_indices for r in records}) == 1
    shots = p.start_comparison(["few-shot"], [1, None])
    for r in p.group_runs(shots):
        _wait(r)
    counts = sorted(len(r.result.train_indices) for r in p.group_runs(shots))
    assert counts[0] == 3 and counts[1] > 3


def test_registry_shares_live_projects_and_releases_abandoned_ones(tiny_set):
    from tlcore.project import ProjectRegistry

    reg = ProjectRegistry()
    a = reg.create("session-a")
    assert reg.open(a.name, "session-b") is a  # a reload or second tab gets the same live object
    a.images = tiny_set.snapshot()
    a.save()
    record = a.start_run(dataclasses.replace(TINY, epochs=10_000))
    deadline = time.time() + 30
    while not record.job.snapshot().epochs and time.time() < deadline:
        time.sleep(0.05)
    empty = reg.create("session-c")
    alive = {"session-a", "session-b", "session-c"}
    assert reg.sweep(alive.__contains__, grace_s=0) == []
    alive.clear()  # every browser tab has gone
    assert reg.sweep(alive.__contains__, grace_s=60) == []  # within the grace period nothing happens
    assert set(reg.sweep(alive.__contains__, grace_s=0)) == {a.name, empty.name}
    _wait(record)
    assert record.status == "stopped" and record.result is not None  # best epoch kept
    assert a.folder.exists() and not empty.folder.exists()  # real work stays, empty leftovers go
    assert reg.live() == []
    assert Project.open(a.name).runs[0].status == "stopped"
