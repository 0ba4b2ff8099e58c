"""AppTest: every page renders with guidance when empty, and the main flow works through the widgets."""
from __future__ import annotations

import io
import zipfile

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import COLORS, ROOT, class_files, eventually, png_bytes

PAGES = ["pages/backbone.py", "pages/data.py", "pages/freeze.py", "pages/train.py", "pages/evaluate.py",
         "pages/test.py", "pages/export.py", "pages/compare.py"]


#: Seconds a wait may take before it fails: a failsafe, never a pace. Beside a class's load (three browser students
#: training on the same two cores) a ladder of five tiny runs took more than 120 s and the real backbone's more than
#: 300 s; a teacher's laptop in a lesson is as busy.
BUSY = 900


def new_app(project: str | None = None, param: str = "p") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=BUSY)
    if project:
        at.query_params[param] = project
    at.run()
    assert not at.exception
    return at


def texts(elements) -> str:
    return " ".join(str(e.value) for e in elements)


def link_key(at: AppTest, param: str = "p") -> str:
    """The key in the session's address (``?p=...``)."""
    value = at.query_params[param]
    return value[0] if isinstance(value, list) else value


def wait_for(at: AppTest, done, timeout: float = BUSY) -> None:
    """AppTest does not drive run_every: poll with reruns, as the browser's fragment would."""
    def ready() -> bool:
        at.run()
        assert not at.exception, at.exception
        return done(at)

    eventually(ready, timeout, "the page", every=1.0)


def progress_text(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def with_sample(at: AppTest, sample: str = "digits") -> AppTest:
    at.button(key="backbone_use_tiny-test").click().run()
    at.switch_page("pages/data.py").run()
    at.button(key=f"data_sample_{sample}").click().run()
    assert not at.exception
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_empty_with_guidance(page):
    at = new_app()
    at.switch_page(page).run()
    assert not at.exception
    if page not in ("pages/backbone.py", "pages/freeze.py"):
        assert at.info, f"{page} shows no guidance on an empty project"


def test_main_flow_sample_train_evaluate_test_export():
    at = with_sample(new_app())
    assert "Added 200 images" in texts(at.success)
    assert "160 images to train on, 40 held out" in texts(at.markdown)
    at.switch_page("pages/freeze.py").run()
    at.select_slider(key="freeze_trained").set_value(2).run()
    assert "Fine-tuning" in texts(at.metric)
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(4).run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: "best epoch" in texts(a.success))
    assert len(at.get("plotly_chart")) == 2 and "Right on photos it had not trained on" in [m.label for m in at.metric]
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception and at.get("plotly_chart") and at.dataframe
    at.switch_page("pages/test.py").run()
    digit = (ROOT / "assets/samples/digits/3/digit_3_000.png").read_bytes()
    at.file_uploader(key="test_upload").set_value([("three.png", digit, "image/png"),
                                                   ("broken.jpg", b"nope", "image/jpeg")]).run()
    assert not at.exception and "broken.jpg" in texts(at.error)
    assert len(at.get("plotly_chart")) == 1 and len(at.image) >= 2  # the photo and its Grad-CAM
    at.switch_page("pages/export.py").run()
    assert "Model card" in texts(at.markdown) and at.get("download_button")
    at.button(key="export_build_torchscript").click().run()
    assert "matches the app's model" in texts(at.info)
    assert len(at.get("download_button")) == 2
    at.button(key="export_report").click().run()  # the stakeholder report: one self-contained HTML file
    assert not at.exception and len(at.get("download_button")) == 3
    record_id, page = at.session_state["tls"].export.report_html
    assert page.startswith("<!doctype html>") and "Some it got wrong" in page and "<script src=" not in page


def test_the_ten_digits_sample_is_big_enough_for_every_shot_count_the_study_promises():
    """The bundled 40 per class stop the study at 32 (its note says why); scikit-learn's ten digits, 100 each,
    installed with the app, reach every count the study's text names, "all" being 80 per class."""
    at = with_sample(new_app(), "ten_digits")
    assert "Added 1000 images" in texts(at.success)
    assert "800 images to train on, 200 held out" in texts(at.markdown)
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert at.multiselect(key="compare_shots").value == [1, 5, 10, 25, None]
    assert "per class would need" not in texts(at.caption)


