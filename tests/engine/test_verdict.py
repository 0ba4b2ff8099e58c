"""The lesson in words: one score per run counted from its held-out predictions, photo-by-photo verdicts,
the ladder's first line and what the class names were worth."""
from __future__ import annotations

import dataclasses

from tlcore import TrainConfig, headline, ladder_verdicts, names_worth, study_finding, versus
from tlcore.analysis.compare import plan, run_plan, shared_split
from tlcore.core.measure import Score
from tlcore.engine.events import RunFacts, RunFinished


def facts(mode: str, right: list[bool], curve=()) -> RunFacts:
    """A run scored on photos p0, p1, ... with these outcomes (2 classes; the prediction is right or not)."""
    held = tuple((f"p{k}", 0, (0.9, 0.1) if ok else (0.2, 0.8)) for k, ok in enumerate(right))
    return RunFacts(("a", "b"), TrainConfig(backbone="tiny-test", mode=mode),
                    score=Score(sum(right), len(right), "m"), heldout=held, shot_curve=tuple(curve))


def test_a_clear_win_on_15_photos_reads_as_the_issue_asks():
    fe = facts("feature-extraction", [k < 11 for k in range(15)])
    scratch = facts("scratch", [k < 5 for k in range(15)])
    v = versus("feature extraction", fe, "from scratch", scratch)
    assert v.text() == ("Feature extraction got 11 of 15 right, from scratch 5. On the 6 photos where they disagreed, "
                        "feature extraction was right every time: luck alone would do that about 1 time in 32. So "
                        "feature extraction really did better on photos like these.")
    assert v.winner == "feature extraction" and v.to_json()["p_value"] == round(1 / 32, 5)
    line = headline([fe, scratch])
    assert line.startswith("Starting from a pretrained backbone beat learning from scratch on your photos. Feature")


def test_luck_is_said_in_numbers_a_student_reads():
    from tlcore.analysis.verdict import luck

    assert luck(1 / 32) == "luck alone would do that about 1 time in 32"
    assert luck(1 / 2048) == "luck alone would do that about 1 time in 2,048"
    assert luck(2 / 2 ** 118) == "luck alone would almost never do that (less than 1 time in 10,000)"
    assert luck(0.7) == "luck alone would often do that"


def test_too_little_evidence_says_which_way_it_points_and_what_would_settle_it():
    a = facts("fine-tune", [k < 9 for k in range(15)])
    b = facts("scratch", [k < 7 for k in range(15)])
    text = versus("fine-tuning", a, "from scratch", b).text()
    assert "not enough to be sure yet, but it points to fine-tuning" in text
    assert "more photos like these would likely settle it" in text
    assert "not by enough to be sure yet" in headline([a, b])
    same = versus("x", a, "y", a).text()
    assert "they got the same photos right and wrong" in same.lower()


def test_ladder_verdicts_pair_each_rung_with_the_next_and_the_lesson_pair():
    runs = [facts(m, [k < r for k in range(10)]) for m, r in
            (("zero-shot", 6), ("few-shot", 7), ("feature-extraction", 9), ("fine-tune", 8), ("scratch", 3))]
    pairs = [(v.a, v.b) for v in ladder_verdicts(runs)]
    assert pairs == [("zero-shot", "few-shot prototypes"), ("few-shot prototypes", "feature extraction"),
                     ("feature extraction", "fine-tuning"), ("fine-tuning", "from scratch"),
                     ("feature extraction", "from scratch")]


def test_names_worth_is_the_crossing_of_zero_shot_with_the_few_shot_curve():
    few = facts("few-shot", [True] * 10, curve=[(1, 0.5), (2, 0.7), (3, 0.8), (4, 0.9)])
    assert "worth about 2 photos per class" in names_worth([facts("zero-shot", [k < 7 for k in range(10)]), few])
    assert "less than one photo per class" in names_worth([facts("zero-shot", [k < 3 for k in range(10)]), few])
    assert "4 photos per class or more" in names_worth([facts("zero-shot", [True] * 10), few])
    assert names_worth([few]) is None


def test_a_ladder_scores_every_strategy_on_the_same_photos_as_whole_numbers(tiny_set):
    """Every rung's score is counted from its held-out predictions (one per photo, the same photos for all),
    so the verdicts can pair them and Evaluate shows the same k of N."""
    base = TrainConfig(backbone="tiny-test", epochs=2, batch_size=8)
    runs = plan(["zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch"], base)
    split = shared_split(tiny_set, base)
    done = [e.result for _run, e in run_plan(tiny_set, runs, split) if isinstance(e, RunFinished)]
    digests = sorted(i.digest for i in tiny_set.items)
    for r in done:
        assert sorted(d for d, _, _ in r.heldout) == digests, r.config.mode
        assert r.score.right == sum(r.outcomes().values()) and r.score.n == 24, r.config.mode
    few = next(r for r in done if r.config.mode == "few-shot")
    assert [k for k, _ in few.shot_curve] == list(range(1, 8))  # 8 photos per class: 1 to 7 per class
    assert len(ladder_verdicts(done)) == 5 and headline(done) is not None
    assert names_worth(done) is not None


def test_the_study_says_whether_the_gap_between_pretrained_and_scratch_closes_with_more_photos():
    def at(shots, mode, right, n=100):
        f = facts(mode, [k < right for k in range(n)])
        return dataclasses.replace(f, config=dataclasses.replace(f.config, max_images_per_class=shots),
                                   train_indices=tuple(range(2 * (shots or 150))))

    closing = [at(1, "feature-extraction", 80), at(1, "scratch", 20), at(None, "feature-extraction", 95),
               at(None, "scratch", 85)]
    text = study_finding(closing)
    assert text.startswith("With 1 photo per class, starting from the pretrained backbone was +60 points against "
                           "learning from scratch; with 150, +10 points. The more photos, the less pretraining matters")
    flat = [at(1, "few-shot", 80), at(1, "scratch", 20), at(25, "few-shot", 85), at(25, "scratch", 25)]
    assert "hardly closed" in study_finding(flat)
    assert study_finding(flat[:2]) is None  # one size: nothing to compare


def test_a_comparison_on_other_photos_says_so():
    """Issue 38: an old study stayed on the page after the photos changed, with no hint."""
    from tlcore import photos_changed

    runs = [facts("feature-extraction", [True] * 6), facts("scratch", [True, False] * 3)]
    now = [f"p{i}" for i in range(6)]
    assert photos_changed(runs, now) is None
    assert photos_changed(runs, now[1:] + ["x", "y"]) == ("Your photos changed since this ran (2 added, 1 removed): "
                                                           "run it again to count them.")
    assert photos_changed([], now) is None  # nothing scored yet: nothing to say
