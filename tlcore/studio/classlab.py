"""The class as the lab: every student's ladders, studies and challenge entries pooled, so 30 students x 15
photos settle what one student's 15 cannot.

Read from the saved runs of every project on this server (``run.json``: each run's score and held-out
predictions), never from the photos: nobody's photos are shown or even loaded, and the Teacher page, the
projector and ``python -m tlcore class`` read the same summary.

* Ladders: for each pair of strategies, in how many projects A got more photos right than B (photo by photo on
  the same photos), and the class's mean difference in points with its 95 % interval (a t-interval over
  projects: each project is one measurement).
* Studies: each strategy's accuracy per photos per class, pooled over projects (right and n summed).
* The challenge: each strategy's entries on the teacher's hidden photos, pooled.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analysis.verdict import best_pretrained
from ..core.errors import TLError
from ..core.measure import Score, paired
from ..engine.checkpoint import RunMeta
from ..engine.config import MODE_TITLES, MODES
from ..engine.events import RunFacts
from .challenge import Challenge
from .project import projects_root
from .run_views import group_kind

PRETRAINED_BEST = "pretrained"  # a project's best pretrained strategy that used its photos (``verdict.PRETRAINED``)
TITLES = {**MODE_TITLES, PRETRAINED_BEST: "pretrained"}


@dataclass(frozen=True)
class PairResult:
    """Strategy ``a`` against ``b`` over the projects where both were scored on the same photos."""

    a: str
    b: str
    a_won: int  # projects where a got more photos right
    b_won: int
    ties: int
    diffs: tuple[float, ...]  # per project: a's accuracy minus b's on their common photos

    @property
    def projects(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / len(self.diffs)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % t-interval of the mean difference (None from fewer than two projects)."""
        from scipy.special import stdtrit  # the t distribution's quantile (scipy.stats.t.ppf), without scipy.stats

        k = len(self.diffs)
        if k < 2:
            return None
        sd = math.sqrt(sum((d - self.mean) ** 2 for d in self.diffs) / (k - 1))
        half = float(stdtrit(k - 1, 0.975)) * sd / math.sqrt(k)
        return self.mean - half, self.mean + half

    @property
    def titles(self) -> tuple[str, str]:
        return TITLES[self.a], TITLES[self.b]

    def row(self) -> dict[str, str | int]:
        """The pair as a table row (the Teacher page and the projector)."""
        (a, b), iv = self.titles, self.interval
        return {"A vs B": f"{a} vs {b}", "projects": self.projects, "A better": self.a_won, "B better": self.b_won,
                "even": self.ties, "A minus B (points)": _points(self.mean, "+"),
                "likely (95 %)": "–" if iv is None else f"{_points(iv[0], '+')} to {_points(iv[1], '+')}"}

    def text(self) -> str:
        """E.g. "pretrained beat from scratch in 27 of 30 projects, by 41 points on average (35–47)"."""
        (a, b), iv = self.titles, self.interval
        sure = "" if iv is None else f" (likely {_points(iv[0])} to {_points(iv[1])})"
        lead = f"{a} beat {b} in {self.a_won} of {self.projects} project{'s' * (self.projects != 1)}"
        if self.b_won:
            lead += f", {b} won {self.b_won}"
        if self.ties:
            lead += f", {self.ties} even"
        return f"{lead}; by {_points(self.mean, '+')} points on average{sure}"

    def to_json(self) -> dict:
        iv = self.interval
        return {"a": self.a, "b": self.b, "projects": self.projects, "a_won": self.a_won, "b_won": self.b_won,
                "ties": self.ties, "mean_difference": round(self.mean, 4),
                "interval": None if iv is None else [round(iv[0], 4), round(iv[1], 4)], "text": self.text()}


@dataclass(frozen=True)
class ClassSummary:
    projects: int  # projects on this server
    ladders: int  # projects with a finished ladder
    pairs: tuple[PairResult, ...]  # the lesson's pair (pretrained against from scratch) first
    study: dict[str, dict[str, Score]]  # strategy -> photos per class ("all" too) -> pooled score
    challenge: dict[str, Score]  # strategy -> pooled score on the hidden photos

    def headline(self) -> str | None:
        return self.pairs[0].text() if self.pairs and self.pairs[0].a == PRETRAINED_BEST else None

    def study_rows(self) -> list[dict[str, str]]:
        """The pooled studies as table rows: a strategy by its title, then "k of n (p %)" per photos per class."""
        shots = sorted({k for by in self.study.values() for k in by}, key=lambda k: (k == "all", 0 if k == "all" else int(k)))
        return [{"strategy": TITLES[m], **{f"{k} per class": _right(by[k]) if k in by else "–" for k in shots}}
                for m, by in self.study.items()]

    def challenge_rows(self) -> list[dict[str, str]]:
        """The pooled challenge entries as table rows, a strategy by its title."""
        return [{"strategy": TITLES[m], "right": _right(s), "pooled from": s.method} for m, s in self.challenge.items()]

    def to_json(self) -> dict:
        return {"projects": self.projects, "ladders": self.ladders, "headline": self.headline(),
                "pairs": [p.to_json() for p in self.pairs],
                "study": {m: {k: s.to_json() for k, s in by.items()} for m, by in self.study.items()},
                "challenge": {m: s.to_json() for m, s in self.challenge.items()}}


