"""Training: four strategies, freezing that really freezes, stop/NaN/early stopping, cached features."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from torch import nn

import tlcore
from tlcore.engine.config import TrainConfig
from tlcore.engine.events import BatchEnd, EpochEnd, Progress, RunFinished
from tlcore.engine.features import FEATURES
from tlcore.engine.train import run_to_end, train
from tlcore.models.backbones import Body, Stage
from tlcore.models.model import build_model, freeze, set_train_mode

TINY = TrainConfig(backbone="tiny-test", epochs=4, batch_size=8)


@pytest.mark.parametrize("mode", tlcore.MODES)
def test_every_mode_completes_on_the_same_split(tiny_set, mode):
    finished = run_to_end(tiny_set, dataclasses.replace(TINY, mode=mode))
    assert finished.status == "completed", finished.reason
    r = finished.result
    assert r.num_images == 24 and r.classes == ("class0", "class1", "class2")
    base = run_to_end(tiny_set, dataclasses.replace(TINY, mode="scratch")).result
    assert r.val_indices == base.val_indices
    if mode in tlcore.FROZEN_BODY_MODES:  # the head is fitted on every image in the end
        assert r.train_indices == tuple(range(24))
        assert r.score.n == 24 and len(r.heldout) == 24  # scored on every image, each held out once
    else:
        assert r.train_indices == base.train_indices
        assert r.score.n == len(r.val_indices) and r.score.accuracy == r.val_accuracy
    assert r.val_accuracy is not None and 0 <= r.val_accuracy <= 1
    lo, hi = r.score.interval
    assert 0 <= lo <= r.score.accuracy <= hi <= 1


def test_colour_classes_are_learned(tiny_set):
    r = run_to_end(tiny_set, dataclasses.replace(TINY, mode="scratch", epochs=15, lr=1e-2)).result
    assert r.val_accuracy == 1.0  # the classes differ by colour: any working loop learns them


def test_trainable_parameters_follow_the_mode(tiny_set):
    counts = {m: run_to_end(tiny_set, dataclasses.replace(TINY, mode=m, epochs=1)).result.trainable_params
              for m in tlcore.MODES}
    head = 32 * 3 + 3
    assert counts["feature-extraction"] == head and counts["few-shot"] == 0
    body_total = sum(p.numel() for p in tlcore.get_backbone_spec("tiny-test").build().parameters())
    assert counts["scratch"] == body_total + head
    assert head < counts["fine-tune"] < counts["scratch"]


def test_frozen_stages_do_not_change_and_keep_their_batchnorm_statistics(tiny_set):
    r = run_to_end(tiny_set, dataclasses.replace(TINY, mode="fine-tune", freeze_depth=2, epochs=2)).result
    pretrained = tlcore.create_body("tiny-test").net.state_dict()
    trained = r.model.body.net.state_dict()
    for name in ("stem.0.weight", "stem.1.running_mean", "block1.0.weight", "block1.1.running_var"):
        assert torch.equal(trained[name], pretrained[name]), name
    assert not torch.equal(trained["block2.0.weight"], pretrained["block2.0.weight"])
    assert not torch.equal(trained["block2.1.running_mean"], pretrained["block2.1.running_mean"])


def test_frozen_batchnorm_stays_in_eval_mode():
    model = build_model("tiny-test", 3)
    freeze(model, 2)
    set_train_mode(model)
    assert not model.body.net.stem[1].training and not model.body.net.block1[1].training
    assert model.body.net.block2[1].training and model.head.training


def test_discriminative_learning_rates(tiny_set, monkeypatch):
    groups = {}
    original = torch.optim.AdamW

    def spy(params, **kw):
        params = list(params)
        groups["lrs"] = [g["lr"] for g in params]
        return original(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    run_to_end(tiny_set, dataclasses.replace(TINY, mode="fine-tune", freeze_depth=1, epochs=1, lr=0.01,
                                             backbone_lr_mult=0.1))
    assert groups["lrs"] == [0.01, pytest.approx(0.001)]


def test_seeded_runs_are_reproducible(tiny_set):
    cfg = dataclasses.replace(TINY, mode="fine-tune", epochs=2)
    a = run_to_end(tiny_set, cfg).result
    b = run_to_end(tiny_set, cfg).result
    assert [e.train_loss for e in a.history] == [e.train_loss for e in b.history]
    c = run_to_end(tiny_set, dataclasses.replace(cfg, seed=1)).result
    assert [e.train_loss for e in a.history] != [e.train_loss for e in c.history]


def test_events_and_final_status(tiny_set):
    events = list(train(tiny_set, dataclasses.replace(TINY, mode="fine-tune", epochs=2)))
    batches = [e for e in events if isinstance(e, BatchEnd)]
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert isinstance(events[-1], RunFinished) and events[-1].status == "completed"
    assert len(epochs) == 2 and len(batches) == 2 * batches[0].num_batches
    assert batches[-1].fraction == 1.0 and batches[-1].eta_s == 0
    assert all(b.images_per_sec > 0 for b in batches)


def test_stop_acts_within_one_batch_and_keeps_the_best_epoch(tiny_set):
    seen = []
    stop_after = None

    def should_stop() -> bool:
        return stop_after is not None and len(seen) >= stop_after

    gen = train(tiny_set, dataclasses.replace(TINY, mode="fine-tune", epochs=50), should_stop)
    for event in gen:
        if isinstance(event, BatchEnd):
            seen.append(event)
        if isinstance(event, EpochEnd) and event.epoch == 2:
            stop_after = len(seen) + 1  # ask to stop one batch into epoch 3
        if isinstance(event, RunFinished):
            break
    assert event.status == "stopped" and "best" in event.reason
    assert len(seen) == stop_after  # exactly one more batch ran
    assert len(event.result.history) == 2 and event.result.best_epoch in (1, 2)


def test_stop_while_computing_features(tiny_set):
    FEATURES.clear()
    events = list(train(tiny_set, TINY, should_stop=lambda: True))
    assert events[-1].status == "stopped" and events[-1].result is None


def test_early_stopping(tiny_set):
    r = run_to_end(tiny_set, dataclasses.replace(TINY, mode="scratch", epochs=60, lr=1e-2, patience=2))
    assert r.status == "completed" and "early" in r.reason
    assert len(r.result.history) < 60 and r.result.best_epoch == len(r.result.history) - 2


class _NaNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w(x.mean((2, 3))) * float("nan")


def test_nan_loss_fails_the_run_with_an_explanation(tiny_set):
    tiny = tlcore.get_backbone_spec("tiny-test")
    if "nan-test" not in {s.name for s in tlcore.list_backbones(True)}:
        tlcore.register_backbone(dataclasses.replace(
            tiny, name="nan-test", feature_dim=4, stage_names=("all",), bundled_file=None, weights_url=None,
            build=lambda: Body(_NaNNet(), (Stage("all", ("w",)),), 4, None, "w")))
    finished = run_to_end(tiny_set, dataclasses.replace(TINY, backbone="nan-test", mode="scratch"))
    assert finished.status == "failed" and "learning rate" in finished.reason and finished.result is None


@pytest.mark.parametrize("change, words", [
    (dict(epochs=0), "Epochs"), (dict(lr=100.0), "learning rate"), (dict(batch_size=0), "batch size"),
    (dict(freeze_depth=99, mode="fine-tune"), "Freeze depth"), (dict(val_fraction=1.0), "validation"),
    (dict(mode="magic"), "Unknown mode")])
def test_absurd_settings_fail_with_a_reason(tiny_set, change, words):
    finished = run_to_end(tiny_set, dataclasses.replace(TINY, **change))
    assert finished.status == "failed" and words in finished.reason


def test_batch_larger_than_the_data_is_clamped(tiny_set):
    finished = run_to_end(tiny_set, dataclasses.replace(TINY, mode="fine-tune", batch_size=10_000, epochs=1))
    assert finished.status == "completed"


def test_one_class_fails_with_a_message(tiny_set):
    one = tiny_set.subset(range(8))
    finished = run_to_end(one, TINY)
    assert finished.status == "failed" and "two classes" in finished.reason


def test_features_are_computed_once_per_image(tiny_set):
    FEATURES.clear()
    first = list(train(tiny_set, TINY))
    second = list(train(tiny_set, dataclasses.replace(TINY, seed=5)))
    assert any(isinstance(e, Progress) for e in first)
    assert not any(isinstance(e, Progress) for e in second)  # every feature came from the cache
    assert second[-1].status == "completed"


def test_few_shot_prototypes_from_one_image_per_class(tiny_set):
    finished = run_to_end(tiny_set, dataclasses.replace(TINY, mode="few-shot", max_images_per_class=1))
    r = finished.result
    assert finished.status == "completed" and len(r.history) == 1
    assert len(r.train_indices) == 3 and len(r.val_indices) == 21  # every image not trained on is held out
    # scored over 5 draws of 1 per class: each photo once, by the first 1-shot model that did not train on it
    assert r.score.n == 24 and len(r.heldout) == 24


def test_prototype_head_is_nearest_class_mean():
    from tlcore.engine.heads import set_prototypes

    feats = torch.randn(30, 5)
    labels = torch.arange(3).repeat(10)
    head = nn.Linear(5, 3)
    set_prototypes(head, feats, labels)
    protos = torch.stack([feats[labels == c].mean(0) for c in range(3)])
    x = torch.randn(50, 5)
    assert torch.equal(head(x).argmax(1), torch.cdist(x, protos).argmin(1))


def test_fine_tune_runs_its_frozen_stages_once_and_learns_as_the_full_loop_does(setenv, tiny_set, monkeypatch):
    train_mod = sys.modules["tlcore.engine.train"]

    base = TrainConfig(backbone="tiny-test", mode="fine-tune", freeze_depth=2, epochs=4, augment=False)
    calls = []
    real = train_mod.frozen_forward
    monkeypatch.setattr(train_mod, "frozen_forward", lambda *a, **k: calls.append(k.get("stages")) or real(*a, **k))
    cached = run_to_end(tiny_set, base)
    assert cached.status == "completed" and "once per image" in cached.result.how
    assert set(calls) == {2} and len(calls) <= 3  # a probe, then one pass over the images: not once per epoch
    setenv("TLCORE_PREFIX_CACHE_MB", "0")  # nothing fits: the whole network runs every epoch
    full = run_to_end(tiny_set, base)
    assert "every epoch" in full.result.how and full.result.runtime == "torch"
    # Without augmentation both see exactly the same inputs (the cache only rounds to fp16).
    assert cached.result.val_accuracy == full.result.val_accuracy
    for a, b in zip(cached.result.history, full.result.history):
        assert abs(a.train_loss - b.train_loss) < 1e-2


def test_augmented_views_are_a_fixed_pool_within_the_budget(setenv, tiny_set):
    cfg = TrainConfig(backbone="tiny-test", mode="fine-tune", freeze_depth=1, epochs=2, augment=True, augment_views=3)
    finished = run_to_end(tiny_set, cfg)
    assert "(3 views)" in finished.result.how
    # one view of the stem's output is 8 x 16 x 16 fp16 = 4 KB; 19 training + 5 validation images
    setenv("TLCORE_PREFIX_CACHE_MB", str((5 + 2 * 19) * 4096 / 2**20))
    assert "(2 views)" in run_to_end(tiny_set, cfg).result.how
    with pytest.raises(tlcore.TLError, match="views"):
        TrainConfig(augment_views=0).validate()


def test_a_seed_gives_one_result_whether_or_not_the_process_has_trained_before():
    """The first run of a process builds and exports the pretrained body (drawing random numbers); later
    runs find it cached. Both must start the head, the views and dropout the same (found via Ray)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = """
from tlcore import ImageSet, TrainConfig, run_to_end
from tests.conftest import class_files
s = ImageSet(); s.add(class_files(8, 3))
for mode in ("feature-extraction", "fine-tune", "scratch"):
    cfg = TrainConfig(backbone="tiny-test", epochs=2, lr=0.05, mode=mode)
    a, b = ([e.train_loss for e in run_to_end(s, cfg).result.history] for _ in range(2))
    assert a == b, (mode, a, b)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_feature_extraction_fits_on_augmented_views_computed_once(tiny_set):
    from tlcore.engine.features import embed_views

    FEATURES.clear()
    fe = dataclasses.replace(TINY, mode="feature-extraction")
    first = run_to_end(tiny_set, fe).result
    assert "each of its 3 augmented views" in first.how
    views = list(embed_views(tiny_set, "tiny-test", 3))  # every view now comes from the cache: no progress
    assert views == []
    FEATURES.clear()  # recomputed views are the same views: each is drawn from its image's content
    gen = embed_views(tiny_set, "tiny-test", 3)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        again = done.value
    assert again.shape[:2] == (4, 24) and not torch.equal(again[1], again[2])  # the images, then 3 views
    assert run_to_end(tiny_set, fe).result.score == first.score
    plain = run_to_end(tiny_set, dataclasses.replace(fe, augment=False)).result
    assert "augmented" not in plain.how


def test_a_fold_never_fits_on_a_view_of_an_image_it_is_scored_on():
    """Views identical to their image, labels that are noise: a fold that saw a held-out image's views would
    recognise it (about 100 %); without them it is at chance."""
    from tlcore.core.measure import repeated_folds
    from tlcore.engine.heads import logistic_folds

    torch.manual_seed(0)
    x = torch.randn(40, 64)
    y = torch.randint(0, 2, (40,))
    pairs = repeated_folds(y, 10, 1, 0)
    predict = logistic_folds(x, y, 2, torch.stack([x, x, x]))
    right = sum(int((logits.argmax(1) == y[te]).sum()) for (_tr, te), logits in zip(pairs, predict(pairs)))
    assert right / 40 < 0.8
    leaky = logistic_folds(torch.cat([x, x]), torch.cat([y, y]), 2)  # the held-out image's copy trained on
    copies = [(tr + [i + 40 for i in te], te) for tr, te in pairs]
    right = sum(int((logits.argmax(1) == y[te]).sum()) for (_tr, te), logits in zip(copies, leaky(copies)))
    assert right / 40 > 0.95  # the test can fail: a leak would show


def test_augment_draws_each_image_its_own_view_and_identity_draws_change_nothing():
    from tlcore.engine.features import AUGMENT_DRAWS, augment

    torch.manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    identity = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5]]).repeat(4, 1)  # whole image, no flip, x1
    assert torch.equal(augment(x, identity), x)
    flipped = identity.clone()
    flipped[:, 4] = 0.1
    assert torch.equal(augment(x, flipped), x.flip(-1))
    same = x[:1].repeat(4, 1, 1, 1)  # one image, four draws: four different views
    views = augment(same, torch.rand(4, AUGMENT_DRAWS))
    assert views.shape == same.shape and views.dtype == torch.uint8
    assert len({v.numpy().tobytes() for v in views}) == 4


def test_feature_extraction_with_views_averages_the_images_fit_and_the_views_fit(tiny_set):
    """With augmented views the head is the average of two logistic regressions, on the images alone and on the
    images with their views (each fitted to convergence here separately): alone, either fell up to 3 points
    below the baseline on some small real sets."""
    from tlcore.core.measure import fit_logistic
    from tlcore.engine.features import embed, embed_views
    from tlcore.engine.heads import HEAD_C
    from tlcore.engine.train import drive

    fe = dataclasses.replace(TINY, mode="feature-extraction", epochs=50)
    result = run_to_end(tiny_set, fe).result
    assert "the average of two logistic regressions" in result.how
    x, y = drive(embed(tiny_set, "tiny-test")).float(), tiny_set.labels()
    views = drive(embed_views(tiny_set, "tiny-test", 3))[1:].float()
    alone = fit_logistic(x, y, 3, HEAD_C, 1000)
    with_views = fit_logistic(torch.cat([x, *views]), y.repeat(4), 3, HEAD_C, 1000)
    head = result.model.head[-1]
    logits = x @ head.weight.detach().T + head.bias.detach()
    expected = x @ ((alone[0] + with_views[0]) / 2).T + (alone[1] + with_views[1]) / 2
    assert torch.allclose(logits, expected, atol=2e-2), (logits - expected).abs().max()
    assert tlcore.fe_views(fe, 200, 5) == 0 and tlcore.fe_views(fe, 50, 5) == 3  # 40 per class: no views


def test_the_feature_extraction_head_shows_a_curve_even_when_it_converges_in_its_first_epoch():
    """One L-BFGS run goes through the epochs and can converge within the first (10 iterations), as on the
    bundled faces: the run still shows two epochs, a line on the live plot rather than a dot (the CLI's
    ``--epochs 2`` once said 1)."""
    from pathlib import Path

    faces = tlcore.load_folder(Path(__file__).resolve().parents[2] / "assets" / "samples" / "faces")
    result = run_to_end(faces, TrainConfig(backbone="tiny-test", mode="feature-extraction", epochs=50)).result
    assert 2 <= len(result.history) < 50
    assert result.best_epoch == len(result.history)
