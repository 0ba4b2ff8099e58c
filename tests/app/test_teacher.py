"""AppTest of the Teacher page's lesson parts: the join panel, the class kit, the class's progress, the teacher's
link and the projector view."""
from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

import tlcore
from tests.app.test_pages import BUSY, link_key, new_app, texts
from tests.conftest import ROOT
from tests.engine.test_challenge import hidden_zip, trained


@pytest.fixture
def teacher(setenv, monkeypatch):
    setenv("TLS_TEACHER_PASSWORD", "s3cret")
    monkeypatch.setattr(tlcore.studio.lesson, "lan_addresses", lambda: ["192.168.1.20"])
    at = new_app()
    at.switch_page("pages/teacher.py").run()
    at.text_input(key="teacher_password").set_value("s3cret")
    at.button[0].click().run()
    assert not at.exception
    return at


def frame(at, column: str):
    """An AppTest table by one of its columns (their proto ids are empty)."""
    return next(d.value for d in at.table if column in d.value.columns)


def test_the_join_panel_shows_this_servers_lan_address_and_a_qr_code(teacher):
    assert "http://192.168.1.20:8501/?kit=1" in texts(teacher.markdown)
    assert "HTTPS" in texts(teacher.markdown) and "python -m tlcore cert" in texts(teacher.markdown)
    assert len(teacher.image) == 1  # the QR code
    share = next(c.value for c in teacher.sidebar.code)  # the sidebar's read-only link: reachable, on /
    assert share.startswith("http://192.168.1.20:8501/?view=") and "127.0.0.1" not in share


def test_the_teacher_link_survives_a_reload_until_log_out(teacher):
    key = link_key(teacher, "t")
    reloaded = new_app()  # a fresh session (a reload) with the teacher's address
    reloaded.query_params["t"] = key
    reloaded.switch_page("pages/teacher.py").run()
    assert not reloaded.exception and "teacher_password" not in [t.key for t in reloaded.text_input]
    assert "Join the class" in texts(reloaded.markdown)
    reloaded.button(key="teacher_logout").click().run()
    assert "t" not in reloaded.query_params
    again = new_app()
    again.query_params["t"] = key
    again.switch_page("pages/teacher.py").run()
    assert "teacher_password" in [t.key for t in again.text_input]  # the key is forgotten: the password again


def test_students_join_from_the_class_kit_give_their_name_and_the_teacher_sees_their_progress(teacher):
    teacher.selectbox(key="teacher_kit_source").set_value("digits")
    teacher.selectbox(key="teacher_kit_backbone").set_value("tiny-test")
    next(b for b in teacher.button if "Use as the class kit" in str(b.label)).click().run()
    assert not teacher.exception and "students who join now start from it" in texts(teacher.success)

    student = new_app("1", param="kit")  # the join link
    proj = student.session_state["tls"].project
    assert len(proj.images) == 200 and proj.backbone == "tiny-test" and link_key(student) == proj.key
    assert "Type your name" in texts(student.info)
    student.text_input(key=f"student_name_{proj.name}").set_value("  Ada   Lovelace ").run()
    assert proj.student == "Ada Lovelace" and tlcore.Project.open(proj.name).student == "Ada Lovelace"
    assert "Type your name" not in texts(student.info)

    late = new_app()  # a student who opened the app without the link, then asks for the kit
    late.session_state["tls"].project.created = time.time() - 3600
    before = late.session_state["tls"].project.name
    late.button(key="kit_start").click().run()
    assert late.session_state["tls"].project.name != before and len(late.session_state["tls"].project.images) == 200

    idle = new_app()  # joined an hour ago, still no images
    idle.session_state["tls"].project.created = time.time() - 3600
    teacher.run()
    progress = frame(teacher, "needs help")
    ada = progress[progress.student == "Ada Lovelace"].iloc[0]
    assert (ada.step, ada.images, ada.runs) == ("Train", 200, 0) and not ada["needs help"]
    stuck = progress[progress.student == idle.session_state["tls"].project.name].iloc[0]
    assert stuck["needs help"] == "no images after 5 min" and stuck.step == "Data"
    assert "**Ada Lovelace**" in texts(teacher.markdown)  # the project list names the student too


def test_the_projector_view_shows_only_the_board_as_a_large_table(teacher):
    challenge = tlcore.create_challenge("Zero or one?", hidden_zip(("CLASS0", "Class1")))
    proj, record = trained("projector-student")
    challenge.enter(proj, record, "Ada", tlcore.SERVER.hidden)
    board = AppTest.from_file(str(ROOT / "app.py"), default_timeout=BUSY)  # opened at its own address, first
    board.query_params.update({"board": tlcore.SERVER.teacher.board_key})  # the projector's own key: no teacher key in sight
    board.switch_page("pages/teacher.py").run()
    assert not board.exception
    table = board.table[0].value
    assert list(table.columns) == ["rank", "student", "right", "strategy"]  # 30 to a 1024x768 screen
    hidden = sum(challenge.counts.values())
    assert table.iloc[0].student == "Ada" and table.iloc[0]["right"] == f"{hidden} of {hidden}"
    assert not board.sidebar.children  # no sidebar, and of the step bar's links none: only the way back
    assert [link.proto.label for link in board.get("page_link")] == ["Back to the Teacher page"]
    assert not board.expander and not board.get("form")  # none of the Teacher page's panels
    assert "?kit=1" in texts(board.markdown)  # the join address beside the board (and its QR)
    assert board.session_state["tls"].project is None  # the projector is no student: it opened no project
    guess = new_app()  # the board's key opens nothing else, and a made-up one not even the board
    guess.query_params.update({"board": "1"})
    guess.switch_page("pages/teacher.py").run()
    assert not guess.table and guess.get("form")  # the password form
    assert tlcore.SERVER.teacher.board_key not in link_key(teacher, "t")


def test_the_class_lab_pools_every_projects_ladder_and_agrees_with_the_cli_summary(teacher):
    from tests.engine.test_classlab import LADDER, save_project

    for name, rights in (("lab-ada", (9, 10, 12, 11, 5)), ("lab-ben", (8, 9, 13, 12, 6))):
        save_project(tlcore.studio.lesson.projects_root(), name, dict(zip(LADDER, rights)))
    teacher.run()
    assert not teacher.exception
    summary = tlcore.class_summary(tlcore.current_challenge())  # what `python -m tlcore class` prints
    assert summary.ladders >= 2 and f"Together: {summary.headline()}." in texts(teacher.success)
    pairs = frame(teacher, "A vs B")
    assert list(pairs["A vs B"]) == [p.row()["A vs B"] for p in summary.pairs]
    assert list(pairs["A better"]) == [p.a_won for p in summary.pairs]
    board = new_app()  # the projector shows the same, as large tables
    board.query_params.update({"board": tlcore.SERVER.teacher.board_key})
    board.switch_page("pages/teacher.py").run()
    assert not board.exception and f"Together: {summary.headline()}." in texts(board.success)
    assert any("A vs B" in t.value.columns for t in board.table)


def test_the_teachers_own_link_opens_no_project(teacher):
    """Each opening of the teacher's link (a reload, a second tab) once created an empty project, listed in the
    class's progress as a student."""
    before = set(tlcore.SERVER.projects.live())
    tab = AppTest.from_file(str(ROOT / "app.py"), default_timeout=BUSY)
    tab.query_params["t"] = link_key(teacher, "t")
    tab.switch_page("pages/teacher.py").run()
    assert not tab.exception and "Join the class" in texts(tab.markdown)  # the Teacher page itself, no password
    assert tab.session_state["tls"].project is None and set(tlcore.SERVER.projects.live()) == before
