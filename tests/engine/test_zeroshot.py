"""Zero-shot: a classifier from class names alone, on real photos, and honest failure on digits."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

import tlcore
from tests.conftest import ROOT
from tlcore import ImageSet, TrainConfig, load_folder, load_run, predict, run_to_end, save_run
from tlcore.models.zeroshot import GroupLogSumExp, suggest_mapping, zero_shot_model


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def views(img: Image.Image) -> list[Image.Image]:
    w, h = img.size
    return [img, ImageOps.mirror(img), img.crop((w // 8, h // 8, w, h)), img.crop((0, 0, w * 7 // 8, h * 7 // 8)),
            ImageOps.mirror(img.crop((w // 10, 0, w, h)))]


@pytest.fixture(scope="module")
def photos():
    """scikit-image's cat (Chelsea) and coffee photos, shipped in assets/, in a few crops each."""
    out = {"cat": Image.open(ROOT / "assets/chelsea.jpg").convert("RGB"),
           "coffee": Image.open(ROOT / "assets/coffee.jpg").convert("RGB")}
    return out


def test_mapping_names_the_obvious_imagenet_classes_and_none_for_digits():
    m = suggest_mapping(["cat", "kitty", "coffee", "3"])
    assert {"tiger cat", "Egyptian cat"} <= set(m["cat"]) and "tiger cat" in m["kitty"]
    assert "coffee mug" in m["coffee"]
    assert m["3"] == {}  # ImageNet has no word for a handwritten digit
    assert tlcore.unmapped(["cat", "3"], m) == ["3"]


def test_group_sum_is_the_renormalised_sum_of_imagenet_probabilities():
    import torch

    logits = torch.randn(4, 1000)
    groups = [[1, 2, 3], [10], []]
    out = torch.softmax(GroupLogSumExp(groups)(logits), 1)
    p = torch.softmax(logits, 1)
    sums = torch.stack([p[:, g].sum(1) if g else torch.zeros(4) for g in groups], 1)
    torch.testing.assert_close(out, sums / sums.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_zero_shot_run_gets_cat_and_coffee_right_and_reloads(photos, tmp_path):
    data = ImageSet()
    assert not data.add([(f"{label}{k}.png", png(v), label) for label, img in photos.items()
                         for k, v in enumerate(views(img))])
    done = run_to_end(data, TrainConfig(mode="zero-shot", val_fraction=0.4))
    assert done.status == "completed", done.reason
    result = done.result
    assert result.val_accuracy == 1.0 and result.trainable_params == 0
    assert "tiger cat" in result.config.zero_shot_map["cat"]
    saved = load_run(save_run(result, tmp_path / "run"))
    preds = predict(saved.model, list(photos.values()), saved.classes, saved.preprocess)
    assert [p.label for p in preds] == ["cat", "coffee"]


def test_an_edited_mapping_is_used(photos):
    model = zero_shot_model("efficientnet_lite0", ["cat", "coffee"], {"cat": ["coffee mug"], "coffee": ["tiger cat"]})
    spec = tlcore.get_backbone_spec("efficientnet_lite0")
    assert [p.label for p in predict(model, list(photos.values()), ["cat", "coffee"], spec.preprocess)] == [
        "coffee", "cat"]  # swapped on purpose: the user's mapping decides
    with pytest.raises(tlcore.TLError, match="Not ImageNet classes"):
        zero_shot_model("efficientnet_lite0", ["cat"], {"cat": ["kitty"]})


def test_zero_shot_on_digits_is_near_chance_and_says_why():
    digits = load_folder(ROOT / "assets/samples/digits")
    done = run_to_end(digits, TrainConfig(mode="zero-shot"))
    assert done.status == "completed"
    assert done.result.val_accuracy <= 0.4  # 5 classes: chance is 20 %
    assert "ImageNet has no class for 0, 1, 2, 3" in done.reason  # ("4" reads as "four-poster" bed)


def test_compare_puts_zero_shot_first_once_per_study():
    from tlcore.analysis.compare import plan

    runs = plan(["few-shot", "zero-shot"], TrainConfig(), shots=[1, 5])
    assert [r.label for r in runs] == ["zero-shot @ 0/class", "few-shot @ 1/class", "few-shot @ 5/class"]


def test_without_the_sentence_model_names_match_by_words(monkeypatch):
    from tlcore.models import zeroshot
    monkeypatch.setattr(zeroshot, "_embedder", lambda: None)
    m = suggest_mapping(["cats", "Coffee", "7"])
    assert "tiger cat" in m["cats"] and "coffee mug" in m["Coffee"] and m["7"] == {}
    assert zeroshot.mapping_method() == "word overlap"


def test_a_general_name_reaches_every_imagenet_class_under_it():
    """Issue 21: "bird" suggested birdhouse and "fish" starfish (names that look alike); ImageNet's classes are
    WordNet synsets, and a general name now maps to the classes under it (tlcore/models/imagenet_groups.json)."""
    from tlcore.models.zeroshot import OUTSIDE_GROUP

    m = suggest_mapping(["bird", "Fish", "dogs", "mushroom"])

    def full(c):
        return {n for n, w in m[c].items() if w == 1}

    assert {"ostrich", "goldfinch", "bald eagle", "king penguin", "black swan"} <= full("bird")
    assert len(full("bird")) == 59 and {"goldfish", "tench", "puffer", "eel"} <= full("Fish") and len(full("dogs")) == 118
    # Names that merely look alike weigh at most OUTSIDE_GROUP (issue 39: looser matches weigh, less)
    assert m["bird"].get("birdhouse", 0) <= OUTSIDE_GROUP and m["Fish"].get("starfish", 0) <= OUTSIDE_GROUP
    assert m["dogs"].get("dogsled", 0) <= OUTSIDE_GROUP
    assert {"agaric", "bolete", "mushroom"} <= full("mushroom")


def test_the_groups_are_wordnet_synsets_over_their_imagenet_classes():
    """Every group's synset exists (timm's lemma table of 21,843 synsets) and names the group; ranges are
    ImageNet-1k indices, and the names a class is matched on belong to one group only."""
    import json
    from pathlib import Path

    import timm

    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in
                  (Path(timm.__file__).parent / "data/_info/imagenet_synset_to_lemma.txt").open())
    groups = json.loads((ROOT / "tlcore/models/imagenet_groups.json").read_text())["groups"]
    names = [n for g in groups.values() for n in g["names"]]
    assert len(names) == len(set(names))
    for title, g in groups.items():
        found = " ".join(lemmas[s] for s in g["wordnet"])
        assert any(w in found for w in title.replace(" or ", " ").split() if w != "big") or title == "mushroom", (title, found)
        assert all(0 <= lo <= hi < 1000 for lo, hi in g["ranges"])


