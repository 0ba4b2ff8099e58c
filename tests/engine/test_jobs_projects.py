"""Training jobs run in worker processes with fair scheduling; projects save atomically and survive a restart."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import tlcore
from tests.conftest import ROOT, eventually, png_bytes
from tlcore.engine.config import TrainConfig
from tlcore.jobs.runner import LocalRunner
from tlcore.jobs.spec import Analysis, JobSpec, Training
from tlcore.studio.project import Project
from tlcore.studio.run_views import validation_report

TINY = TrainConfig(backbone="tiny-test", mode="fine-tune", epochs=3, batch_size=8)


def spec(images, config, owner="p", name="job") -> JobSpec:
    from tlcore.data.images import stratified_split, trainable_subset

    folder = Path(tempfile.mkdtemp(prefix="job-", dir=os.environ["TLS_HOME"]))  # removed with the home
    split = stratified_split(trainable_subset(images).labels(), config.val_fraction, config.seed)
    return JobSpec(name, owner, images, config, Training(split), folder)


def wait_all(jobs, timeout=120):
    for j in jobs:
        assert j.join(timeout), j.snapshot()


@pytest.fixture(scope="module")
def pool():
    """A private pool of two workers (the second an express lane for short jobs)."""
    runner = LocalRunner(workers=2, threads=1)
    yield runner
    runner.shutdown()


def test_jobs_run_in_worker_processes_and_report_back(pool, tiny_set):
    assert pool.wait_ready(120)  # the pool's workers warm up first (below the server: slowly on a busy machine)
    job = pool.submit(spec(tiny_set, dataclasses.replace(TINY, epochs=200)))
    eventually(lambda: job.snapshot().epochs, what="a first epoch")
    snap = job.snapshot()
    assert snap.state == "running" and snap.batch_losses and snap.version > 0
    assert os.getpid() not in pool.worker_pids() and len(pool.worker_pids()) == 2
    # workers yield the cores to the web server (a teacher's click waited 90 s behind training once)
    assert all(os.getpriority(os.PRIO_PROCESS, pid) >= min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
               for pid in pool.worker_pids())
    job.stop()  # acts within one batch
    assert job.join(10)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.finished.result is None  # models never travel: the run is on disk
    saved = tlcore.load_run(job.spec.folder)
    assert saved.meta.status == "stopped" and saved.meta.best_epoch >= 1


def test_idle_workers_end_at_once_when_the_server_stops():
    """A server stopped just after start-up (a teacher's Ctrl+C, a restart): its workers, loading the sentence model
    while idle, end when told, not killed after a wait (two waited for one after another held a restart 10 s)."""
    runner = LocalRunner(workers=2, threads=1)
    assert runner.wait_ready(120)
    procs = list(runner._procs)
    runner.shutdown()
    assert [p.returncode for p in procs] == [0, 0]


def test_short_jobs_never_wait_behind_long_ones_and_owners_take_turns(pool, tiny_set):
    long_cfg = dataclasses.replace(TINY, epochs=100_000)
    assert pool.wait_ready(120)  # alone (``-k``), the pool's workers are still warming up
    hogs = [pool.submit(spec(tiny_set, long_cfg, owner="teacher", name=f"hog{i}")) for i in range(3)]
    eventually(lambda: hogs[0].snapshot().state == "running", what="the first long job to start")
    assert [h.snapshot().state for h in hogs] == ["running", "queued", "queued"]  # the express lane stays free
    short = [pool.submit(spec(tiny_set, TrainConfig(backbone="tiny-test", epochs=2), owner=f"s{i}")) for i in range(4)]
    wait_all(short, 60)
    assert all(j.snapshot().state == "completed" for j in short)
    assert hogs[0].snapshot().state == "running"  # the short ones used the express lane
    later = pool.submit(spec(tiny_set, long_cfg, owner="student", name="student-long"))
    position, wait = later.snapshot().queue_position, later.snapshot().wait_s
    assert position == 1 and wait > 0  # the teacher has a run going: the student is next, not third
    assert hogs[1].snapshot().queue_position == 2 and hogs[2].snapshot().queue_position == 3
    hogs[2].stop()  # a queued job leaves the line at once
    assert hogs[2].join(2) and hogs[2].snapshot().state == "stopped"
    for j in (hogs[0], hogs[1], later):
        j.stop()
    wait_all([hogs[0], hogs[1], later])


def test_a_dead_worker_fails_its_run_plainly_and_is_replaced(pool, tiny_set):
    job = pool.submit(spec(tiny_set, dataclasses.replace(TINY, epochs=100_000)))
    eventually(lambda: job.snapshot().epochs, what="a first epoch")
    pid = next(p for p in pool.worker_pids() if p in _busy_pids(pool))
    os.kill(pid, signal.SIGKILL)  # what the kernel does when memory runs out
    assert job.join(10)
    snap = job.snapshot()
    assert snap.state == "failed" and "out of memory" in snap.finished.reason
    assert tlcore.load_run(job.spec.folder).meta.partial_frozen_stages is not None  # its best epoch was checkpointed
    again = pool.submit(spec(tiny_set, TrainConfig(backbone="tiny-test", epochs=2)))
    wait_all([again])
    assert again.snapshot().state == "completed" and pid not in pool.worker_pids()


def _busy_pids(pool) -> list[int]:
    return [proc.pid for proc, job in zip(pool._procs, pool._busy) if job is not None]


def test_two_seeded_runs_at_once_give_what_each_gives_alone(pool, tiny_set):
    a, b = TrainConfig(backbone="tiny-test", mode="fine-tune", epochs=2, seed=1), \
        TrainConfig(backbone="tiny-test", mode="scratch", epochs=2, seed=2)
    together = [pool.submit(spec(tiny_set, c)) for c in (a, b)]
    wait_all(together)
    alone = []
    for c in (a, b):
        job = pool.submit(spec(tiny_set, c))
        wait_all([job])
        alone.append(job)
    for t, s in zip(together, alone):
        assert [e.train_loss for e in t.snapshot().epochs] == [e.train_loss for e in s.snapshot().epochs]


def _wait(record, timeout=60):
    eventually(lambda: not record.live, timeout, "the run to end")


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
    eventually(lambda: len(record.job.snapshot().epochs) >= 2, what="two epochs")
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
    import tlcore.studio.project as proj_mod

    def crash(path, write):
        raise OSError("disk full")

    monkeypatch.setattr(proj_mod, "atomic_write", crash)
    p.images.add_class("new")
    with pytest.raises(OSError):
        p.save()
    assert (p.folder / "project.json").read_text() == good
    assert not list(p.folder.glob("*.tmp")) and not list(p.folder.glob(".*.tmp"))
    assert json.loads(good)["classes"] == ["class0", "class1", "class2"]


def test_files_written_together_appear_all_or_none(tmp_path):
    """A save's images: written next to their paths, flushed to disk once, then renamed; a failed one leaves none
    of them, and no temporary file."""
    from tlcore.core.storage import atomic_write_all

    def failing(_tmp: str) -> None:
        raise OSError("disk full")

    atomic_write_all([(tmp_path / "a.png", lambda t: Path(t).write_bytes(b"a")),
                      (tmp_path / "sub" / "b.png", lambda t: Path(t).write_bytes(b"b"))])
    assert (tmp_path / "a.png").read_bytes() == b"a" and (tmp_path / "sub" / "b.png").read_bytes() == b"b"
    with pytest.raises(OSError):
        atomic_write_all([(tmp_path / "c.png", lambda t: Path(t).write_bytes(b"c")), (tmp_path / "d.png", failing)])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.png", "sub"]


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
    while any(r.live for r in records) and time.time() < deadline:
        overlaps = max(overlaps, sum(1 for r in records if r.live and r.job.snapshot().state == "running"
                                     and r.job.snapshot().last_batch is not None))
        time.sleep(0.02)
    assert overlaps <= 1
    assert all(r.status == "completed" for r in records)
    assert len({r.result.val_indices for r in records}) == 1
    assert len({r.result.train_indices for r in records if r.config.mode not in tlcore.FROZEN_BODY_MODES}) == 1
    assert all(r.result.score.n == 24 for r in records)  # every strategy scored on every image
    assert p.comparison_runs(["zero-shot", "few-shot"], [1, None]) == 3  # said before: zero-shot once, no photo
    shots = p.start_comparison(["few-shot"], [1, None])
    assert p.comparison_runs(["few-shot"], [1, None]) == len(p.group_runs(shots)) == 2
    for r in p.group_runs(shots):
        _wait(r)
    counts = sorted(len(r.result.train_indices) for r in p.group_runs(shots))
    assert counts[0] == 3 and counts[1] > 3


def test_registry_shares_live_projects_and_releases_abandoned_ones(tiny_set):
    from tlcore.studio.registry import ProjectRegistry

    reg = ProjectRegistry()
    a = reg.create("session-a")
    assert reg.open(a.name, "session-b") is a  # a reload or second tab gets the same live object
    a.images = tiny_set.snapshot()
    a.save()
    record = a.start_run(dataclasses.replace(TINY, epochs=10_000))
    eventually(lambda: record.job.snapshot().epochs, what="a first epoch")
    empty = reg.create("session-c")
    alive = {"session-a", "session-b", "session-c"}
    assert reg.sweep(alive.__contains__, grace_s=0) == []
    alive.clear()  # every browser tab has gone
    assert reg.sweep(alive.__contains__, grace_s=60) == []  # within the grace period nothing happens
    assert set(reg.sweep(alive.__contains__, grace_s=0)) == {a.name, empty.name}
    _wait(record)
    assert record.status == "stopped" and record.result is not None  # best epoch kept
    assert "because no browser had the project open" in record.reason and "by the user" not in record.reason
    assert a.folder.exists() and not empty.folder.exists()  # real work stays, empty leftovers go
    assert reg.live() == []
    assert Project.open(a.name).runs[0].status == "stopped"


def test_a_session_that_lost_its_connection_keeps_its_project_and_its_runs(tiny_set):
    """A Wi-Fi blip spanning a sweep made its session a non-holder for good, and its runs were stopped
    after the grace period although the page had reconnected to the same session."""
    from tlcore.studio.registry import ProjectRegistry

    reg = ProjectRegistry()
    a = reg.create("session-a")
    a.images = tiny_set.snapshot()
    a.save()
    alive = {"session-a"}
    alive.clear()  # the connection drops during a sweep
    assert reg.sweep(alive.__contains__, grace_s=60) == []
    alive.add("session-a")  # the page reconnects to the same session, nobody clicks anything
    assert reg.sweep(alive.__contains__, grace_s=0) == []
    assert reg.live() == [a.name]
    # Released meanwhile (a long sleep), then another tab reopened it: the sleeper gets the live object back.
    alive.clear()
    assert reg.sweep(alive.__contains__, grace_s=0) == [a.name]
    b = reg.open(a.name, "session-b")
    assert b is not a and reg.hold(a, "session-a") is b


def test_a_save_while_the_images_are_replaced_names_only_images_it_wrote(tiny_set, monkeypatch):
    import tlcore.studio.project as proj_mod

    p = Project.create()
    p.images = tiny_set.snapshot()
    real = proj_mod.atomic_write_all

    def page_edits_meanwhile(files):  # another thread (a page) loads a sample while the images are written
        real(files)
        other = tlcore.ImageSet()
        other.add([(f"new{k}.png", png_bytes((k * 40, 90, 200), seed=500 + k), "other") for k in range(3)])
        p.images = other

    monkeypatch.setattr(proj_mod, "atomic_write_all", page_edits_meanwhile)
    p.save()
    monkeypatch.setattr(proj_mod, "atomic_write_all", real)
    manifest = json.loads((p.folder / "project.json").read_text())
    assert all((p.folder / "images" / f"{i['digest']}.png").exists() for i in manifest["images"])
    p.save()  # the page's own save: the new images are written and the old ones cleaned up
    q = Project.open(p.name)
    assert q.images.counts() == {"other": 3} and not [r for r in q.images.rejected if "missing" in r.reason]


@pytest.mark.parametrize("manifest", [
    {"hello": 1}, [], {"format": "tls-project/1", "images": [{"name": "x"}]},
    {"format": "tls-project/1", "runs": [{"id": "r", "config": "oops"}]},
    {"format": "tls-project/1", "settings": {"epochs": "many"}, "classes": 3},
])
def test_a_damaged_or_foreign_project_gives_a_clear_message(manifest):
    p = Project.create()
    (p.folder / "project.json").write_text(json.dumps(manifest))
    with pytest.raises(tlcore.TLError, match="damaged|not made by this app"):
        Project.open(p.name)


def test_a_run_history_with_unknown_fields_still_loads(tiny_set):
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.save()
    record = p.start_run(dataclasses.replace(TINY, epochs=2))
    _wait(record)
    meta_path = p.folder / "runs" / record.id / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["history"][0]["from_the_future"] = 1
    meta["metrics"]["also_new"] = 2
    meta_path.write_text(json.dumps(meta))
    [r] = Project.open(p.name).runs
    assert r.result is not None and len(r.result.history) == 2


def test_a_run_the_teacher_stopped_says_so(pool, tiny_set):
    """The Teacher page stops a student's run with ``job.stop("by the teacher")``; the run read "Stopped by the
    user" (issue 21), queued or training."""
    running = pool.submit(spec(tiny_set, dataclasses.replace(TINY, epochs=200)))
    waiting = pool.submit(spec(tiny_set, TINY, name="second"), after=running)  # queued behind the first
    eventually(lambda: running.snapshot().epochs, what="a first epoch")
    waiting.stop("by the teacher")
    running.stop("by the teacher")
    wait_all([running, waiting], timeout=30)
    for job in (running, waiting):
        finished = job.snapshot().finished
        assert finished.stop.by == "by the teacher" and finished.reason == finished.stop.sentence(), finished
        assert finished.reason.startswith("Stopped by the teacher") and "user" not in finished.reason
    assert waiting.snapshot().finished.stop.when == "while waiting for a free training worker"
    assert running.snapshot().finished.stop.when.startswith(("during epoch", "after epoch"))


def test_a_run_whose_worker_died_says_so_and_that_its_best_epoch_is_kept(tiny_set, monkeypatch):
    """The reason has one owner (the job): it was once extended by the project's callback and then overwritten
    by the next refresh with the job's own. And the project is saved off the runner's event thread."""
    saved_on = []
    save = Project.save
    # noted once the save is done: the test reopens the project as soon as the saver has saved it
    monkeypatch.setattr(Project, "save", lambda self: (save(self), saved_on.append(threading.current_thread().name)))
    p = Project.create()
    p.images = tiny_set.snapshot()
    record = p.start_run(dataclasses.replace(TINY, epochs=100_000))
    eventually(lambda: record.job.snapshot().epochs, what="a first epoch")
    runner = tlcore.get_runner()
    pid = next(proc.pid for proc, job in zip(runner._procs, runner._busy) if job is not None and job.id == record.job.id)
    os.kill(pid, signal.SIGKILL)
    _wait(record)
    for _ in range(3):  # read again and again, as the pages do
        assert record.status == "failed" and "out of memory" in record.reason
        assert record.reason.endswith("Its best epoch before that is kept."), record.reason
        assert p.finished_runs() == [record] and p.active_runs() == []
    eventually(lambda: any("saver" in name for name in saved_on), 10, "the run's save")
    assert "tlcore-runner-supervisor" not in saved_on and any("saver" in name for name in saved_on), saved_on
    [again] = Project.open(p.name).runs  # reopened: the reason as saved
    assert again.status == "failed" and again.reason == record.reason


class _DyingServer:
    """The worker's end of a connection to a server that is killed after the run's first epoch: reads then end
    (EOF) and sends either fail (``loud``: a broken pipe) or are lost, the two ways a worker can learn it first."""

    def __init__(self, job: JobSpec, loud: bool) -> None:
        import pickle
        import queue

        self.loud, self.dead = loud, threading.Event()
        self.inbox: queue.Queue = queue.Queue()
        self.inbox.put(pickle.dumps(("job", 1, job)))

    def recv_bytes(self) -> bytes:
        import queue

        while not self.dead.is_set():
            try:
                return self.inbox.get(timeout=0.05)
            except queue.Empty:
                pass
        raise EOFError

    def send_bytes(self, data: bytes) -> None:
        import pickle

        from tlcore.engine.events import EpochEnd

        if self.dead.is_set():
            if self.loud:
                raise BrokenPipeError
            return
        message = pickle.loads(data)
        if message[0] == "event" and isinstance(message[2], EpochEnd):
            self.dead.set()


@pytest.mark.parametrize("loud", [False, True], ids=["eof-first", "broken-pipe-first"])
def test_a_worker_whose_server_died_saves_its_run_as_interrupted_not_stopped(tiny_set, monkeypatch, loud):
    """CI's restart browser test failed once: a worker that saw its server's end close before a send failed saved
    its run as "Stopped by the user", so the restarted server said so, not that the server had stopped."""
    import torch

    from tlcore.engine.checkpoint import WEIGHTS, RunMeta
    from tlcore.jobs import worker
    from tlcore.jobs.spec import SERVER_GONE

    monkeypatch.setattr(worker, "_warm_up", lambda *a: None)
    monkeypatch.setattr(worker, "set_memory_budget", lambda *a, **k: None)  # this test process's caches stay
    job = spec(tiny_set, dataclasses.replace(TINY, epochs=100_000))
    threads = torch.get_num_threads()
    try:
        done = threading.Thread(target=worker.serve, args=(_DyingServer(job, loud), 1, 1), daemon=True)
        done.start()
        done.join(120)
    finally:
        torch.set_num_threads(threads)
    assert not done.is_alive(), "the worker kept training for nobody"
    meta = RunMeta.read(job.folder)
    assert (job.folder / WEIGHTS).exists() and meta.status == "interrupted", (meta.status, meta.reason)
    assert meta.reason == SERVER_GONE and meta.best_epoch >= 1


def test_the_forecast_plays_the_scheduler_forward_owners_taking_turns(tiny_set):
    """Issue 25: two ladders submitted at once were estimated as if each ran alone or after the other whole,
    while owners take turns run by run (one ended 67 % later than estimated, the other 45 % sooner)."""
    from tlcore.jobs.spec import JobTracker

    runner = LocalRunner(workers=2, threads=1)  # never started: a forecast needs no worker
    runner._rate = lambda busy: 1.0  # the turns alone (workers sharing the cores: the next test)
    short, long_ = dataclasses.replace(TINY, mode="feature-extraction"), TINY
    for owner, first in (("a", 1), ("b", 4)):  # each a ladder: a short run, then two long ones, one after another
        previous = None
        for k, (config, seconds) in enumerate(((short, 5.0), (long_, 20.0), (long_, 20.0))):
            job = JobTracker(first + k, spec(tiny_set, config, owner=owner), runner, None)
            job.after, job.estimate_s = previous, seconds
            runner._pending.append(job)
            runner._jobs[job.id] = job
            previous = job.job
    ends, none = runner.forecast()
    # both short runs at once (the second worker is the express lane), then the long ones by turns
    assert none == [] and ends == {1: 5.0, 4: 5.0, 2: 25.0, 5: 45.0, 3: 65.0, 6: 85.0}, ends
    ends, [planned] = runner.forecast([("c", False, 20.0)])  # a third student's run, about to be started
    # c's turn comes after a's and b's first long runs (the short ones on the express lane cost no long turn)
    assert planned == 65.0 and ends[3] == 85.0 and ends[6] == 105.0, ends
    assert runner.queue_info(runner._jobs[5])[1] == 25.0  # starts once a's first long run has ended


def test_runs_someone_pressed_start_for_go_before_the_checks_of_uploads(tiny_set):
    """Issue 37: six students uploaded at once and pressed Start; their runs waited behind the six checks the
    uploads had queued (and the check of one's own upload cost its run its turn). Checks now wait for runs."""
    from tlcore.jobs.spec import JobTracker

    runner = LocalRunner(workers=2, threads=1)
    fe = dataclasses.replace(TINY, mode="feature-extraction")
    jobs = []
    for k, (owner, task) in enumerate([("a", "data-check"), ("b", "data-check"), ("a", "train"), ("b", "train")]):
        base = spec(tiny_set, fe, owner=owner)
        job = JobTracker(k + 1, base if task == "train" else dataclasses.replace(base, task=Analysis(task)), runner, None)
        job.estimate_s = 2.0
        runner._pending.append(job)
        runner._jobs[job.id] = job
        jobs.append(job)
    assert [j.id for j in runner._order()] == [3, 4, 1, 2]  # the runs first
    ends, _ = runner.forecast()
    assert max(ends[3], ends[4]) < min(ends[1], ends[2])
    runner._pending = [jobs[0]]  # a's check alone in line, a worker free (a never-started runner sends nothing)
    runner._ready = {0}
    runner._dispatch()
    assert runner._busy[0] is jobs[0] and ("a", True) not in runner._served  # it costs a no turn


def test_the_forecast_counts_workers_sharing_the_cores(tiny_set):
    """Issue 38: a ladder started while two students fine-tuned took 33 % longer than its estimate: the forecast
    played each job at its speed alone, while two busy workers share the cores. Now a job's work goes at
    ``share_rate`` of the number busy, running jobs keep the work they did at each rate, and estimates learn
    from the work a run did, not its time."""
    from tlcore.jobs.runner import share_rate
    from tlcore.jobs.spec import JobTracker

    assert share_rate(1, 2, 1) == 1.0 and 0.5 < share_rate(2, 2, 1) < 0.6  # two workers, a thread each
    assert share_rate(2, 1, 1) == 0.5  # two workers on one core take turns
    runner = LocalRunner(workers=2, threads=1)
    runner.max_threads = 2  # two cores
    rate = share_rate(2, 2, 1)
    fine_tune = JobTracker(1, spec(tiny_set, TINY, owner="a"), runner, None)
    fine_tune.estimate_s = 40.0
    runner._jobs[1], runner._busy[0] = fine_tune, fine_tune
    fine_tune.mark_running()
    runner._share()  # alone: full speed
    assert fine_tune.rate == 1.0
    ladder = []
    for k, (mode, seconds) in enumerate((("feature-extraction", 10.0), ("fine-tune", 20.0))):
        job = JobTracker(2 + k, spec(tiny_set, dataclasses.replace(TINY, mode=mode), owner="b"), runner, None)
        job.estimate_s, job.after = seconds, ladder[-1].job if ladder else None
        runner._pending.append(job)
        runner._jobs[job.id] = job
        ladder.append(job)
    ends, _ = runner.forecast()
    # the feature extraction on the express lane beside the fine-tune: both at `rate` until it ends
    assert ends[2] == pytest.approx(10 / rate, abs=0.1)
    # the fine-tune's 40 s: 10 / rate s at `rate` (10 s of work), the other 30 alone
    assert ends[1] == pytest.approx(10 / rate + 30, abs=0.1)  # (the milliseconds it has run)
    assert ends[3] == pytest.approx(ends[1] + 20, abs=0.1)  # the ladder's fine-tune after it, alone
    assert runner.queue_info(ladder[1])[1] == pytest.approx(ends[1], abs=0.1)
    # a running job's work: its time at each rate
    fine_tune.started = fine_tune.started - 10  # it has run 10 s alone
    fine_tune._work = (0.0, None)
    fine_tune.set_rate(rate)  # from now on, shared
    assert fine_tune.work_done() == pytest.approx(10.0, abs=0.1)
    assert fine_tune.remaining_s() == pytest.approx(30 / rate, abs=0.2)


def test_a_run_past_its_estimate_never_has_nothing_left(tiny_set):
    """Issue 38: on a busy server a ladder read "about 0 s left" for 96 s. A running job past its estimate has
    a share of its time so far left; a queued one its whole estimate; one on time its estimate less its time."""
    import time as clock

    from tlcore.jobs.spec import OVERRUN_SHARE, JobTracker

    job = JobTracker(1, spec(tiny_set, TINY), LocalRunner(workers=2, threads=1), None)
    job.estimate_s = 30.0
    assert job.remaining_s() == 30.0  # queued
    job.started = clock.time() - 10
    assert 19.0 <= job.remaining_s() <= 20.5  # on time
    job.started = clock.time() - 100  # far past its estimate
    assert job.remaining_s() >= OVERRUN_SHARE * 100 - 0.5


def test_a_page_estimate_never_waits_for_a_backbone_to_be_timed(tiny_set):
    """Issue 38: the Compare page's estimate timed the backbone on the page's own run; on a busy server that held
    the run carrying a student's click for minutes. With ``wait=False`` it says so at once, the timing goes on
    off the page's thread, and the estimate is there once it has been timed."""
    from tlcore.analysis import profile
    p = Project.create()
    p.images = tiny_set.snapshot()
    p.backbone = "tiny-test"
    profile._known.pop("tiny-test", None)
    profile._started.discard("tiny-test")
    with pytest.raises(tlcore.SpeedUnknown):
        p.comparison_seconds(["feature-extraction", "scratch"], wait=False)
    eventually(lambda: "tiny-test" in profile._known, 120, "the backbone's timing")  # timed off this thread
    assert p.comparison_seconds(["feature-extraction", "scratch"], wait=False) > 0


def test_a_runs_place_in_line_counts_runs_not_the_data_checks_ahead(tiny_set):
    """A student's "position 3" means three runs: the seconds-long analyses ahead of it (the Data pages'
    checks, now worker jobs) are in its wait, not in its place in line."""
    from tlcore.jobs.spec import JobTracker, queue_position

    runner = LocalRunner(workers=2, threads=1)
    check = lambda i: JobTracker(i, dataclasses.replace(spec(tiny_set, TINY), task=Analysis("data-check")), runner,  # noqa: E731
                                 None)
    run = lambda i: JobTracker(i, spec(tiny_set, TINY), runner, None)  # noqa: E731
    line = [check(1), run(2), check(3), run(4)]
    assert [queue_position(line, j) for j in line] == [1, 1, 3, 2]


def test_an_idle_worker_gives_the_memory_a_job_freed_back():
    """glibc keeps a process's freed heap for the process: an idle worker held 2.2-3.9 GB after a fine-tune or a
    from-scratch run on 200 photos, 1.3 GB once it hands it back after each job (``_give_back_memory``). Here, in
    a fresh process, 250 MB freed in blocks (as a run's tensors are) below a block still in use."""
    code = """
import gc
from pathlib import Path
def rss():
    return int(next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS')).split()[1])
from tlcore.jobs.worker import _give_back_memory
blocks = [bytearray(64 * 1024) for _ in range(4000)]
keep = bytearray(64 * 1024)  # above them: the heap's top cannot shrink past it by itself
del blocks
gc.collect()
before = rss()
_give_back_memory()
print(before - rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) > 150 * 1024, out.stdout  # KB handed back of the 250 MB freed
