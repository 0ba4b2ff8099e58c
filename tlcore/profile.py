"""How fast a backbone is on this machine, and what an epoch will cost at a given freeze depth."""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import torch

from .backbones import get_backbone_spec
from .runtime import frozen_forward, runtime_for
from .train import FROZEN_BODY_MODES, TrainConfig, resolve_device


@dataclass(frozen=True)
class SpeedProfile:
    """Measured forward cost per image: through the pretrained weights on the fast runtime (what feature
    extraction and frozen stages pay) and in torch (what the stages that learn pay), split by stage."""

    backbone: str
    ms_per_image: float  # inference through the frozen pretrained body, on ``runtime``
    torch_ms_per_image: float  # the same forward pass in torch (random weights: speed does not depend on them)
    stage_share: tuple[float, ...]  # fraction of the torch forward time spent in each stage
    runtime: str  # what ran ``ms_per_image`` (torch where the weights are not on this machine)


_measuring = threading.Lock()


def measure_speed(backbone: str, batch: int = 8, repeats: int = 2) -> SpeedProfile:
    """Time the backbone's forward pass on random images; per-stage shares from module hooks. Measured
    once per process: concurrent callers (a class pressing Start together) wait for the one measurement
    rather than each timing the backbone while the others do."""
    with _measuring:
        return _measure_speed(backbone, batch, repeats)


@functools.lru_cache(maxsize=32)
def _measure_speed(backbone: str, batch: int, repeats: int) -> SpeedProfile:
    spec = get_backbone_spec(backbone)
    body = spec.build().eval().to(resolve_device()).to(memory_format=torch.channels_last)
    device = next(body.parameters()).device
    size = spec.preprocess.input_size
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    spent = [0.0] * len(body.stages)
    starts: dict[int, float] = {}
    handles = []
    for k, stage in enumerate(body.stages):
        for prefix in stage.prefixes:
            try:
                module = body.net.get_submodule(prefix)
            except AttributeError:
                continue  # a bare parameter (e.g. ViT's class token) costs no time of its own
            handles.append(module.register_forward_pre_hook(lambda *_a, k=k: starts.__setitem__(k, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda *_a, k=k: spent.__setitem__(k, spent[k] + time.perf_counter() - starts[k])))
    with torch.inference_mode():
        body(x)  # warm-up (allocations, kernel choice)
        spent = [0.0] * len(body.stages)
        t0 = time.perf_counter()
        for _ in range(repeats):
            body(x)
        total = time.perf_counter() - t0
    for h in handles:
        h.remove()
    staged = sum(spent) or 1.0
    torch_ms = 1000 * total / (repeats * batch)
    fast_ms, runtime = torch_ms, "torch"
    if spec.availability() != "download" and runtime_for(device) != "torch":
        pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        frozen_forward(backbone, pixels, device=device)  # warm-up (and the one-off export)
        t0 = time.perf_counter()
        for _ in range(repeats):
            frozen_forward(backbone, pixels, device=device)
        fast_ms, runtime = 1000 * (time.perf_counter() - t0) / (repeats * batch), runtime_for(device)
    return SpeedProfile(backbone, fast_ms, torch_ms, tuple(s / staged for s in spent), runtime)


def estimate_run_seconds(config: TrainConfig, num_images: int) -> float:
    """Seconds a whole run of ``config`` on ``num_images`` images should take here (start-up included)."""
    speed = measure_speed(config.backbone)
    views = config.augment_views if config.augment else 1
    once, per_epoch = estimate_epoch_seconds(speed, num_images, config.mode, config.resolved_freeze_depth(), views)
    if config.mode in FROZEN_BODY_MODES:  # the head (or prototypes) and its cross-validation: milliseconds
        return 1.5 + once
    folds = config.resolved_score_folds()
    trainings = 1 + (folds - 1 if folds else 0)  # k folds each train on (k - 1) / k of the images
    return 1.5 + once * trainings + per_epoch * config.epochs * trainings


def estimate_epoch_seconds(profile: SpeedProfile, num_images: int, mode: str, freeze_depth: int,
                           views: int = 4) -> tuple[float, float]:
    """(seconds once before the first epoch, seconds per epoch) of training on ``num_images``.

    Frozen work runs once, on the fast runtime: the whole body for feature extraction, the frozen
    leading stages (``views`` augmented views per image) for a fine-tune. Stages that learn cost
    their torch forward pass and about 1.2 times that again for backward and update, plus 15 % for
    train-mode overhead (dropout, batch-norm statistics): measured on EfficientNet-Lite0, 2-core CPU,
    within 20 % of real runs of feature extraction and fine-tunes (nothing or half frozen).
    """
    if mode in FROZEN_BODY_MODES:
        return num_images * profile.ms_per_image / 1000, 0.0
    frozen_share = 0.0 if mode == "scratch" else sum(profile.stage_share[:freeze_depth])
    once = num_images * views * profile.ms_per_image / 1000 * frozen_share if frozen_share else 0.0
    per_epoch = num_images * profile.torch_ms_per_image / 1000 * (1 - frozen_share) * 2.2 * 1.15
    return once, per_epoch
