"""How fast a backbone is on this machine, and what an epoch will cost at a given freeze depth."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from .backbones import get_backbone_spec
from .train import FROZEN_BODY_MODES, resolve_device


@dataclass(frozen=True)
class SpeedProfile:
    """Measured forward cost per image, split by stage (random weights: speed does not depend on them)."""

    backbone: str
    ms_per_image: float  # inference, whole backbone
    stage_share: tuple[float, ...]  # fraction of the forward time spent in each stage


@functools.lru_cache(maxsize=32)
def measure_speed(backbone: str, batch: int = 8, repeats: int = 2) -> SpeedProfile:
    """Time the backbone's forward pass on random images; per-stage shares from module hooks."""
    spec = get_backbone_spec(backbone)
    body = spec.build().eval().to(resolve_device())
    device = next(body.parameters()).device
    size = spec.preprocess.input_size
    x = torch.rand(batch, 3, size, size, device=device)
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
    return SpeedProfile(backbone, 1000 * total / (repeats * batch), tuple(s / staged for s in spent))


def estimate_epoch_seconds(profile: SpeedProfile, num_images: int, mode: str, freeze_depth: int) -> float:
    """Seconds for one training epoch over ``num_images``.

    Forward costs ``ms_per_image``; training adds about twice the forward cost of every stage
    that learns (backward and update), and frozen leading stages need no backward at all.
    Feature extraction pays one forward pass per image once (later epochs reuse the features).
    """
    forward = profile.ms_per_image / 1000
    if mode in FROZEN_BODY_MODES:
        return num_images * forward
    trained_share = 1.0 if mode == "scratch" else sum(profile.stage_share[freeze_depth:])
    return num_images * forward * (1 + 2 * trained_share) * 1.15  # 1.15: train-mode overhead (dropout, BN)
