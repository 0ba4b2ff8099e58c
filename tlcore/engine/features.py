"""Pretrained features, computed once: the frozen body of a backbone on the fastest runtime, each image's
features kept (``FEATURES``, by backbone, preprocessing, runtime and image content) and reused by every later
epoch, run, comparison and session; the augmented views (flips, crops, colour) a small set's head also fits on."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..core.storage import ByteLRU, budgeted
from ..data.images import ImageSet
from ..models.backbones import Preprocess, get_backbone_spec, weights_digest
from ..models.runtime import frozen_forward, runtime_for
from .config import TrainConfig
from .events import Progress

# Embeddings of pretrained bodies, ``(feature key, image digest) -> [D]``, a quarter of the process's budget.
# Pretrained weights never change, so an image's features are computed once per backbone, preprocessing
# and runtime and then reused by every later epoch, run, comparison and session.
FEATURES: ByteLRU[tuple[str, str], torch.Tensor] = budgeted("features", 1 / 4)


def cached_features(key: str, digests: list[str]) -> list[torch.Tensor | None]:
    """Each image's features under ``key`` if ``FEATURES`` holds them."""
    return [FEATURES.get((key, d)) for d in digests]


def keep_features(key: str, digests: list[str], feats: torch.Tensor) -> None:
    for d, f in zip(digests, feats):
        f = f.clone()  # not a view that would keep the whole batch alive
        FEATURES.put((key, d), f, f.nbytes)


def feature_key(backbone: str, pre: Preprocess, runtime: str) -> str:
    return f"{backbone}|{weights_digest(backbone)[:16]}|{pre.key}|{runtime}"


#: The first batch, whose preprocessing nothing hides, is this small (32 images' resizes kept the backbone waiting
#: 10-16 ms).
FIRST_BATCH = 8


