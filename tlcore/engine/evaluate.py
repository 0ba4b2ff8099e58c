"""What a trained model gets right and wrong, predictions for new images, and where it looks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..core.errors import TLError
from ..core.measure import Score
from ..data.images import ImageSet, image_to_tensor, preprocessed_stack
from ..models.backbones import Preprocess, frozen_body, get_backbone_spec, imagenet_categories
from ..models.families import EnsembleNet
from ..models.model import TransferModel, to_float
from ..models.runtime import frozen_forward, runtime_for


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    labels: tuple[int, ...]  # true class per image
    predictions: tuple[int, ...]
    probabilities: tuple[tuple[float, ...], ...]  # [N][C]
    names: tuple[str, ...]  # file names, for the gallery of mistakes

    @property
    def right(self) -> int:
        return sum(p == t for p, t in zip(self.predictions, self.labels))

    @property
    def accuracy(self) -> float:
        return self.right / max(1, len(self.labels))

    @property
    def confusion_matrix(self) -> list[list[int]]:
        """``m[true][predicted]`` counts."""
        c = len(self.classes)
        m = [[0] * c for _ in range(c)]
        for t, p in zip(self.labels, self.predictions):
            m[t][p] += 1
        return m

    def precision_recall(self) -> list[tuple[str, float | None, float | None, int]]:
        """Per class: (name, precision, recall, support); None where undefined (nothing to divide by)."""
        m = self.confusion_matrix
        out = []
        for k, name in enumerate(self.classes):
            predicted = sum(row[k] for row in m)
            actual = sum(m[k])
            out.append((name, m[k][k] / predicted if predicted else None, m[k][k] / actual if actual else None, actual))
        return out

    def misclassified(self) -> list[int]:
        """Positions (into this evaluation) of the wrong predictions, most confident mistakes first."""
        wrong = [i for i, (p, t) in enumerate(zip(self.predictions, self.labels)) if p != t]
        return sorted(wrong, key=lambda i: -self.probabilities[i][self.predictions[i]])

    def score(self, method: str = "the images evaluated") -> Score:
        """The accuracy with its denominator and 95 % interval."""
        return Score(self.right, len(self.labels), method)

    def to_json(self) -> dict:
        score = self.score().to_json()
        return {"accuracy": self.accuracy, "right": self.right, "n": score["n"], "interval": score["interval"], "classes": list(self.classes), "confusion_matrix": self.confusion_matrix,
                "per_class": [{"class": n, "precision": p, "recall": r, "support": s}
                              for n, p, r, s in self.precision_recall()]}


def _probabilities(model: TransferModel, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]`` -> probabilities ``[N, C]`` (CPU, eval mode).

    A model on the shared pretrained body (feature extraction, few-shot, zero-shot) gets its features
    from the fastest runtime (``model_features``) and applies only its head in torch.
    """
    out = [_head_probabilities(model, model_features(model, pixels[lo:lo + batch_size]))
           for lo in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, model.head[-1].out_features))


def _head_probabilities(model: TransferModel, feats: torch.Tensor) -> torch.Tensor:
    """The model's head on its features ``[N, D]`` -> probabilities ``[N, C]`` (CPU)."""
    with torch.inference_mode():
        return F.softmax(model.head(feats.to(next(model.head.parameters()).device)).float(), dim=1).cpu()


def inference_runtime(model: TransferModel) -> str:
    """What runs ``model``'s body in ``evaluate`` and ``predict``: the fast runtime for the shared
    pretrained body, torch for a body that trained."""
    return runtime_for(next(model.head.parameters()).device) if model.body.shared_pretrained else "torch"


def evaluate(model: TransferModel, imageset: ImageSet, classes: tuple[str, ...] | list[str],
             pre: Preprocess) -> Evaluation:
    """Run ``model`` over every image of ``imageset`` (labels must be among ``classes``)."""
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted({i.label for i in imageset.items} - set(index))
    if unknown:
        raise TLError(f"The data has classes the model was not trained on: {', '.join(unknown)}.")
    probs = torch.cat([_probabilities(model, imageset.preprocessed(pre, list(range(lo, min(lo + 64, len(imageset))))))
                       for lo in range(0, len(imageset), 64)] or [torch.zeros((0, len(classes)))])
    return Evaluation(
        classes=tuple(classes), labels=tuple(index[i.label] for i in imageset.items),
        predictions=tuple(probs.argmax(1).tolist()) if len(probs) else (),
        probabilities=tuple(tuple(p) for p in probs.tolist()), names=tuple(i.name for i in imageset.items))


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]  # every class, highest first
    unfamiliar: bool | None = None  # unlike every training image (see ``Familiarity``); None: not checked

    @property
    def unsure(self) -> bool:
        """Show "none of these / not sure": the image is unlike the training images, or no class is likely."""
        return bool(self.unfamiliar) or self.confidence < UNSURE_BELOW

    def top(self, k: int) -> list[tuple[str, float]]:
        return list(self.probabilities.items())[:k]


