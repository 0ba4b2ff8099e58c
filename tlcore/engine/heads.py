"""The frozen-body modes' heads, fitted on cached features, and their scores: feature extraction's logistic
regression (L-BFGS to convergence, every fold's in one batched fit), few-shot's prototypes, zero-shot's ImageNet
head; each scored on every image by repeated cross-validation (``tlcore.core.measure``)."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..core.measure import LogisticFit, Pair, Score, Span, fit_threads, out_of_fold, repeated_folds, shot_draws
from ..models.model import count_params
from ..models.runtime import runtime_for
from .config import TrainConfig, split_method
from .events import BatchEnd, EpochEnd, Event, RunFinished, Setup, Stop, heldout_of


def set_prototypes(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Make ``head`` the nearest-class-mean classifier of ``feats`` (every class needs one example).

    ``-|f - p_c|^2 = 2 f.p_c - |p_c|^2 - |f|^2``, and the last term is the same for every class,
    so distances to prototypes are exactly a linear layer: W_c = 2 p_c, b_c = -|p_c|^2, scaled
    by the mean squared distance to one's own prototype so that probabilities are not all 0/1.
    """
    num_classes = head.out_features
    protos = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
    spread = ((feats - protos[labels]) ** 2).sum(1).mean().clamp_min(1e-6)
    with torch.no_grad():
        head.weight.copy_(2 * protos / spread)
        head.bias.copy_(-(protos ** 2).sum(1) / spread)


#: Inverse L2 strength of the feature-extraction head (scikit-learn's ``C``; its default is 1). Chosen on the
#: benchmark's small real datasets (section 9, 2026-12-05, 4 datasets x 3/5/10/20 per class x 5 seeds, held-out
#: accuracy against ``LogisticRegression()``): C = 10 was at least as good as C = 1 and 3 in every dataset
#: and shot count, by 1-3 points on the digits; C = 1 fell up to 1 point below the baseline at 20 per class.
HEAD_C = 10.0
HEAD_ITERS_PER_EPOCH = 10  # L-BFGS iterations an "epoch" of the feature-extraction head stands for


def final_indices(cfg: TrainConfig, train_idx: list[int], val_idx: list[int]) -> list[int]:
    """What a frozen-body model is fitted on in the end: every image, except in a study (its k per class)."""
    return list(train_idx) if cfg.max_images_per_class is not None else sorted(train_idx + val_idx)


#: Up to this many images, a frozen body is scored with up to MAX_SCORE_FOLDS folds (one image per class held
#: out per fold; every fold's model in one batched fit, under a second): 5-fold trains each model on 4/5 of
#: the images and underrates the final model, fitted on them all. Larger sets use 5 folds.
MANY_FOLDS_MAX_IMAGES = 300
MAX_SCORE_FOLDS = 20
#: A frozen body's score repeats its folds (or draws) while repeats x images stay within this: 5 repeats up to
#: 60 images, one from 300. Repeats steady the score of a small set, where which images share a fold matters;
#: on 300 images one partition moves the score by a fraction of its interval, and each repeat cost about as much
#: as the forward pass over the images (benchmark section 1, 2026-12-06).
SCORE_ROWS = 300


