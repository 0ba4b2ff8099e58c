"""An ensemble backbone in the app: the Freeze page says it is used frozen only, and training it otherwise is
refused beneath the button in those words."""
from __future__ import annotations

from tests.app.test_pages import new_app, texts


def test_the_ensemble_is_used_frozen_and_training_it_is_refused_in_words():
    at = new_app()
    at.button(key="backbone_use_tiny-ensemble").click().run()
    at.switch_page("pages/data.py").run()
    at.button(key="data_sample_digits").click().run()
    at.switch_page("pages/freeze.py").run()
    assert "is only used frozen" in texts(at.info)
    at.select_slider(key="freeze_trained").set_value(1).run()  # fine-tune the last member: refused at the start
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    assert "can only be used frozen" in texts(at.error) and not at.session_state["tls"].project.runs
    assert not at.exception
