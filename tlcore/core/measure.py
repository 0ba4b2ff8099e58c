"""Honest numbers on small data: accuracies that say how many images they rest on, with a 95 % interval,
measured on as many held-out images as the data has.

A class's own data is small (5-10 photos per class), so one validation split of a handful of images
cannot tell strategies apart. Where the work is cheap (a head on cached frozen features) a run is
scored by repeated stratified k-fold cross-validation: every image is predicted once per repeat by a
model that never saw it, and the accuracy rests on all of them. Where it is not (fine-tunes, from
scratch), fewer folds or the validation split; the ``Score`` says which in ``method``.

Intervals are Clopper-Pearson ("exact") binomial intervals: they stay inside [0, 1] and never cover
less than their nominal 95 % for a binomial count, which leaves room for what cross-validation adds on
small data (one hard image counts in every repeat; the fold models are a little weaker than the final
one). On the benchmark's real datasets (``python -m tlcore.bench --small-data``) Wilson intervals
covered the large held-out accuracy in 90 % of runs, these in 93 %.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Pair = tuple[list[int], list[int]]  # (indices a model trains on, indices it is scored on)


def accuracy_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Clopper-Pearson interval of an accuracy observed on ``n`` images ((0, 1) for n = 0). ``accuracy``
    may be a mean over repeats (a fractional count of right answers)."""
    # the beta distribution's quantiles (scipy.stats.beta.ppf) from scipy.special: scipy.stats took 0.8-1.3 s to
    # import, in the web process at the moment a class's first model was shown, holding every session
    from scipy.special import betaincinv  # scipy: scikit-learn's own dependency

    if n <= 0:
        return 0.0, 1.0
    x = min(1.0, max(0.0, accuracy)) * n
    a = (1 - level) / 2
    lo = 0.0 if x <= 0 else float(betaincinv(x, n - x + 1, a))
    hi = 1.0 if x >= n else float(betaincinv(x + 1, n - x, 1 - a))
    return min(lo, x / n), max(hi, x / n)


@dataclass(frozen=True)
class Score:
    """A run's one accuracy: ``right`` of ``n`` distinct images, each classified by a model that had not
    trained on it (a whole number of images: never "74.67 % of 15")."""

    right: int
    n: int  # distinct images the accuracy rests on (each scored by a model that did not train on it)
    method: str  # how they were held out, in words ("5-fold cross-validation, 5 repeats")
    #: How much better the final model, fitted on every image, may be than the models that were scored, each
    #: fitted on all but the held-out ones: the learning curve's last step, measured (0 when they are equal).
    #: Cross-validation underrates a model trained on a handful of images; the interval's top allows for it.
    upside: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.right / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        lo = accuracy_interval(self.accuracy, self.n)[0]
        return lo, accuracy_interval(min(1.0, self.accuracy + self.upside), self.n)[1]

    def text(self) -> str:
        """E.g. "4 of 5 right (80 %); likely 28–99 %"."""
        lo, hi = self.interval
        return f"{self.right} of {self.n} right ({self.accuracy:.0%}); likely {lo:.0%}–{hi:.0%}"

    def to_json(self) -> dict:
        lo, hi = self.interval
        return {"right": self.right, "n": self.n, "accuracy": round(self.accuracy, 4),
                "interval": [round(lo, 4), round(hi, 4)], "method": self.method, "upside": round(self.upside, 4)}

    @staticmethod
    def of(accuracy: float, n: int, method: str, upside: float = 0.0) -> Score:
        """The score of an accuracy measured on ``n`` images (rounded to whole images)."""
        return Score(round(accuracy * n), n, method, upside)

    @staticmethod
    def from_json(d: dict | None) -> Score | None:
        if not d or d.get("accuracy") is None:
            return None
        n = int(d["n"])  # runs saved before "right" was stored: their mean over repeats, to whole images
        right = int(d["right"]) if "right" in d else round(float(d["accuracy"]) * n)
        return Score(right, n, str(d.get("method", "")), float(d.get("upside", 0.0)))


def two_sided_sign_test(k: int, d: int) -> float:
    """The chance that a fair coin tossed ``d`` times gives a split at least as uneven as ``k`` to ``d - k``
    (exact binomial, two-sided; 1 when ``d`` is 0)."""
    if d <= 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(d, i) for i in range(min(k, d - k) + 1)) / 2 ** d)


#: The level below which the paired test calls a difference shown (about 1 time in 20 by luck).
SHOWN_BELOW = 0.05