def _right(score: Score) -> str:
    return f"{score.right} of {score.n} ({score.accuracy:.0%})"


@dataclass(frozen=True)
class _Run:
    group: str
    shots: int | None
    facts: RunFacts


def _saved_runs(folder: Path) -> list[_Run]:
    """A project's finished comparison runs as saved (``run.json`` beside each run's weights)."""
    try:
        manifest = json.loads((folder / "project.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for entry in manifest.get("runs", []) if isinstance(manifest, dict) else []:
        if group_kind(str(entry.get("group", ""))) not in ("ladder", "study"):
            continue
        try:
            meta = RunMeta.read(folder / "runs" / str(entry["id"]))
        except (TLError, KeyError):
            continue
        if meta.status in ("completed", "stopped") and meta.score is not None:
            out.append(_Run(entry["group"], entry.get("shots"), meta))
    return out


def _ladder(runs: list[_Run]) -> dict[str, RunFacts]:
    """The newest ladder of a project: strategy -> its run (with the best pretrained one as ``pretrained``)."""
    groups = [r.group for r in runs if group_kind(r.group) == "ladder"]
    if not groups:
        return {}
    by_mode = {r.facts.config.mode: r.facts for r in runs if r.group == groups[-1] and r.facts.heldout}
    if (best := best_pretrained(by_mode)) is not None:
        by_mode[PRETRAINED_BEST] = best
    return by_mode


def _pairs(ladders: Sequence[dict[str, RunFacts]]) -> tuple[PairResult, ...]:
    wanted = [(PRETRAINED_BEST, "scratch")] + [(a, b) for i, a in enumerate(MODES) for b in MODES[i + 1:]]
    found = []
    for a, b in wanted:
        diffs, won = [], [0, 0, 0]
        for lad in ladders:
            if a in lad and b in lad and (p := paired(lad[a].outcomes(), lad[b].outcomes())).n:
                diffs.append((p.a_only - p.b_only) / p.n)
                won[0 if p.a_only > p.b_only else 1 if p.b_only > p.a_only else 2] += 1
        if diffs:
            found.append(PairResult(a, b, won[0], won[1], won[2], tuple(diffs)))
    return tuple(found)  # in ``wanted``'s order: the lesson's pair first, then the ladder's


def _pool(scores: Iterable[Score], method: str) -> Score:
    scores = list(scores)
    return Score(sum(s.right for s in scores), sum(s.n for s in scores), method)


def class_summary(challenge: Challenge | None = None, root: Path | None = None) -> ClassSummary:
    """Every project's newest ladder, its studies and the challenge's entries, pooled (see the module)."""
    folders = sorted(p.parent for p in (root or projects_root()).glob("*/project.json"))
    ladders, study = [], {}
    for folder in folders:
        runs = _saved_runs(folder)
        if lad := _ladder(runs):
            ladders.append(lad)
        for r in runs:
            if group_kind(r.group) == "study":
                key = "all" if r.shots is None else str(r.shots)
                study.setdefault(r.facts.config.mode, {}).setdefault(key, []).append(r.facts.score)
    pooled_study = {m: {k: _pool(v, f"{len(v)} project{'s' * (len(v) != 1)}") for k, v in by.items()}
                    for m, by in study.items()}
    entries: dict[str, list[Score]] = {}
    for e in challenge.entries if challenge else []:
        entries.setdefault(e.mode, []).append(Score(e.right, e.hidden, ""))
    pooled_challenge = {m: _pool(v, f"{len(v)} entr{'ies' if len(v) != 1 else 'y'} on the hidden photos")
                        for m, v in entries.items()}
    return ClassSummary(len(folders), len(ladders), _pairs(ladders), pooled_study, pooled_challenge)


def _points(share: float, sign: str = "") -> str:
    """A share as whole percentage points: "+41", "-3", "0" (never "-0" or "+0": a difference that rounds to no
    point has no side)."""
    points = round(100 * share)
    return f"{points:{sign}d}" if points else "0"


__all__ = ["ClassSummary", "PairResult", "class_summary"]