def test_data_page_uploads_classes_zip_and_rejections():
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.text_input(key="data_new_class").set_value("red")
    at.button(key="data_add_class").click().run()
    at.text_input(key="data_new_class").set_value("RED")
    at.button(key="data_add_class").click().run()
    assert "already a class" in texts(at.error)
    uploads = [(n, d, "image/png") for n, d, label in class_files(4, 1)] + [("empty.png", b"", "image/png")]
    at.file_uploader(key="data_up_0_0").set_value(uploads).run()
    assert "Added 4 images" in texts(at.success)
    assert "**empty.png**: the file is empty" in texts(at.markdown)
    assert "only 'red' has images" in texts(at.info)  # one class: told what to do
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"photos/blue/b{i}.png", png_bytes(COLORS[1], seed=50 + i))
        zf.writestr("../../escape.png", png_bytes(COLORS[1], seed=60))
    at.tabs[1].file_uploader[0].set_value(("set.zip", buf.getvalue(), "application/zip")).run()
    assert "Added 3 images" in texts(at.success)
    assert "**../../escape.png**: unsafe path" in texts(at.markdown)
    assert "5 images to train on, 2 held out" in texts(at.markdown)
    at.text_input(key="data_rename_0").set_value("crimson").run()
    at.button(key="data_rename_go_0").click().run()
    assert "crimson · 4 images" in texts(at.markdown)
    at.button(key="data_delete_1").click().run()
    assert not at.exception and "blue ·" not in texts(at.markdown)


def test_backbone_page_preview_and_choice():
    at = new_app()
    at.segmented_control(key="backbone_preview_sample").set_value("coffee").run()
    assert not at.exception and at.get("plotly_chart")
    assert "installed, works offline" in texts(at.markdown)
    at.button(key="backbone_use_tiny-test").click().run()
    assert at.button(key="backbone_use_tiny-test").disabled
    # issue 21: speeds said per image, on one batch size, in torch for every backbone (comparable across cards)
    wait_for(at, lambda a: "ms/image in torch" in texts(a.markdown))  # timed in a worker
    assert "(batches of 8)" in texts(at.markdown)


def test_no_page_waits_for_a_backbones_timing(monkeypatch):
    """A timing is a job in a worker, queued behind the class's work on a busy server: the Backbone and Freeze pages
    say it is underway and show the figure when it comes, without waiting for it (a card that waited drew its
    heading and held back its button and every card after it)."""
    import functools
    import threading

    from tlcore.analysis import profile

    at = new_app()
    release = threading.Event()

    def queued(name: str) -> tlcore.SpeedProfile:  # a worker's timing, held until the test lets it run
        release.wait(BUSY)
        return profile._measure_speed("tiny-test", *profile.DEFAULT_TIMING)

    monkeypatch.setattr(profile, "_known", {})
    monkeypatch.setattr(profile, "_started", set())
    monkeypatch.setattr(profile, "_measured", functools.lru_cache(maxsize=32)(profile._time_backbone))
    monkeypatch.setattr(profile, "_elsewhere", queued)
    try:
        at.button(key="backbone_use_tiny-test").click().run()
        assert not at.exception and at.button(key="backbone_use_tiny-test").disabled
        assert "speed here: timing in a worker…" in texts(at.markdown)
        assert at.button(key="backbone_measure").disabled and at.button(key="backbone_measure").label == "Measuring…"
        at.switch_page("pages/freeze.py").run()
        assert not at.exception
        estimate = next(m for m in at.metric if m.label.startswith("Estimated time"))
        assert estimate.value == "in a moment"
    finally:
        release.set()
    wait_for(at, lambda a: next(m for m in a.metric if m.label.startswith("Estimated time")).value != "in a moment")
    at.switch_page("pages/backbone.py").run()
    assert "ms/image in torch" in texts(at.markdown) and not at.button(key="backbone_measure").disabled


def test_training_survives_page_switches_and_stop_keeps_best():
    at = with_sample(new_app())
    at.switch_page("pages/freeze.py").run()
    at.toggle(key="freeze_scratch").set_value(True).run()
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(400).run()
    at.button(key="train_start").click().run()
    at.switch_page("pages/data.py").run()  # wander off while it trains
    at.switch_page("pages/train.py").run()
    wait_for(at, lambda a: "Epoch 3" in progress_text(a))  # two epochs done: something to keep
    at.button(key="train_stop").click().run()
    wait_for(at, lambda a: "Stopped by the user" in texts(a.warning))
    assert "Best epoch" in [m.label for m in at.metric]


def test_reload_reopens_the_project():
    at = with_sample(new_app(), "faces")
    again = new_app(project=link_key(at))  # a new browser session with the same address
    again.switch_page("pages/data.py").run()
    assert "face · 100 images" in texts(again.markdown)


