"""The Ray runner on a real local Ray instance (127.0.0.1, 2 CPUs, started here and stopped after):
same results as the local pool, Stop, a killed worker, the CLI, and the Train page showing a Ray run."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tlcore
from tests.app.conftest import no_legacy_pages_mode  # noqa: F401  (the AppTest below needs it)
from tests.conftest import ROOT, class_files, eventually
from tlcore import ImageSet, TrainConfig, run_to_end, stratified_split
from tlcore.engine.checkpoint import lazy_result
from tlcore.jobs.spec import TIME_LIMIT_BY, JobSpec, Training

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-cluster.txt)")


@pytest.fixture(scope="module")
def runner():
    from tlcore.core.settings import environment
    from tlcore.jobs.ray_runner import RayRunner

    with environment(TLS_RAY_CPUS="2"):
        r = RayRunner("local")
        yield r
        ray.shutdown()


def images() -> ImageSet:
    s = ImageSet()
    s.add(class_files(8, 3))
    return s


def spec(tmp_path: Path, config: TrainConfig, data: ImageSet | None = None) -> JobSpec:
    data = data or images()
    return JobSpec(tmp_path.name, "test", data, config,
                   Training(stratified_split(data.labels(), config.val_fraction, config.seed)), tmp_path / "run")


def test_a_ray_run_matches_the_local_run_on_the_same_seed(runner, tmp_path):
    config = TrainConfig(backbone="tiny-test", mode="fine-tune", epochs=4, lr=0.05)  # trains every epoch
    local = run_to_end(images(), config).result
    job = runner.submit(spec(tmp_path, config))
    assert job.join(120)
    snap = job.snapshot()
    assert snap.state == "completed", snap.finished
    assert [e.epoch for e in snap.epochs] == [1, 2, 3, 4]  # the events streamed back
    remote = lazy_result(tmp_path / "run")  # copied from the actor's node into the run folder
    assert remote.val_accuracy == local.val_accuracy
    assert [round(e.train_loss, 4) for e in remote.history] == [round(e.train_loss, 4) for e in local.history]


def test_stop_ends_a_ray_run_within_a_batch_keeping_its_best_epoch(runner, tmp_path):
    job = runner.submit(spec(tmp_path, TrainConfig(backbone="tiny-test", epochs=5000, mode="fine-tune")))
    eventually(lambda: job.snapshot().epochs, what="a first epoch")
    ends, planned = runner.forecast([("other", False, 5.0), ("other", False, 7.0)])  # the Compare page's estimate
    assert job.id in ends and planned[1] - planned[0] == 7.0 and planned[0] >= 5.0
    job.stop()
    assert job.join(30)
    snap = job.snapshot()
    assert snap.state == "stopped" and "best epoch" in snap.finished.reason
    assert lazy_result(tmp_path / "run").best_epoch >= 1


def test_a_finished_ray_run_leaves_nothing_on_its_node(tmp_path):
    from tlcore.jobs.ray_runner import _Job

    actor = _Job(threads=1)  # the actor's class, in this process
    actor.run(spec(tmp_path, TrainConfig(backbone="tiny-test", epochs=1)))
    events, files, done = actor.poll(0)
    assert done and "run.json" in files and events
    assert not actor.folder.exists()


def test_a_poll_that_cannot_be_sent_fails_its_run_once(runner, tmp_path):
    """An actor Ray no longer knows (its node, or Ray itself, went away): the run fails once, with its reason, and
    the runner's loop lets go of it (it had retried the poll four times a second, logging a traceback each time)."""
    from tlcore.jobs.ray_runner import _Live
    from tlcore.jobs.spec import JobTracker

    class Gone:
        class poll:  # noqa: N801  (as a Ray actor's method)
            @staticmethod
            def remote(_since: int) -> None:
                raise RuntimeError("Can't find actor: it might be dead or it's from a different cluster")

    job = JobTracker(10_000, spec(tmp_path, TrainConfig(backbone="tiny-test")), runner, None)
    job.mark_running()
    with runner._lock:
        runner._live[job.id] = _Live(job, Gone(), None, running=True)
    runner._wake.set()
    snap = eventually(lambda: (s := job.job.snapshot()).finished and s, 60, "the run to fail")
    assert snap.state == "failed" and "was lost" in snap.finished.reason, snap.finished
    assert job.id not in runner._live


def test_a_ray_run_keeps_the_servers_time_limit(runner, tmp_path):
    """The actor once rebuilt the job without ``max_seconds``: on a cluster no run ever hit its time limit."""
    base = spec(tmp_path, TrainConfig(backbone="tiny-test", epochs=5000, mode="fine-tune"))
    job = runner.submit(dataclasses.replace(base, task=dataclasses.replace(base.task, max_seconds=3)))
    assert job.join(90)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.finished.stop.by.startswith(TIME_LIMIT_BY), snap.finished
    assert snap.finished.reason.startswith(f"Stopped {TIME_LIMIT_BY} of ")


def test_a_killed_ray_worker_fails_the_run_and_keeps_the_best_epoch(runner, tmp_path):
    job = runner.submit(spec(tmp_path, TrainConfig(backbone="tiny-test", epochs=5000, mode="fine-tune")))
    eventually((tmp_path / "run" / "model.safetensors").exists, what="a best epoch copied to the server")
    os.kill(runner.worker_pid(job), signal.SIGKILL)
    assert job.join(90), "the page would hang"
    snap = job.snapshot()
    assert snap.state == "failed" and "was lost" in snap.finished.reason and "best epoch" in snap.finished.reason
    kept = tlcore.load_run(tmp_path / "run")  # usable: it loads and predicts
    assert kept.classes == ("class0", "class1", "class2")


def test_the_cli_trains_on_ray(runner, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tlcore", "train", str(ROOT / "assets/samples/faces"), "--out",
                          str(tmp_path / "run"), "--backbone", "tiny-test", "--epochs", "2", "--runner", "ray"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TLS_RAY_CPUS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["runner"] == "ray" and result["status"] == "completed" and result["epochs_run"] == 2


def test_the_train_page_shows_a_ray_run_live(runner, no_legacy_pages_mode):  # noqa: F811
    from tests.app.test_pages import new_app, texts, wait_for, with_sample

    tlcore.set_runner(runner)
    try:
        at = with_sample(new_app())
        at.switch_page("pages/train.py").run()
        at.number_input(key="train_epochs").set_value(3).run()
        at.button(key="train_start").click().run()
        wait_for(at, lambda a: "the best epoch" in texts(a.success))
        assert len(at.get("plotly_chart")) == 2
        record = at.session_state["tls"].project.runs[-1]
        assert record.status == "completed" and record.result.val_accuracy is not None
    finally:
        tlcore.set_runner(None)


def test_without_the_variable_nothing_of_ray_is_imported():
    code = "import sys, tlcore; tlcore.get_runner(); assert 'ray' not in sys.modules, 'ray imported'"
    env = {k: v for k, v in os.environ.items() if k != "TLS_RAY_ADDRESS"}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0