def test_without_the_sentence_model_a_group_name_still_maps_to_its_group(monkeypatch):
    from tlcore.models import zeroshot
    monkeypatch.setattr(zeroshot, "_embedder", lambda: None)
    m = suggest_mapping(["bird", "Fish", "fruit"])
    assert "goldfinch" in m["bird"] and "goldfish" in m["Fish"] and set(m["fruit"].values()) == {1.0}
    assert len(m["bird"]) == 59  # WordNet's birds, nothing that merely shares a word


def test_weights_concentrate_on_what_the_name_means():
    """Issue 39 (ConSE): every ImageNet class weighs by how close its name is. The heaviest classes are the ones the
    name means, lighter ones are looser matches, and the mapping lists them heaviest first."""
    from tlcore.models import zeroshot
    if zeroshot._embedder() is None:
        pytest.skip("the sentence model is not installed")
    m = suggest_mapping(["coffee", "vegetable", "mammal"])
    coffee = m["coffee"]
    assert list(coffee.values()) == sorted(coffee.values(), reverse=True) and max(coffee.values()) == 1.0
    assert coffee["coffee mug"] > 0.5 and coffee["coffeepot"] > 0.5 and "tabby" not in coffee
    assert all(zeroshot.MIN_WEIGHT <= w <= 1 for w in coffee.values())
    # a WordNet group keeps weight 1 and gains the everyday word's looser members, lighter
    assert m["vegetable"]["broccoli"] == 1.0 and 0 < m["vegetable"]["corn"] <= zeroshot.OUTSIDE_GROUP
    # "mammal" is no group: many mammals, weighted (issue 39: it named five arbitrary species)
    assert len(m["mammal"]) > 20 and {"lion", "weasel", "bison"} <= set(m["mammal"])
    assert not {"hummingbird", "goldfish", "coffee mug"} & set(m["mammal"])


