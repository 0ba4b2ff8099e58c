"""The transfer-learning lesson made measurable: strategies side by side, and how much data each needs.

Every run of a comparison uses the same images, the same train/validation split, the same seed
and the same epoch budget, so the differences come from the strategy alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import TLError
from ..data.images import ImageSet, check_trainable, stratified_split, trainable_subset
from ..engine.config import FROZEN_BODY_MODES, MODE_TITLES, MODES, TrainConfig
from ..engine.events import Event, RunFinished
from ..engine.features import embed
from ..engine.train import drive, train
from ..models.backbones import get_backbone_spec
from ..models.model import TransferModel, to_float

DEFAULT_SHOTS = (1, 5, 10, 25, None)  # images per class; None = all
LADDER_FOLDS = 3  # the ladder scores the strategies that train the body by 3-fold cross-validation too
# Epochs of a comparison's runs by default: with its 3 fold trainings each, a ladder on a class's 20-odd images
# then ends within a minute on a 2-core laptop (feature extraction stops once converged, well before).
COMPARE_EPOCHS = 10

STRATEGY_TITLES = {mode: f"{MODE_TITLES[mode].capitalize()} ({why})" for mode, why in {  # the ladder, in order
    "zero-shot": "class names only: the backbone's ImageNet classes, no training image",
    "few-shot": "one mean per class, no training",
    "feature-extraction": "frozen backbone, new head",
    "fine-tune": "pretrained start, upper stages trained",
    "scratch": "random start, everything trained"}.items()}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison: a label for charts and the config that makes it."""

    label: str
    config: TrainConfig
    shots: int | None  # images per class used for training; None = all


def shared_split(imageset: ImageSet, base: TrainConfig) -> tuple[list[int], list[int]]:
    """The one train/validation split every run of a comparison uses."""
    check_trainable(imageset)
    return stratified_split(trainable_subset(imageset).labels(), base.val_fraction, base.seed)


def available_shots(imageset: ImageSet, split: tuple[list[int], list[int]],
                    wanted: tuple[int | None, ...] = DEFAULT_SHOTS) -> list[int | None]:
    """The shot counts the data allows: at most the smallest class's training images, plus 'all'."""
    smallest = _smallest_class(imageset, split)
    return [s for s in wanted if s is None or s <= smallest]


def _smallest_class(imageset: ImageSet, split: tuple[list[int], list[int]]) -> int:
    labels = trainable_subset(imageset).labels()
    return min(torch.bincount(labels[split[0]]).tolist())


def shots_note(imageset: ImageSet, split: tuple[list[int], list[int]],
               wanted: tuple[int | None, ...] = DEFAULT_SHOTS) -> str | None:
    """Why a study cannot offer some of the shot counts it promises (None when it offers them all)."""
    smallest = _smallest_class(imageset, split)
    missing = [s for s in wanted if s is not None and s > smallest]
    if not missing:
        return None
    return (f"{' and '.join(map(str, missing))} per class would need that many training photos in every class: your "
            f"smallest class has {smallest} to train on (the others are held out). Add photos to offer "
            f"{'it' if len(missing) == 1 else 'them'}.")


def usable_strategies(strategies: list[str], backbone: str) -> list[str]:
    """The strategies ``backbone`` can run: an ensemble (``frozen_only``) leaves out those that train the body."""
    frozen = get_backbone_spec(backbone).frozen_only
    return [s for s in strategies if not frozen or s in FROZEN_BODY_MODES]


def plan(strategies: list[str], base: TrainConfig, shots: list[int | None] | None = None,
         backbones: list[str] | None = None) -> list[PlannedRun]:
    """Runs for each strategy (and each shot count, when given), all from the same base config; with
    ``backbones``, the backbone race: each strategy once per backbone, on the same split and settings.
    Strategies a backbone cannot run (``usable_strategies``) are left out for it."""
    unknown = [s for s in strategies if s not in MODES]
    if unknown:
        raise TLError(f"Unknown strategies: {', '.join(unknown)}. Use: {', '.join(MODES)}.")
    if backbones:
        if shots:
            raise TLError("A backbone race compares backbones on all the images: leave out the shot counts.")
        runs = []
        for name in dict.fromkeys(backbones):
            title = get_backbone_spec(name).title  # raises for an unknown name, with the known ones
            if not usable_strategies(strategies, name):
                continue  # an ensemble in a race of fine-tunes: it runs in races of frozen strategies only
            for p in plan(strategies, dataclasses.replace(base, backbone=name)):
                runs.append(dataclasses.replace(p, label=title if len(strategies) == 1 else f"{title} · {p.label}"))
        return runs
    usable = usable_strategies(strategies, base.backbone)
    if strategies and not usable:
        spec = get_backbone_spec(base.backbone)
        raise TLError(f"{spec.title} can only be used frozen: compare zero-shot, few-shot and feature extraction "
                      f"with it, or choose one of its networks on the Backbone page to fine-tune.")
    strategies = usable
    runs = []
    if "zero-shot" in strategies:  # it uses no training image: one run, at 0 images per class in a study
        runs.append(PlannedRun("zero-shot" if not shots else "zero-shot @ 0/class",
                               dataclasses.replace(base, mode="zero-shot"), 0 if shots else None))
    for shot in shots or [None]:
        for s in strategies:
            if s == "zero-shot":
                continue
            label = s if shot is None else f"{s} @ {shot}/class"
            # Every strategy is scored on every image: frozen-body ones by one-image-per-class folds (milliseconds), the
            # others by LADDER_FOLDS folds on the ladder; in a study each on every image outside its k per class.
            folds = None if s in FROZEN_BODY_MODES or shot is not None else LADDER_FOLDS
            runs.append(PlannedRun(label, dataclasses.replace(base, mode=s, max_images_per_class=shot,
                                                              score_folds=folds), shot))
    return runs


