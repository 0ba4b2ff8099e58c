"""The class challenge: scored on hidden images only, class names matched case-insensitively."""
from __future__ import annotations

import io
import threading
import zipfile

import pytest

import tlcore
from tests.conftest import COLORS, class_files, png_bytes
from tlcore import Project, TrainConfig, create_challenge, current_challenge

HIDDEN = tlcore.HiddenSets()  # this module's server's decoded hidden sets


@pytest.fixture(autouse=True)
def own_home(setenv, tmp_path):
    """A home of its own: a challenge left open in the shared test home showed on the Teacher page's tests
    when they ran after these (``pytest tests/engine tests/app``)."""
    setenv("TLS_HOME", str(tmp_path / "home"))


def hidden_zip(classes=("CLASS0", "Class1"), n: int = 6) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c, name in enumerate(classes):
            for i in range(n):
                z.writestr(f"{name}/h{i}.png", png_bytes(COLORS[c], seed=9000 + 10 * c + i))
    return buf.getvalue()


def trained(name: str, classes: int = 2) -> tuple[Project, tlcore.RunRecord]:
    proj = Project(name)
    proj.images.add(class_files(8, classes))
    result = tlcore.run_to_end(proj.images, TrainConfig(backbone="tiny-test", epochs=15, lr=0.05)).result
    record = tlcore.RunRecord("run-001", "tiny", result.config, "completed", result=result)
    proj.runs.append(record)
    return proj, record


def test_an_entry_is_scored_on_the_hidden_images_with_case_insensitive_names():
    challenge = create_challenge("Colours", hidden_zip())
    assert challenge.classes == ["CLASS0", "Class1"] and challenge.counts == {"CLASS0": 6, "Class1": 6}
    proj, record = trained("alice-project")
    entry = challenge.enter(proj, record, "  Alice  ", HIDDEN)
    assert entry.student == "Alice" and entry.accuracy == 1.0 and set(entry.recall) == {"CLASS0", "Class1"}
    assert entry.train_images == len(record.result.train_indices) and entry.mode == "feature-extraction"
    score, recall = challenge.score(record.result, HIDDEN)  # the yardstick alone: the same figures, nothing stored
    assert (score.accuracy, score.n, recall) == (entry.accuracy, 12, entry.recall)
    again = challenge.enter(proj, record, "Alice", HIDDEN)  # the same run again: replaces, not duplicates
    board = current_challenge().leaderboard()
    assert len(board) == 1 and board[0] == again
    # Nothing about the hidden images reaches a project: only the scores come back.
    assert not any(i.name.startswith("h") for i in proj.images.items)


def test_a_run_missing_a_class_is_told_which():
    challenge = create_challenge("Three colours", hidden_zip(("class0", "class1", "class2")))
    proj, record = trained("bob-project", classes=2)
    with pytest.raises(tlcore.TLError, match="no class for class2"):
        challenge.enter(proj, record, "Bob", HIDDEN)
    with pytest.raises(tlcore.TLError, match="name"):
        challenge.enter(proj, record, "   ", HIDDEN)


def test_entries_of_many_sessions_at_once_are_all_kept():
    challenge = create_challenge("Race", hidden_zip())
    entries = [trained(f"p{k}") for k in range(4)]
    threads = [threading.Thread(target=current_challenge().enter, args=(p, r, f"student {k}", HIDDEN))
               for k, (p, r) in enumerate(entries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.student for e in current_challenge().leaderboard()) == [f"student {k}" for k in range(4)]
    assert current_challenge().id == challenge.id


def test_a_bad_hidden_set_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("only/a.png", png_bytes(COLORS[0]))
    with pytest.raises(tlcore.TLError, match="at least two classes"):
        create_challenge("One class", buf.getvalue())
    with pytest.raises(tlcore.TLError):
        create_challenge("Not a zip", b"hello")


def test_the_board_has_one_row_per_student_and_ties_share_a_rank():
    from tlcore.studio.challenge import Challenge, Entry

    def entry(project: str, right: int, entered: float) -> Entry:
        return Entry(project, project, f"run-{entered}", "feature extraction", "feature-extraction", 10,
                     right / 12, {}, entered, right, 12)

    c = Challenge("c", "Colours", ["a", "b"], {"a": 6, "b": 6}, 0.0,
                  [entry("ada", 9, 1), entry("ada", 11, 2), entry("ben", 11, 3), entry("cy", 8, 4), entry("dee", 9, 5)])
    board = c.best_entries()
    assert [(e.project, e.right) for e in board] == [("ada", 11), ("ben", 11), ("dee", 9), ("cy", 8)]
    assert [c.rank(e.accuracy) for e in board] == [1, 1, 3, 4]  # ada's two entries count once


def test_a_server_keeps_only_the_newest_hidden_sets_decoded():
    """Each challenge's hidden photos are decoded once, and only the newest two stay in memory: a server running
    a term's challenges stays bounded, and an older one decodes again when asked."""
    from tlcore.studio import challenge as ch
    hidden = tlcore.HiddenSets()
    made = [create_challenge(f"Colours {k}", hidden_zip()) for k in range(4)]
    for c in made:
        assert hidden.of(c).counts() == {"CLASS0": 6, "Class1": 6}
    assert hidden.ids() == [c.id for c in made[-ch.HIDDEN_KEPT:]]
    assert hidden.of(made[0]).counts() == {"CLASS0": 6, "Class1": 6}  # decoded again from its zip
    assert len(hidden) == ch.HIDDEN_KEPT and hidden.ids()[-1] == made[0].id


def test_a_new_challenge_keeps_its_photos_decoded_for_its_first_score(monkeypatch):
    """The zip is decoded once, when the teacher starts the challenge: the first student's entry decodes nothing
    again."""
    from tlcore.studio import challenge as ch
    hidden = tlcore.HiddenSets()
    made = create_challenge("Colours", hidden_zip(), hidden)
    assert hidden.ids() == [made.id]
    monkeypatch.setattr(ch, "load_zip", lambda *_: pytest.fail("decoded the hidden zip again"))
    assert hidden.of(made).counts() == {"CLASS0": 6, "Class1": 6}