def prepare(images: list[Image.Image], pre: Preprocess) -> torch.Tensor:
    """Upright RGB PIL images -> uint8 ``[N, 3, S, S]`` as the model expects them."""
    return preprocessed_stack([image_to_tensor(img) for img in images], pre)


def predict(model: TransferModel, images: list[Image.Image], classes: tuple[str, ...] | list[str],
            pre: Preprocess, familiarity: Familiarity | None = None) -> list[Prediction]:
    """Class probabilities for new images (decode them with ``decode_image`` first); with a
    ``familiarity`` reference, each prediction also says whether the image is unlike the training images."""
    if not images:
        return []
    # One forward pass for the answer and the cue, in float32 on any hardware: the answer users compare with the
    # exported model (ONNX, the web app), which computes in float32 (bf16 moved probabilities by up to 0.09).
    feats = model_features(model, prepare(images, pre), precision="f32")
    probs = _head_probabilities(model, feats)
    far = familiarity.unfamiliar(feats) if familiarity is not None else [None] * len(images)
    out = []
    for row, unfamiliar in zip(probs.tolist(), far):
        ranked = sorted(zip(classes, row), key=lambda kv: -kv[1])
        out.append(Prediction(ranked[0][0], ranked[0][1], dict(ranked), unfamiliar))
    return out


UNSURE_BELOW = 0.5  # a top class below this probability is a guess, whatever the image


