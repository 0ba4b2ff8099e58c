"""Zero-shot accuracy on real photos whose classes can be named in words, with and without ImageNet's
hierarchy (issue 21). Run: python -m tests.zeroshot_check

Photos: scikit-image's chelsea (cat), coffee, rocket and stereo_motorcycle, scikit-learn's flower; 12 crops
each (35-90 % of the side, flipped half of the time; tests/open_set_check.py's crops). EfficientNet-Lite0's
ImageNet head, summed per class (tlcore.zeroshot).
"""
from __future__ import annotations

import json
import random
import sys

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "flower": "flower", "motorcycle": "stereo_motorcycle"}


def measure(per_photo: int = 12, hierarchy: bool = True) -> dict:
    import tlcore
    from tests.open_set_check import _crops, _photo
    from tlcore import zeroshot

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
            "per_class": per_class, "mapping": {c: mapping[c][:6] + (["…"] if len(mapping[c]) > 6 else []) for c in classes}}


def main() -> int:
    for hierarchy in (False, True):
        print(json.dumps(measure(hierarchy=hierarchy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