@dataclass(frozen=True)
class Paired:
    """Two models judged on the same images, image by image: which each got right (McNemar's exact test,
    i.e. a sign test on the images where they disagree)."""

    a_only: int  # images A got right and B wrong
    b_only: int  # images B got right and A wrong
    both: int
    neither: int

    @property
    def n(self) -> int:
        return self.a_only + self.b_only + self.both + self.neither

    @property
    def disagree(self) -> int:
        return self.a_only + self.b_only

    @property
    def p_value(self) -> float:
        """How often luck alone (each disagreement a coin toss) would give a split at least this uneven."""
        return two_sided_sign_test(self.a_only, self.disagree)

    @property
    def shown(self) -> bool:
        return self.p_value < SHOWN_BELOW

    def images_to_settle(self, cap: int = 10_000) -> int | None:
        """About how many images in all would likely show the difference, if more images split the way these
        did (the same share of disagreements, the same winner's share of them); None when they are even."""
        if self.a_only == self.b_only or not self.n:
            return None
        rate, lead = self.disagree / self.n, max(self.a_only, self.b_only) / self.disagree
        n = self.n
        while n < cap:
            n = math.ceil(n * 1.1) + 1
            d = max(1, round(rate * n))
            if two_sided_sign_test(d - round(lead * d), d) < SHOWN_BELOW:
                return n
        return None

    def to_json(self) -> dict:
        return {"a_only": self.a_only, "b_only": self.b_only, "both": self.both, "neither": self.neither,
                "p_value": round(self.p_value, 5), "shown": self.shown, "images_to_settle": self.images_to_settle()}


def paired(a: Mapping[str, bool], b: Mapping[str, bool]) -> Paired:
    """Compare two models on the images both were scored on (``image -> right``)."""
    common = [k for k in a if k in b]
    return Paired(sum(a[k] and not b[k] for k in common), sum(b[k] and not a[k] for k in common),
                  sum(a[k] and b[k] for k in common), sum(not a[k] and not b[k] for k in common))


def repeated_folds(labels: torch.Tensor, folds: int, repeats: int, seed: int) -> list[Pair]:
    """Stratified k-fold, ``repeats`` times with different shuffles: ``folds * repeats`` (train, test) pairs.

    Each class's images are dealt round the folds in a seeded random order, so every fold holds each
    class in proportion; a class with a single image always trains (it cannot be held out). ``folds``
    is capped by the largest class, at least 2.
    """
    labels = labels.cpu()
    folds = max(2, min(folds, int(torch.bincount(labels).max())))
    pairs: list[Pair] = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        fold_of = torch.full((len(labels),), -1, dtype=torch.long)
        offset = 0
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero().flatten()
            if len(idx) < 2:
                continue
            idx = idx[torch.randperm(len(idx), generator=g)]
            fold_of[idx] = (torch.arange(len(idx)) + offset) % folds  # offset: small classes spread over folds
            offset += len(idx)
        for f in range(folds):
            test = (fold_of == f).nonzero().flatten().tolist()
            if test:
                pairs.append(((fold_of != f).nonzero().flatten().tolist(), test))
    return pairs


def shot_draws(labels: torch.Tensor, shots: int, repeats: int, seed: int) -> list[Pair]:
    """``repeats`` seeded draws of ``shots`` training images per class; every other image is a test image."""
    labels = labels.cpu()
    pairs: list[Pair] = []
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed * 1000 + 500 + r)
        train: list[int] = []
        for c in labels.unique().tolist():
            idx = (labels == c).nonzero().flatten()
            train += idx[torch.randperm(len(idx), generator=g)][:shots].tolist()
        chosen = set(train)
        test = [i for i in range(len(labels)) if i not in chosen]
        if test:
            pairs.append((sorted(train), test))
    return pairs


def out_of_fold(pairs: Sequence[Pair], predict: Callable[[list[int], list[int]], torch.Tensor],
                labels: torch.Tensor, method: str, average: bool = True
                ) -> tuple[Score | None, dict[int, torch.Tensor]]:
    """Train and score on each pair (``predict(train, test)`` -> probabilities ``[len(test), C]``): each image's
    probabilities averaged over the pairs that held it out (repeats of k-fold: every model trained on all but a
    fold), or with ``average`` False the first pair's alone (draws of k images per class: an average of several
    k-shot models would know more than k images per class); and the score: how many images that prediction
    gets right, of how many were held out at least once."""
    labels = labels.cpu()
    sums: dict[int, torch.Tensor] = {}
    seen: dict[int, int] = {}
    for train, test in pairs:
        for i, p in zip(test, predict(train, test).float().cpu()):
            if i in sums and not average:
                continue
            sums[i] = sums[i] + p if i in sums else p.clone()
            seen[i] = seen.get(i, 0) + 1
    if not sums:
        return None, {}
    probs = {i: sums[i] / seen[i] for i in sorted(sums)}
    right = sum(int(int(p.argmax()) == int(labels[i])) for i, p in probs.items())
    return Score(right, len(probs), method), probs


