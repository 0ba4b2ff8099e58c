"""AppTest of the Data page's review panel: planted mistakes are shown, largest doubt first; Move, Remove,
Keep and Undo work by click; marks survive a class filter, a page switch and a reload."""
from __future__ import annotations

import hashlib
import io
import zipfile

from PIL import Image

from tests.app.test_pages import link_key, new_app, texts, wait_for
from tests.conftest import COLORS, class_files, png_bytes


def _zip() -> tuple[bytes, str, str]:
    """Three colour classes of 8, a red image filed under class1, and a re-encoded copy of a class1 image in
    class2: (zip bytes, the misfiled image's digest, the copy's bytes' digest)."""
    buf = io.BytesIO()
    wrong = png_bytes(COLORS[0], seed=999)
    original = class_files(8)[8][1]  # a class1 image
    copy = io.BytesIO()
    Image.open(io.BytesIO(original)).save(copy, "PNG", compress_level=0)  # the same pixels, other bytes
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, label in class_files(8):
            zf.writestr(f"{label}/{name}", data)
        zf.writestr("class1/misfiled.png", wrong)
        zf.writestr("class2/copy.png", copy.getvalue())
    return buf.getvalue(), hashlib.sha1(wrong).hexdigest(), hashlib.sha1(copy.getvalue()).hexdigest()


def _keys(at, prefix: str) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith(prefix)]


def _heads(at) -> str:
    return texts(at.markdown)


def test_review_panel_moves_removes_keeps_and_undoes_and_its_marks_survive():
    data, wrong, _copy = _zip()
    at = new_app()
    at.button(key="backbone_use_tiny-test").click().run()
    at.switch_page("pages/data.py").run()
    at.tabs[1].file_uploader[0].set_value(("set.zip", data, "application/zip")).run()
    assert not at.exception
    assert "Added 26 images" in texts(at.success)
    wait_for(at, lambda a: "2 images to check" in _heads(a))  # a worker checks them, not the web server
    assert any("new images to look at" in str(t.value) for t in at.toast)  # told once, when the check is in
    keeps = _keys(at, "data_check_keep_")
    assert len(keeps) == 2 and keeps[1] == f"data_check_keep_{wrong}"  # the contradiction (doubt 100 %) first
    assert "The same picture twice" in _heads(at) and "two classes" in _heads(at)
    dup = keeps[0].removeprefix("data_check_keep_")

    at.button(key=keeps[0]).click().run()  # keep the duplicate: not shown again
    assert _keys(at, "data_check_keep_") == [f"data_check_keep_{wrong}"] and not at.toast
    at.selectbox(key="data_check_class").set_value("class0").run()  # another class: nothing there
    assert not _keys(at, "data_check_keep_") and "Nothing to check in 'class0'" in texts(at.caption)
    at.selectbox(key="data_check_class").set_value("class1").run()
    assert _keys(at, "data_check_keep_") == [f"data_check_keep_{wrong}"]

    at.button(key=f"data_check_move_{wrong}").click().run()  # move to the suggested class
    assert "class0 · 9 images" in _heads(at) and "class1 · 8 images" in _heads(at)
    assert not _keys(at, "data_check_keep_")
    undo = _keys(at, "data_check_undo_")
    assert len(undo) == 2  # the move (newest first) and the keep
    at.button(key=undo[0]).click().run()  # undo the move: back in class1, and shown again
    assert "class1 · 9 images" in _heads(at) and _keys(at, "data_check_keep_") == [f"data_check_keep_{wrong}"]
    at.button(key=f"data_check_remove_{wrong}").click().run()
    assert "class1 · 8 images" in _heads(at) and "1 removed" in texts(at.caption)
    at.button(key=_keys(at, "data_check_undo_")[0]).click().run()  # undo the remove: the image comes back
    assert "class1 · 9 images" in _heads(at) and "0 removed" in texts(at.caption)
    assert not at.exception

    at.switch_page("pages/train.py").run()
    at.switch_page("pages/data.py").run()  # a page switch keeps the marks
    at.selectbox(key="data_check_class").set_value("All classes").run()
    assert _keys(at, "data_check_keep_") == [f"data_check_keep_{wrong}"]
    reloaded = new_app(link_key(at))  # a reload (a new session on the project's link) too
    reloaded.switch_page("pages/data.py").run()
    wait_for(reloaded, lambda a: _keys(a, "data_check_keep_"))  # the undone removal put it back last: checked anew
    assert _keys(reloaded, "data_check_keep_") == [f"data_check_keep_{wrong}"] and not reloaded.toast
    assert f"data_check_keep_{dup}" not in _keys(reloaded, "data_check_keep_")
    assert "0 fixed, 1 kept" in " ".join(e.label for e in reloaded.expander)
    reloaded.button(key=_keys(reloaded, "data_check_undo_")[0]).click().run()  # undo the keep: shown again
    assert len(_keys(reloaded, "data_check_keep_")) == 2

    reloaded.switch_page("pages/train.py").run()  # the Evaluate page and the report say what the check found
    reloaded.button(key="train_start").click().run()
    wait_for(reloaded, lambda a: "best epoch" in texts(a.success))
    reloaded.switch_page("pages/evaluate.py").run()
    assert "The data check flagged 2 images: 0 fixed" in texts(reloaded.caption)
    reloaded.switch_page("pages/export.py").run()
    reloaded.button(key="export_report").click().run()
    assert "The data check flagged 2 images: 0 fixed" in reloaded.session_state["tls"].export.report_html[1]
