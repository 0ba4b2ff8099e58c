"""The lesson in words a 14-year-old understands: two models compared photo by photo on the same photos, the
ladder's first line (did starting from a pretrained backbone beat learning from scratch here?), and what the
class names alone were worth.

Every strategy of a ladder is scored on the same photos, each photo by a model that had not trained on it
(``RunFacts.heldout``). Two independent intervals on 15 photos overlap almost always; comparing the two models
photo by photo (which photos one got right and the other wrong: McNemar's exact test, ``measure.Paired``) uses
what the ladder has and settles far more.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..core.measure import Paired, paired
from ..engine.config import MODE_TITLES
from ..engine.events import RunFacts

#: Strategies that start from the pretrained backbone and use the photos (zero-shot uses none).
PRETRAINED = ("feature-extraction", "fine-tune", "few-shot")


def luck(p: float) -> str:
    """A p-value in words: "luck alone would do that about 1 time in 32"."""
    if p >= 0.5:
        return "luck alone would often do that"
    if p < 1e-4:  # "1 time in 1396247894732054427791735115481088" says nothing to a student
        return "luck alone would almost never do that (less than 1 time in 10,000)"
    return f"luck alone would do that about 1 time in {round(1 / p):,}"


def _photos(n: int) -> str:
    return f"{n} photo{'s' * (n != 1)}"


@dataclass(frozen=True)
class Verdict:
    """Model ``a`` against model ``b`` on the photos both were scored on."""

    a: str  # what each is called in the sentence ("feature extraction")
    b: str
    pair: Paired

    @property
    def winner(self) -> str | None:
        p = self.pair
        return None if p.a_only == p.b_only else self.a if p.a_only > p.b_only else self.b

    def text(self) -> str:
        """E.g. "Feature extraction got 11 of 15 right, from scratch 5. On the 6 photos where they disagreed,
        feature extraction was right every time: luck alone would do that about 1 time in 32." """
        p = self.pair
        s = f"{self.a[:1].upper()}{self.a[1:]} got {p.a_only + p.both} of {p.n} right, {self.b} {p.b_only + p.both}."
        if not p.disagree:
            return s + " They got the same photos right and wrong: these photos show no difference between them."
        if self.winner is None:
            return (s + f" On the {_photos(p.disagree)} where they disagreed, each was right on {p.a_only}: "
                        "these photos show no difference between them.")
        won, lost = (p.a_only, p.b_only) if self.winner == self.a else (p.b_only, p.a_only)
        loser = self.b if self.winner == self.a else self.a
        how = "every time" if not lost else f"on {won} of them, {loser} on {lost}"
        s += f" On the {_photos(p.disagree)} where they disagreed, {self.winner} was right {how}: {luck(p.p_value)}."
        if p.shown:
            return s + f" So {self.winner} really did better on photos like these."
        more = p.images_to_settle()
        return (s + f" That is not enough to be sure yet, but it points to {self.winner}."
                + (f" About {more - p.n} more photos like these would likely settle it." if more else ""))

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, **self.pair.to_json(), "winner": self.winner, "verdict": self.text()}


def versus(a: str, a_run: RunFacts, b: str, b_run: RunFacts) -> Verdict | None:
    """``a_run`` against ``b_run`` photo by photo; None when they share no scored photo."""
    pair = paired(a_run.outcomes(), b_run.outcomes())
    return Verdict(a, b, pair) if pair.n else None


def _name(run: RunFacts) -> str:
    return MODE_TITLES[run.config.mode]


def ladder_verdicts(runs: Sequence[RunFacts]) -> list[Verdict]:
    """Each rung of a ladder against the next, then the lesson's own pair (feature extraction against from
    scratch) if it is not among them. Runs without held-out predictions are left out."""
    scored = [r for r in runs if r.heldout]
    pairs = list(zip(scored, scored[1:]))
    by_mode = {r.config.mode: r for r in scored}
    lesson = (by_mode.get("feature-extraction"), by_mode.get("scratch"))
    if lesson[0] is not None and lesson[1] is not None and lesson not in pairs:
        pairs.append((lesson[0], lesson[1]))
    found = [versus(_name(a), a, _name(b), b) for a, b in pairs]
    return [v for v in found if v is not None]


def best_pretrained(by_mode: dict[str, RunFacts]) -> RunFacts | None:
    """Of a ladder's runs by strategy, the pretrained one that used the photos and got the most right."""
    pre = [by_mode[m] for m in PRETRAINED if m in by_mode]
    return max(pre, key=lambda r: sum(r.outcomes().values()), default=None)


