"""Model surgery: a pretrained body plus a new head, and freezing the body stage by stage."""
from __future__ import annotations

import torch
from torch import nn

from .backbones import Body, Preprocess, create_body

# Training and feature extraction keep weights and images channels-last (NHWC): measured on the
# 2-core CPU with EfficientNet-Lite0, forward passes run 1.3x and training steps 1.33x faster
# (tlcore.bench). Every model is built so (a loaded run computes exactly as the trained one did);
# saved weights are made contiguous, so files do not depend on it.
CHANNELS_LAST = torch.channels_last


class TransferModel(nn.Module):
    """``[B, 3, S, S]`` floats in [0, 1] -> ``[B, num_classes]`` logits.

    Normalisation lives inside the model so that exported files take plain [0, 1] pixels.
    """

    def __init__(self, body: Body, num_classes: int, preprocess: Preprocess, dropout: float = 0.2) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(body.feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> backbone features ``[B, feature_dim]``."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(backbone: str, num_classes: int, pretrained: bool = True, seed: int | None = None) -> TransferModel:
    """A new model: the backbone (ImageNet weights, or random when not ``pretrained``) and a fresh head,
    initialised from ``seed`` when given (whether or not getting the pretrained body drew random numbers)."""
    from .backbones import get_backbone_spec

    spec = get_backbone_spec(backbone)
    body = create_body(backbone, pretrained=pretrained)
    if seed is not None:
        torch.manual_seed(seed)
    model = TransferModel(body, num_classes, spec.preprocess)
    return model.to(memory_format=CHANNELS_LAST)


def freeze(model: TransferModel, depth: int) -> None:
    """Freeze the first ``depth`` stages of the body (0: train everything); the head always trains."""
    n = len(model.body.stages)
    if not 0 <= depth <= n:
        raise ValueError(f"freeze depth must be between 0 and {n}")
    if depth == n:  # the whole body (every run of the frozen-body modes): no stage to look up
        model.body.net.requires_grad_(False)
    else:
        for name, p in model.body.net.named_parameters():
            p.requires_grad_(model.body.stage_of(name) >= depth)
    for p in model.head.parameters():
        p.requires_grad_(True)


def set_train_mode(model: TransferModel) -> None:
    """``model.train()``, except frozen normalisation layers keep their ImageNet statistics."""
    model.train()
    for m in model.body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def to_float(pixels: torch.Tensor, device: torch.device | str | None = None, channels_last: bool = True
             ) -> torch.Tensor:
    """uint8 pixels ``[B, 3, S, S]`` -> float [0, 1] (on ``device``, if given), the one place this happens;
    channels-last like the models, unless a runtime needs a plain contiguous array (``channels_last=False``)."""
    x = pixels if device is None else pixels.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float() / 255.0  # never changes a caller's tensor
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x.contiguous()
