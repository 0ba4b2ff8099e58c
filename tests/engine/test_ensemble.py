"""An ensemble of backbones as a backbone of its own: built from the two tiny test nets (seconds), the four
bundled networks once (``ensemble``, where they are installed)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tlcore
from tests.conftest import ROOT
from tlcore.analysis.compare import plan
from tlcore.analysis.transfer import transfer_score
from tlcore.data.images import tensor_to_image
from tlcore.engine.config import TrainConfig
from tlcore.engine.evaluate import grad_cam
from tlcore.engine.features import embed
from tlcore.engine.train import drive, run_to_end
from tlcore.models.backbones import frozen_body, get_backbone_spec, weights_digest
from tlcore.models.zeroshot import zero_shot_model

MEMBERS = ("tiny-test", "tiny-test-b")


def member_features(x: torch.Tensor) -> list[torch.Tensor]:
    """Each tiny member's features of [0, 1] pixels at the ensemble's size, as its own preprocessing makes them."""
    out = []
    for name in MEMBERS:
        pre = get_backbone_spec(name).preprocess
        xi = F.interpolate(x, size=(pre.input_size,) * 2, mode="bilinear", align_corners=False)
        xi = (xi - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
        with torch.no_grad():
            out.append(frozen_body(name)(xi))
    return out


def test_the_ensemble_is_its_members_side_by_side():
    spec = get_backbone_spec("tiny-ensemble")
    assert spec.members == MEMBERS and spec.frozen_only and spec.availability() == "bundled"
    assert spec.feature_dim == 64 and spec.stage_names == ("Tiny test net", "Tiny test net B")
    assert spec.num_params == 14_000 and spec.preprocess.input_size == 32  # the largest member's
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        feats = frozen_body("tiny-ensemble")(x)  # the spec's preprocessing leaves [0, 1] pixels as they are
    torch.testing.assert_close(feats, torch.cat(member_features(x), 1))
    assert weights_digest("tiny-ensemble") not in (weights_digest("tiny-test"), weights_digest("tiny-test-b"))


def test_its_imagenet_head_averages_the_members_probabilities():
    x = torch.rand(4, 3, 32, 32)
    head = frozen_body("tiny-ensemble").imagenet_head
    with torch.no_grad():
        got = torch.softmax(head(frozen_body("tiny-ensemble")(x)), 1)
        want = torch.stack([torch.softmax(frozen_body(n).imagenet_head(f), 1)
                            for n, f in zip(MEMBERS, member_features(x))]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert head.out_features == 1000


def test_feature_extraction_few_shot_zero_shot_the_fit_score_and_the_data_check_run_through_it(tiny_set, tmp_path):
    for mode in ("feature-extraction", "few-shot"):
        done = run_to_end(tiny_set, TrainConfig(backbone="tiny-ensemble", mode=mode, epochs=3))
        assert done.status == "completed", done.reason
        assert done.result.score is not None and done.result.score.n == len(tiny_set)
    saved = tlcore.load_run(tlcore.save_run(done.result, tmp_path / "run"))
    assert saved.model.body.shared_pretrained == "tiny-ensemble"  # the head on the shared pretrained ensemble
    images = [tensor_to_image(i.pixels) for i in tiny_set.items[:4]]
    assert [p.label for p in tlcore.predict(saved.model, images, saved.classes, saved.preprocess)] == \
           [p.label for p in tlcore.predict(done.result.model, images, saved.classes, saved.preprocess)]
    feats = drive(embed(tiny_set, "tiny-ensemble"))
    assert feats.shape == (len(tiny_set), 64)
    score = drive(transfer_score(tiny_set, "tiny-ensemble"))
    assert score.backbone == "tiny-ensemble" and 0 < score.imagenet_confidence <= 1
    check = tlcore.check_data(tiny_set, "tiny-ensemble")  # the data check on its features
    assert check.judged == len(tiny_set)
    model = zero_shot_model("tiny-ensemble", ["cat", "coffee"], {"cat": ["tiger cat"], "coffee": ["espresso"]})
    probs = tlcore.predict(model, images, ["cat", "coffee"], get_backbone_spec("tiny-ensemble").preprocess)
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in probs)


def test_grad_cam_looks_through_one_member():
    model = zero_shot_model("tiny-ensemble", ["cat", "coffee"], {"cat": ["tiger cat"], "coffee": ["espresso"]})
    image = Image.fromarray((torch.rand(50, 70, 3) * 255).to(torch.uint8).numpy())
    cam = grad_cam(model, image, get_backbone_spec("tiny-ensemble").preprocess)
    assert cam.shape == (32, 32) and 0 <= cam.min() and cam.max() <= 1 and cam.max() > 0


@pytest.mark.parametrize("mode", ["fine-tune", "scratch"])
def test_training_the_ensemble_is_refused_in_words(mode, tiny_set):
    with pytest.raises(tlcore.TLError, match="can only be used frozen.*choose one of them on the Backbone page"):
        TrainConfig(backbone="tiny-ensemble", mode=mode).validate()
    with pytest.raises(tlcore.TLError, match="can only be used frozen"):
        plan([mode], TrainConfig(backbone="tiny-ensemble"))
    # a comparison leaves out what it cannot run, and a race runs it where the strategy allows
    assert [p.config.mode for p in plan(["feature-extraction", mode], TrainConfig(backbone="tiny-ensemble"))] == \
           ["feature-extraction"]
    assert [p.config.backbone for p in plan([mode], TrainConfig(), backbones=["tiny-test", "tiny-ensemble"])] == \
           ["tiny-test"]
    assert len(plan(["few-shot"], TrainConfig(), backbones=["tiny-test", "tiny-ensemble"])) == 2


def test_its_stages_are_not_probed_and_it_says_why(tiny_set):
    with pytest.raises(tlcore.TLError, match="side by side.*choose one of them"):
        drive(tlcore.probe_stages(tiny_set, "tiny-ensemble"))
    with pytest.raises(tlcore.TLError, match="side by side.*choose one of them"):
        tlcore.stage_maps("tiny-ensemble", tiny_set, 0)


def test_its_exports_match_the_app(tmp_path):
    data = tmp_path / "data"
    from tests.conftest import class_files, cli

    for name, content, label in class_files(6):
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / name).write_bytes(content)
    out = cli("train", str(data), "--out", str(tmp_path / "run"), "--backbone", "tiny-ensemble", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    from tlcore.studio.report import open_run_folder

    project, record = open_run_folder(tmp_path / "run", data)
    web = tlcore.export_web(project, record, tmp_path / "web")
    assert web.max_diff <= 1e-4
    pixels = torch.rand(3, 3, 32, 32)
    assert tlcore.export_onnx(record.result.model, tmp_path / "m.onnx", pixels) <= 1e-4
    assert tlcore.export_torchscript(record.result.model, tmp_path / "m.pt", pixels) <= 1e-4


def test_the_four_bundled_networks_together():
    if "ensemble" not in {s.name for s in tlcore.list_backbones()}:
        pytest.skip("the four bundled networks are not all installed here")
    spec = get_backbone_spec("ensemble")
    assert spec.feature_dim == 4 * 1280 and spec.preprocess.input_size == 260 and spec.imagenet_top1 is None
    assert spec.num_params == sum(get_backbone_spec(m).num_params for m in spec.members)
    coffee = tlcore.imagenet_top("ensemble", Image.open(ROOT / "assets" / "coffee.jpg"))
    cat = tlcore.imagenet_top("ensemble", Image.open(ROOT / "assets" / "chelsea.jpg"))
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.5
    assert {"tiger cat", "Egyptian cat"} & {name for name, _ in cat[:2]}


def test_the_race_says_whether_imagenet_top1_ranked_the_backbones_here():
    from tlcore.analysis.compare import top1_finding

    rows = [("A", 71.9, 0.70), ("B", 75.1, 0.80), ("C", 77.6, 0.90), ("All four", None, 0.93)]
    text = top1_finding(rows)
    assert text.startswith("From the strongest on ImageNet to the weakest: C (77.6 %) 90%, B (75.1 %) 80%, A (71.9 %) 70%")
    assert "holds here" in text and "rank correlation 1.00" in text and "All four 93% (its ImageNet top-1 is not known)" in text
    assert "does not show here" in top1_finding([("A", 71.9, 0.9), ("B", 75.1, 0.8), ("C", 77.6, 0.7)])
    assert "cannot be judged" in top1_finding([("A", 71.9, 0.9), ("B", 75.1, 0.9), ("C", 77.6, 0.9)])
    assert top1_finding([("A", 71.9, 0.9), ("B", 75.1, 0.8), ("All four", None, 0.7)]) is None  # two known: no ranking
