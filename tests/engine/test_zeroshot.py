"""Zero-shot: a classifier from class names alone, on real photos, and honest failure on digits."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

import tlcore
from tlcore import ImageSet, TrainConfig, load_folder, load_run, predict, run_to_end, save_run
from tlcore.zeroshot import GroupLogSumExp, suggest_mapping, zero_shot_model
from tests.conftest import ROOT


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
    assert m["3"] == []  # ImageNet has no word for a handwritten digit
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
    from tlcore.compare import plan

    runs = plan(["few-shot", "zero-shot"], TrainConfig(), shots=[1, 5])
    assert [r.label for r in runs] == ["zero-shot @ 0/class", "few-shot @ 1/class", "few-shot @ 5/class"]


def test_without_the_sentence_model_names_match_by_words(monkeypatch):
    from tlcore import zeroshot

    monkeypatch.setattr(zeroshot, "_embedder", lambda: None)
    m = suggest_mapping(["cats", "Coffee", "7"])
    assert "tiger cat" in m["cats"] and "coffee mug" in m["Coffee"] and m["7"] == []
    assert zeroshot.mapping_method() == "word overlap"


def test_a_general_name_reaches_every_imagenet_class_under_it():
    """Issue 21: "bird" suggested birdhouse and "fish" starfish (names that look alike); ImageNet's classes are
    WordNet synsets, and a general name now maps to the classes under it (tlcore/imagenet_groups.json)."""
    m = suggest_mapping(["bird", "Fish", "dogs", "mushroom"])
    assert "birdhouse" not in m["bird"] and {"ostrich", "goldfinch", "bald eagle", "king penguin", "black swan"} <= set(m["bird"])
    assert len(m["bird"]) == 59 and "starfish" not in m["Fish"] and {"goldfish", "tench", "puffer", "eel"} <= set(m["Fish"])
    assert len(m["dogs"]) == 118 and "dogsled" not in m["dogs"]
    assert {"agaric", "bolete", "mushroom"} <= set(m["mushroom"])


def test_the_groups_are_wordnet_synsets_over_their_imagenet_classes():
    """Every group's synset exists (timm's lemma table of 21,843 synsets) and names the group; ranges are
    ImageNet-1k indices, and the names a class is matched on belong to one group only."""
    import json
    from pathlib import Path

    import timm

    lemmas = dict(line.rstrip("\n").split("\t", 1) for line in
                  (Path(timm.__file__).parent / "data/_info/imagenet_synset_to_lemma.txt").open())
    groups = json.loads((ROOT / "tlcore/imagenet_groups.json").read_text())["groups"]
    names = [n for g in groups.values() for n in g["names"]]
    assert len(names) == len(set(names))
    for title, g in groups.items():
        found = " ".join(lemmas[s] for s in g["wordnet"])
        assert any(w in found for w in title.replace(" or ", " ").split() if w != "big") or title == "mushroom", (title, found)
        assert all(0 <= lo <= hi < 1000 for lo, hi in g["ranges"])


def test_names_that_are_all_wordnet_groups_never_load_the_sentence_model(monkeypatch):
    """A ladder on bird / fish / fruit spent 3-6 s of each worker's first zero-shot run loading a sentence model
    it did not use (every name is a group)."""
    from tlcore import zeroshot

    def no(*_a):
        raise AssertionError("the sentence model was loaded")

    monkeypatch.setattr(zeroshot, "_embedder", no)
    m = suggest_mapping(["bird", "Fish", "fruit"])
    assert "goldfinch" in m["bird"] and "goldfish" in m["Fish"] and m["fruit"]


def test_the_imagenet_names_are_embedded_once_then_read_from_disk(monkeypatch, tmp_path):
    from tlcore import zeroshot

    if zeroshot._embedder() is None:
        pytest.skip("the sentence model is not installed")
    monkeypatch.setenv("TLCORE_CACHE_DIR", str(tmp_path))
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
        monkeypatch.setenv("TLCORE_CACHE_DIR", str(tmp_path))
        assert (zeroshot._imagenet_vectors() == first).all() and saved.stat().st_size > 1000
    finally:
        zeroshot._imagenet_vectors.cache_clear()