def test_a_stale_second_tab_never_writes_its_old_settings_back():
    """The Train and Freeze pages wrote their widgets' values back on every rerun: a second tab of the
    same project, rerun for any reason, reverted what the first had just set."""
    first = with_sample(new_app())
    second = new_app(project=link_key(first))
    for at in (first, second):
        at.switch_page("pages/train.py").run()
    first.number_input(key="train_epochs").set_value(7).run()
    first.switch_page("pages/freeze.py").run()
    first.select_slider(key="freeze_trained").set_value(2).run()
    from tlcore import Project

    proj = first.session_state["tls"].project
    chosen = proj.settings
    assert (chosen.epochs, chosen.mode) == (7, "fine-tune")
    second.run()  # the stale tab reruns (a click elsewhere, a reconnect)
    second.switch_page("pages/freeze.py").run()
    assert second.session_state["tls"].project is proj and not second.exception
    assert proj.settings == chosen and Project.open(proj.name).settings == chosen


def test_compare_page_runs_all_strategies_on_one_split():
    at = with_sample(new_app(), "faces")
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(2).run()
    at.switch_page("pages/compare.py").run()
    at.button(key="compare_go").click().run()

    def finished(a):
        return a.table and all(s in ("completed", "failed", "stopped") for s in a.table[0].value["status"])

    wait_for(at, finished)
    table = at.table[0].value
    assert len(table) == 5 and set(table["status"]) == {"completed"}
    assert table["run"][0] == "zero-shot (no photos used)"  # the ladder's first rung, as what it is
    assert len(at.get("plotly_chart")) >= 2
    first = texts(at.success)  # the lesson first: pretrained against from scratch, photo by photo, in words
    assert "learning from scratch" in first.lower() and "right, from scratch" in first
    assert "Feature extraction got" in texts(at.caption) and "right, from scratch" in texts(at.caption)
    proj = at.session_state["tls"].project
    for row, r in zip(table.itertuples(), proj.group_runs(proj.runs[-1].group)):  # whole photos, as scored
        assert row.right == f"{r.result.score.right} of {r.result.score.n}"