def test_weighted_group_sum_is_the_renormalised_weighted_sum():
    import torch

    logits = torch.randn(3, 1000)
    groups = [{1: 1.0, 2: 0.25}, {10: 0.5, 2: 1.0}, {}]
    out = torch.softmax(GroupLogSumExp(groups)(logits), 1)
    p = torch.softmax(logits, 1)
    sums = torch.stack([p[:, 1] + 0.25 * p[:, 2], 0.5 * p[:, 10] + p[:, 2], torch.zeros(3)], 1)
    torch.testing.assert_close(out, sums / sums.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_an_edit_keeps_weights_adds_at_one_and_removes():
    from tlcore.models.zeroshot import edit_mapping, mapping_weights

    weights = {"tabby": 1.0, "tiger cat": 0.8, "lynx": 0.3}
    assert edit_mapping(weights, ["tiger cat", "Persian cat"]) == {"tiger cat": 0.8, "Persian cat": 1.0}
    assert mapping_weights(["tabby", "lynx"]) == {"tabby": 1.0, "lynx": 1.0}  # a list: as runs before the weights
    assert tlcore.unmapped(["cat", "dog"], {"cat": {"tabby": 0.5}, "dog": {}}) == ["dog"]


def test_a_run_saved_before_the_weights_loads_and_predicts_as_it_did(photos, tmp_path):
    """Runs before issue 39 stored each class's ImageNet classes as a list: weight 1 each, the plain sum."""
    import json

    data = ImageSet()
    assert not data.add([(f"{label}{k}.png", png(v), label) for label, img in photos.items()
                         for k, v in enumerate(views(img)[:3])])
    old = {"cat": ["tabby", "tiger cat", "Egyptian cat"], "coffee": ["espresso", "cup"]}
    done = run_to_end(data, TrainConfig(mode="zero-shot", val_fraction=0.4,
                                        zero_shot_map={"cat": {n: 1.0 for n in old["cat"]},
                                                       "coffee": {n: 1.0 for n in old["coffee"]}}))
    assert done.status == "completed", done.reason
    folder = save_run(done.result, tmp_path / "run")
    meta = json.loads((folder / "run.json").read_text())
    assert meta["config"]["zero_shot_map"]["cat"] == {"tabby": 1.0, "tiger cat": 1.0, "Egyptian cat": 1.0}
    meta["config"]["zero_shot_map"] = old  # as an old run.json holds it
    (folder / "run.json").write_text(json.dumps(meta))
    saved = load_run(folder)
    spec = tlcore.get_backbone_spec("efficientnet_lite0")
    want = predict(zero_shot_model("efficientnet_lite0", ["cat", "coffee"], old), list(photos.values()),
                   ["cat", "coffee"], spec.preprocess)
    got = predict(saved.model, list(photos.values()), saved.classes, saved.preprocess)
    assert [p.label for p in got] == ["cat", "coffee"]
    for g, w in zip(got, want):
        assert g.probabilities == pytest.approx(w.probabilities, abs=1e-6)


def test_the_imagenet_names_are_embedded_once_then_read_from_disk(setenv, monkeypatch, tmp_path):
    from tlcore.models import zeroshot
    if zeroshot._embedder() is None:
        pytest.skip("the sentence model is not installed")
    setenv("TLCORE_CACHE_DIR", str(tmp_path))
    zeroshot._imagenet_vectors.cache_clear()
    try:
        first = zeroshot._imagenet_vectors()
        [saved] = (tmp_path / "runtime").glob("imagenet-names-*.npy")
        zeroshot._imagenet_vectors.cache_clear()
        monkeypatch.setattr(zeroshot, "_embedder", lambda: (_ for _ in ()).throw(AssertionError("embedded again")))
        again = zeroshot._imagenet_vectors()
        assert again.shape == (1000, 384) and (again == first).all()
        saved.write_bytes(b"damaged")  # a damaged file is computed again, not trusted
        zeroshot._imagenet_vectors.cache_clear()
        monkeypatch.undo()
        setenv("TLCORE_CACHE_DIR", str(tmp_path))
        assert (zeroshot._imagenet_vectors() == first).all() and saved.stat().st_size > 1000
    finally:
        zeroshot._imagenet_vectors.cache_clear()
