"""The class as the lab: every project's saved ladders, studies and challenge entries pooled; the CLI prints
the same summary the Teacher page shows."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli
from tlcore import TrainConfig, class_summary
from tlcore.core.measure import Score
from tlcore.engine.checkpoint import RunMeta
from tlcore.studio.challenge import Challenge, Entry

LADDER = ("zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch")


def save_project(root: Path, name: str, rights: dict[str, int], n: int = 15, study: dict | None = None) -> None:
    """A project folder as the app saves it: project.json naming its runs, each run's run.json (score and held-out
    predictions on photos p0..p{n-1}; a strategy with r right gets p0..p{r-1} right)."""
    runs = []
    for k, (mode, right) in enumerate(list(rights.items()) + list((study or {}).items())):
        shots = None if k < len(rights) else mode[1]
        mode = mode if k < len(rights) else mode[0]
        run_id = f"run-{k}"
        held = tuple((f"p{i}", 0, (0.9, 0.1) if i < right else (0.1, 0.9)) for i in range(n))
        meta = RunMeta(("a", "b"), TrainConfig(backbone="tiny-test", mode=mode), score=Score(right, n, "m"),
                       heldout=held, status="completed")
        folder = root / name / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(meta.to_json()))
        runs.append({"id": run_id, "label": mode, "status": "completed", "group": "shots-1" if shots else "compare-1",
                     "shots": shots, "config": {"mode": mode}})
    (root / name / "project.json").write_text(json.dumps({"format": "tls-project/1", "runs": runs}))


def test_three_ladders_pool_into_pairs_with_a_class_interval(tmp_path):
    root = tmp_path / "projects"
    save_project(root, "ada", dict(zip(LADDER, (9, 10, 12, 11, 5))))
    save_project(root, "ben", dict(zip(LADDER, (8, 9, 13, 12, 6))), study={("scratch", 1): 3, ("few-shot", 1): 9})
    save_project(root, "cy", dict(zip(LADDER, (10, 11, 11, 12, 8))), study={("scratch", 1): 4})
    (root / "empty").mkdir()
    (root / "empty" / "project.json").write_text(json.dumps({"format": "tls-project/1", "runs": []}))
    hidden = Challenge("c1", "test", ["a", "b"], {"a": 5, "b": 5}, 0.0, [
        Entry("Ada", "ada", "run-2", "fe", "feature-extraction", 15, 0.8, {}, right=8, hidden=10),
        Entry("Ben", "ben", "run-4", "sc", "scratch", 15, 0.4, {}, right=4, hidden=10)])
    s = class_summary(hidden, root)
    assert (s.projects, s.ladders) == (4, 3)
    lesson = s.pairs[0]  # the best pretrained strategy of each project against from scratch
    assert (lesson.a, lesson.b, lesson.a_won, lesson.b_won, lesson.projects) == ("pretrained", "scratch", 3, 0, 3)
    assert abs(lesson.mean - (7 + 7 + 4) / 45) < 1e-9 and lesson.interval[0] < lesson.mean < lesson.interval[1]
    assert s.headline().startswith("pretrained beat from scratch in 3 of 3 projects; by +40 points on average")
    fe_ft = next(p for p in s.pairs if (p.a, p.b) == ("feature-extraction", "fine-tune"))
    assert (fe_ft.a_won, fe_ft.b_won, fe_ft.ties) == (2, 1, 0)
    assert s.study["scratch"]["1"] == Score(7, 30, "2 projects")
    assert s.challenge["feature-extraction"].right == 8 and s.challenge["scratch"].n == 10
    # the Teacher page's and the projector's tables name each strategy in words, never by its id
    assert {r["strategy"] for r in s.study_rows()} == {"from scratch", "few-shot prototypes"}
    assert next(r for r in s.study_rows() if r["strategy"] == "from scratch")["1 per class"] == "7 of 30 (23%)"
    assert {r["strategy"] for r in s.challenge_rows()} == {"feature extraction", "from scratch"}


def test_the_cli_prints_the_same_summary_as_one_json_line(tmp_path):
    home = tmp_path / "home"
    save_project(home / "projects", "ada", dict(zip(LADDER, (9, 10, 12, 11, 5))))
    done = cli("class", "--home", str(home), process=True)  # its own process: --home sets that process's home
    assert done.returncode == 0, done.stderr
    out = done.stdout.strip().splitlines()
    assert len(out) == 1
    got = json.loads(out[0])
    assert got == json.loads(json.dumps(class_summary(None, home / "projects").to_json()))
    assert got["ladders"] == 1 and got["pairs"][0]["a_won"] == 1


def test_a_difference_that_rounds_to_no_point_reads_zero_never_minus_zero():
    """The projector's table read "-0 to +76": an interval's end of -0.3 points was formatted with ``:+.0f``."""
    from tlcore.studio.classlab import PairResult, _points

    assert [_points(x, "+") for x in (-0.003, 0.0, 0.004, 0.41, -0.03)] == ["0", "0", "0", "+41", "-3"]
    pair = PairResult("feature-extraction", "fine-tune", 1, 1, 1, (0.004, -0.008, 0.0))
    row = pair.row()
    assert row["A minus B (points)"] == "0" and "by 0 points on average" in pair.text()
    assert "-0 " not in row["likely (95 %)"] + " " and "-0 " not in pair.text() + " "
