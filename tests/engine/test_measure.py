"""Honest numbers: intervals, folds over every image, the logistic head against scikit-learn."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tlcore import TrainConfig, run_to_end
from tlcore.compare import plan
from tlcore.measure import (Score, fit_logistic, repeated_folds, score_pairs, separation, shot_draws,
                            accuracy_interval)


def test_accuracy_interval_matches_the_textbook_values():
    lo, hi = accuracy_interval(0.8, 5)  # 4 of 5: Clopper-Pearson's exact interval, 28-99 %
    assert round(lo, 3) == 0.284 and round(hi, 3) == 0.995
    assert abs(accuracy_interval(1.0, 4)[0] - 0.025 ** 0.25) < 1e-9 and accuracy_interval(0.0, 4)[0] == 0.0
    assert accuracy_interval(0.5, 0) == (0.0, 1.0)
    assert Score(0.8, 5, "x").text() == "80% of 5; likely 28%–99%"
    assert Score(0.8, 5, "x", upside=0.1).interval == (lo, accuracy_interval(0.9, 5)[1])


def test_accuracy_interval_covers_at_least_95_percent():
    rng = np.random.default_rng(0)
    for p, n in ((0.6, 10), (0.85, 20), (0.95, 40)):
        hits = [accuracy_interval(k / n, n) for k in rng.binomial(n, p, 4000)]
        coverage = np.mean([lo <= p <= hi for lo, hi in hits])
        assert 0.945 <= coverage <= 0.995, (p, n, coverage)


def test_separation_says_when_the_data_cannot_tell():
    apart, _ = separation(Score(0.95, 100, ""), Score(0.4, 100, ""))
    assert apart
    apart, needed = separation(Score(0.75, 4, ""), Score(0.5, 4, ""))
    assert not apart and needed is not None and needed > 4
    lo_a, _ = accuracy_interval(0.75, needed)
    _, hi_b = accuracy_interval(0.5, needed)
    assert hi_b < lo_a  # at that many images the intervals are apart


def test_folds_hold_out_every_image_once_per_repeat_and_stay_stratified():
    labels = torch.tensor([0] * 7 + [1] * 6 + [2] * 8 + [3])  # class 3 has one image: it always trains
    pairs = repeated_folds(labels, 5, 3, seed=1)
    assert len(pairs) == 15
    for r in range(3):
        tested = sorted(i for _, te in pairs[5 * r:5 * r + 5] for i in te)
        assert tested == list(range(21))  # every image but the lone one, exactly once
    for tr, te in pairs:
        assert not set(tr) & set(te) and 21 in tr
        assert set(labels[tr].tolist()) == {0, 1, 2, 3}  # every class trains in every fold
    assert pairs[:5] != pairs[5:10]  # repeats reshuffle
    assert repeated_folds(labels, 5, 3, seed=1) == pairs  # and are seeded


def test_shot_draws_hold_out_every_other_image():
    labels = torch.tensor([0] * 7 + [1] * 7)
    for tr, te in shot_draws(labels, 2, 4, seed=0):
        assert len(tr) == 4 and sorted(tr + te) == list(range(14))
        assert torch.bincount(labels[tr]).tolist() == [2, 2]


def test_score_pairs_rests_on_the_images_of_one_repeat():
    labels = torch.tensor([0, 0, 1, 1])
    pairs = repeated_folds(labels, 2, 2, seed=0)
    s = score_pairs(pairs, lambda tr, te: torch.zeros(len(te), dtype=torch.long), labels, "m", repeats=2)
    assert s.n == 4 and s.accuracy == 0.5


def test_logistic_head_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20)).astype(np.float32)
    y = (x[:, :3] + 0.8 * rng.normal(size=(60, 3))).argmax(1)
    ref = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(x, y)
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, c=1.0, max_iter=500)
    ours = torch.softmax(torch.from_numpy(x) @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x), atol=2e-3)


def test_fit_logistic_in_the_images_span_and_all_folds_at_once_match_scikit_learn():
    """Fewer images than dimensions (the fit runs in their span), offset features (centred first), and the
    folds of a cross-validation fitted together: each fold reaches its own scikit-learn optimum."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(30, 200)) + 3.0).astype(np.float32)
    y = np.arange(30) % 3
    x[np.arange(30), y] += 2.0
    pairs = repeated_folds(torch.from_numpy(y), 5, 2, 0)
    masks = torch.zeros(len(pairs), 30)
    for f, (tr, _te) in enumerate(pairs):
        masks[f, tr] = 1
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w, b = fit_logistic(xt, yt, 3, max_iter=500, masks=masks)
    assert w.shape == (len(pairs), 3, 200) and b.shape == (len(pairs), 3)

    def objective(tr, w, b):
        return float(torch.nn.functional.cross_entropy(xt[tr] @ w.T + b, yt[tr], reduction="sum") + (w * w).sum() / 2)

    for f, (tr, _te) in enumerate(pairs):
        ref = LogisticRegression(max_iter=5000, tol=1e-10).fit(x[tr], y[tr])
        ref_w, ref_b = torch.from_numpy(ref.coef_).float(), torch.from_numpy(ref.intercept_).float()
        assert objective(tr, w[f], b[f]) <= objective(tr, ref_w, ref_b) + 1e-3  # at least as good an optimum
        alone = fit_logistic(xt[tr], yt[tr], 3, max_iter=500)
        np.testing.assert_allclose(torch.softmax(xt @ w[f].T + b[f], 1), torch.softmax(xt @ alone[0].T + alone[1], 1),
                                   atol=2e-3)  # fitted with the other folds or alone: the same model


def test_feature_extraction_is_scored_on_every_image_and_trained_on_all(tiny_set):
    cfg = TrainConfig(backbone="tiny-test", mode="feature-extraction", epochs=5)
    r = run_to_end(tiny_set, cfg).result
    assert r.score.n == 24 and "8-fold" in r.score.method  # 8 images per class: one of each out per fold
    assert sorted(r.train_indices) == list(range(24))
    assert sorted(d for d, _, _ in r.heldout) == sorted(i.digest for i in tiny_set.items)
    assert "refitted on all 24 images" in r.how


def test_trained_modes_score_by_folds_when_asked(tiny_set):
    cfg = TrainConfig(backbone="tiny-test", mode="scratch", epochs=2, batch_size=8, score_folds=3)
    r = run_to_end(tiny_set, cfg).result
    assert r.score.n == 24 and "3-fold" in r.score.method


def test_the_ladder_scores_every_strategy_on_every_image():
    runs = plan(["zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch"], TrainConfig())
    folds = {r.config.mode: r.config.resolved_score_folds() for r in runs}
    assert folds == {"zero-shot": 5, "few-shot": 5, "feature-extraction": 5, "fine-tune": 3, "scratch": 3}
    study = plan(["feature-extraction", "scratch"], TrainConfig(), [1, None])
    assert [(r.config.mode, r.shots, r.config.resolved_score_folds()) for r in study] == [
        ("feature-extraction", 1, 5), ("scratch", 1, 0), ("feature-extraction", None, 5), ("scratch", None, 3)]


@pytest.mark.parametrize("bad", [dict(score_folds=1), dict(score_repeats=0), dict(max_images_per_class=0)])
def test_scoring_settings_are_checked(bad):
    from tlcore import TLError

    with pytest.raises(TLError):
        dataclasses.replace(TrainConfig(), **bad).validate()
