"""AppTest: the looks before training — backbone fit (Backbone page), stage probe and stage maps (Freeze page),
the learning-rate finder (Train page) — run as worker jobs and their one-click suggestions change the settings."""
from __future__ import annotations

from tests.app.test_pages import new_app, texts, wait_for, with_sample


def charts(at) -> list[str]:
    return [c.proto.id for c in at.get("plotly_chart")]


def test_backbone_page_scores_the_offline_backbones_on_the_images():
    at = new_app()
    assert "Add images to at least two classes" in texts(at.caption)  # nothing to score yet
    with_sample(at)
    at.switch_page("pages/backbone.py").run()
    assert not at.dataframe  # nothing is scored until asked: a class opening the page queues no work
    at.button(key="backbone_fit_start").click().run()

    def scored(a) -> bool:
        return bool(a.dataframe) and any(b.startswith("Tiny test net") for b in a.dataframe[0].value["Backbone"])

    wait_for(at, scored)
    table = at.dataframe[0].value
    row = table[table["Backbone"].str.startswith("Tiny test net")].iloc[0]
    assert 0 < row["ImageNet confidence"] <= 1 and row["LogME (higher fits better)"] == row["LogME (higher fits better)"]
    assert "LogME" in texts(at.markdown) and "Transfer depends on how similar" in texts(at.markdown)


def test_freeze_page_probe_suggests_a_depth_and_one_click_sets_the_slider():
    at = with_sample(new_app())
    at.switch_page("pages/freeze.py").run()
    assert "freeze_maps_chart" in " ".join(charts(at))  # what each stage sees, for the first image
    at.button(key="freeze_probe_start").click().run()
    wait_for(at, lambda a: "best served from stage" in texts(a.markdown))
    assert "freeze_probe_chart" in " ".join(charts(at))
    proj = at.session_state["tls"].project
    best = next(t for t in texts(at.markdown).split("**") if t.startswith("Your data is best served from stage"))
    stage = int(best.split("stage ")[1].split(" ")[0])  # 1-based
    at.button(key="freeze_probe_use").click().run()
    assert not at.exception
    n = 3  # the tiny test backbone's stages
    assert at.select_slider(key="freeze_trained").value == n - stage
    expected = "feature-extraction" if stage == n else "fine-tune"
    assert proj.settings.mode == expected
    if expected == "fine-tune":
        assert proj.settings.freeze_depth == stage


def test_train_page_finds_the_learning_rate_and_one_click_uses_it():
    at = with_sample(new_app())
    at.switch_page("pages/train.py").run()
    assert not [b for b in at.button if b.key == "train_lr_find"]  # feature extraction: no rate to find
    at.switch_page("pages/freeze.py").run()
    at.select_slider(key="freeze_trained").set_value(2).run()
    at.switch_page("pages/train.py").run()
    at.button(key="train_lr_find").click().run()
    wait_for(at, lambda a: "Suggested learning rate" in texts(a.markdown))
    assert "train_lr_chart" in " ".join(charts(at))
    suggested = float(texts(at.markdown).split("Suggested learning rate: ")[1].split("**")[0])
    at.button(key="train_lr_use").click().run()
    assert not at.exception
    proj = at.session_state["tls"].project
    assert proj.settings.lr is not None and abs(proj.settings.lr - suggested) / suggested < 0.05
    assert at.number_input(key="train_lr_fine-tune").value == proj.settings.lr
