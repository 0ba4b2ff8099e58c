"""How well a pretrained backbone fits *your* images, before any training, and what each of its stages holds.

* ``logme``: LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning"), the log evidence of a Bayesian linear model on frozen features, per class (one-vs-rest
  targets) and averaged: how well *any* linear head on these features could explain the labels, with the
  head's prior fitted too, so neither a large nor a noisy feature set wins by itself. Milliseconds after
  the features (one thin SVD); higher is better; compare it between backbones on the same images.
* ``imagenet_closeness``: how confidently the backbone's own ImageNet head recognises the images (mean of
  its top probability): how close they are to what it was pre-trained on.
* ``probe_stages``: a cross-validated linear probe on the pooled output of every stage (Yosinski et al.
  2014, "How transferable are features in deep neural networks?"): general stages early, stages that grow
  specific to ImageNet late; the best stage says how much of the backbone to keep frozen.
* ``stage_maps``: the strongest activation maps of each stage for one image (stem's edges to last parts).

Every function here is pure engine work (no Streamlit); the app runs the slow ones as jobs
(``tlcore.analysis.tasks``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import TLError
from ..core.measure import Score, out_of_fold, repeated_folds
from ..data.images import ImageSet, check_trainable, trainable_subset
from ..engine.events import Progress
from ..engine.features import cached_features, embed, feature_key, keep_features
from ..engine.heads import logistic_folds
from ..models.backbones import BackboneSpec, frozen_body, get_backbone_spec
from ..models.model import to_float

# ----------------------------------------------------------------------------- LogME


def class_evidence(f: np.ndarray, t: np.ndarray, svd: tuple[np.ndarray, np.ndarray] | None = None,
                   iters: int = 11) -> tuple[float, float, float]:
    """LogME's fixed point for one target: (log evidence per image, alpha, beta) of ``t = f w + noise``,
    ``w ~ N(0, I/alpha)``, noise ``~ N(0, 1/beta)``, alpha and beta maximising the evidence (MacKay's
    updates, as the paper's Algorithm 1). ``svd``: ``(u, singular values)`` of ``f``, computed once."""
    n, d = f.shape
    u, sv = svd if svd is not None else np.linalg.svd(f, full_matrices=False)[:2]
    s = sv ** 2  # eigenvalues of f^T f (the others are 0)
    proj = sv * (u.T @ t)  # f^T t in the eigenvector basis
    alpha, beta, eps = 1.0, 1.0, 1e-5
    for _ in range(iters):  # converges in a few steps
        gamma = (beta * s / (alpha + beta * s)).sum()
        m = beta * proj / (alpha + beta * s)  # the posterior mean, in the eigenvector basis
        alpha_de = float((m * m).sum())
        beta_de = float(((t - u @ (sv * m)) ** 2).sum())
        new_alpha, new_beta = gamma / (alpha_de + eps), (n - gamma) / (beta_de + eps)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m = beta * proj / (alpha + beta * s)  # the evidence at the final alpha and beta, exactly
    alpha_de, beta_de = float((m * m).sum()), float(((t - u @ (sv * m)) ** 2).sum())
    log_det = np.log(alpha + beta * s).sum() + (d - len(s)) * math.log(alpha)  # log |alpha I + beta f^T f|
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * log_det - beta / 2 * beta_de
                - alpha / 2 * alpha_de - n / 2 * math.log(2 * math.pi))
    return float(evidence / n), float(alpha), float(beta)


