"""The command line contract: JSON on stdout, progress on stderr, one-line errors with exit status 2. Run in the
test's process, but where a process of its own is the point (``tests.conftest.cli``)."""
from __future__ import annotations

import json
import zipfile

from tests.conftest import ROOT, cli


def test_backbones_lists_availability():
    out = cli("backbones")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    lite0 = next(r for r in rows if r["name"] == "efficientnet_lite0")
    assert lite0["availability"] == "bundled" and lite0["input_size"] == 224
    assert {r["availability"] for r in rows} <= {"bundled", "cached", "download"}


def test_train_evaluate_predict(class_folder, tmp_path):
    out = cli("train", str(class_folder), "--out", str(tmp_path / "run"), "--backbone", "tiny-test",
              "--mode", "fine-tune", "--freeze-depth", "1", "--epochs", "3", "--batch-size", "8")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"val_accuracy", "train_seconds", "num_images", "classes", "mode", "backbone"} <= set(result)
    assert result["num_images"] == 24 and result["mode"] == "fine-tune" and result["freeze_depth"] == 1
    assert "epoch 3/3" in out.stderr  # progress went to stderr
    ev = cli("evaluate", str(tmp_path / "run"), str(class_folder))
    report = json.loads(ev.stdout)
    assert len(report["confusion_matrix"]) == 3 and 0 <= report["accuracy"] <= 1
    sample = class_folder / "class1" / "c1_0.png"
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    pr = cli("predict", str(tmp_path / "run"), str(sample), str(bad))
    lines = [json.loads(line) for line in pr.stdout.splitlines()]
    assert lines[0]["file"] == str(sample) and lines[0]["label"] in ("class0", "class1", "class2")
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5
    assert "not an image" in lines[1]["error"] and pr.returncode == 1


