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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
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
    sums: torch.Tensor | None = None
    seen = torch.zeros(len(labels))
    for train, test in pairs:
        p, at = predict(train, test).float().cpu(), torch.tensor(test, dtype=torch.long)
        if sums is None:
            sums = torch.zeros(len(labels), p.shape[1])
        if not average:
            new = seen[at] == 0
            p, at = p[new], at[new]
        sums.index_add_(0, at, p)
        seen.index_add_(0, at, torch.ones(len(at)))
    scored = seen.nonzero().flatten()
    if sums is None or not len(scored):
        return None, {}
    mean = sums[scored] / seen[scored, None]
    right = int((mean.argmax(1) == labels[scored]).sum())
    return Score(right, len(scored), method), dict(zip(scored.tolist(), mean.unbind()))


@dataclass(frozen=True)
class Span:
    """A set's feature rows in the coordinates of orthonormal rows ``basis`` ``[K, D]`` spanning them once centred:
    ``coords`` ``[N, K]`` = (x - ``origin``) ``basis``^T (``basis`` is the identity when N >= D). The centred rows
    of any subset lie in the same span, and so does every logistic optimum on them, so the fits of one set's
    splits and folds share one ``Span`` (``LogisticFit``): one QR, and no projection (its R is the coordinates)."""

    basis: torch.Tensor
    origin: torch.Tensor
    coords: torch.Tensor

    @staticmethod
    def of(x: torch.Tensor) -> Span:
        x = x.float()
        origin = x.mean(0)
        if len(x) >= x.shape[1]:
            return Span(torch.eye(x.shape[1]), origin, x - origin)
        q, r = torch.linalg.qr((x - origin).T)
        return Span(q.T, origin, r.T)

    def rows(self, indices: Sequence[int]) -> Span:
        """The same span and origin, with only these rows."""
        return Span(self.basis, self.origin, self.coords[list(indices)])


#: L-BFGS stops when no gradient entry of the summed loss exceeds this per row fitted: scikit-learn's lbfgs tolerance
#: (1e-4) on its mean loss. It stopped at 1e-4 on the sum, 300 times stricter on 300 images, for the same predictions.
TOL_PER_ROW = 1e-4

#: A fit whose rows x coordinates are at most this runs on one thread. L-BFGS on a class's features is hundreds of
#: small tensor operations, and each one a second thread shares wakes it (tlcore's threads sleep while they wait:
#: ``settings.yield_idle_cores``). On 2 cores, a fit and its folds' on 60 images took 4 ms on one thread and 9 ms
#: on two; 300 images 20 and 25 ms; 700 images 41 and 44 ms; 1,000 about the same.
ONE_THREAD_MAX = 700 * 700


