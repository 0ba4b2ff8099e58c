"""The web app export: the folder's files, its embedded model (checked against the app's) and its zip."""
from __future__ import annotations

import base64
import gzip
import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tlcore
from tlcore.data.images import BASE_SIZE, MAX_ASPECT
from tlcore.studio.report import open_run_folder
from tlcore.studio.webexport import check_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import class_files, cli

    data = tmp_path_factory.mktemp("data")
    for name, content, label in class_files():
        (data / label).mkdir(exist_ok=True)
        (data / label / name).write_bytes(content)
    out = cli("train", str(data), "--out", str(data.parent / "run"), "--backbone", "tiny-test", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    return open_run_folder(data.parent / "run", data)


def _script_value(path, name):
    text = path.read_text()
    assert text.startswith(f"window.{name} = ")
    return json.loads(text[len(f"window.{name} = "):].rstrip().rstrip(";"))


def test_the_folder_holds_the_page_the_runtime_and_a_model_that_matches_the_app(run, tmp_path):
    project, record = run
    web = tlcore.export_web(project, record, tmp_path / "web")
    names = {f.name for f in web.folder.iterdir()}
    assert names == {"index.html", "config.js", "model.js", "ort.wasm.min.js", "ort-runtime.js",
                     "LICENSE-onnxruntime-web.txt"}
    assert web.bytes == sum(f.stat().st_size for f in web.folder.iterdir()) and web.bytes < 7e6
    config = _script_value(web.folder / "config.js", "TLS_CONFIG")
    pre = tlcore.get_backbone_spec("tiny-test").preprocess
    assert config["classes"] == list(record.result.classes) and config["preprocess"]["input_size"] == pre.input_size
    assert (config["base_size"], config["max_aspect"]) == (BASE_SIZE, MAX_ASPECT)
    import PIL  # the page repeats this Pillow's resize pass order

    assert config["resize_vertical_first"] == (int(PIL.__version__.split(".")[0]) >= 13)
    assert "Accuracy on held-out images" in config["card"] and not config["quantized"]
    assert "tlsClassify" in (web.folder / "index.html").read_text()
    # the embedded model is an ONNX model giving the app's probabilities
    model = gzip.decompress(base64.b64decode(_script_value(web.folder / "model.js", "TLS_MODEL")))
    pixels, labels = check_images(project, record)
    assert labels is not None and len(labels) == len(pixels) > 0
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = torch.softmax(torch.from_numpy(session.run(None, {"pixels": pixels.float().div(255).numpy()})[0]), 1)
    with torch.inference_mode():
        want = torch.softmax(record.result.model.eval()(pixels.float().div(255)), 1)
    assert np.abs(got.numpy() - want.numpy()).max() <= 1e-4 and web.max_diff <= 1e-4
    runtime = _script_value(web.folder / "ort-runtime.js", "TLS_ORT")
    assert gzip.decompress(base64.b64decode(runtime["wasm"]))[:4] == b"\0asm"
    with zipfile.ZipFile(web.zip_path) as zf:
        assert {n.split("/", 1)[1] for n in zf.namelist()} == names and zf.namelist()[0].startswith("web/")


def test_quantized_export_measures_what_it_changes(run, tmp_path):
    project, record = run
    f32 = tlcore.export_web(project, record, tmp_path / "f32")
    int8 = tlcore.export_web(project, record, tmp_path / "int8", quantize=True)
    assert int8.quantized and int8.agreement is not None and int8.agreement.n == len(check_images(project, record)[0])
    assert int8.accuracy is not None and all(0 <= s.accuracy <= 1 for s in int8.accuracy)
    assert "int8" in _script_value(int8.folder / "config.js", "TLS_CONFIG")["card"]
    assert f32.agreement is None and f32.accuracy is None
    again = tlcore.export_web(project, record, tmp_path / "int8")  # replaces the folder
    assert not again.quantized and (tmp_path / "int8" / "index.html").exists()


def test_a_run_without_a_model_is_refused(run, tmp_path):
    project, record = run
    import dataclasses

    with pytest.raises(tlcore.TLError, match="train it first"):
        tlcore.export_web(project, dataclasses.replace(record, result=None), tmp_path / "web")


def test_the_report_says_how_to_use_the_web_app(run):
    project, record = run
    page = tlcore.report_html(project, record)
    assert "--format web" in page and "window.tlsClassify" in page and "load_run" in page


def test_the_apps_prediction_is_the_exported_models_float32_on_any_cpu(setenv, run):
    """``predict`` (Test page, CLI, report) answers what the exported model (ONNX, web app) answers: float32
    even where the runtime's default is bf16 (OpenVINO on CPUs that have it: measured up to 0.087 apart on
    EfficientNet-Lite0, 1.5e-3 on the tiny backbone; on a CPU without bf16 this passes either way)."""

    setenv("TLCORE_INFERENCE_PRECISION", "auto")  # the app's own default; the tests otherwise fix f32
    project, record = run
    pixels, _ = check_images(project, record)
    from tlcore.data.images import tensor_to_image
    from tlcore.engine.evaluate import prepare

    images = [tensor_to_image(p) for p in pixels]
    pre = tlcore.get_backbone_spec(record.config.backbone).preprocess
    got = [p.probabilities for p in tlcore.predict(record.result.model, images, record.result.classes, pre)]
    with torch.inference_mode():  # the torch float32 model the ONNX file is checked against, on predict's input
        want = torch.softmax(record.result.model.eval()(prepare(images, pre).float().div(255)), 1)
    worst = max(abs(g[c] - float(w[k])) for g, w in zip(got, want) for k, c in enumerate(record.result.classes))
    assert worst <= 1e-5, worst


def test_the_web_app_is_titled_by_the_question_it_answers():
    """Issue 38: the exported page's title was the backbone and strategy, not the task."""
    from tlcore.studio.webexport import task_title

    assert task_title(["cat", "dog"]) == "Cat or dog?"
    assert task_title(("apple", "pear", "plum")) == "Apple, pear or plum?"
    assert task_title([str(d) for d in range(10)]) == "Which of 10 classes is it?"