def race_facts(backbone: str) -> dict:
    """What a race row shows beside the accuracy: the backbone's size, ImageNet top-1 and its measured speed
    per image here (through the fast runtime, as feature extraction and prediction run it)."""
    from .profile import measure_speed

    spec = get_backbone_spec(backbone)
    return {"backbone": backbone, "title": spec.title, "parameters": spec.num_params,
            "imagenet_top1": spec.imagenet_top1, "ms_per_image": round(measure_speed(backbone).ms_per_image, 2)}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN where either side has no spread."""
    def ranks(v: list[float]) -> np.ndarray:
        v = np.asarray(v, float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for x in np.unique(v):  # ties share their mean rank
            r[v == x] = r[v == x].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top1_finding(rows: list[tuple[str, float | None, float]]) -> str | None:
    """The notes' claim (a backbone stronger on ImageNet transfers better; Kornblith et al. 2019) checked on a
    race: ``rows`` of (title, ImageNet top-1 % or None, accuracy here), in words. None with fewer than three
    backbones whose top-1 is known."""
    known = sorted([r for r in rows if r[1] is not None], key=lambda r: -r[1])  # type: ignore[operator]
    if len(known) < 3:
        return None
    rho = spearman([r[1] for r in known], [r[2] for r in known])  # type: ignore[misc]
    listed = ", ".join(f"{t} ({top1:.1f} %) {acc:.0%}" for t, top1, acc in known)
    verdict = ("holds here: the stronger on ImageNet, the better on your photos" if rho >= 0.5 else
               "does not show here" if rho == rho else "cannot be judged here: every backbone scored the same")
    extra = [f"{t} {acc:.0%} (its ImageNet top-1 is not known)" for t, top1, acc in rows if top1 is None]
    return (f"From the strongest on ImageNet to the weakest: {listed}. \"A stronger backbone transfers better\" "
            f"{verdict}" + (f" (rank correlation {rho:.2f})" if rho == rho else "") + "." +
            (f" Also: {', '.join(extra)}." if extra else "") +
            " A few photos either way are within chance: compare the intervals.")


def run_plan(imageset: ImageSet, runs: list[PlannedRun], split: tuple[list[int], list[int]],
             should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[PlannedRun, Event]]:
    """Train the planned runs one after another on ``split`` (a study's runs draw their k images per class
    and hold out the rest); yields ``(run, event)``."""
    for run in runs:
        if should_stop():
            return
        for event in train(imageset, run.config, should_stop, split=None if run.shots else split):
            yield run, event


def summary_row(run: PlannedRun, finished: RunFinished) -> dict:
    """One row of the comparison table (also the CLI's JSON): ``right`` of ``n`` held-out images (``accuracy``),
    its 95 % ``interval`` and how it was measured (``method``)."""
    r = finished.result
    score = None if r is None or r.score is None else r.score.to_json()
    return {"label": run.label, "backbone": run.config.backbone, "strategy": run.config.mode, "shots": run.shots,
            "status": finished.status,
            "right": None if score is None else score["right"], "n": None if score is None else score["n"],
            "accuracy": None if score is None else score["accuracy"],
            "interval": None if score is None else score["interval"],
            "method": None if score is None else score["method"],
            "val_accuracy": None if r is None else r.val_accuracy,
            "train_seconds": None if r is None else round(r.train_seconds, 3),
            "trainable_params": None if r is None else r.trainable_params,
            "epochs_run": 0 if r is None else len(r.history), "runtime": None if r is None else r.runtime,
            "val_indices": None if r is None else list(r.val_indices), "reason": finished.reason}


# ----------------------------------------------------------------------------- embedding map


def project_2d(feats: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``[N, D]`` features -> ``[N, 2]`` coordinates by PCA or t-SNE."""
    x = feats.float()
    if len(x) < 3:
        raise TLError("An embedding map needs at least three images.")
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, len(x) - 1.0), init="pca", random_state=seed).fit_transform(x.numpy())
    if method != "pca":
        raise TLError(f"Unknown projection {method!r}: use 'pca' or 'tsne'.")
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).numpy()


def features_of(model: TransferModel | None, imageset: ImageSet, backbone: str) -> torch.Tensor:
    """Features of every image: from the pretrained backbone (``model`` None, cached) or a trained model."""
    if model is None or model.body.shared_pretrained:  # pretrained features: cached, on the fast runtime
        return drive(embed(imageset, backbone))
    pre = get_backbone_spec(backbone).preprocess
    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(imageset), 64):
            batch = imageset.preprocessed(pre, list(range(lo, min(lo + 64, len(imageset)))))
            out.append(model.features(to_float(batch, next(model.parameters()).device, channels_last=False)).float().cpu())
    return torch.cat(out)


__all__ = ["COMPARE_EPOCHS", "DEFAULT_SHOTS", "FROZEN_BODY_MODES", "STRATEGY_TITLES", "PlannedRun", "available_shots",
           "shots_note",
           "features_of", "spearman", "top1_finding", "usable_strategies", "plan", "project_2d", "race_facts", "run_plan", "shared_split", "summary_row"]
