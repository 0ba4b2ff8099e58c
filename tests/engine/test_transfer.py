"""Before training: LogME, how general each stage is, what each stage sees, and the learning-rate range test."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import class_files, cli
from tlcore import ImageSet, TLError, TrainConfig
from tlcore.analysis.lrfind import lr_find, suggest
from tlcore.analysis.tasks import analysis_folder, read_result
from tlcore.analysis.transfer import StageProbe, class_evidence, logme, probe_stages, stage_maps, transfer_score
from tlcore.engine.train import drive
from tlcore.jobs.spec import Analysis, JobSpec, run_job


def reference_evidence(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence of Bayesian linear regression, written out with full matrices (Bishop, eq. 3.86)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t)
    return float((d / 2 * np.log(alpha) + n / 2 * np.log(beta) - beta / 2 * ((t - f @ m) ** 2).sum()
                  - alpha / 2 * m @ m - 0.5 * np.linalg.slogdet(a)[1] - n / 2 * np.log(2 * np.pi)) / n)


@pytest.mark.parametrize("n,d", [(300, 50), (20, 100)])  # more images than dimensions, and fewer
def test_logme_evidence_matches_the_closed_form(n, d):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    t = (rng.random(n) > 0.5).astype(float)
    evidence, alpha, beta = class_evidence(f, t)
    assert alpha > 0 and beta > 0
    assert evidence == pytest.approx(reference_evidence(f, t, alpha, beta), abs=1e-9)


def test_logme_ranks_separable_features_above_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    separable = np.concatenate([np.eye(3)[y] * 2 + rng.normal(size=(300, 3)), rng.normal(size=(300, 47))], 1)
    noise = rng.normal(size=(300, 50))
    assert logme(separable, y) > logme(noise, y) + 0.1
    assert logme(separable, y) > logme(separable, rng.permutation(y)) + 0.1  # the labels matter, not the features
    with pytest.raises(TLError):
        logme(noise[:1], y[:1])


def shuffled(seed: int = 0) -> ImageSet:
    """The tiny set's images with their classes dealt at random (so nothing is learnable)."""
    files = class_files()
    labels = [label for _, _, label in files]
    order = np.random.default_rng(seed).permutation(len(files))
    s = ImageSet()
    assert s.add([(name, data, labels[k]) for (name, data, _), k in zip(files, order)]) == []
    return s


def test_transfer_score_of_the_tiny_backbone(tiny_set):
    score = drive(transfer_score(tiny_set, "tiny-test"))
    assert score.backbone == "tiny-test" and score.num_images == 24 and score.seconds < 1
    assert 0 < score.imagenet_confidence <= 1
    assert score.logme > drive(transfer_score(shuffled(), "tiny-test")).logme  # colours separate the classes


def test_stage_probe_on_tiny_images(tiny_set):
    probe = drive(probe_stages(tiny_set, "tiny-test"))
    assert probe.stages == ("stem", "block 1", "block 2") and len(probe.scores) == 3
    assert all(s.n == 24 for s in probe.scores) and 0 <= probe.best < 3
    assert probe.scores[-1].accuracy >= 0.9  # colour classes are plain from the pooled output of any stage
    lo, hi = probe.scores[-1].interval
    assert lo <= probe.scores[-1].accuracy <= hi
    again = StageProbe.from_json(json.loads(json.dumps(probe.to_json())))
    assert again.scores == probe.scores and again.best == probe.best
    noise = drive(probe_stages(shuffled(), "tiny-test"))
    assert max(s.accuracy for s in noise.scores) < 0.75  # random classes: near chance (1/3) at every stage


def test_stage_maps_of_one_image(tiny_set):
    maps = stage_maps("tiny-test", tiny_set, 0, top=4)
    assert [name for name, _ in maps] == ["stem", "block 1", "block 2"]
    assert [m.shape for _, m in maps] == [(4, 16, 16), (4, 8, 8), (4, 4, 4)]
    assert all(0 <= m.min() and m.max() <= 1 for _, m in maps)


@pytest.mark.parametrize("mode", ["fine-tune", "scratch"])
def test_lr_find_on_the_tiny_backbone(tiny_set, mode):
    found = drive(lr_find(tiny_set, TrainConfig(backbone="tiny-test", mode=mode, batch_size=8), num_it=30))
    assert 3 <= len(found.lrs) <= 30 and list(found.lrs) == sorted(found.lrs)
    assert all(math.isfinite(v) for v in found.losses + found.smoothed)
    assert found.lrs[0] <= found.suggestion <= found.lrs[-1] and found.lrs[0] <= found.min_over_10 <= found.lrs[-1]
    # the suggested rate is on the falling part of the curve: below the loss at the start
    k = min(range(len(found.lrs)), key=lambda i: abs(found.lrs[i] - found.suggestion))
    assert found.smoothed[k] <= found.smoothed[0]
    assert found.freeze_depth == (1 if mode == "fine-tune" else 0)
    with pytest.raises(TLError, match="no learning rate"):
        drive(lr_find(tiny_set, TrainConfig(backbone="tiny-test", mode="feature-extraction")))


def test_suggest_picks_the_steepest_descent():
    lrs = list(np.logspace(-6, 0, 40))
    loss = [2.0 - 1.5 / (1 + math.exp(-(math.log10(lr) + 3) * 3)) for lr in lrs]  # falls fastest at 1e-3
    steep, min10 = suggest(lrs, loss)
    assert 5e-4 < steep < 2e-3 and min10 == pytest.approx(lrs[-1] / 10)


def test_analysis_runs_as_a_runner_job_and_writes_its_result(tiny_set, tmp_path):
    config = TrainConfig(backbone="tiny-test")
    folder = analysis_folder(tmp_path, "stage-probe", tiny_set, config)
    events = []
    run_job(JobSpec("probe", "me", tiny_set, config, Analysis("stage-probe"), folder), lambda: False,
            events.append)
    assert events[-1].status == "completed" and any(type(e).__name__ == "Progress" for e in events)
    assert read_result(folder, "stage-probe").stages == ("stem", "block 1", "block 2")
    assert not (folder / "model.safetensors").exists()  # no run is saved
    assert analysis_folder(tmp_path, "stage-probe", shuffled(), config) != folder  # keyed by the images
    events.clear()
    run_job(JobSpec("lr", "me", tiny_set, TrainConfig(backbone="tiny-test", mode="feature-extraction"),
                    Analysis("lr-find"), tmp_path / "lr"), lambda: False, events.append)
    assert events[-1].status == "failed" and "no learning rate" in events[-1].reason


def test_cli_stages_and_lr_find(class_folder):
    out = cli("stages", str(class_folder), "--backbone", "tiny-test")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    probe = json.loads(line)
    assert probe["stages"] == ["stem", "block 1", "block 2"] and probe["best_stage"] in probe["stages"]
    assert all(0 <= s["accuracy"] <= 1 and s["n"] == 24 for s in probe["scores"])
    out = cli("lr-find", str(class_folder), "--backbone", "tiny-test", "--batch-size", "8", "--steps", "20")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    found = json.loads(line)
    assert found["mode"] == "fine-tune" and found["lrs"][0] <= found["suggestion"] <= found["lrs"][-1]
    bad = cli("lr-find", str(class_folder), "--backbone", "tiny-test", "--mode", "feature-extraction")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