def model_features(model: TransferModel, pixels: torch.Tensor, batch_size: int = 64, precision: str | None = None
                   ) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]`` -> the model's own features ``[N, D]`` (what its head sees); ``precision`` as
    ``frozen_forward``'s (a fine-tuned body runs in float32 anyway)."""
    model.eval()
    if model.body.shared_pretrained:  # the fastest runtime for the head's device
        return frozen_forward(model.body.shared_pretrained, pixels, device=next(model.head.parameters()).device,
                              precision=precision)
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for lo in range(0, len(pixels), batch_size):
            x = to_float(pixels[lo:lo + batch_size], device)
            out.append(model.features(x).float().cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class Familiarity:
    """What "like the training images" means for one model: in its feature space (unit length), the mean
    of each class's training images, and how far training images lie from their own class's mean.

    Each training image's distance is measured leave-one-out: to the mean of its class's *other* images,
    as a new image of the class would be (measured with itself inside, a training image sits closer to
    its mean than any new one, and the 1.25 margin that made up for it let a carrot through as "fish 78 %").
    An image farther from every class mean than the ``quantile`` of those distances is unlike anything the
    model was trained on: about 1 in 20 new images of a class is flagged too (said as "not sure"). A softmax
    still picks a class (at 100 % sometimes), so this is what tells the user "none of these".
    """

    prototypes: torch.Tensor  # [C, D], unit length
    threshold: float  # distance beyond which an image counts as unfamiliar

    @classmethod
    def of(cls, model: TransferModel, train: ImageSet, classes: tuple[str, ...] | list[str], pre: Preprocess,
           quantile: float = 0.95) -> Familiarity:
        index = {c: k for k, c in enumerate(classes)}
        items = [i for i in train.items if i.label in index]
        if not items:
            raise TLError("There are no training images to compare new images with.")
        feats = F.normalize(model_features(model, ImageSet(items, (), classes).stack(pre)), dim=1)
        labels = torch.tensor([index[i.label] for i in items])
        present = sorted(set(labels.tolist()))
        own_class = torch.tensor([present.index(c) for c in labels.tolist()])
        sums = torch.stack([feats[labels == c].sum(0) for c in present])  # [C, D]
        n = torch.bincount(own_class, minlength=len(present)).float()
        protos = sums / n[:, None]
        others = (n[own_class] - 1).clamp(min=1)[:, None]
        loo = (feats - (sums[own_class] - feats) / others).norm(dim=1)[n[own_class] > 1]  # each without itself
        if not len(loo):  # one image per class: no spread to calibrate on, so distance never flags (softmax may)
            return cls(protos, float("inf"))
        return cls(protos, float(torch.quantile(loo, quantile)))

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """Distance of each image (its model features, ``model_features``) to its nearest class mean ``[N]``."""
        return torch.cdist(F.normalize(feats.float(), dim=1), self.prototypes).min(dim=1).values

    def unfamiliar(self, feats: torch.Tensor) -> list[bool]:
        return (self.distances(feats) > self.threshold).tolist()


def grad_cam(model: TransferModel, image: Image.Image, pre: Preprocess, target: int | None = None) -> np.ndarray:
    """Grad-CAM heat map ``[S, S]`` in [0, 1] over the centre crop: where the model looked for ``target``.

    Gradients of the class score flow back to the activations of the body's Grad-CAM stage; each
    channel is weighted by its mean gradient and the weighted sum, ReLU'd, is upsampled. The body
    is run stage by stage and the gradient taken with ``torch.autograd.grad``: no hook is put on a
    module (bodies are shared by runs and sessions), and nothing is moved to another device.
    """
    model.eval()
    body = model.body
    device = next(model.head.parameters()).device
    x = to_float(prepare([image], pre), next(body.parameters()).device, channels_last=False)
    with torch.enable_grad():
        if body.splittable:
            cut = body.cam_stage() + 1
            act = body.forward_range((x - model.mean) / model.std, 0, cut).detach().requires_grad_(True)
            logits = model.head(body.forward_range(act, cut).to(device))
        elif isinstance(body.net, EnsembleNet):  # one member's activations, every member's features
            act, feats = body.net.cam_forward((x - model.mean) / model.std)
            logits = model.head(feats.to(device))
        else:  # a transformer: its last block's tokens, captured for this call only
            act, logits = _tokens_and_logits(model, (x - model.mean) / model.std, device)
        k = int(logits.argmax(1)) if target is None else target
        (grad,) = torch.autograd.grad(logits[0, k], act)
    act = act.detach()
    if act.dim() == 3:  # transformer tokens [1, 1 + H*W, C]: drop the class token, make a grid
        side = int(round((act.shape[1] - 1) ** 0.5))
        act = act[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        grad = grad[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(pre.input_size, pre.input_size), mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).cpu().numpy()


def _tokens_and_logits(model: TransferModel, x: torch.Tensor, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision ViT run by hand up to its last encoder block, so that block's output tokens are a
    tensor of this call (no hook on the shared module)."""
    net = model.body.net
    tokens = net._process_input(x)
    tokens = torch.cat([net.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    enc = net.encoder
    tokens = enc.dropout(tokens + enc.pos_embedding)
    for layer in list(enc.layers)[:-1]:
        tokens = layer(tokens)
    act = enc.layers[-1](tokens).detach().requires_grad_(True)
    feats = enc.ln(act)[:, 0]
    return act, model.head(feats.to(device))


def imagenet_top(backbone: str, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
    """What the pretrained backbone alone sees in ``image``: its top-``k`` ImageNet classes (features
    from the fastest runtime, then the backbone's own ImageNet classifier)."""
    head = frozen_body(backbone).imagenet_head
    if head is None:
        raise TLError("This backbone has no ImageNet classifier to ask.")
    feats = frozen_forward(backbone, prepare([image], get_backbone_spec(backbone).preprocess))
    with torch.inference_mode():
        probs = F.softmax(head(feats), 1)[0]
    values, indices = probs.topk(k)
    names = imagenet_categories()
    return [(names[i], v) for i, v in zip(indices.tolist(), values.tolist())]


def crop_box(size: tuple[int, int], pre: Preprocess) -> tuple[int, int, int, int]:
    """Where the centre crop the model sees lies in an image of ``size`` (width, height): (left, top, right,
    bottom). ``preprocess_pixels`` scales the shorter side to ``resize_size`` and keeps the centre
    ``input_size`` square (a strip's long side is first cut to twice the short one, about the same centre)."""
    w, h = size
    side = min(w, h) * pre.input_size / pre.resize_size
    left, top = (w - side) / 2, (h - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def overlay_cam(image: Image.Image, cam: np.ndarray, pre: Preprocess, alpha: float = 0.45,
                max_side: int = 480, dim: float = 0.35) -> Image.Image:
    """The whole image with the Grad-CAM map laid over the centre crop the model saw (red = looked here). What
    the crop cut off (a long fish's head and tail) is dimmed and the crop outlined: the model never saw it."""
    img = image.convert("RGB")
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    left, top, right, bottom = crop_box(img.size, pre)
    cam = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((right - left, bottom - top),
                                                                                 Image.BILINEAR)).clip(0, 1)
    heat = np.zeros((*cam.shape, 3), dtype=np.float32)
    heat[..., 0] = np.clip(cam * 2.0, 0, 1)  # red rises first, then yellow for the strongest areas
    heat[..., 1] = np.clip(cam * 2.0 - 1.0, 0, 1)
    base = np.asarray(img, dtype=np.float32) / 255.0
    out = base * dim  # unseen: dimmed
    weight = alpha * cam[..., None]
    out[top:bottom, left:right] = base[top:bottom, left:right] * (1 - weight) + heat * weight
    picture = Image.fromarray((out * 255).astype(np.uint8))
    if (left, top, right, bottom) != (0, 0, *img.size):
        ImageDraw.Draw(picture).rectangle((left, top, right - 1, bottom - 1), outline=(255, 255, 255), width=2)
    return picture
