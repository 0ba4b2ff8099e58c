"""Zero-shot accuracy on real photos whose classes can be named in words, with and without ImageNet's
hierarchy (issue 21). Run: python -m benchmarks.zero_shot [--tuxpaint] [--backbone NAME]

``--tuxpaint`` (issue 39): the cut-out photos of the Debian package tuxpaint-stamps-default (never seen by the code
or the tests), 12 per class of bird, fish, fruit, flower and vegetable (fish: its 11) drawn for seeds 0-4, and
every photo of mammal, insect and tool; decoded as the app does (transparency over white).

Photos: scikit-image's chelsea (cat), coffee, rocket and stereo_motorcycle, scikit-learn's flower; 12 crops
each (35-90 % of the side, flipped half of the time; benchmarks/open_set.py's crops). EfficientNet-Lite0's
ImageNet head, summed per class (tlcore.models.zeroshot).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "flower": "flower", "motorcycle": "stereo_motorcycle"}


def measure(per_photo: int = 12, hierarchy: bool = True) -> dict:
    import tlcore
    from benchmarks.open_set import _crops, _photo
    from tlcore.models import zeroshot
    rng = random.Random(1)
    images, labels = [], []
    for label, photo in PHOTOS.items():
        crops = _crops(_photo(photo), per_photo, rng)
        images += crops
        labels += [label] * len(crops)
    classes = list(PHOTOS)
    saved = zeroshot.imagenet_groups
    if not hierarchy:
        zeroshot.imagenet_groups = lambda: {}
    try:
        mapping = zeroshot.suggest_mapping(classes)
    finally:
        zeroshot.imagenet_groups = saved
    backbone = tlcore.DEFAULT_BACKBONE
    model = zeroshot.zero_shot_model(backbone, classes, mapping)
    preds = tlcore.predict(model, images, classes, tlcore.get_backbone_spec(backbone).preprocess)
    right = sum(p.label == y for p, y in zip(preds, labels))
    per_class = {c: sum(p.label == y for p, y in zip(preds, labels) if y == c) for c in classes}
    true_p = {c: round(sum(p.probabilities[y] for p, y in zip(preds, labels) if y == c) / labels.count(c), 3)
              for c in classes}  # how sure of the right class, on average
    return {"hierarchy": hierarchy, "right": right, "of": len(images), "accuracy": round(right / len(images), 3),
            "mean_probability_of_the_true_class": true_p,
            "per_class": per_class, "mapping": {c: list(mapping[c])[:6] + (["…"] if len(mapping[c]) > 6 else []) for c in classes}}


TUXPAINT = Path("/usr/share/tuxpaint/stamps")
FOLDERS = {"bird": "animals/birds", "fish": "animals/fish", "fruit": "food/fruit", "vegetable": "food/vegetables",
           "flower": "plants/flowers", "mammal": "animals/mammals", "insect": "animals/insects",
           "tool": "household/tools"}


def tuxpaint_photos(classes: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Each class's photos (file name, bytes), skipping the 'cartoon' drawings; exits saying what to install when
    the package is absent."""
    if not TUXPAINT.is_dir():
        sys.exit("No tuxpaint photos: install the Debian package tuxpaint-stamps-default "
                 f"(its stamps are read from {TUXPAINT}).")
    return {c: [(p.name, p.read_bytes()) for p in sorted((TUXPAINT / FOLDERS[c]).rglob("*.png"))
                if "cartoon" not in p.parts] for c in classes}


def measure_photos(photos: dict[str, list[tuple[str, bytes]]], backbone: str) -> dict:
    """Zero-shot accuracy of the suggested mapping on ``photos`` (class -> [(name, bytes)])."""
    import tlcore
    from tlcore.data.images import decode_image
    from tlcore.models import zeroshot

    classes = list(photos)
    images = [decode_image(name, data) for c in classes for name, data in photos[c]]
    labels = [c for c in classes for _ in photos[c]]
    mapping = zeroshot.suggest_mapping(classes)
    model = zeroshot.zero_shot_model(backbone, classes, mapping)
    preds = tlcore.predict(model, images, classes, tlcore.get_backbone_spec(backbone).preprocess)
    right = sum(p.label == y for p, y in zip(preds, labels))
    per_class = {c: f"{sum(p.label == y for p, y in zip(preds, labels) if y == c)}/{labels.count(c)}" for c in classes}
    return {"right": right, "of": len(images), "accuracy": round(right / len(images), 3), "per_class": per_class,
            "imagenet_classes": {c: len(mapping[c]) for c in classes}}


def tuxpaint(backbone: str, seeds: range = range(5), per_class: int = 12) -> None:
    five = ["bird", "fish", "fruit", "flower", "vegetable"]
    photos = tuxpaint_photos(five + ["mammal", "insect", "tool"])
    results = []
    for seed in seeds:
        rng = random.Random(seed)
        drawn = {c: rng.sample(photos[c], min(per_class, len(photos[c]))) for c in five}
        results.append(measure_photos(drawn, backbone))
        print(json.dumps({"set": f"tuxpaint 5 classes, {per_class} per class, seed {seed}", "backbone": backbone,
                          **results[-1]}))
    right, of = sum(r["right"] for r in results), sum(r["of"] for r in results)
    print(json.dumps({"set": f"tuxpaint 5 classes, seeds {seeds.start}-{seeds.stop - 1}", "backbone": backbone,
                      "right": right, "of": of, "accuracy": round(right / of, 3),
                      "per_seed": [r["accuracy"] for r in results]}))
    for group in (five, ["mammal", "insect", "tool"]):
        print(json.dumps({"set": f"tuxpaint {'/'.join(group)}, every photo", "backbone": backbone,
                          **measure_photos({c: photos[c] for c in group}, backbone)}))


def main() -> int:
    import argparse

    import tlcore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuxpaint", action="store_true", help="tuxpaint's photos instead of the scikit-image set")
    ap.add_argument("--backbone", default=tlcore.DEFAULT_BACKBONE)
    args = ap.parse_args()
    if args.tuxpaint:
        tuxpaint(args.backbone)
        return 0
    for hierarchy in (False, True):
        print(json.dumps(measure(hierarchy=hierarchy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
