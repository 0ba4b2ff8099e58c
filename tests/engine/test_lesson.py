"""Running a lesson: addresses students can reach, the class kit, the class's progress, teacher links."""
from __future__ import annotations

import ipaddress
import socket

import pytest

import tlcore
from tests.conftest import ROOT
from tests.engine.test_challenge import hidden_zip, trained
from tlcore import Project, class_progress, create_kit, current_kit, folder_zip, server_urls


def test_lan_addresses_are_reachable_ipv4_and_never_loopback():
    addresses = tlcore.lan_addresses()
    for a in addresses:
        ip = ipaddress.ip_address(a)
        assert ip.version == 4 and not ip.is_loopback and not ip.is_unspecified
    assert len(set(addresses)) == len(addresses)


def test_lan_addresses_without_any_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    assert tlcore.lan_addresses() == []
    assert server_urls(8501, False, "?kit=1") == ["http://localhost:8501/?kit=1"]


def test_server_urls_use_the_lan_address_the_port_and_https(setenv, monkeypatch):
    monkeypatch.setattr(tlcore.studio.lesson, "lan_addresses", lambda: ["192.168.1.20", "10.0.0.5"])
    assert server_urls(8765, True, "/?kit=1") == ["https://192.168.1.20:8765/?kit=1", "https://10.0.0.5:8765/?kit=1"]
    assert tlcore.lan_url("http://127.0.0.1:8765/evaluate", "?view=k") == "http://192.168.1.20:8765/?view=k"
    setenv("TLS_PUBLIC_URL", "https://class.example.org/studio/")
    assert server_urls(8765, False, "?kit=1") == ["https://class.example.org/studio/?kit=1"]
    assert tlcore.lan_url("http://127.0.0.1:8765/", "app/static/x") == "https://class.example.org/studio/app/static/x"


def test_a_class_kit_gives_each_project_its_own_copy_and_survives_a_restart():
    kit = create_kit("digits", folder_zip(ROOT / "assets" / "samples" / "digits"), "tiny-test", "fine-tune")
    assert kit.counts == {c: 40 for c in "01234"}
    assert current_kit() == kit  # read back from <home>/kit/kit.json
    tlcore.studio.lesson._kit_images.cache_clear()  # as after a restart: decoded again from <home>/kit/data.zip
    a, b = Project.create(), Project.create()
    kit.start(a)
    kit.start(b)
    a.images.remove(0)
    assert len(a.images) == 199 and len(b.images) == 200 and len(kit.images()) == 200  # copies, not one set
    again = Project.open(b.name)
    assert (again.backbone, again.settings.backbone, again.settings.mode, len(again.images)) == \
        ("tiny-test", "tiny-test", "fine-tune", 200)


def test_a_kit_needs_two_classes_and_a_known_strategy():
    with pytest.raises(tlcore.TLError, match="at least two classes"):
        create_kit("one", hidden_zip(("only",)))
    with pytest.raises(tlcore.TLError, match="not a strategy"):
        create_kit("x", hidden_zip(), mode="magic")


def test_class_progress_names_each_student_their_step_and_who_is_stuck():
    fresh = Project("fresh-project", created=0.0)  # made long ago, still empty
    named = Project("named-project", student="Bea")
    done, _ = trained("done-project")
    done.student = "Ada"
    rows = class_progress([fresh, named, done], entered={"done-project"}, stuck_after_s=300, now=1000.0 + named.created)
    by = {r.student: r for r in rows}
    assert [r.student for r in rows] == ["Ada", "Bea", "fresh-project"]  # a project's name until a name is given
    assert (by["Ada"].step, by["Ada"].images, by["Ada"].runs) == ("Challenge", 16, 1)
    assert by["Ada"].best is not None and not by["Ada"].idle
    assert (by["Bea"].step, by["Bea"].idle) == ("Data", True) and by["fresh-project"].idle
    assert not class_progress([named], set(), 300, now=named.created + 10)[0].idle  # not yet N minutes


def test_the_student_name_and_creation_time_are_saved_with_the_project():
    p = Project.create()
    p.student = "Chen"
    p.save()
    again = Project.open(p.name)
    assert again.student == "Chen" and again.created == pytest.approx(p.created)


def test_teacher_keys_are_unguessable_and_end_at_log_out():
    keys = tlcore.TeacherKeys()
    assert keys.login("wrong", "s3cret") is None and keys.login("", "") is None
    key = keys.login("s3cret", "s3cret")
    assert len(key) >= 20 and keys.ok(key) and not keys.ok("s3cret")
    assert keys.login("s3cret", "s3cret") != key
    keys.logout(key)
    assert not keys.ok(key) and not keys.ok(None)


def test_a_server_keeps_a_bounded_number_of_teacher_keys_the_oldest_ends_first():
    from tlcore.studio.lesson import TEACHER_KEYS_KEPT

    teacher = tlcore.TeacherKeys()
    keys = [teacher.login("s3cret", "s3cret") for _ in range(TEACHER_KEYS_KEPT + 2)]
    assert [teacher.ok(k) for k in keys] == [False, False] + [True] * TEACHER_KEYS_KEPT
    assert len(teacher) == TEACHER_KEYS_KEPT
    for k in keys:
        teacher.logout(k)
    assert len(teacher) == 0 and teacher.board_ok(teacher.board_key) and not teacher.board_ok(keys[-1])
    assert not tlcore.TeacherKeys().board_ok(teacher.board_key)  # one per server run
