"""Honest numbers: intervals, folds over every image, the logistic head against scikit-learn."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tlcore import TrainConfig, run_to_end
from tlcore.analysis.compare import plan
from tlcore.core.measure import (
    Paired,
    Score,
    accuracy_interval,
    fit_logistic,
    out_of_fold,
    paired,
    repeated_folds,
    shot_draws,
    two_sided_sign_test,
)


def test_accuracy_interval_matches_the_textbook_values():
    lo, hi = accuracy_interval(0.8, 5)  # 4 of 5: Clopper-Pearson's exact interval, 28-99 %
    assert round(lo, 3) == 0.284 and round(hi, 3) == 0.995
    assert abs(accuracy_interval(1.0, 4)[0] - 0.025 ** 0.25) < 1e-9 and accuracy_interval(0.0, 4)[0] == 0.0
    assert accuracy_interval(0.5, 0) == (0.0, 1.0)
    assert Score(4, 5, "x").text() == "4 of 5 right (80%); likely 28%–99%"
    assert Score(4, 5, "x", upside=0.1).interval == (lo, accuracy_interval(0.9, 5)[1])


def test_a_score_is_a_whole_number_of_images_and_reads_old_run_json():
    s = Score(11, 15, "m")
    assert s.accuracy == 11 / 15 and Score.from_json(s.to_json()) == s
    old = {"accuracy": 0.7467, "n": 15, "interval": [0.46, 0.99], "method": "m"}  # a mean over 5 repeats
    assert Score.from_json(old).right == 11 and Score.of(0.7467, 15, "m").right == 11


def test_accuracy_interval_covers_at_least_95_percent():
    rng = np.random.default_rng(0)
    for p, n in ((0.6, 10), (0.85, 20), (0.95, 40)):
        hits = [accuracy_interval(k / n, n) for k in rng.binomial(n, p, 4000)]
        coverage = np.mean([lo <= p <= hi for lo, hi in hits])
        assert 0.945 <= coverage <= 0.995, (p, n, coverage)


def test_the_paired_test_is_the_exact_sign_test_on_the_disagreements():
    from scipy.stats import binomtest

    for k, d in ((6, 6), (5, 6), (3, 6), (0, 4), (7, 20)):
        assert abs(two_sided_sign_test(k, d) - binomtest(k, d, 0.5).pvalue) < 1e-12
    assert two_sided_sign_test(0, 0) == 1.0
    # 15 photos: A right on 11, B on 5; they disagree on 6, A right on all 6 -> 2 / 2**6 = 1 in 32
    a = {f"i{k}": k < 11 for k in range(15)}
    b = {f"i{k}": k < 5 for k in range(15)}
    p = paired(a, b)
    assert (p.a_only, p.b_only, p.both, p.neither) == (6, 0, 5, 4) and abs(p.p_value - 1 / 32) < 1e-12 and p.shown
    assert paired(a, {"i0": True, "x": False}).n == 1  # only the photos both were scored on


def test_the_paired_test_has_more_power_than_two_overlapping_intervals():
    """The case of the issue: on 15 photos the intervals of 11/15 and 5/15 overlap, the photo-by-photo test shows it."""
    fe, scratch = Score(11, 15, ""), Score(5, 15, "")
    assert fe.interval[0] < scratch.interval[1]  # the intervals overlap
    assert paired({k: k < 11 for k in range(15)}, {k: k < 5 for k in range(15)}).shown


def test_images_to_settle_grows_the_same_split_until_it_shows():
    p = Paired(a_only=3, b_only=1, both=8, neither=3)
    assert not p.shown
    n = p.images_to_settle()
    assert n is not None and n > p.n
    d = round(4 / 15 * n)
    assert two_sided_sign_test(d - round(0.75 * d), d) < 0.05
    assert Paired(2, 2, 5, 5).images_to_settle() is None


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


def test_out_of_fold_averages_each_images_repeats_and_counts_whole_images():
    labels = torch.tensor([0, 0, 1, 1])
    pairs = repeated_folds(labels, 2, 2, seed=0)
    calls = iter(range(len(pairs)))

    def predict(tr, te):  # the first repeat says class 0 firmly, the second class 1 weakly: the average says 0
        first = next(calls) < 2
        return torch.tensor([[0.9, 0.1] if first else [0.4, 0.6]] * len(te))

    s, probs = out_of_fold(pairs, predict, labels, "m")
    assert s.n == 4 and s.right == 2 and sorted(probs) == [0, 1, 2, 3]
    assert torch.allclose(probs[0], torch.tensor([0.65, 0.35]))


def test_logistic_head_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 20)).astype(np.float32)
    y = (x[:, :3] + 0.8 * rng.normal(size=(60, 3))).argmax(1)
    ref = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit(x, y)
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, c=1.0, max_iter=500)
    ours = torch.softmax(torch.from_numpy(x) @ w.T + b, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(x), atol=2e-3)


def test_a_small_fit_runs_on_one_thread_and_gives_the_others_back(monkeypatch):
    """Each tensor operation two sleeping threads share wakes the second: a class's fit runs on one, then the
    process has its threads back; a large fit keeps them."""
    from tlcore.core import measure

    seen = []
    objective = measure.LogisticFit._objective
    monkeypatch.setattr(measure.LogisticFit, "_objective",
                        lambda self, theta: seen.append(torch.get_num_threads()) or objective(self, theta))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = torch.randn(30, 8), torch.arange(30) % 3
        fit_logistic(x, y, 3)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(measure, "ONE_THREAD_MAX", 100)  # 30 x 8 is now "large"
        fit_logistic(x, y, 3)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def _two_loop(pairs: list, g: torch.Tensor) -> torch.Tensor:
    """The textbook two-loop recursion (Nocedal and Wright, algorithm 7.4): ``H g`` from the (s, y) pairs kept."""
    q = g.double().clone()
    alphas = []
    for s, y in reversed(pairs):
        alphas.append(float(s @ q) / float(y @ s))
        q -= alphas[-1] * y
    if pairs:
        s, y = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - float(y @ q) / float(y @ s)) * s
    return q


def test_each_fits_compact_memory_gives_its_own_two_loop_recursions_direction():
    """L-BFGS's directions from the compact form, for two fits sharing one memory, with the dot products it
    carries from step to step, are the textbook recursion's on each fit's own steps, also once the memory is full
    and its oldest slots are reused. A fit that stops (a step of 0) fills its slots with zero pairs, which change
    nothing; one whose memory is forgotten starts again from the gradient."""
    from tlcore.core.measure import _Curvature

    torch.manual_seed(0)
    n, size = 40, 5
    hessians = []
    for _ in range(2):
        a = torch.randn(n, n, dtype=torch.float64)
        hessians.append((a @ a.T / n + torch.eye(n, dtype=torch.float64)).float())  # convex quadratics'
    memory, pairs = _Curvature(2, size, n), [[], []]
    x = torch.randn(2, n)
    for step in range(14):
        g = torch.stack([h @ xi for h, xi in zip(hessians, x)])
        d = memory.direction(g)
        for f in range(2):
            q = _two_loop([p for p in pairs[f] if p is not None], g[f])
            np.testing.assert_allclose(d[f].double(), -q, rtol=1e-3, atol=1e-4 * float(q.abs().max()))
        t = torch.tensor([[0.5], [0.0 if 6 <= step < 9 else 0.5]])  # the second fit stands still for three steps
        x_new = x + t * d
        g_new = torch.stack([h @ xi for h, xi in zip(hessians, x_new)])
        memory.push(t * d, g_new - g, g_new)
        for f in range(2):
            pair = ((t[f] * d[f]).double(), (g_new[f] - g[f]).double()) if t[f] > 0 else None
            pairs[f] = [*pairs[f], pair][-size:]
        x = x_new
        if step == 11:
            memory.forget(np.array([True, False]))
            pairs[0] = [None] * size
    assert len(memory.order) == size and memory.remembers.all()


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
    w, b = fit_logistic(xt, yt, 3, max_iter=500, masks=masks, tol_per_row=1e-8)
    assert w.shape == (len(pairs), 3, 200) and b.shape == (len(pairs), 3)
    # The default tolerance (scikit-learn's), which each fold meets by itself, as a fit alone does: within 0.02 of
    # the tight fit's probabilities (each fold fitted alone at this tolerance: 0.001-0.004; together: up to 0.012)
    loose_w, loose_b = fit_logistic(xt, yt, 3, max_iter=500, masks=masks)
    np.testing.assert_allclose(torch.softmax(torch.einsum("nd,fcd->fnc", xt, loose_w) + loose_b[:, None], 2),
                               torch.softmax(torch.einsum("nd,fcd->fnc", xt, w) + b[:, None], 2), atol=2e-2)

    def objective(tr, w, b):
        return float(torch.nn.functional.cross_entropy(xt[tr] @ w.T + b, yt[tr], reduction="sum") + (w * w).sum() / 2)

    for f, (tr, _te) in enumerate(pairs):
        ref = LogisticRegression(max_iter=5000, tol=1e-10).fit(x[tr], y[tr])
        ref_w, ref_b = torch.from_numpy(ref.coef_).float(), torch.from_numpy(ref.intercept_).float()
        assert objective(tr, w[f], b[f]) <= objective(tr, ref_w, ref_b) + 1e-3  # at least as good an optimum
        alone = fit_logistic(xt[tr], yt[tr], 3, max_iter=500, tol_per_row=1e-8)
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


def test_a_score_and_a_paired_verdict_load_no_scipy_stats():
    """scipy.stats took 0.8-1.3 s to import, in the web process, when a class's first model was shown (py-spy of
    the classroom load): every session waited. The intervals and the sign test need only scipy.special."""
    code = ("import sys; from tlcore.core.measure import Score, two_sided_sign_test; from tlcore.studio.classlab "
            "import PairResult; Score(11, 15, 'x').text(); two_sided_sign_test(5, 6); "
            "PairResult('a', 'b', 2, 0, 0, (0.4, 0.3)).interval; "
            "assert 'scipy.stats' not in sys.modules, 'scipy.stats was imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_fit_on_some_rows_of_a_sets_span_is_the_fit_on_those_rows_alone():
    """``Span``: the coordinates of a whole set's rows, which its splits and folds share (one QR, no projection
    per fit); a fit on some of them is the model fitted on those rows by themselves."""
    from tlcore.core.measure import LogisticFit, Span

    rng = np.random.default_rng(2)
    x = torch.from_numpy((rng.normal(size=(40, 90)) + 2.0).astype(np.float32))
    y = torch.arange(40) % 4
    x[torch.arange(40), y] += 2.0
    span = Span.of(x)
    assert span.coords.shape == (40, 40) and torch.allclose(span.coords @ span.basis + span.origin, x, atol=1e-4)
    rows = list(range(0, 40, 3)) + [1, 2, 5]
    w, b = LogisticFit(span.rows(rows), y[rows], 4, tol_per_row=1e-7).step(1000)
    alone_w, alone_b = fit_logistic(x[rows], y[rows], 4, max_iter=1000, tol_per_row=1e-7)
    np.testing.assert_allclose(torch.softmax(x @ w.T + b, 1), torch.softmax(x @ alone_w.T + alone_b, 1), atol=2e-3)
