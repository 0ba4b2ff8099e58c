"""Find the learning rate: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training
Neural Networks"; fastai's ``lr_find``).

A throwaway copy of the run's model (same strategy, frozen stages, optimiser and discriminative rates as
``tlcore.engine.train``) trains on a few dozen mini-batches while the learning rate grows exponentially from
tiny to huge. The loss first barely moves (too low: each step crawls), then falls fastest, then blows up
(too high: each step overshoots the valley it aims for). The suggestion is where the smoothed loss falls
fastest against the logarithm of the rate; the minimum's rate divided by ten is the classic alternative.
Nothing of the project changes: the model is dropped at the end.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import TLError
from ..data.images import ImageSet, check_trainable, trainable_subset
from ..engine.config import FROZEN_BODY_MODES, TrainConfig
from ..engine.events import Progress
from ..engine.train import autocast, pixel_plan, prefix_plan, resolve_device, run_split
from ..models.backbones import get_backbone_spec
from ..models.model import build_model, freeze

START_LR, END_LR = 1e-6, 1.0  # the sweep; TrainConfig accepts rates up to 1
DIVERGED = 4.0  # the sweep stops once the smoothed loss is this many times its minimum (fastai's rule)


@dataclass(frozen=True)
class LrFind:
    """The range test's curve and its suggestion (rates are the head's; the body's keep their factor)."""

    mode: str
    backbone: str
    freeze_depth: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # per batch, as measured
    smoothed: tuple[float, ...]  # exponential moving average, bias-corrected
    suggestion: float  # steepest descent of the smoothed loss
    min_over_10: float  # the rate of the smallest smoothed loss, divided by ten
    diverged: bool  # the sweep stopped early because the loss blew up
    seconds: float

    def to_json(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @staticmethod
    def from_json(d: dict) -> LrFind:
        return LrFind(str(d["mode"]), str(d["backbone"]), int(d["freeze_depth"]), tuple(d["lrs"]), tuple(d["losses"]),
                      tuple(d["smoothed"]), float(d["suggestion"]), float(d["min_over_10"]), bool(d["diverged"]),
                      float(d["seconds"]))


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(steepest descent, minimum / 10) of a smoothed loss curve over exponentially spaced rates."""
    lo = min(len(smoothed) - 1, max(1, len(smoothed) // 10))  # the first few points are mostly noise
    best = lo + int(np.argmin(smoothed[lo:]))
    min10 = max(lrs[0], lrs[best] / 10)
    if best - lo < 2:
        return min10, min10
    slope = np.gradient(np.asarray(smoothed[:best + 1]), np.log10(np.asarray(lrs[:best + 1])))
    return float(lrs[lo + int(np.argmin(slope[lo:]))]), float(min10)


def lr_find(imageset: ImageSet, config: TrainConfig, should_stop: Callable[[], bool] = lambda: False,
            num_it: int = 40, start_lr: float = START_LR, end_lr: float = END_LR, beta: float = 0.8
            ) -> Generator[Progress, None, LrFind | None]:
    """Run the range test for ``config``'s strategy (fine-tune or from scratch) on the training split of
    ``imageset``: ``num_it`` batches, the rate growing from ``start_lr`` to ``end_lr``. Yields ``Progress``;
    returns None if stopped."""
    config.validate()
    if config.mode in FROZEN_BODY_MODES:
        raise TLError("With the whole backbone frozen the head is fitted to convergence (a logistic regression): "
                      "there is no learning rate to find. Let some stages learn on the Freeze page first.")
    check_trainable(imageset)
    data = trainable_subset(imageset)
    labels = data.labels()
    train_idx, _ = run_split(labels, config)
    # One view per image is enough to measure the loss's response: the frozen stages run once, not per view.
    cfg = dataclasses.replace(config, augment_views=1)
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, len(data.classes), pretrained=cfg.mode != "scratch", seed=cfg.seed).to(device)
    depth = cfg.resolved_freeze_depth()
    freeze(model, depth)
    if depth > 0 and model.body.splittable:
        plan = yield from prefix_plan(model, data, train_idx, [], cfg, depth, device, should_stop)
        if plan is None:
            return None
    else:
        plan = pixel_plan(model, data, cfg, device)
    groups = plan.param_groups
    factors = [g["lr"] / cfg.resolved_lr() for g in groups]  # the body's rate keeps its ratio to the head's
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    y_all = labels.to(device)
    batch_size = min(cfg.batch_size, len(train_idx))
    g = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, diverged = 0.0, False
    sweep_start = time.perf_counter()
    yield Progress("Trying learning rates", 0, num_it, math.nan)
    for i in range(num_it):
        if should_stop():
            return None
        lr = start_lr * (end_lr / start_lr) ** (i / max(1, num_it - 1))
        for group, factor in zip(optimizer.param_groups, factors):
            group["lr"] = lr * factor
        if len(order) < batch_size:
            order += [train_idx[k] for k in torch.randperm(len(train_idx), generator=g).tolist()]
        idx, order = order[:batch_size], order[batch_size:]
        plan.set_train()
        with autocast(device):
            loss = F.cross_entropy(plan.forward(plan.get_batch(idx, True)).float(), y_all[idx])
        value = loss.item()
        if not math.isfinite(value):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        avg = beta * avg + (1 - beta) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(avg / (1 - beta ** (i + 1)))
        rate = (i + 1) / (time.perf_counter() - sweep_start)
        yield Progress("Trying learning rates", i + 1, num_it, (num_it - i - 1) / rate)
        if i > 2 and smoothed[-1] > DIVERGED * min(smoothed):
            diverged = True
            break
    if len(lrs) < 3:
        raise TLError("The loss blew up at once, even at the smallest learning rate: check the images and classes.")
    steep, min10 = suggest(lrs, smoothed)
    spec = get_backbone_spec(cfg.backbone)
    return LrFind(cfg.mode, spec.name, depth, tuple(lrs), tuple(losses), tuple(smoothed), steep, min10, diverged,
                  time.perf_counter() - start)


__all__ = ["END_LR", "LrFind", "START_LR", "lr_find", "suggest"]