def logme(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """LogME of ``features`` ``[N, D]`` for integer ``labels`` ``[N]``: the mean over classes of the log
    evidence per image of a Bayesian linear model predicting that class (1) against the rest (0)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y) or len(f) < 2:
        raise TLError("LogME needs one feature vector per image and at least two images.")
    u, sv = np.linalg.svd(f, full_matrices=False)[:2]
    return float(np.mean([class_evidence(f, (y == c).astype(np.float64), (u, sv))[0] for c in np.unique(y)]))


# ----------------------------------------------------------------------------- scores of a backbone


@dataclass(frozen=True)
class TransferScore:
    """How well one backbone's frozen features fit a set of images, before any training."""

    backbone: str
    logme: float  # higher is better; comparable between backbones on the same images
    imagenet_confidence: float  # mean top probability of the backbone's own ImageNet head on the images
    num_images: int
    seconds: float  # of the score itself, after the features

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @staticmethod
    def from_json(d: dict) -> TransferScore:
        return TransferScore(str(d["backbone"]), float(d["logme"]), float(d["imagenet_confidence"]),
                             int(d["num_images"]), float(d["seconds"]))


def imagenet_closeness(backbone: str, feats: torch.Tensor) -> float:
    """Mean top probability of ``backbone``'s ImageNet head on pooled ``feats`` ``[N, D]`` (NaN without one)."""
    head = frozen_body(backbone).imagenet_head
    if head is None or not len(feats):
        return math.nan
    with torch.inference_mode():
        return float(torch.softmax(head.eval()(feats.float()), 1).max(1).values.mean())


def transfer_score(imageset: ImageSet, backbone: str, should_stop: Callable[[], bool] = lambda: False
                   ) -> Generator[Progress, None, TransferScore | None]:
    """LogME and ImageNet closeness of ``backbone`` on the labelled images of ``imageset`` (features from the
    shared cache, else computed on the fastest runtime: yields ``Progress``). None if stopped."""
    check_trainable(imageset)
    data = trainable_subset(imageset)
    feats = yield from embed(data, backbone, should_stop=should_stop)
    if feats is None:
        return None
    start = time.perf_counter()
    score = logme(feats.numpy(), data.labels().numpy())
    seconds = time.perf_counter() - start
    return TransferScore(backbone, score, imagenet_closeness(backbone, feats), len(data), seconds)


# ----------------------------------------------------------------------------- stage probe


@dataclass(frozen=True)
class StageProbe:
    """A linear probe on each stage's pooled output: how well your classes separate at each depth."""

    backbone: str
    stages: tuple[str, ...]
    scores: tuple[Score, ...]  # one per stage, stem first
    seconds: float

    @property
    def best(self) -> int:
        """Index of the stage that serves the data best: the highest accuracy, ties going to the deeper stage
        (fewer weights left to train)."""
        accs = [s.accuracy for s in self.scores]
        return max(range(len(accs)), key=lambda k: (round(accs[k], 4), k))

    def to_json(self) -> dict:
        return {"backbone": self.backbone, "stages": list(self.stages), "scores": [s.to_json() for s in self.scores],
                "best": self.best, "best_stage": self.stages[self.best], "seconds": round(self.seconds, 3)}

    @staticmethod
    def from_json(d: dict) -> StageProbe:
        scores = tuple(Score.from_json(s) for s in d["scores"])
        return StageProbe(str(d["backbone"]), tuple(d["stages"]), scores, float(d["seconds"]))  # type: ignore[arg-type]


def _not_by_stage(spec: BackboneSpec, so: str) -> TLError:
    if spec.frozen_only:  # an ensemble
        return TLError(f"{spec.title} runs its networks side by side, not one stage after another, {so}: choose one "
                       f"of them on the Backbone page.")
    return TLError(f"{spec.title} cannot be run stage by stage, {so}: choose a convolutional backbone on the "
                   f"Backbone page.")


def pooled_stages(imageset: ImageSet, backbone: str, should_stop: Callable[[], bool] = lambda: False,
                  batch_size: int = 32) -> Generator[Progress, None, list[torch.Tensor] | None]:
    """The global-average-pooled output of every stage of ``backbone``'s pretrained body, ``[N, C_k]`` per
    stage, in one pass per image (torch; cached per image like the features). None if stopped."""
    spec = get_backbone_spec(backbone)
    body = frozen_body(backbone)
    if not body.splittable:
        raise _not_by_stage(spec, "so its stages cannot be probed")
    n = len(body.stages)
    keys = [f"{feature_key(backbone, spec.preprocess, 'torch')}|pooled-stage{k}" for k in range(n)]
    digests = [i.digest for i in imageset.items]
    cached = [cached_features(key, digests) for key in keys]
    todo = [i for i in range(len(digests)) if any(c[i] is None for c in cached)]
    mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
    start = time.perf_counter()
    if todo:
        yield Progress("Running every stage", 0, len(todo), math.nan)
    for lo in range(0, len(todo), batch_size):
        if should_stop():
            return None
        idx = todo[lo:lo + batch_size]
        x = (to_float(imageset.preprocessed(spec.preprocess, idx), channels_last=False) - mean) / std
        with torch.inference_mode():
            x = x.contiguous(memory_format=torch.channels_last)
            for k in range(n):
                x = body.forward_range(x, k, k + 1)
                pooled = x.float().mean((2, 3)) if x.ndim == 4 else x.float()
                keep_features(keys[k], [digests[i] for i in idx], pooled)
                for i, p in zip(idx, pooled):
                    cached[k][i] = p.clone()
        done = lo + len(idx)
        rate = done / (time.perf_counter() - start)
        yield Progress("Running every stage", done, len(todo), (len(todo) - done) / rate)
    return [torch.stack(c) for c in cached]  # type: ignore[arg-type]


def probe_stages(imageset: ImageSet, backbone: str, should_stop: Callable[[], bool] = lambda: False,
                 folds: int = 5, repeats: int = 2, seed: int = 0) -> Generator[Progress, None, StageProbe | None]:
    """Cross-validated accuracy of a logistic regression (the feature-extraction head, ``HEAD_C``) on each
    stage's standardised pooled output, every fold's fit in one batch. Yields ``Progress``; None if stopped."""
    check_trainable(imageset)
    data = trainable_subset(imageset)
    pooled = yield from pooled_stages(data, backbone, should_stop)
    if pooled is None:
        return None
    start = time.perf_counter()
    y = data.labels()
    pairs = repeated_folds(y, folds, repeats, seed)
    k = len(pairs) // repeats
    method = f"{k}-fold cross-validation over every image, {repeats} repeat{'s' * (repeats > 1)}"
    scores = []
    for s, x in enumerate(pooled):
        if should_stop():
            return None
        yield Progress("Probing each stage", s, len(pooled), math.nan)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # stages differ in scale by orders of magnitude
        logits = iter(logistic_folds(x, y, len(data.classes))(pairs))
        score = out_of_fold(pairs, lambda _tr, _te: next(logits).softmax(1), y, method)[0]  # noqa: B023
        if score is None:
            raise TLError("Too few images per class to hold any out: add at least two images to each class.")
        scores.append(score)
    spec = get_backbone_spec(backbone)
    return StageProbe(backbone, tuple(spec.stage_names), tuple(scores), time.perf_counter() - start)


# ----------------------------------------------------------------------------- what each stage sees


def stage_maps(backbone: str, imageset: ImageSet, index: int, top: int = 4) -> list[tuple[str, np.ndarray]]:
    """For image ``index`` of ``imageset``: per stage of ``backbone`` (stem first), its ``top`` channels of
    highest mean activation, each map scaled to [0, 1]: ``(stage name, [top, h, w])``. One forward pass."""
    spec = get_backbone_spec(backbone)
    pixels = imageset.preprocessed(spec.preprocess, [index])[0]
    body = frozen_body(backbone)
    if not body.splittable:
        raise _not_by_stage(spec, "so its stages cannot be shown")
    mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)
    x = ((to_float(pixels[None], channels_last=False) - mean) / std).contiguous(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for k, name in enumerate(spec.stage_names):
            x = body.forward_range(x, k, k + 1)
            a = x[0].float()
            chosen = a.mean((1, 2)).topk(min(top, len(a))).indices
            maps = a[chosen]
            lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
            out.append((name, ((maps - lo) / (hi - lo).clamp_min(1e-6)).numpy()))
    return out


__all__ = ["StageProbe", "TransferScore", "class_evidence", "imagenet_closeness", "logme", "pooled_stages",
           "probe_stages", "stage_maps", "transfer_score"]