def test_train_accepts_a_zip(class_folder, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in class_folder.rglob("*.png"):
            zf.write(path, f"data/{path.relative_to(class_folder)}")
    out = cli("train", str(archive), "--out", str(tmp_path / "run"), "--backbone", "tiny-test", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["classes"] == ["class0", "class1", "class2"]


def test_compare_runs_every_strategy_on_one_split(class_folder):
    out = cli("compare", str(class_folder), "--backbone", "tiny-test", "--epochs", "2", "--shots", "1,5,all")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    runs = report["runs"]
    assert len(runs) == 1 + 3 * 4 and {r["strategy"] for r in runs} == {"zero-shot", "feature-extraction",
                                                                        "fine-tune", "scratch", "few-shot"}
    assert runs[0]["strategy"] == "zero-shot" and runs[0]["shots"] == 0  # no training image: once, first
    assert {r["shots"] for r in runs} == {0, 1, 5, None}
    ladder = [r for r in runs if r["shots"] is None]
    assert len({tuple(r["val_indices"]) for r in ladder}) == 1  # identical validation images on the ladder
    assert all(r["n"] == 24 and 0 <= r["interval"][0] <= r["accuracy"] <= r["interval"][1] <= 1 for r in ladder)
    for r in runs:  # a study at k per class holds out every other image (of each draw: every image, once)
        if r["shots"]:
            assert len(r["val_indices"]) == 24 - 3 * r["shots"] and 24 - 3 * r["shots"] <= r["n"] <= 24
            assert r["right"] <= r["n"] and r["accuracy"] == round(r["right"] / r["n"], 4)
    assert [v["a"] for v in report["verdicts"]][:1] == ["zero-shot"] and report["headline"]  # photo by photo
    assert report["study_finding"].startswith("With 1 photo per class, starting from the pretrained backbone was")
    assert all(r["status"] == "completed" for r in runs)


def test_backbone_race_on_real_photos_shares_one_split_and_ranks_the_pretrained_backbone_first(tmp_path):
    data = tmp_path / "digits"  # real handwritten digits the app ships, 12 per class in 3 classes
    for label in ("0", "1", "2"):
        (data / label).mkdir(parents=True)
        for f in sorted((ROOT / "assets" / "samples" / "digits" / label).glob("*.png"))[:12]:
            (data / label / f.name).write_bytes(f.read_bytes())
    out = cli("compare", str(data), "--backbones", "tiny-test,efficientnet_lite0", "--epochs", "3")
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [r["backbone"] for r in runs] == ["tiny-test", "efficientnet_lite0"]
    assert {r["strategy"] for r in runs} == {"feature-extraction"} and all(r["status"] == "completed" for r in runs)
    assert len({tuple(r["val_indices"]) for r in runs}) == 1  # the same split for every backbone
    for r in runs:
        assert r["n"] == 36 and r["interval"][0] <= r["accuracy"] <= r["interval"][1]
        assert r["ms_per_image"] > 0 and r["parameters"] > 0 and r["logme"] == r["logme"]
    tiny, lite0 = runs
    assert lite0["imagenet_top1"] == 75.1 and tiny["imagenet_top1"] is None
    # ImageNet pre-training against a tiny net with random "pretrained" weights: the score sees it before training
    assert lite0["logme"] > tiny["logme"] and lite0["accuracy"] >= tiny["accuracy"]
    bad = cli("compare", str(data), "--backbones", "tiny-test,efficientnet_lite0", "--shots", "1,all")
    assert bad.returncode == 2 and "leave out the shot counts" in bad.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path):
    for k, args in enumerate((["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")],
                              ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--lr", "100"],
                              ["evaluate", str(tmp_path), str(tmp_path)],
                              ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--backbone", "nope"])):
        out = cli(*args, process=k == 0)  # the first as a user runs it, in a process of its own
        assert out.returncode == 2, out
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_cert_makes_a_certificate_a_tls_server_accepts(tmp_path):
    import ssl

    from cryptography import x509

    out = cli("cert", "--out", str(tmp_path), "--host", "teacher-laptop", "--host", "10.0.0.7")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(info["cert"], info["key"])  # what Streamlit's server does with sslCertFile/sslKeyFile
    cert = x509.load_pem_x509_certificate((tmp_path / "tls-cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "teacher-laptop" in names.get_values_for_type(x509.DNSName)
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert "--server.sslCertFile" in out.stderr


def test_check_lists_label_errors_duplicates_and_what_was_not_loaded(class_folder):
    import io

    from PIL import Image

    (class_folder / "class2" / "c0_1.png").write_bytes((class_folder / "class0" / "c0_1.png").read_bytes())
    (class_folder / "class0" / "c0_1.png").rename(class_folder / "class1" / "flipped.png")  # a class0 image in class1
    buf = io.BytesIO()
    Image.open(class_folder / "class0" / "c0_2.png").resize((80, 80)).save(buf, "PNG")
    (class_folder / "class2" / "big.png").write_bytes(buf.getvalue())  # a resized copy, in another class
    out = cli("check", str(class_folder), "--backbone", "tiny-test")
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    report = json.loads(line)
    assert report["images"] == 25 and report["classes"] == ["class0", "class1", "class2"]
    assert {(r["file"], r["given"], r["suggested"]) for r in report["label_errors"]} == {
        ("class1/flipped.png", "class1", "class0"), ("class2/big.png", "class2", "class0")}  # the copy is class0 too
    assert 0.5 < report["label_errors"][0]["score"] <= 1
    [dup] = report["duplicates"]
    assert {dup["file"], dup["other"]} == {"class0/c0_2.png", "class2/big.png"} and "two classes" in dup["reason"]
    assert report["not_loaded"][0]["file"] == "class2/c0_1.png" and "already in class" in report["not_loaded"][0]["reason"]
    assert cli("check", str(class_folder / "nope")).returncode == 2


def test_export_every_format(class_folder, tmp_path):
    run = tmp_path / "run"
    assert cli("train", str(class_folder), "--out", str(run), "--backbone", "tiny-test", "--epochs", "2").returncode == 0
    outs = {}
    for fmt in ("onnx", "torchscript", "zip", "web"):
        out = cli("export", str(run), "--format", fmt, "--data", str(class_folder))
        assert out.returncode == 0, out.stderr
        outs[fmt] = json.loads(out.stdout.splitlines()[-1])
    assert outs["onnx"]["file"].endswith("model.onnx") and outs["onnx"]["max_diff"] <= 1e-4
    assert outs["onnx"]["checked_on"] == outs["torchscript"]["checked_on"] > 0
    with zipfile.ZipFile(outs["zip"]["file"]) as zf:
        assert {"run.json", "model.safetensors"} <= set(zf.namelist())
    assert (run / "web" / "index.html").exists() and outs["web"]["bytes"] > 1e6 and outs["web"]["zip"].endswith(".zip")
    random = cli("export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))  # no DATA: random pixels
    assert random.returncode == 0 and json.loads(random.stdout)["checked_on"] == 8
    bad = cli("export", str(run), "--format", "onnx", "--quantize")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --quantize is for --format web")
    missing = cli("export", str(tmp_path / "nothing"), "--format", "web")
    assert missing.returncode == 2 and "not a Transfer Learning Studio run" in missing.stderr