def _preprocessed_batches(imageset: ImageSet, pre: Preprocess, indices: list[int], batch_size: int
                          ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``indices`` in batches, each with its images preprocessed (``ImageSet.preprocessed``). The next batch is
    preprocessed on a thread while the caller runs this one through the backbone: a runtime's inference releases
    the GIL, and one image's resize keeps one core busy, so most of the preprocessing hides behind the inference
    (300 images on 2 cores: 0.71-0.83 s serially, 0.66-0.72 s so, against 0.55-0.61 s for the forward pass alone)."""
    if not indices:
        return
    first = min(batch_size, FIRST_BATCH)
    batches = [indices[:first]] + [indices[lo:lo + batch_size] for lo in range(first, len(indices), batch_size)]
    with ThreadPoolExecutor(1, thread_name_prefix="tlcore-preprocess") as pool:
        ahead = pool.submit(imageset.preprocessed, pre, batches[0])
        for k, idx in enumerate(batches):
            stack = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(imageset.preprocessed, pre, batches[k + 1])
            yield idx, stack


def embed(imageset: ImageSet, backbone: str, device: torch.device | str = "cpu",
          should_stop: Callable[[], bool] = lambda: False, batch_size: int = 32
          ) -> Generator[Progress, None, torch.Tensor | None]:
    """Pretrained features ``[N, D]`` of every image, from the cache where possible, else through
    the fastest runtime (``frozen_forward``). Yields ``Progress`` while it computes; returns None if
    stopped."""
    out = yield from embed_views(imageset, backbone, 0, device, should_stop, batch_size)
    return None if out is None else out[0]


AUGMENT_DRAWS = 8  # uniform numbers one augmented view is drawn from (crop area, aspect, x, y, flip, colour x3)


def augment(batch: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Augmented views of a uint8 batch ``[B, 3, H, W]``: a random resized crop (60-100 % of the area, aspect
    3:4 to 4:3, resized back to H x W), a horizontal flip (half of the time) and colour jitter (brightness,
    contrast and saturation each times 0.8-1.2), image ``i`` drawn from ``draws[i]`` (``[B, AUGMENT_DRAWS]``
    uniform in [0, 1)). One vectorised pass for the whole batch (an affine grid, then per-image factors):
    torchvision's per-image ``ColorJitter`` on uint8 cost several times the backbone's forward pass."""
    n = len(batch)
    area = 0.6 + 0.4 * draws[:, 0]
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * draws[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of the side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
    theta[:, 0, 2] = (1 - w) * (2 * draws[:, 2] - 1)
    theta[:, 1, 1] = h
    theta[:, 1, 2] = (1 - h) * (2 * draws[:, 3] - 1)
    x = batch.float()
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                      padding_mode="border", align_corners=False)
    # Brightness b, then contrast c about the mean grey m, then saturation s about each pixel's grey g: all
    # linear, so together x -> s c b x + (1 - s) c b g + (1 - c) b m, one pass.
    b, c, s = (0.8 + 0.4 * draws[:, 5:8]).T.reshape(3, n, 1, 1, 1)
    grey = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    x = x * (s * c * b) + grey * ((1 - s) * c * b) + grey.mean((2, 3), keepdim=True) * ((1 - c) * b)
    return x.clamp(0, 255).round().to(torch.uint8)


#: Feature extraction on up to this many images, at most VIEWS_MAX_PER_CLASS per class on average, also uses
#: ``augment_views - 1`` augmented views of each image (flips, crops, colour; their features computed once and
#: cached like the image's own): its head is the average of two logistic regressions, one on the images alone
#: and one on the images with their views (``_Head``). On the benchmark's small real datasets (section 9)
#: the views raised accuracy where images vary in place and size (digits: +4 points at 3-5 per class); alone,
#: the fit with views fell up to 3 points below the images-only fit on some draws, the average never more than
#: half a point. Beyond a class's data they cost more than they bring.
VIEWS_MAX_IMAGES = 120
VIEWS_MAX_PER_CLASS = 10


def _view_draws(digest: str, k: int) -> torch.Tensor:
    """The draws of view ``k`` of one image, from a seed of its content and ``k``: the same view whenever and
    wherever it is computed (so a cached view and a recomputed one agree)."""
    return torch.rand(AUGMENT_DRAWS, generator=torch.Generator().manual_seed(int(digest[:12], 16) * 64 + k))


def embed_views(imageset: ImageSet, backbone: str, views: int, device: torch.device | str = "cpu",
                should_stop: Callable[[], bool] = lambda: False, batch_size: int = 32
                ) -> Generator[Progress, None, torch.Tensor | None]:
    """Pretrained features ``[1 + views, N, D]``: of every image (``embed``'s), then of each of its ``views``
    augmented views, each computed where the cache lacks it, every image preprocessed once for all of them. Yields
    ``Progress`` while it computes; returns None if stopped."""
    pre = get_backbone_spec(backbone).preprocess
    base = feature_key(backbone, pre, runtime_for(device))
    keys = [base] + [f"{base}|view{k}|v2" for k in range(views)]  # v2: views of ``augment``
    digests = [i.digest for i in imageset.items]
    cached = [cached_features(key, digests) for key in keys]
    todo = [i for i in range(len(digests)) if any(c[i] is None for c in cached)]
    if todo:
        what = "Computing features" + (" of the images and their augmented views" if views else "")
        start = time.perf_counter()
        yield Progress(what, 0, len(todo), math.nan)
        done = 0
        for idx, stack in _preprocessed_batches(imageset, pre, todo, batch_size):
            if should_stop():
                return None
            for k, key in enumerate(keys):
                at = [j for j, i in enumerate(idx) if cached[k][i] is None]
                if not at:
                    continue
                lack = [idx[j] for j in at]
                pixels = stack if len(at) == len(idx) else stack[at]  # no copy of a whole batch (2 ms of 32 images)
                batch = pixels if k == 0 else augment(pixels, torch.stack([_view_draws(digests[i], k - 1)
                                                                           for i in lack]))
                feats = frozen_forward(backbone, batch, device=device, batch_size=batch_size)
                keep_features(key, [digests[i] for i in lack], feats)
                for i, f in zip(lack, feats):
                    cached[k][i] = f
            done += len(idx)
            rate = done / (time.perf_counter() - start)
            yield Progress(what, done, len(todo), (len(todo) - done) / rate)
    if not digests:
        return torch.zeros((1 + views, 0, get_backbone_spec(backbone).feature_dim))
    stacks = [torch.stack(c) for c in cached]  # type: ignore[arg-type]
    return torch.stack(stacks) if views else stacks[0].unsqueeze(0)  # ``embed``'s: no second copy of its features


def fe_views(cfg: TrainConfig, num_images: int, classes: int | None = None) -> int:
    """Augmented views per image (besides the image) a feature-extraction run of ``cfg`` on ``num_images``
    images of ``classes`` classes (None: not known, as if few per class) fits its head on."""
    few = classes is None or num_images <= VIEWS_MAX_PER_CLASS * classes
    return cfg.augment_views - 1 if cfg.augment and num_images <= VIEWS_MAX_IMAGES and few else 0