def span_basis(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the centred rows of ``x`` ``[N, D]`` (``[D, D]``, the identity, when N >= D). They
    span the centred rows of any subset of ``x`` too (a subset's centre differs from the whole's by a mean of
    centred rows), so the fits of one set's folds and splits share it (``LogisticFit(basis=...)``): one QR, not
    one per fit."""
    x = x.float()
    return torch.linalg.qr((x - x.mean(0)).T)[0].T if len(x) < x.shape[1] else torch.eye(x.shape[1])


#: L-BFGS stops when no gradient entry of the summed loss exceeds this per row fitted: scikit-learn's lbfgs tolerance
#: (1e-4) on its mean loss. It stopped at 1e-4 on the sum, 300 times stricter on 300 images, for the same predictions.
TOL_PER_ROW = 1e-4


class LogisticFit:
    """Multinomial logistic regression being fitted by full-batch L-BFGS, to convergence in as many
    ``step`` calls as the caller likes (one optimizer throughout: its curvature history is kept between calls,
    so ten calls of 10 iterations cost what one of 100 does). The objective is ``sum(cross-entropy) +
    |W|^2 / (2 c)``, scikit-learn's ``LogisticRegression(C=c)`` (the bias is not penalised). Milliseconds on
    the cached features of a class's images.

    ``masks`` (``[F, N]`` of 0/1) fits F independent regressions at once, the f-th on the rows its mask
    marks (the folds of a cross-validation): weights ``[F, C, D]``, biases ``[F, C]``. Their objectives add up
    and do not interact, so one L-BFGS run on the sum reaches every fold's own optimum; ``init`` is then
    ``[F, ...]`` too. The features are centred first: with an unpenalised bias that changes no optimum and
    makes the fit converge several times faster."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 1.0,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                 tol_per_row: float = TOL_PER_ROW, basis: torch.Tensor | None = None) -> None:
        x = x.float()
        self.single = masks is None
        self._m = torch.ones(1, len(x)) if masks is None else masks.float()
        folds, dim = self._m.shape[0], x.shape[1]
        self._centre = x.mean(0)
        xc = x - self._centre
        # Every optimum lies in the span of the (centred) rows, so with fewer rows than dimensions the fit
        # runs in that span's coordinates (the same optimum, a fraction of the work): W = Z V^T.
        self._basis = span_basis(x) if basis is None else basis  # orthonormal rows
        self._x = xc @ self._basis.T
        if init is None:
            w, b = torch.zeros(folds, num_classes, len(self._basis)), torch.zeros(folds, num_classes)
        else:
            full = init[0].detach().reshape(folds, num_classes, dim)
            w = (full @ self._basis.T).clone()
            b = (init[1].detach().reshape(folds, num_classes) + full @ self._centre).clone()  # the same model, centred
        self._w, self._b = w.requires_grad_(True), b.requires_grad_(True)
        self._onehot = torch.nn.functional.one_hot(y.long(), num_classes).float()
        self._c = c
        self._opt = torch.optim.LBFGS([self._w, self._b], lr=1.0, tolerance_grad=tol_per_row * float(self._m.sum(1).mean()),
                                      tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")
        self.converged = False

    @torch.no_grad()
    def _closure(self) -> torch.Tensor:
        """The objective, its gradient written by hand (a third of autograd's time on these small tensors)."""
        w, b = self._w, self._b
        logits = torch.einsum("nd,fcd->fnc", self._x, w) + b[:, None, :]
        lse = torch.logsumexp(logits, 2, keepdim=True)
        per_image = lse[..., 0] - (logits * self._onehot).sum(2)  # [F, N] cross-entropy
        loss = (per_image * self._m).sum() + (w * w).sum() / (2 * self._c)
        residual = (torch.exp(logits - lse) - self._onehot) * self._m[..., None]  # d loss / d logits
        w.grad = torch.einsum("fnc,nd->fcd", residual, self._x) + w / self._c
        b.grad = residual.sum(1)
        return loss

    def step(self, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``iters`` more L-BFGS iterations (none once converged); the fit so far, in the features'
        own coordinates: (``[C, D]``, ``[C]``), or (``[F, C, D]``, ``[F, C]``) with masks."""
        self._opt.param_groups[0]["max_iter"] = iters
        self._opt.param_groups[0]["max_eval"] = iters * 5 // 4
        state = self._opt.state[self._w]
        before = state.get("n_iter", 0)
        self._opt.step(self._closure)
        self.converged = state.get("n_iter", 0) - before < iters  # L-BFGS stopped on its tolerances
        w = self._w.detach() @ self._basis
        b = self._b.detach() - w @ self._centre
        return (w[0], b[0]) if self.single else (w, b)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 1.0, max_iter: int = 100,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                 tol_per_row: float = TOL_PER_ROW) -> tuple[torch.Tensor, torch.Tensor]:
    """``LogisticFit`` in one call of up to ``max_iter`` iterations."""
    return LogisticFit(x, y, num_classes, c, init, masks, tol_per_row).step(max_iter)


__all__ = ["LogisticFit", "Pair", "Paired", "SHOWN_BELOW", "Score", "accuracy_interval", "fit_logistic", "out_of_fold",
           "paired", "repeated_folds", "shot_draws", "span_basis", "two_sided_sign_test"]