def score_repeats(num_images: int, wanted: int = 5) -> int:
    """How many times a frozen body's score repeats its folds (or draws) on ``num_images``: at most ``wanted``,
    while repeats x images stay within ``SCORE_ROWS`` (large sets: fewer repeats, the same images scored)."""
    return max(1, min(wanted, SCORE_ROWS // max(1, num_images)))


Predictor = Callable[[list[Pair]], list[torch.Tensor]]  # (train, test) pairs -> logits of each test part


def _frozen_score(cfg: TrainConfig, labels: torch.Tensor, digests: list[str], predict: Predictor
                  ) -> tuple[Score | None, tuple[tuple[str, int, tuple[float, ...]], ...]]:
    """Score a frozen-body strategy on every image: ``predict(pairs)`` trains one model per (train, test)
    pair of repeated stratified k-fold (per draw of k images per class in a study) and gives the logits of
    each pair's test images. Returns the score and each image's out-of-fold probabilities (averaged over repeats)."""
    y = labels.cpu()
    repeats = score_repeats(len(y), cfg.score_repeats)
    if cfg.max_images_per_class is not None:
        pairs = shot_draws(y, cfg.max_images_per_class, repeats, cfg.seed)
        method = f"{split_method(cfg)}, {len(pairs)} draw{'s' * (len(pairs) > 1)}"
    else:
        # A class's data: as many folds as the largest class has images, so every fold holds out one image
        # per class and each model trains on all but one image of each class (balanced, unlike leave-one-out).
        folds = cfg.score_folds or (MAX_SCORE_FOLDS if len(y) <= MANY_FOLDS_MAX_IMAGES else 5)
        pairs = repeated_folds(y, folds, repeats, cfg.seed)
        k = len(pairs) // repeats if repeats else len(pairs)
        method = f"{k}-fold cross-validation over every image, {repeats} repeat{'s' * (repeats > 1)}"
    logits = iter(predict(pairs)) if pairs else iter(())
    score, probs = out_of_fold(pairs, lambda _tr, _te: F.softmax(next(logits).float(), 1), y, method,
                               average=cfg.max_images_per_class is None)
    heldout = heldout_of(probs, y, digests)
    if score is not None and cfg.max_images_per_class is None and not cfg.score_folds and len(y) <= MANY_FOLDS_MAX_IMAGES:
        score = dataclasses.replace(score, upside=_last_step(y, pairs, repeats, cfg.seed, predict, score.accuracy))
    return score, heldout


LAST_STEP_REPEATS = 2


def _last_step(y: torch.Tensor, pairs: list[Pair], repeats: int, seed: int, predict: Predictor, accuracy: float
               ) -> float:
    """The learning curve's last measured step: ``accuracy`` (models trained on all but one image per class)
    less the accuracy of models trained on all but two per class (folds half as many), at least 0. The final
    model has one more image per class than the scored ones; its gain is likely no larger than this step.
    At most ``LAST_STEP_REPEATS`` repeats: it widens an interval, it is not the score itself."""
    most = int(torch.bincount(y).max())
    test_folds = len(pairs) // max(1, repeats)
    if most < 3 or test_folds < 2 or most > MAX_SCORE_FOLDS:
        return 0.0  # beyond MAX_SCORE_FOLDS per class, folds hold out several per class: one image is no step
    fewer = repeated_folds(y, max(2, (test_folds + 1) // 2), min(repeats, LAST_STEP_REPEATS), seed + 1)
    right = sum(int((logits.argmax(1).cpu() == y[te]).sum()) for (_tr, te), logits in zip(fewer, predict(fewer)))
    return max(0.0, accuracy - right / sum(len(te) for _tr, te in fewer))


def _with_views(x: torch.Tensor, y: torch.Tensor, views: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a head is fitted on: every image, then (``views`` ``[V, N, D]``) every view of every image."""
    if views is None:
        return x, y
    return torch.cat([x, views.reshape(-1, x.shape[1]).float()]), y.repeat(len(views) + 1)


Fit = tuple[torch.Tensor, torch.Tensor]  # a linear head's (weight, bias), or F of them (``[F, C, D]``, ``[F, C]``)


class _Head:
    """The feature-extraction head's fits, averaged: one logistic regression on the images, and with views
    one on the images with their views. Each of the two fell up to 3 points below the other on some small sets
    (benchmark section 9); their average stayed within half a point of the better one. ``spans``: ``_Head.spans``
    of the whole set (every fit of its splits and folds shares them); ``rows``: the images fitted on (None: all);
    ``masks`` (``[F, N]``): F heads at once (folds), each fitted on the images its mask marks and on their views
    only; ``init``: the fits to start from (a previous ``parts``, repeated per fold)."""

    def __init__(self, spans: list[Span], y: torch.Tensor, num_classes: int, rows: list[int] | None = None,
                 masks: torch.Tensor | None = None, init: list[Fit] | None = None) -> None:
        n = len(y)
        self._fits = []
        for i, span in enumerate(spans):
            copies = len(span.coords) // n  # the images, then each view of each image (``_with_views``)
            part = span if rows is None else span.rows([c * n + j for c in range(copies) for j in rows])
            self._fits.append(LogisticFit(part, (y if rows is None else y[rows]).repeat(copies), num_classes, HEAD_C,
                                          init=None if init is None else init[i],
                                          masks=None if masks is None else masks.repeat(1, copies)))
        self.parts: list[Fit] = []

    @staticmethod
    def spans(x: torch.Tensor, y: torch.Tensor, views: torch.Tensor | None) -> list[Span]:
        """Each part's ``Span`` on the whole set: one QR per part, where each fit did one and projected its rows
        (30 ms, then 7 ms, of a 300-image run's head fits and score)."""
        return [Span.of(x)] + ([] if views is None else [Span.of(_with_views(x, y, views)[0])])

    @property
    def converged(self) -> bool:
        return all(f.converged for f in self._fits)

    def step(self, iters: int) -> Fit:
        """Up to ``iters`` more iterations of each fit; their average."""
        self.parts = [f.step(iters) for f in self._fits]
        return torch.stack([w for w, _b in self.parts]).mean(0), torch.stack([b for _w, b in self.parts]).mean(0)


def logistic_folds(x: torch.Tensor, y: torch.Tensor, num_classes: int, views: torch.Tensor | None = None,
                   start: list[Fit] | None = None, spans: list[Span] | None = None) -> Predictor:
    """Every fold's head (``_Head``) in one batched fit per part; a fold fits on its training images and their
    views, never on a view of an image it is scored on. ``start``: the parts of the head fitted on every image,
    where each fold's L-BFGS starts: a fold lacks one image per class, so its optimum lies near and it
    converges in a fraction of the iterations (the same optimum)."""
    spans = spans or _Head.spans(x, y, views)

    def predict(pairs: list[Pair]) -> list[torch.Tensor]:
        masks = torch.zeros(len(pairs), len(y))
        for f, (tr, _te) in enumerate(pairs):
            masks[f, tr] = 1
        init = None if start is None else [(w.expand(len(pairs), *w.shape).clone(), b.expand(len(pairs), *b.shape).clone())
                                           for w, b in start]
        w, b = _Head(spans, y, num_classes, masks=masks, init=init).step(200)
        return [x[te] @ w[f].T + b[f] for f, (_tr, te) in enumerate(pairs)]
    return predict


def head_run(s: Setup, x_all: torch.Tensor, should_stop: Callable[[], bool], views: torch.Tensor | None = None
             ) -> Iterator[Event]:
    """Feature extraction: the new head is a multinomial logistic regression on the cached features (and
    those of each image's augmented ``views``, ``[V, N, D]``, if any), with an L2 penalty
    (``HEAD_C``), fitted to convergence by full-batch L-BFGS. Each "epoch" is
    ``HEAD_ITERS_PER_EPOCH`` iterations on the training images, so the live curves show it converge on the
    training and validation images; it stops when the fit has converged. The final head is then fitted
    on every image (the validation images too), and the run is scored by cross-validation. ``x_all``: every
    image's features."""
    cfg, model, train_idx, val_idx, start = s.cfg, s.model, s.train_idx, s.val_idx, s.start
    num_classes = len(s.data.classes)
    linear = model.head[-1]
    x, y = x_all.cpu().float(), s.labels.cpu()
    views = None if views is None else views.cpu().float()
    w = b = None
    history: list[EpochEnd] = []
    runtime = runtime_for(x_all.device)
    spans = _Head.spans(x, y, views)
    fit = _Head(spans, y, num_classes, rows=train_idx)
    for epoch in range(1, cfg.epochs + 1):
        if should_stop():
            if w is None:
                yield RunFinished.stopped(f"during epoch {epoch}", "no epoch had finished, so nothing is kept")
                return
            break
        w, b = fit.step(HEAD_ITERS_PER_EPOCH)  # one L-BFGS run through the epochs
        with torch.no_grad():
            linear.weight.copy_(w.to(linear.weight.device))
            linear.bias.copy_(b.to(linear.bias.device))
            logits = x @ w.T + b
            per_image = F.cross_entropy(logits, y, reduction="none")
            right = logits.argmax(1) == y
        train_loss, train_acc = per_image[train_idx].mean().item(), right[train_idx].float().mean().item()
        val_loss = per_image[val_idx].mean().item() if val_idx else None
        val_acc = right[val_idx].float().mean().item() if val_idx else None
        yield BatchEnd(epoch, 1, 1, train_loss, len(train_idx) / max(1e-9, time.perf_counter() - start),
                       epoch / cfg.epochs, 0.0)
        history.append(EpochEnd(epoch, cfg.epochs, train_loss, train_acc, val_loss, val_acc,
                                time.perf_counter() - start, True, model))  # the newest fit is the one kept
        yield history[-1]
        if fit.converged and epoch >= 2:
            break  # more epochs would change nothing (two at least: a curve, not a dot)
    history = [dataclasses.replace(e, best=e.epoch == len(history)) for e in history]
    final = final_indices(cfg, train_idx, val_idx)
    assert w is not None and b is not None
    rows = len(x) * (1 if views is None else 1 + len(views))
    with fit_threads(rows, spans[-1].coords.shape[1]):  # the final fit and the score: small tensor operations
        head = _Head(spans, y, num_classes, rows=final, init=fit.parts)
        w, b = head.step(200)
        with torch.no_grad():
            linear.weight.copy_(w.to(linear.weight.device))
            linear.bias.copy_(b.to(linear.bias.device))
        model.head.requires_grad_(False)
        model.eval()
        score, heldout = _frozen_score(cfg, y, [i.digest for i in s.data.items],
                                       logistic_folds(x, y, num_classes, views, start=head.parts, spans=spans))
    seen = (f"once per image and each of its {len(views)} augmented views (flips, crops, colour)"
            if views is not None else "once per image")
    fitted = ("the average of two logistic regressions, on the images alone and on the images with their views, "
              if views is not None else "a logistic regression ")
    how = (f"the frozen backbone ran {seen} on {runtime}; the head, {fitted}fitted to convergence (L-BFGS), "
           f"was refitted on all {len(final)} images at the end")
    stop = Stop(f"after epoch {len(history)}", f"the best epoch's head is kept, refitted on all {len(final)} images") \
        if len(history) < cfg.epochs and should_stop() else None
    status, reason = ("stopped", stop.sentence()) if stop else \
        ("completed", f"The head converged in {len(history)} epoch{'s' * (len(history) > 1)}; the best epoch "
                      f"({len(history)}, the last) is kept, refitted on all {len(final)} images.")
    yield RunFinished(status, reason, stop=stop, result=s.result(
        history, len(history), train_indices=tuple(final), trainable_params=count_params(model.head), runtime=runtime,
        how=how, score=score, heldout=heldout))


def untrained_run(s: Setup, x_all: torch.Tensor) -> RunFinished:
    """Few-shot (prototypes from every image in the end, scored by cross-validation) or zero-shot (no image
    at all, scored on every image). ``x_all``: every image's features."""
    cfg, model, data, train_idx, val_idx = s.cfg, s.model, s.data, s.train_idx, s.val_idx
    y_all = s.labels.to(x_all.device)
    x, y = x_all.cpu().float(), y_all.cpu()
    digests = [i.digest for i in data.items]
    final = final_indices(cfg, train_idx, val_idx)
    if cfg.mode == "few-shot":
        probe = nn.Linear(x.shape[1], len(data.classes))

        def predict(pairs: list[Pair]) -> list[torch.Tensor]:
            out = []
            for tr, te in pairs:
                head = nn.Linear(x.shape[1], len(data.classes))
                set_prototypes(head, x[tr], y[tr])
                out.append(head(x[te]).detach())
            return out

        set_prototypes(probe, x[train_idx], y[train_idx])  # the curves' point: from the training images only
        curve = _shot_curve(y, cfg.seed, predict) if cfg.max_images_per_class is None else ()
        reason = f"Prototypes computed: one mean feature vector per class, from all {len(final)} images."
    else:
        curve = ()
        from ..models.zeroshot import unmapped

        missing = unmapped(data.classes, cfg.zero_shot_map or {})
        reason = ("Zero-shot: no training image was used; the backbone's ImageNet classes decide." if not missing
                  else f"Zero-shot: ImageNet has no class for {', '.join(missing)}, so those can only be guessed.")
    model.head.requires_grad_(False)
    model.eval()
    with torch.no_grad():
        if cfg.mode == "few-shot":
            logits = probe(x)
            set_prototypes(model.head[-1], x_all[final], y_all[final])
        else:  # nothing to fit: ImageNet decides
            logits = model.head(x_all).float().cpu()
    right = logits.argmax(1) == y
    per_image = F.cross_entropy(logits, y, reduction="none")
    train_acc = right[train_idx].float().mean().item() if train_idx else 0.0
    val_loss = per_image[val_idx].mean().item() if val_idx else None
    val_acc = right[val_idx].float().mean().item() if val_idx else None
    if cfg.mode == "zero-shot":  # trains on nothing: every image is held out
        probs = F.softmax(logits, 1)
        score = Score(int(right.sum()), len(y), "every image (zero-shot trains on none)")
        heldout = heldout_of(dict(enumerate(probs)), y, digests)
    else:
        score, heldout = _frozen_score(cfg, y, digests, predict)
    epoch = EpochEnd(1, 1, 0.0, train_acc, val_loss, val_acc, time.perf_counter() - s.start, True)
    runtime = runtime_for(x_all.device)
    return RunFinished("completed", reason, s.result(
        (epoch,), 1, train_indices=tuple(final), trainable_params=0, runtime=runtime,
        how=f"the frozen backbone ran once per image on {runtime}", score=score, heldout=heldout, shot_curve=curve))


SHOT_CURVE_DRAWS = 5
SHOT_CURVE_MAX = 20  # photos per class: beyond, zero-shot is said to be worth "20 or more"


def _shot_curve(y: torch.Tensor, seed: int, predict: Predictor) -> tuple[tuple[int, float], ...]:
    """Accuracy against photos per class (1, 2, ... one fewer than the smallest class, at most ``SHOT_CURVE_MAX``): ``SHOT_CURVE_DRAWS``
    draws of k per class each, scored on every other photo."""
    out = []
    for k in range(1, min(SHOT_CURVE_MAX + 1, int(torch.bincount(y).min()))):
        pairs = shot_draws(y, k, SHOT_CURVE_DRAWS, seed)
        right = sum(int((logits.argmax(1) == y[te]).sum()) for (_tr, te), logits in zip(pairs, predict(pairs)))
        out.append((k, round(right / sum(len(te) for _tr, te in pairs), 4)))
    return tuple(out)