def headline(runs: Sequence[RunFacts]) -> str | None:
    """The ladder's first line: the notes' lesson, pretrained against scratch, as the photos show it (the best
    pretrained strategy that used the photos against from scratch); None without both."""
    by_mode = {r.config.mode: r for r in runs if r.heldout}
    scratch, best = by_mode.get("scratch"), best_pretrained(by_mode)
    if scratch is None or best is None:
        return None
    v = versus(_name(best), best, _name(scratch), scratch)
    if v is None:
        return None
    if v.winner is None:
        first = "Starting from a pretrained backbone and learning from scratch did equally well on your photos."
    elif v.winner == v.a:
        first = ("Starting from a pretrained backbone beat learning from scratch on your photos." if v.pair.shown else
                 "Starting from a pretrained backbone is ahead of learning from scratch on your photos, but not by "
                 "enough to be sure yet.")
    else:
        first = ("Learning from scratch beat the pretrained backbone on your photos: they may be very unlike the "
                 "photos it was pretrained on." if v.pair.shown else
                 "Learning from scratch is ahead of the pretrained backbone on your photos so far, but not by enough "
                 "to be sure.")
    return f"{first} {v.text()}"


def names_worth(runs: Sequence[RunFacts]) -> str | None:
    """What zero-shot (the class names alone, no photo) was worth, in photos per class: where its accuracy
    crosses few-shot's accuracy against photos per class (``RunFacts.shot_curve``). Radford et al. (2021) found
    zero-shot CLIP about as good as a 4-shot linear probe. None without both runs."""
    by_mode = {r.config.mode: r for r in runs}
    zero, few = by_mode.get("zero-shot"), by_mode.get("few-shot")
    if zero is None or few is None or zero.score is None or not few.shot_curve:
        return None
    acc = zero.score.accuracy
    said = (f"The class names alone (zero-shot, no photos used) got {zero.score.right} of {zero.score.n} right: ")
    curve = sorted((int(k), float(a)) for k, a in few.shot_curve)
    if acc < curve[0][1]:
        return said + (f"less than few-shot learns from {_photos(curve[0][0])} per class. Here the names were worth "
                       f"less than one photo per class.")
    for (k0, a0), (k1, a1) in zip(curve, curve[1:]):
        if a0 <= acc < a1:
            k = k0 + (k1 - k0) * (acc - a0) / (a1 - a0)
            return said + f"about as many as few-shot gets from {k:.0f} per class. Here the names were worth about " \
                          f"{_photos(round(k))} per class."
    k = curve[-1][0]
    return said + (f"at least as many as few-shot gets from {_photos(k)} per class, the most it was tried with. Here "
                   f"the names were worth {_photos(k)} per class or more.")


def study_finding(runs: Sequence[RunFacts]) -> str | None:
    """What a data-efficiency study shows of "with enough data, pretraining matters less" (He et al. 2019,
    "Rethinking ImageNet pre-training"; Raghu et al. 2019): at each number of photos per class, the best
    pretrained strategy's accuracy less from scratch's, from the fewest photos to the most. None without both at
    two sizes at least."""
    sizes: dict[int | None, dict[str, float]] = {}
    per_class: dict[int | None, int] = {}
    for r in runs:
        if r.score is None or r.config.mode not in (*PRETRAINED, "scratch"):
            continue
        k = r.config.max_images_per_class
        sizes.setdefault(k, {})[r.config.mode] = max(sizes.get(k, {}).get(r.config.mode, 0.0), r.score.accuracy)
        if k is not None or r.config.mode == "scratch" or k not in per_class:  # all: what scratch trained on
            per_class[k] = k if k is not None else max(1, round(len(r.train_indices) / max(1, len(r.classes))))
    gaps = [(per_class[k], max(v for m, v in by.items() if m != "scratch") - by["scratch"])
            for k, by in sizes.items() if "scratch" in by and len(by) > 1]
    gaps.sort()
    if len(gaps) < 2:
        return None
    (k0, g0), (k1, g1) = gaps[0], gaps[-1]
    said = (f"With {_photos(k0)} per class, starting from the pretrained backbone was {100 * g0:+.0f} points against "
            f"learning from scratch; with {k1}, {100 * g1:+.0f} points.")
    if g0 - g1 >= 0.1:
        return said + (" The more photos, the less pretraining matters: with enough photos, learning from scratch "
                       "catches up. With a class's handful of photos, pretraining is what makes learning possible.")
    if g1 - g0 >= 0.1:
        return said + " Here the gap grew with more photos: from scratch has not started to catch up yet."
    return said + (" The gap hardly closed: these are not yet enough photos for learning from scratch to catch up. It "
                   "needs far more (thousands per class in the studies of He et al., 2019).")


def photos_changed(results: Sequence[RunFacts], digests: Sequence[str]) -> str | None:
    """A hint when the photos are no longer those ``results`` were scored on (``digests``: the photos now),
    e.g. "Your photos changed since this ran (3 added, 1 removed): run it again to count them."; else None."""
    scored = {d for r in results for d, _t, _p in r.heldout}
    if not scored:
        return None
    now = set(digests)
    added, removed = len(now - scored), len(scored - now)
    if not added and not removed:
        return None
    what = ", ".join(f"{n} {w}" for n, w in ((added, "added"), (removed, "removed")) if n)
    return f"Your photos changed since this ran ({what}): run it again to count them."


__all__ = ["PRETRAINED", "Verdict", "headline", "ladder_verdicts", "luck", "names_worth", "photos_changed",
           "study_finding", "versus"]
