"""How often "Not sure / none of these" fires for real photos of things the model was never taught, and how
often it fires wrongly for held-out images of its own classes (issue 21). Run: python -m benchmarks.open_set

Classes (real images, each varied): face (LFW, the faces sample), digit (the digits sample), cat, coffee and
rocket (crops of scikit-image's chelsea, coffee and rocket photos at many scales and places). Out of class:
crops of every other scikit-image photo (astronaut, motorcycle, hubble, retina, coins, ...) and scikit-learn's
china and flower. A feature-extraction model on EfficientNet-Lite0, the app's default.
"""
from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IN_PHOTOS = {"pets and cups": ("chelsea", "coffee"), "space": ("rocket", "astronaut"), "places": ("china", "flower")}
OUT_PHOTOS = ["stereo_motorcycle", "hubble_deep_field", "retina", "coins", "camera", "brick", "grass",
              "gravel", "immunohistochemistry", "moon", "page", "clock", "horse"]


def _photo(name: str) -> Image.Image:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    a = getattr(skimage.data, name)()
    a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
    if a.dtype == bool:
        a = (a * 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def _crops(img: Image.Image, n: int, rng: random.Random) -> list[Image.Image]:
    w, h = img.size
    out = []
    for _ in range(n):
        s = rng.uniform(0.35, 0.9) * min(w, h)
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        c = img.crop((int(x), int(y), int(x + s), int(y + s))).resize((160, 160))
        out.append(c.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else c)
    return out


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def measure(per_photo: int = 20, out_per_photo: int = 6, faces: int = 60) -> dict:
    """Train on the classes above, then count "not sure" on held-out images of them and on out-of-class crops."""
    import tlcore
    from tlcore.engine.evaluate import Familiarity

    rng = random.Random(0)
    files = []
    for sample, label, limit in (("faces/face", "face", faces), ("digits/3", "digit", faces // 3),
                                 ("digits/1", "digit", faces // 3), ("digits/4", "digit", faces // 3)):
        files += [(p.name, p.read_bytes(), label) for p in sorted((ROOT / "assets/samples" / sample).glob("*.png"))[:limit]]
    for label, photos in IN_PHOTOS.items():  # each class several photos: as varied as a real class
        files += [(f"{label}-{p}-{k}.png", _png(c), label) for p in photos for k, c in enumerate(_crops(_photo(p), per_photo, rng))]
    images = tlcore.ImageSet()
    assert images.add(files) == []
    finished = tlcore.run_to_end(images, tlcore.TrainConfig(mode="feature-extraction", epochs=20))
    result = finished.result
    spec = tlcore.get_backbone_spec(result.config.backbone)
    train = tlcore.ImageSet([images.items[i] for i in result.train_indices], (), list(result.classes))
    val = [images.items[i] for i in result.val_indices]
    fam = Familiarity.of(result.model, train, result.classes, spec.preprocess)
    outside = []
    for name in OUT_PHOTOS:
        outside += _crops(_photo(name), out_per_photo, rng)
    val_imgs = [Image.fromarray(i.pixels.permute(1, 2, 0).numpy()) for i in val]
    preds_in = tlcore.predict(result.model, val_imgs, result.classes, spec.preprocess, fam)
    preds_out = tlcore.predict(result.model, outside, result.classes, spec.preprocess, fam)
    right = sum(p.label == i.label for p, i in zip(preds_in, val))
    report = {"classes": list(result.classes), "train": len(train), "held_out_in_class": len(val),
              "held_out_right": right, "out_of_class": len(outside),
              "unsure_out_of_class": sum(p.unsure for p in preds_out),
              "unsure_in_class": sum(p.unsure for p in preds_in),
              "unfamiliar_out": sum(bool(p.unfamiliar) for p in preds_out),
              "low_confidence_out": sum(p.confidence < 0.5 for p in preds_out),
              "out_labels": sorted({f"{p.label} {p.confidence:.0%}" for p in preds_out if not p.unsure})[:12]}
    return report


def main() -> int:
    print(json.dumps(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
