"""A run's model as a self-contained web app: ``index.html`` and its scripts, run by ONNX Runtime Web.

The folder opens from disk (``file://``) or from any static web server, offline: chromium refuses
``fetch()`` of local files, so the model and ONNX Runtime's WebAssembly are embedded in classic
``<script>`` files (gzip, base64) and unpacked by the page. ONNX Runtime Web (MIT) is vendored in
``assets/web`` (see its README); nothing is downloaded when exporting. The page repeats the app's
preprocessing (``tlcore.data.images.decode_image`` then ``preprocess_pixels``) in the same integer arithmetic
(Pillow's reduce and resample, torchvision's uint8 resize), so its pixels are the app's, and the model is
checked against the app's model (float32, as ``predict``) before the folder appears;
``tests/browser/test_web_export.py`` checks the page's pixels and predictions against the app's in
chromium on photos of every shape.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import PIL
import torch

from ..core.errors import TLError
from ..core.measure import Score
from ..core.settings import settings
from ..core.storage import atomic_write
from ..data.images import BASE_SIZE, MAX_ASPECT, ImageSet
from ..engine.checkpoint import export_onnx
from ..models.backbones import get_backbone_spec
from ..models.model import to_float
from .project import Project, RunRecord
from .run_views import model_card, validation_report

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "web"
#: Copied as they are; ``ort-runtime.js`` and ``model.js`` are written per export.
PAGE_FILES = ("index.html", "ort.wasm.min.js", "LICENSE-onnxruntime-web.txt")


@dataclass(frozen=True)
class WebExport:
    """A web app written by ``export_web``."""

    folder: Path  # index.html and its scripts
    zip_path: Path  # the same folder as one zip, beside it
    bytes: int  # the folder's size
    quantized: bool  # int8 weights (ONNX Runtime's dynamic quantization) instead of float32
    max_diff: float  # largest probability difference of the f32 ONNX model from the app's, on the check images
    agreement: Score | None  # quantized: images where int8 and f32 pick the same class
    #: quantized, on labelled check images: (f32, int8) accuracy. A frozen-body model's final head was fitted on
    #: every image, so this is the change quantization makes, not the model's held-out accuracy.
    accuracy: tuple[Score, Score] | None

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "zip": str(self.zip_path), "bytes": self.bytes,
                "quantized": self.quantized, "max_diff": self.max_diff,
                "agreement": None if self.agreement is None else self.agreement.to_json(),
                "accuracy": None if self.accuracy is None else [s.to_json() for s in self.accuracy]}


def check_images(project: Project, record: RunRecord, limit: int = 64) -> tuple[torch.Tensor, list[int] | None]:
    """Images to check an export with, as uint8 ``[N, 3, S, S]``, and their labels: the run's validation
    images, else the images it trained on, else (a run folder alone) random pixels and no labels."""
    assert record.result is not None
    pre = get_backbone_spec(record.config.backbone).preprocess
    report = validation_report(project, record)
    items = report[1] if report else (record.images.items if record.images is not None else project.images.items)
    items = [i for i in items if i.label in record.result.classes][:limit]
    if not items:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (8, 3, pre.input_size, pre.input_size), generator=generator,
                             dtype=torch.uint8), None
    classes = list(record.result.classes)
    return ImageSet(items).stack(pre), [classes.index(i.label) for i in items]


def _gzip_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, 9, mtime=0)).decode("ascii")


def _quantize(f32: Path, out: Path) -> None:
    """int8 weights by ONNX Runtime's own dynamic quantization (activations stay float). Depthwise
    convolutions stay float32: they hold few weights, and quantized they change EfficientNet-Lite0's class
    on a quarter of the images (measured: 47 of 64 the same; with them kept, 64 of 64, 4.2 MB vs 3.6 MB)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    depthwise = [n.name for n in onnx.load(str(f32), load_external_data=False).graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    quantize_dynamic(str(f32), str(out), weight_type=QuantType.QUInt8, nodes_to_exclude=depthwise)


def _onnx_probabilities(path: Path, pixels: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.softmax(torch.from_numpy(session.run(None, {name: to_float(pixels, channels_last=False).numpy()})[0]), 1)


def task_title(classes: tuple[str, ...] | list[str]) -> str:
    """The web app's title: the question it answers ("Cat or dog?", "Apple, pear or plum?"), not the model's
    backbone and strategy (those are in its model card)."""
    names = [str(c) for c in classes]
    if len(names) > 6:
        return f"Which of {len(names)} classes is it?"
    question = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return question[:1].upper() + question[1:] + "?"


def export_web(project: Project, record: RunRecord, out_dir: str | Path, quantize: bool = False) -> WebExport:
    """Write the run's web app to ``out_dir`` (replaced if it exists) and ``out_dir``.zip beside it.

    The model is exported to ONNX and checked against the app's model on ``check_images`` (a model that
    disagrees is never written); ``quantize`` stores int8 weights and measures what that changes."""
    if record.result is None:
        raise TLError("This run has no trained model yet: train it first (Train page).")
    out = Path(out_dir)
    spec = get_backbone_spec(record.config.backbone)
    pixels, labels = check_images(project, record)
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "model.onnx"
        max_diff = export_onnx(record.result.model, f32, to_float(pixels, channels_last=False))
        model_file, agreement, accuracy = f32, None, None
        if quantize:
            model_file = Path(tmp) / "model.int8.onnx"
            _quantize(f32, model_file)
            p32, p8 = _onnx_probabilities(f32, pixels).argmax(1), _onnx_probabilities(model_file, pixels).argmax(1)
            n = len(p32)
            agreement = Score(int((p32 == p8).sum()), n, "the check images (int8 vs float32)")
            if labels is not None:
                truth = torch.tensor(labels)
                accuracy = (Score(int((p32 == truth).sum()), n, "float32 on the check images"),
                            Score(int((p8 == truth).sum()), n, "int8 on the check images"))
        card = model_card(record)
        if agreement is not None:
            same = round(agreement.accuracy * agreement.n)
            card += (f"- **Weights:** int8 (ONNX Runtime's dynamic quantization): the same class as the float32 model "
                     f"on {same} of {agreement.n} images")
            if accuracy:
                card += f"; on their labels {accuracy[0].text()} (float32) -> {accuracy[1].text()} (int8)"
            card += "\n"
        config = {"title": task_title(record.result.classes), "classes": list(record.result.classes), "card": card,
                  "preprocess": dataclasses.asdict(spec.preprocess), "base_size": BASE_SIZE,
                  "max_aspect": MAX_ASPECT, "quantized": quantize,
                  # Pillow 13 runs a resize's vertical pass first when the height shrinks more than twice as much
                  # as the width (older ones always the horizontal first): the page repeats this app's Pillow.
                  "resize_vertical_first": int(PIL.__version__.split(".")[0]) >= 13}
        staging = Path(tmp) / "web"
        staging.mkdir()
        for name in PAGE_FILES:
            shutil.copyfile(ASSETS / name, staging / name)
        runtime = {"mjs": base64.b64encode((ASSETS / "ort-wasm-simd-threaded.mjs").read_bytes()).decode("ascii"),
                   "wasm": base64.b64encode((ASSETS / "ort-wasm-simd-threaded.wasm.gz").read_bytes()).decode("ascii")}
        (staging / "ort-runtime.js").write_text(f"window.TLS_ORT = {json.dumps(runtime)};\n")
        (staging / "model.js").write_text(f'window.TLS_MODEL = "{_gzip_b64(model_file.read_bytes())}";\n')
        (staging / "config.js").write_text(f"window.TLS_CONFIG = {json.dumps(config, indent=1)};\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, out)
    zip_path = out.with_name(out.name + ".zip")
    atomic_write(zip_path, lambda p: _zip(out, Path(p)))
    size = sum(f.stat().st_size for f in out.iterdir())
    return WebExport(out, zip_path, size, quantize, max_diff, agreement, accuracy)


def _zip(folder: Path, path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:  # the big files are compressed already
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")


#: Where a run's published web app is remembered (its unguessable name under the static folder).
LINK_FILE = "web-link.txt"


def publish_web(web: WebExport, static_root: str | Path, run_folder: str | Path) -> str:
    """Copy the web app to ``static_root/tls-web/<random name>/`` for a web server that serves
    ``static_root`` (Streamlit's ``server.enableStaticServing``: ``/app/static/``), and return its path
    there (``tls-web/<name>/index.html``). Only this folder is copied; the name is random and unguessable
    (each run keeps its own in ``LINK_FILE``, and a new publish replaces the old copy)."""
    import secrets

    link_file = Path(run_folder) / LINK_FILE
    name = link_file.read_text().strip() if link_file.exists() else ""
    if not (len(name) == 22 and name.replace("-", "").replace("_", "").isalnum()):
        name = secrets.token_urlsafe(16)
        atomic_write(link_file, lambda p: Path(p).write_text(name))
    target = Path(static_root) / "tls-web" / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(web.folder, target)
    return f"tls-web/{name}/index.html"


def lan_url(page_url: str, path: str) -> str:
    """The address of ``path`` on the server of ``page_url`` (``http://host:port/...``) as another device on
    the network reaches it: a ``localhost`` host becomes this machine's network address (``TLS_PUBLIC_URL``,
    when set, replaces the whole server address)."""
    from urllib.parse import urlsplit

    from .lesson import lan_addresses

    if public := settings().public_url:
        return f"{public.rstrip('/')}/{path.lstrip('/')}"
    parts = urlsplit(page_url or "http://localhost:8501/")
    host = parts.hostname or "localhost"
    if host in ("localhost", "::1") or host.startswith("127."):
        host = next(iter(lan_addresses()), host)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{host}{port}/{path.lstrip('/')}"