@contextmanager
def fit_threads(rows: int, dims: int) -> Iterator[None]:
    """Torch on one thread inside the block if fitting ``rows`` x ``dims`` is small (``ONE_THREAD_MAX``), as
    before after it. Never around a ``yield``: whoever runs between two would run on one thread too."""
    before = torch.get_num_threads()
    if rows * dims > ONE_THREAD_MAX or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Curvature:
    """L-BFGS's memory for F independent fits at once (the folds of a cross-validation): each fit's last ``size``
    steps ``s`` and gradient changes ``y``, and the direction each gives, the inverse Hessian's approximation
    times its gradient, in compact form (Byrd, Nocedal and Schnabel 1994, eq. 2.6): batched products with the
    memory and F ``size`` x ``size`` solves, where the textbook two-loop recursion makes 4 x ``size`` tiny vector
    operations one after another. Each fit has a memory of its own: one memory for the sum of the fits learns
    each one's curvature F times more thinly (20 folds of 300 images: 34 objective evaluations together, at most
    17 each with their own memories).

    The fits fill their slots in step. A fit with nothing to remember (it has converged, or its step had no
    curvature) fills its slot with a zero pair, which changes none of its directions: its row and column of the
    products are zero but for a 1 on the diagonal. The dot products a new pair adds come from those of the old
    and new gradient, which the next direction needs anyway: a step reads the memory twice."""

    def __init__(self, fits: int, size: int, n: int) -> None:
        self.size = size
        self.s, self.y = torch.zeros(fits, size, n), torch.zeros(fits, size, n)  # [fit, slot, n]
        self.sy = np.zeros((fits, size, size))  # sy[f, i, j] = s_i . y_j of fit f
        self.yy = np.zeros((fits, size, size))
        self.order: list[int] = []  # slots, oldest first (filled in order: the first len(order) are in use)
        self.gamma = np.ones(fits)
        self.remembers = np.zeros(fits, bool)  # fits with at least one real pair
        self._g: torch.Tensor | None = None  # the last gradients seen, with each s_i . g and y_i . g
        self._sg = self._yg = np.zeros((fits, 0))

    def _products(self, g: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Each fit's s_i . g and y_i . g, ``[F, slots in use]``."""
        if g is not self._g:
            k, row = len(self.order), g[:, None, :]
            self._g = g  # row @ memory^T: bmm's own layout (memory @ column took 12 times as long)
            self._sg = (row @ self.s[:, :k].mT)[:, 0].double().numpy()
            self._yg = (row @ self.y[:, :k].mT)[:, 0].double().numpy()
        return self._sg, self._yg

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """``-H g`` of each fit, ``g`` ``[F, n]``."""
        k = len(self.order)
        if not k:
            return -g
        sg, yg = self._products(g)
        o, gamma = np.array(self.order), self.gamma[:, None]
        sy = self.sy[:, o[:, None], o]
        r = np.triu(sy)
        u = np.linalg.solve(r, sg[:, o, None])[..., 0]
        rhs = (np.diagonal(sy, axis1=1, axis2=2) * u + gamma * np.einsum("fij,fj->fi", self.yy[:, o[:, None], o], u)
               - gamma * yg[:, o])
        p = np.linalg.solve(r.transpose(0, 2, 1), rhs[..., None])[..., 0]
        cs, cy = np.zeros((len(g), k)), np.zeros((len(g), k))
        cs[:, o], cy[:, o] = p, -gamma * u
        mixed = torch.bmm(torch.from_numpy(cs).float()[:, None], self.s[:, :k]) + \
            torch.bmm(torch.from_numpy(cy).float()[:, None], self.y[:, :k])
        return -(torch.from_numpy(gamma).float() * g + mixed[:, 0])

    def push(self, s: torch.Tensor, y: torch.Tensor, g_new: torch.Tensor) -> None:
        """Remember each fit's step ``s`` (``[F, n]``) from the gradient the last ``direction`` was for, and ``y``,
        the gradient ``g_new`` at its end less that one; a zero pair for a fit whose step has no curvature
        (``s . y`` not above 0, or not a number: as torch.optim.LBFGS, it learns nothing from it)."""
        products = torch.stack((s, y), 1) @ torch.stack((y, g_new), 1).mT  # [F, (s, y), (y, g_new)]
        (sy, s_gnew), (yy, y_gnew) = products.double().numpy().transpose(1, 2, 0)
        real = sy > 1e-10
        if not real.all():
            keep = torch.from_numpy(real)[:, None]
            s, y = s * keep, y * keep
            s_gnew, yy, y_gnew = s_gnew * real, yy * real, y_gnew * real
        k = len(self.order)
        sg, yg = self._sg, self._yg  # by slot in use, against the gradients the steps started from
        sg_new, yg_new = self._products(g_new)
        col_sy, col_yy = (sg_new - sg) * real[:, None], (yg_new - yg) * real[:, None]  # s_i . y and y_i . y
        slot = self.order.pop(0) if k == self.size else k
        self.s[:, slot], self.y[:, slot] = s, y
        self.order.append(slot)
        if slot == k:  # a new slot: the products gain its entry (set below)
            col_sy, col_yy, sg_new, yg_new = (np.concatenate((v, np.zeros((len(v), 1))), 1)
                                              for v in (col_sy, col_yy, sg_new, yg_new))
        k = len(self.order)
        self.sy[:, :k, slot] = col_sy  # s . y_i, below sy's diagonal, is unused
        self.yy[:, :k, slot] = self.yy[:, slot, :k] = col_yy
        self.sy[:, slot, slot], self.yy[:, slot, slot] = np.where(real, sy, 1.0), yy
        self.gamma = np.where(real, sy / np.where(real, yy, 1.0), self.gamma)
        self.remembers |= real
        sg_new[:, slot], yg_new[:, slot] = s_gnew, y_gnew
        self._g, self._sg, self._yg = g_new, sg_new, yg_new

    def forget(self, fits: np.ndarray) -> None:
        """Start these fits' memories again (``fits``: ``[F]`` of bool), as zero pairs."""
        self.s[torch.from_numpy(fits)] = 0.0
        self.y[torch.from_numpy(fits)] = 0.0
        self.sy[fits], self.yy[fits] = np.eye(self.size), 0.0
        self.gamma[fits], self.remembers[fits] = 1.0, False
        self._sg[fits] = self._yg[fits] = 0.0


HISTORY = 20  # L-BFGS's memory of steps
MAX_BACKTRACKS = 25  # tries of a shorter step before L-BFGS stops where it is


class LogisticFit:
    """Multinomial logistic regression being fitted by full-batch L-BFGS, to convergence in as many
    ``step`` calls as the caller likes (its curvature memory is kept between calls, so ten calls of 10
    iterations cost what one of 100 does). The objective is ``sum(cross-entropy) + |W|^2 / (2 c)``,
    scikit-learn's ``LogisticRegression(C=c)`` (the bias is not penalised), and it stops as scikit-learn's lbfgs
    does: no gradient entry above ``tol_per_row`` per row. Milliseconds on the cached features of a class's images.

    ``masks`` (``[F, N]`` of 0/1) fits F independent regressions at once, the f-th on the rows its mask
    marks (the folds of a cross-validation): weights ``[F, C, D]``, biases ``[F, C]``. Each has its own
    L-BFGS memory, line search and stopping rule (``_Curvature``); they share each tensor operation. ``init``
    is then ``[F, ...]`` too. The features are centred first: with an unpenalised bias that changes no optimum
    and makes the fit converge several times faster."""

    def __init__(self, span: Span, y: torch.Tensor, num_classes: int, c: float = 1.0,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                 tol_per_row: float = TOL_PER_ROW) -> None:
        self.single = masks is None
        m = torch.ones(1, len(span.coords)) if masks is None else masks.float()
        folds, dim = m.shape[0], span.basis.shape[1]
        # Every optimum lies in the span of the (centred) rows, so with fewer rows than dimensions the fit
        # runs in that span's coordinates (the same optimum, a fraction of the work): W = Z V^T.
        shift = span.coords.mean(0)
        self._basis, self._centre = span.basis, span.origin + shift @ span.basis  # the centre of these rows
        ones = torch.ones(len(span.coords), 1)  # the biases' coordinate
        self._x = torch.cat([span.coords - shift, ones], 1)
        self._shape = (folds, num_classes, len(self._basis))
        if init is None:
            theta = torch.zeros(folds, num_classes, len(self._basis) + 1)
        else:
            full = init[0].detach().reshape(folds, num_classes, dim)
            b = init[1].detach().reshape(folds, num_classes) + full @ self._centre  # the same model, centred
            theta = torch.cat([full @ self._basis.T, b[..., None]], 2)
        self._theta = theta.reshape(folds, -1).contiguous()  # fit f: its weights [C, K], its biases a last column
        self._rows = m.T.contiguous()[..., None]  # [N, F, 1]: rows by the fits they are in
        self._onehot = torch.nn.functional.one_hot(y.long(), num_classes).float()[:, None, :]  # [N, 1, C]
        self._c = c
        self._tol = tol_per_row * m.sum(1).double().numpy()
        self._memory = _Curvature(folds, HISTORY, self._theta.shape[1])
        self._at: tuple[np.ndarray, torch.Tensor] | None = None  # each fit's objective and gradient at ``_theta``
        self._done = np.zeros(folds, bool)
        self.converged = False

    def _objective(self, theta: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Each fit's objective ``[F]`` and gradient ``[F, n]``, written by hand (a third of autograd's time on
        these small tensors)."""
        folds, classes, k = self._shape
        n = len(self._x)
        logits = (self._x @ theta.view(folds * classes, k + 1).T).view(n, folds, classes)
        lse = torch.logsumexp(logits, 2, keepdim=True)
        per_row = (lse - (logits * self._onehot).sum(2, keepdim=True)) * self._rows  # cross-entropy [N, F, 1]
        w = theta.view(folds, classes, k + 1)[..., :k]
        loss = per_row.sum((0, 2)) + (w * w).sum((1, 2)) / (2 * self._c)
        residual = torch.exp(logits - lse).sub_(self._onehot).mul_(self._rows).view(n, folds * classes)
        grad = residual.T @ self._x
        grad.view(folds, classes, k + 1)[..., :k].add_(w, alpha=1 / self._c)
        return loss.double().numpy(), grad.view(folds, -1)

    def _line_search(self, f: np.ndarray, g: torch.Tensor, d: torch.Tensor, gtd: np.ndarray, t: np.ndarray,
                     active: np.ndarray) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
        """For each ``active`` fit, a step ``t`` along its ``d`` (``gtd``: each ``g . d``) that lowers its objective
        enough (Armijo), backtracking by quadratic interpolation (the objective is convex: every accepted step keeps
        L-BFGS's curvature positive). Returns the objectives, gradients and steps taken (0 where none), and which
        fits found one. The others are evaluated where they are (a step of 0), which gives their ``f`` and ``g``."""
        tried = np.where(active, t, 0.0)
        f_new, g_new = self._objective(self._theta + torch.from_numpy(tried).float()[:, None] * d)
        pending = active & ~(f_new <= f + 1e-4 * tried * gtd)
        taken = np.where(pending, 0.0, tried)
        if not pending.any():
            return f_new, g_new, taken, active
        f_new = f_new.copy()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            f_try = f_new
            for _ in range(MAX_BACKTRACKS - 1):
                curve = f_try - f - gtd * t
                guess = np.where(np.isfinite(f_try) & (curve > 0), -gtd * t * t / (2 * curve), 0.5 * t)
                t = np.minimum(np.maximum(guess, 0.1 * t), 0.5 * t)
                tried = np.where(pending, t, 0.0)
                f_try, g_try = self._objective(self._theta + torch.from_numpy(tried).float()[:, None] * d)
                ok = pending & (f_try <= f + 1e-4 * tried * gtd)
                f_new[ok], taken[ok] = f_try[ok], tried[ok]
                g_new[torch.from_numpy(ok)] = g_try[torch.from_numpy(ok)]
                pending &= ~ok
                if not pending.any():
                    break
        f_new[pending] = f[pending]  # no lower point: these stay where they are
        g_new[torch.from_numpy(pending)] = g[torch.from_numpy(pending)]
        return f_new, g_new, taken, active & ~pending

    def step(self, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``iters`` more L-BFGS iterations (none once converged); the fit so far, in the features'
        own coordinates: (``[C, D]``, ``[C]``), or (``[F, C, D]``, ``[F, C]``) with masks."""
        with fit_threads(len(self._x), self._shape[2]):
            f, g = self._at or self._objective(self._theta)
            for _ in range(iters):
                self._done |= g.abs().amax(1).double().numpy() <= self._tol
                if self._done.all():
                    break
                active = ~self._done
                d = self._memory.direction(g)
                if self._done.any():
                    d[torch.from_numpy(self._done)] = 0.0
                gtd = (g * d).sum(1).double().numpy()
                restart = active & (gtd >= 0)  # rounding made a memory useless: start it again
                if restart.any():
                    self._memory.forget(restart)
                    d[torch.from_numpy(restart)] = -g[torch.from_numpy(restart)]
                    gtd = (g * d).sum(1).double().numpy()
                first = np.ones(len(f)) if self._memory.remembers.all() else \
                    np.where(self._memory.remembers, 1.0, np.minimum(1.0, 1.0 / g.abs().sum(1).double().numpy()))
                f_new, g_new, t, found = self._line_search(f, g, d, gtd, first, active)
                self._done |= active & ~found  # no lower point along d: as far as float32 gets
                s = torch.from_numpy(t).float()[:, None] * d
                self._memory.push(s, g_new - g, g_new)
                self._theta = self._theta + s
                self._done |= found & ((np.abs(f_new - f) < 1e-9) | (s.abs().amax(1).numpy() <= 1e-9))  # no progress
                f, g = f_new, g_new
            self._at = f, g
            self.converged = bool(self._done.all())
        folds, classes, k = self._shape
        wb = self._theta.view(folds, classes, k + 1)
        w = wb[..., :k] @ self._basis
        b = wb[..., k] - w @ self._centre
        return (w[0], b[0]) if self.single else (w, b)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, c: float = 1.0, max_iter: int = 100,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                 tol_per_row: float = TOL_PER_ROW) -> tuple[torch.Tensor, torch.Tensor]:
    """``LogisticFit`` on the rows ``x`` ``[N, D]``, in one call of up to ``max_iter`` iterations."""
    return LogisticFit(Span.of(x), y, num_classes, c, init, masks, tol_per_row).step(max_iter)


__all__ = ["LogisticFit", "Pair", "Paired", "SHOWN_BELOW", "Score", "accuracy_interval", "fit_logistic", "fit_threads",
           "out_of_fold", "paired", "repeated_folds", "shot_draws", "Span", "two_sided_sign_test"]