def test_the_lesson_lands_on_15_real_photos_pretrained_beats_scratch_photo_by_photo():
    """15 real photos of 3 classes (the bundled digits, 5 per class), the real default backbone: the ladder's first
    line says in plain words that pretrained beat scratch, with the paired figures."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label in ("0", "1", "2"):
            for f in sorted((ROOT / "assets/samples/digits" / label).glob("*.png"))[:5]:
                zf.writestr(f"{label}/{f.name}", f.read_bytes())
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.tabs[1].file_uploader[0].set_value(("digits.zip", buf.getvalue(), "application/zip")).run()
    assert "Added 15 images" in texts(at.success)
    at.switch_page("pages/compare.py").run()
    at.button(key="compare_go").click().run()
    wait_for(at, lambda a: a.table and all(s in ("completed", "failed", "stopped")
                                           for s in a.table[0].value["status"]))
    first = at.success[0].value
    assert first.startswith("Starting from a pretrained backbone beat learning from scratch on your photos."), first
    assert "of 15 right, from scratch" in first and "luck alone would" in first
    assert "The class names alone (zero-shot, no photos used) got" in texts(at.info)


def test_compare_page_races_backbones_on_one_split():
    at = with_sample(new_app(), "faces")
    at.switch_page("pages/compare.py").run()
    assert "efficientnet_lite0" in at.multiselect(key="compare_race_backbones").value  # offline ones by default
    at.multiselect(key="compare_race_backbones").set_value(["tiny-test"]).run()
    assert at.button(key="compare_race_go").disabled  # a race needs two
    at.multiselect(key="compare_race_backbones").set_value(["tiny-test", "efficientnet_lite0"]).run()
    assert "2 runs, about" in texts(at.caption)
    at.button(key="compare_race_go").click().run()
    def race_table(a):
        return next((d.value for d in a.dataframe if "ms per image" in d.value.columns), None)

    wait_for(at, lambda a: race_table(a) is not None and len(race_table(a)) == 2
             and not a.session_state["tls"].project.active_runs())
    table = race_table(at)
    assert list(table["backbone"]) == ["Tiny test net", "EfficientNet-Lite0"]
    assert table["right"].str.endswith(" of 200").all() and (table["ms per image"] > 0).all()
    assert "compare_race_chart" in " ".join(c.proto.id for c in at.get("plotly_chart"))
    assert "EfficientNet-Lite0 got" in texts(at.caption) and "right, Tiny test net" in texts(at.caption)  # top two
    assert not at.exception


def test_zero_shot_mapping_is_shown_editable_and_honest_about_digits():
    at = with_sample(new_app())  # digits: ImageNet has no word for them
    at.switch_page("pages/compare.py").run()
    assert "ImageNet has no class for 0, 1, 2, 3" in texts(at.warning)
    at.multiselect(key="compare_zs_0").set_value(["analog clock"]).run()  # the user edits the mapping
    proj = at.session_state["tls"].project
    assert proj.settings.zero_shot_map["0"] == {"analog clock": 1.0}  # added by the user: weight 1
    at.run()
    assert "analog clock · 1.00" in at.multiselect(key="compare_zs_0").options  # each class shows its weight
    assert "ImageNet has no class for 1, 2, 3" in texts(at.warning)


def test_five_sessions_each_see_only_their_own_work():
    apps = [new_app() for _ in range(5)]
    names = set()
    for k, at in enumerate(apps):
        at.button(key="backbone_use_tiny-test").click().run()
        at.switch_page("pages/data.py").run()
        at.text_input(key="data_new_class").set_value(f"only-mine-{k}")
        at.button(key="data_add_class").click().run()
        names.add(at.session_state["tls"].project.name)
    assert len(names) == 5
    for k, at in enumerate(apps):
        at.switch_page("pages/data.py").run()
        page = texts(at.markdown)
        assert f"only-mine-{k}" in page and not any(f"only-mine-{j}" in page for j in range(5) if j != k)


def test_five_sessions_training_at_once_queue_for_the_shared_workers():
    from tlcore import get_runner

    runner = get_runner()
    long_lanes = runner.workers - 1 if runner.workers >= 2 else 1  # the last worker only takes short jobs
    apps = [with_sample(new_app(), "faces") for _ in range(5)]
    eventually(runner.idle, 120, "the Data pages' checks")  # they end first (worker jobs): five runs, nothing else
    for at in apps:
        at.switch_page("pages/freeze.py").run()
        at.toggle(key="freeze_scratch").set_value(True).run()
        at.switch_page("pages/train.py").run()
        at.number_input(key="train_epochs").set_value(300).run()
        at.button(key="train_start").click().run()
    for at in apps:
        at.run()
    waiting = [progress_text(at) for at in apps]
    positions = sorted(int(w.split("position ")[1].split()[0]) for w in waiting if "position" in w)
    assert positions == list(range(1, 5 - long_lanes + 1)), waiting
    assert all("about" in w for w in waiting if "position" in w)  # an estimate of the wait
    for at in apps:  # stopping frees the worker for the next in line, and everyone ends
        at.button(key="train_stop").click().run()
    for at in apps:
        wait_for(at, lambda a: "Stopped" in texts(a.warning) or "stopped" in texts(a.markdown))
    eventually(runner.idle, BUSY, "idle workers")  # the workers report idle just after their last event


def test_bad_input_corpus_through_the_data_page():
    from tests.engine.test_data import BAD, GOOD

    at = new_app()
    at.switch_page("pages/data.py").run()
    at.text_input(key="data_new_class").set_value("odd")
    at.button(key="data_add_class").click().run()
    files = [(n, d, "application/octet-stream") for n, d in GOOD.items()] + \
            [(n, d[0], "application/octet-stream") for n, d in BAD.items()]
    at.file_uploader(key="data_up_0_0").set_value(files).run()
    assert not at.exception
    assert f"Added {len(GOOD)} images" in texts(at.success)
    page = texts(at.markdown)
    for name, (_, reason) in BAD.items():
        assert f"**{name}**" in page and reason in page, name
    assert f"odd · {len(GOOD)} images" in page


def test_loading_something_that_is_not_a_run_is_refused():
    import pickle

    at = new_app()
    at.switch_page("pages/export.py").run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("run.json", '{"format": "tlcore-run/1", "classes": ["a", "b"], "backbone": "tiny-test"}')
        zf.writestr("model.safetensors", pickle.dumps({"boom": 1}))
    at.file_uploader(key="export_load").set_value(("run.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="export_load_go").click().run()
    assert not at.exception and "not a safetensors file" in texts(at.error)
    at.file_uploader(key="export_load").set_value(("x.zip", b"plain text", "application/zip")).run()
    at.button(key="export_load_go").click().run()
    assert "not a zip of a saved run" in texts(at.error)


def project_name(at: AppTest) -> str:
    return at.session_state["tls"].project.name


def test_a_sample_never_replaces_data_by_one_click():
    at = with_sample(new_app())  # digits
    first = project_name(at)
    at.button(key="data_sample_faces").click().run()
    assert "already has 200 images" in texts(at.warning)
    assert "0 · 40 images" in texts(at.markdown)  # nothing replaced yet
    at.button(key="data_sample_cancel").click().run()
    assert not at.warning and "0 · 40 images" in texts(at.markdown)
    at.button(key="data_sample_faces").click().run()
    at.button(key="data_sample_new").click().run()
    assert project_name(at) != first and "face · 100 images" in texts(at.markdown)
    from tlcore import Project

    assert Project.open(first).images.counts()["0"] == 40  # the first project kept its digits


def test_a_sample_asks_before_replacing_classes_that_have_no_images_yet():
    """Issue 21: loading a sample into a project with classes but no images replaced them without asking."""
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.text_input(key="data_new_class").set_value("carrot")
    at.button(key="data_add_class").click().run()
    at.button(key="data_sample_digits").click().run()
    assert "already has the class carrot (no images yet)" in texts(at.warning)
    assert at.session_state["tls"].project.images.classes == ["carrot"]  # nothing replaced yet
    at.button(key="data_sample_replace").click().run()
    assert not at.exception and "0 · 40 images" in texts(at.markdown) and "carrot" not in texts(at.markdown)


def test_images_are_picked_by_their_thumbnails_and_a_removal_can_be_undone():
    """Issue 21: images were picked by file name, and a removal had neither confirmation nor undo."""
    at = with_sample(new_app())  # digits, 40 per class
    at.toggle(key="data_picking_0").set_value(True).run()
    boxes = [c for c in at.checkbox if str(c.key).startswith("data_pick_0_")]
    assert len(boxes) == 40 and len(at.image) >= 40  # one tick box under each thumbnail
    boxes[0].check()
    boxes[1].check()
    at.run()
    at.button(key="data_remove_0").click().run()
    assert "0 · 38 images" in texts(at.markdown) and "Removed 2 images from '0'" in texts(at.info)
    at.button(key="data_undo_go").click().run()
    assert not at.exception and "0 · 40 images" in texts(at.markdown) and "Removed 2" not in texts(at.info)
    assert at.session_state["tls"].project.images.counts()["0"] == 40


def frame_message(seq: int, digit: str = "1", **extra) -> dict:
    """What the live camera component sends: a JPEG frame as a data URL."""
    import base64

    from PIL import Image

    image = Image.open(sorted((ROOT / "assets" / "samples" / "digits" / digit).glob("*.png"))[-1]).convert("RGB")
    buf = io.BytesIO()
    image.resize((240, 240)).save(buf, "JPEG")
    return {"sid": "s1", "seq": seq, "jpeg": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(),
            **extra}


def test_the_camera_starts_only_when_asked_for_and_live_frames_are_predicted_and_recorded():
    at = with_sample(new_app())
    assert not at.get("camera_input")  # no st.camera_input on load; the live camera waits for its Start button
    at.selectbox(key="data_camera_class").set_value("1").run()
    at.session_state["data_rec"] = frame_message(1, "1", record=True)  # hold-to-record sends a frame of a "1"
    at.run()
    at.session_state["data_rec"] = frame_message(2, "1", record=True)  # the same frame again: a duplicate
    at.run()
    at.session_state["data_rec"] = {"sid": "s1", "seq": 3, "stopped": True}
    at.run()
    assert not at.exception
    assert "Added 1 image." in texts(at.success) and "1 · 41 images" in texts(at.markdown)
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: "the best epoch" in texts(a.success))
    at.switch_page("pages/test.py").run()
    assert not at.get("camera_input")
    at.toggle(key="test_live_cam").set_value(True).run()
    at.session_state["test_live"] = frame_message(1, "0")
    at.run()
    assert not at.exception
    state = at.session_state["tls"].test.live
    assert state.result["label"] == "0" and len(state.result["probs"]) == 5
    assert state.cam.startswith("data:image/jpeg;base64,")  # Grad-CAM at most once a second
    at.session_state["test_live"] = {"sid": "s1", "seq": 2, "error": "insecure", "origin": "http://lab-pc:8501"}
    at.run()
    assert "needs a secure address" in texts(at.warning) and "http://lab-pc:8501" in texts(at.warning)


def test_a_new_model_is_the_one_shown_and_start_cannot_double_up():
    at = with_sample(new_app())
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(2).run()
    at.button(key="train_start").click().run()
    assert at.button(key="train_start").disabled  # while a run is being created or trains
    wait_for(at, lambda a: "the best epoch" in texts(a.success))
    at.switch_page("pages/evaluate.py").run()
    first = at.session_state["run_pick_evaluate"]
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(3).run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: len(a.session_state["tls"].project.runs) == 2
             and all(r.result is not None for r in a.session_state["tls"].project.runs))
    proj = at.session_state["tls"].project
    assert len([r for r in proj.runs]) == 2
    at.switch_page("pages/evaluate.py").run()
    assert at.session_state["run_pick_evaluate"] == proj.runs[-1].id != first  # the newest model


def test_class_names_that_look_like_numbers_stay_categories():
    at = with_sample(new_app())  # classes "0".."4"
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: "the best epoch" in texts(a.success))
    at.switch_page("pages/evaluate.py").run()
    import json

    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "category" and spec["layout"]["yaxis"]["type"] == "category"


def test_the_study_says_how_long_it_takes_and_shows_its_progress():
    at = with_sample(new_app(), "faces")
    at.switch_page("pages/train.py").run()
    at.number_input(key="train_epochs").set_value(2).run()
    at.switch_page("pages/compare.py").run()
    assert any("in all on this server" in c.value for c in at.caption)  # an estimate before starting
    at.multiselect(key="compare_shots").set_value([1, None]).run()
    at.button(key="compare_eff_go").click().run()
    assert "runs done" in progress_text(at)
    # while it runs, no estimate of a new one beside the disabled buttons (in chromium it read as the running one's)
    assert not any("in all on this server" in c.value for c in at.caption)
    wait_for(at, lambda a: a.get("plotly_chart") and not any("runs done" in p.proto.text for p in a.get("progress"))
             and any(df.value is not None and len(df.value) == 7 for df in a.dataframe))
    import json

    [study] = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "images per class" in c.proto.spec
               and "against" in c.proto.spec]
    assert study["layout"]["xaxis"]["type"] == "category"  # "1" and "all" are both points
    assert {p for trace in study["data"] for p in trace["x"]} == {"0", "1", "all"}  # zero-shot: 0 images
    assert "per class, starting from the pretrained backbone was" in texts(at.info)  # what the study shows, said


def test_a_project_opens_only_by_its_link_and_a_view_link_cannot_change_it():
    owner = with_sample(new_app())  # the teacher's project
    proj = owner.session_state["tls"].project
    assert proj.name not in str(owner.query_params) and link_key(owner) == proj.key  # the address is the key
    stranger = new_app(project=proj.name, param="project")  # typing the name shown in the sidebar
    assert stranger.session_state["tls"].project is not proj
    stranger = new_app(project="x" * 22)  # a made-up key
    assert stranger.session_state["tls"].project is not proj
    viewer = new_app(project=proj.view_key, param="view")  # the read-only link
    assert viewer.session_state["tls"].project is proj and link_key(viewer, "view") == proj.view_key
    assert not viewer.exception and "There is no trained model yet" in texts(viewer.info)  # Evaluate: looking only
    for page in ("pages/data.py", "pages/train.py", "pages/freeze.py", "pages/export.py", "pages/compare.py",
                 "pages/backbone.py"):
        with pytest.raises(ValueError, match="Known pages"):  # the read-only navigation has no such page
            viewer.switch_page(page)
    assert not [b for b in viewer.button if b.key in ("data_sample_faces", "train_start", "compare_go")]
    assert proj.images.counts()["0"] == 40
    colleague = new_app(project=proj.key)  # the full link: the same project, editable
    assert colleague.session_state["tls"].project is proj


def test_numeric_long_and_non_ascii_class_names_chart_cleanly():
    at = new_app()
    at.button(key="backbone_use_tiny-test").click().run()
    at.switch_page("pages/data.py").run()
    names = ["7", "0", "chat noir très, très long — Ünïcödé 🐈 " * 2]
    files = []
    for k, name in enumerate(names):
        at.text_input(key="data_new_class").set_value(name)
        at.button(key="data_add_class").click().run()
        files.append([(f"{k}_{i}.png", png_bytes(COLORS[k], seed=10 * k + i), "image/png") for i in range(6)])
    for k, batch in enumerate(files):
        at.file_uploader(key=f"data_up_{k}_{at.session_state['tls'].data.upload_gen}").set_value(batch).run()
    assert not at.exception
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: "the best epoch" in texts(a.success))
    import json

    for page in ("pages/evaluate.py", "pages/test.py"):
        at.switch_page(page).run()
        if page == "pages/test.py":
            at.file_uploader(key="test_upload").set_value([("x.png", png_bytes(COLORS[2], seed=99), "image/png")]).run()
        assert not at.exception
        charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
        layout = charts[0]["layout"]
        axis = "xaxis" if page == "pages/evaluate.py" else "yaxis"
        assert layout[axis]["type"] == "category", page
        shown = {str(v) for trace in charts[0]["data"] for v in trace.get(axis[0], [])}
        assert {n.strip() for n in shown} >= {"7", "0"}, shown


def test_teacher_page_is_off_without_a_password_and_locked_with_one(setenv):
    setenv("TLS_TEACHER_PASSWORD", None)
    at = new_app()
    at.switch_page("pages/teacher.py").run()
    assert "TLS_TEACHER_PASSWORD" in texts(at.info) and not at.dataframe and not at.get("file_uploader")
    setenv("TLS_TEACHER_PASSWORD", "s3cret")
    at.run()
    at.text_input(key="teacher_password").set_value("guess")
    at.button[0].click().run()
    assert "not the teacher password" in texts(at.error) and not at.get("file_uploader")


def test_class_challenge_from_hidden_set_to_leaderboard(setenv):
    from tests.engine.test_challenge import hidden_zip

    setenv("TLS_TEACHER_PASSWORD", "s3cret")
    teacher = new_app()
    teacher.switch_page("pages/teacher.py").run()
    teacher.text_input(key="teacher_password").set_value("s3cret")
    teacher.button[0].click().run()
    assert not teacher.exception and "No challenge yet" in texts(teacher.info)
    teacher.text_input(key="teacher_ch_name").set_value("Digits 0 or 1")
    teacher.file_uploader(key="teacher_ch_zip").set_value(("hidden.zip", hidden_zip(("0", "1")), "application/zip"))
    next(b for b in teacher.button if "Start the challenge" in str(b.label)).click().run()
    assert not teacher.exception and "is open" in texts(teacher.success)
    teacher.run()
    assert "Digits 0 or 1" in " ".join(h.value for h in teacher.subheader)

    student = with_sample(new_app())  # digits 0-4: has classes "0" and "1"
    student.switch_page("pages/train.py").run()
    student.button(key="train_start").click().run()
    wait_for(student, lambda a: "the best epoch" in texts(a.success))
    student.switch_page("pages/evaluate.py").run()
    assert "Class challenge: Digits 0 or 1" in texts(student.markdown)
    student.text_input(key="evaluate_student").set_value("Ada")
    next(b for b in student.button if "Enter this model" in str(b.label)).click().run()
    assert not student.exception and "Rank 1 of 1" in texts(student.success)
    teacher.run()
    board = teacher.table[0].value  # the leaderboard, the page's first table
    assert list(board["student"]) == ["Ada"] and "feature extraction" in board["strategy"][0]
    on_hidden = board["right on the hidden photos"][0]  # "12 of 12 (100%)": says it is the hidden set
    import tlcore

    entry = tlcore.current_challenge().entries[-1]
    assert on_hidden == f"{entry.right} of 12 ({entry.accuracy:.0%})"
    assert any(student.session_state["tls"].project.name in m.value for m in teacher.markdown)  # projects listed
    # The Compare page can score runs on the same hidden images: the common yardstick.
    student.switch_page("pages/compare.py").run()
    run_id = student.session_state["tls"].project.runs[-1].id
    student.multiselect(key="compare_extra").set_value([run_id]).run()
    student.toggle(key="compare_challenge").set_value(True).run()
    assert not student.exception
    yard = next(d.value for d in student.dataframe if "challenge accuracy" in d.value.columns)
    assert yard["on the teacher's hidden photos"][0].startswith(on_hidden.split(" (")[0] + " right")


def test_a_limit_that_is_hit_says_what_it_is_and_the_teacher_sees_each_projects_usage(setenv):
    setenv("TLS_TEACHER_PASSWORD", "s3cret")
    setenv("TLS_MAX_EPOCHS", "40")
    student = with_sample(new_app())
    student.switch_page("pages/train.py").run()
    student.number_input(key="train_epochs").set_value(41).run()
    student.button(key="train_start").click().run()
    assert "limited to 40 on this server (TLS_MAX_EPOCHS" in texts(student.error)
    assert student.session_state["tls"].project.runs == []
    student.number_input(key="train_epochs").set_value(39).run()  # the next change: the answer outlasts it
    assert "limited to 40 on this server (TLS_MAX_EPOCHS" in texts(student.error)
    teacher = new_app()
    teacher.switch_page("pages/teacher.py").run()
    teacher.text_input(key="teacher_password").set_value("s3cret")
    teacher.button[0].click().run()
    assert not teacher.exception
    assert "Uses 200 of 1,000 images" in texts(teacher.caption) and "runs queued or training" in texts(teacher.caption)


def test_a_start_that_fails_says_so_beneath_its_button_until_the_next_click(monkeypatch):
    """A start button's work that fails unexpectedly is said beneath the button, in words, and stays through the
    page's next runs (raised from the click's callback, it showed once and the next rerun wiped it)."""
    import tlcore

    student = with_sample(new_app())
    student.switch_page("pages/train.py").run()
    real = tlcore.Project.start_run

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tlcore.Project, "start_run", broken)
    student.button(key="train_start").click().run()
    assert not student.exception
    assert "This could not start (RuntimeError: disk on fire)" in texts(student.error)
    student.number_input(key="train_epochs").set_value(3).run()
    assert "disk on fire" in texts(student.error)
    monkeypatch.setattr(tlcore.Project, "start_run", real)
    student.button(key="train_start").click().run()
    assert "disk on fire" not in texts(student.error) and student.session_state["tls"].project.runs
    student.session_state["tls"].project.stop_all()


def test_teacher_stops_a_run_that_hogs_the_server(setenv):
    setenv("TLS_TEACHER_PASSWORD", "s3cret")
    student = with_sample(new_app())
    student.switch_page("pages/freeze.py").run()
    student.toggle(key="freeze_scratch").set_value(True).run()  # a run that hogs (feature extraction converges)
    student.switch_page("pages/train.py").run()
    student.number_input(key="train_epochs").set_value(500).run()
    student.button(key="train_start").click().run()
    teacher = new_app()
    teacher.switch_page("pages/teacher.py").run()
    teacher.text_input(key="teacher_password").set_value("s3cret")
    teacher.button[0].click().run()
    stop = [b for b in teacher.button if str(b.key).startswith("teacher_stop_")]
    assert len(stop) == 1
    stop[0].click().run()
    wait_for(student, lambda a: "Stopped" in texts(a.success) + texts(a.warning) + texts(a.info))
    assert student.session_state["tls"].project.runs[-1].status == "stopped"
    assert "Stopped by the teacher" in student.session_state["tls"].project.runs[-1].reason


def test_step_ticks_mean_done_not_ready(tiny_set):
    """Issue 38: the step bar ticked Train and Compare before anything had trained ("ready", not "done"). A tick
    is work done; an open circle, a step that can be done now; a lock, one that must wait (its tooltip says for
    what)."""
    import dataclasses

    from pages.common import step_status
    from tlcore import Project, TrainConfig

    p = Project.create()
    assert step_status(p)["pages/data.py"] == (False, True, "")
    assert step_status(p)["pages/train.py"][:2] == (False, False)
    p.images = tiny_set.snapshot()
    status = step_status(p)
    assert status["pages/data.py"][0] and status["pages/train.py"][:2] == (False, True)
    assert status["pages/compare.py"][:2] == (False, True) and status["pages/evaluate.py"][:2] == (False, False)
    record = p.start_run(dataclasses.replace(TrainConfig(backbone="tiny-test", mode="feature-extraction"), epochs=2))
    eventually(lambda: not record.live, 120, "the run to end")
    status = step_status(p, {"evaluate"})
    assert status["pages/train.py"][0] and status["pages/evaluate.py"][0]  # trained, and its page looked at
    assert status["pages/test.py"][:2] == (False, True) and not status["pages/compare.py"][0]  # no ladder yet


def test_a_click_is_kept_when_a_newer_request_arrives_before_its_callback_runs():
    """The race's lost click (tests/browser/test_no_lost_click.py): Streamlit took the click's rerun request, then
    yielded once more before running its callback, and a newer request (the next change on the page) found there
    replaced it, trigger and all. Here a newer request waits at every yield point; the click's widget states are still
    applied and its callback, which reads session state (``start_button``'s does), runs to its end."""
    from streamlit.runtime.scriptrunner import RerunData, RerunException
    from streamlit.runtime.state.safe_session_state import SafeSessionState

    from pages.common import keep_every_click

    def newer_request_waiting() -> None:  # the script runner's yield check, with the next change queued
        raise RerunException(RerunData())

    class Applied:  # SessionState's part: set the click's widget states, run the callback of the button clicked
        def __init__(self) -> None:
            self.started: list[str] = []

        def on_script_will_rerun(self, widget_states, **_) -> None:
            self.started.append(safe["tls"])  # the callback's first read of session state: a yield point

        def __getitem__(self, key: str) -> str:
            return f"{key}: the session"

    keep_every_click()
    safe = SafeSessionState(applied := Applied(), newer_request_waiting)
    safe.on_script_will_rerun("the click's widget states")
    assert applied.started == ["tls: the session"]
    with pytest.raises(RerunException):  # outside a rerun's start, the newer request is taken as before
        safe["tls"]


def test_every_link_to_a_step_keeps_the_projects_key():
    """The step bar, the sidebar and the "Go to the Data page" guidance carry the address's query: a link without it
    cleared the key, the page wrote it back, and the browser's history got two entries for one step."""
    at = new_app()
    at.switch_page("pages/train.py").run()  # no data yet: the page sends the student to the Data page
    links = {link.proto.label: link.proto.query_string for link in at.get("page_link")}
    assert "Go to the Data page" in links and "Data" in links and "Teacher" in links, links
    assert set(links.values()) == {f"p={link_key(at)}"}, links
