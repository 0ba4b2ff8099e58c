"""AppTest: the Export page makes the web app, checks it, offers its zip and a QR code of its address."""
from __future__ import annotations

import zipfile

from tests.app.test_pages import new_app, texts, wait_for, with_sample


def test_export_page_makes_the_web_app(setenv, tmp_path):
    setenv("TLS_STATIC_DIR", str(tmp_path / "static"))
    at = with_sample(new_app(), "faces")
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    wait_for(at, lambda a: "best epoch" in texts(a.success))
    at.switch_page("pages/export.py").run()
    at.toggle(key="export_web_int8").set_value(True).run()
    at.button(key="export_web").click().run()
    assert not at.exception and not at.error, texts(at.error)
    note = texts(at.info)
    assert "gives the app's probabilities" in note and "int8: the same class as the full model on" in note
    _, web, path = at.session_state["tls"].export.web_export
    assert web.quantized and (tmp_path / "static" / path).exists()  # served at /app/static/<path>
    assert "/app/static/tls-web/" in texts(at.markdown) and at.image  # the address and its QR code
    assert "Download the web app (.zip)" in [b.proto.label for b in at.get("download_button")]
    with zipfile.ZipFile(web.zip_path) as zf:
        assert any(n.endswith("/index.html") for n in zf.namelist())
    at.button(key="export_web").click().run()  # again: the same address (one copy per run)
    assert at.session_state["tls"].export.web_export[2] == path
    assert len(list((tmp_path / "static" / "tls-web").iterdir())) == 1
