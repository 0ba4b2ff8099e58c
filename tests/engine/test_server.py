"""The web server's state in one owner (issue 40): ``tlcore.SERVER`` holds the live projects, their analyses, the
teacher's keys and the hidden challenge sets; each part bounded, and a ``Server()`` of its own is independent."""
from __future__ import annotations

import tlcore
from tlcore.studio.lesson import TEACHER_KEYS_KEPT


def test_a_server_owns_its_parts_and_each_stays_bounded():
    server = tlcore.Server()
    assert server.sizes() == {"projects": 0, "analyses": 0, "teacher_keys": 0, "hidden_sets": 0}
    for _ in range(TEACHER_KEYS_KEPT + 5):
        server.teacher.login("pw", "pw")
    assert server.sizes()["teacher_keys"] == TEACHER_KEYS_KEPT
    assert server.projects._analyses is server.analyses  # a project's analyses stop with it
    assert server.runner is tlcore.get_runner()
    other = tlcore.Server()  # a test's own server shares nothing with the process's
    assert len(other.teacher) == 0 and other.teacher.board_key != server.teacher.board_key
    assert tlcore.SERVER is tlcore.studio.server.SERVER and isinstance(tlcore.SERVER, tlcore.Server)


def test_no_module_keeps_the_servers_state_for_itself():
    """The globals the issue listed (``_LIVE``, ``_TEACHER_KEYS``, ``_HIDDEN``, ``PROJECTS``) are gone: their state
    lives in the parts of a ``Server``."""
    from tlcore.jobs import analyses
    from tlcore.studio import challenge, lesson, registry

    gone = [(m.__name__, n) for m, n in [(analyses, "_LIVE"), (lesson, "_TEACHER_KEYS"), (lesson, "_BOARD_KEY"),
                                         (challenge, "_HIDDEN"), (registry, "PROJECTS")] if hasattr(m, n)]
    assert gone == []
