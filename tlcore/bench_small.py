"""Benchmark section 9: honest numbers on a class's small data (``python -m tlcore.bench --small-data``).

On real datasets built from what ships with the packages (the bundled digits and faces, scikit-learn's
digits, crops of scikit-image's photos), k images per class are drawn as a class's whole data, over
several seeds. Each strategy is scored the app's way on those k per class alone (cross-validation,
``TrainConfig`` defaults), and its final model is then scored on every other image of the dataset (a
large held-out part the run never saw). Printed: both accuracies, whether the app's 95 % interval
covered the large held-out accuracy, a scikit-learn ``LogisticRegression()`` baseline on the same
features (its time: plain-torch features plus its fit), each run's time against its estimate, and a
ladder and a study through the app's own runner (worker processes), quiet and with a second class
member's ladder queued beside it.
"""
from __future__ import annotations

import dataclasses
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .analysis.compare import COMPARE_EPOCHS, features_of
from .analysis.profile import estimate_run_seconds, run_overhead_s
from .core.measure import shot_draws
from .data.images import ImageSet, load_folder, sklearn_digits
from .engine.config import FROZEN_BODY_MODES, TrainConfig
from .engine.evaluate import evaluate
from .engine.features import FEATURES
from .engine.train import run_to_end
from .jobs.spec import short_run
from .models.backbones import DEFAULT_BACKBONE, get_backbone_spec
from .models.runtime import FrozenPart

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "samples"
PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket",
          "galaxy": "hubble_deep_field"}  # class name -> scikit-image photo


def photo_crops(per_class: int, classes: tuple[str, ...] = tuple(PHOTOS), seed: int = 0) -> ImageSet:
    """Random crops (25-60 % of the shorter side, anywhere, some mirrored) of scikit-image's photos, resized
    to 160 px JPEGs: one class per photo."""
    import skimage.data

    rng = np.random.default_rng(seed)
    files = []
    for name in classes:
        photo = Image.fromarray(getattr(skimage.data, PHOTOS[name])()).convert("RGB")
        w, h = photo.size
        for k in range(per_class):
            side = int(min(w, h) * rng.uniform(0.25, 0.6))
            x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            crop = photo.crop((x, y, x + side, y + side)).resize((160, 160), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            buf = io.BytesIO()
            crop.save(buf, "JPEG", quality=90)
            files.append((f"{name}_{k:03d}.jpg", buf.getvalue(), name))
    s = ImageSet()
    s.add(files)
    return s


def datasets(quick: bool) -> dict[str, ImageSet]:
    """The real datasets: pools from which a class's k images per class are drawn."""
    if quick:
        return {"bundled digits": load_folder(SAMPLES / "digits").subset(range(0, 200, 4))}
    return {"bundled digits": load_folder(SAMPLES / "digits"), "bundled faces": load_folder(SAMPLES / "faces"),
            "scikit-learn digits": sklearn_digits(100), "scikit-image photo crops": photo_crops(60)}


def baseline(pool_feats: torch.Tensor, labels: torch.Tensor, train: list[int], test: list[int],
             user_set: ImageSet, backbone: str) -> dict:
    """scikit-learn's ``LogisticRegression()`` on the same features: accuracy on the held-out part, and its
    time as a user of plain PyTorch would spend it (preprocess, torch forward pass, fit)."""
    from sklearn.linear_model import LogisticRegression

    body = FrozenPart(backbone, None).eval()
    start = time.perf_counter()
    fresh = user_set.subset(range(len(user_set)))  # preprocessing counted, as in the app's run
    pixels = fresh.stack(get_backbone_spec(backbone).preprocess)
    with torch.inference_mode():
        for lo in range(0, len(pixels), 32):
            body(pixels[lo:lo + 32].float().div(255).contiguous(memory_format=torch.channels_last))
    clf = LogisticRegression(max_iter=1000).fit(pool_feats[train].numpy(), labels[train].numpy())
    seconds = time.perf_counter() - start
    acc = float((clf.predict(pool_feats[test].numpy()) == labels[test].numpy()).mean())
    return {"accuracy": acc, "seconds": seconds, "converged_accuracy": acc}


def converged_accuracy(pool_feats: torch.Tensor, labels: torch.Tensor, train: list[int], test: list[int]) -> float:
    """The baseline's objective solved to convergence (scikit-learn's default tol stops early: by up to 2
    held-out images of 100 on the bundled digits), what the head's own L-BFGS fit reaches. Slow (minutes on
    1,280 features x 10 classes): computed only where the head trails the default fit."""
    from sklearn.linear_model import LogisticRegression

    tight = LogisticRegression(max_iter=20000, tol=1e-10).fit(pool_feats[train].double().numpy(), labels[train].numpy())
    return float((tight.predict(pool_feats[test].double().numpy()) == labels[test].numpy()).mean())


def heldout_accuracy(finished, pool: ImageSet, pool_feats: torch.Tensor, test: list[int], backbone: str) -> float:
    """The final model's accuracy on the large held-out part."""
    r = finished.result
    labels = pool.labels()
    order = [r.classes.index(c) for c in pool.classes]  # pool class k -> the run's class index
    want = torch.tensor([order[int(y)] for y in labels[test]])
    if r.config.mode in FROZEN_BODY_MODES:
        with torch.no_grad():
            pred = r.model.head(pool_feats[test]).argmax(1)
        return float((pred == want).float().mean())
    ev = evaluate(r.model, pool.subset(test), r.classes, get_backbone_spec(backbone).preprocess)
    return ev.accuracy


def one_run(pool: ImageSet, pool_feats: torch.Tensor, train: list[int], test: list[int], cfg: TrainConfig,
            cold: bool) -> dict:
    """One strategy on a class's data (``train``): the app's score, the large held-out accuracy, times."""
    user = pool.subset(train)
    if cold:
        FEATURES.clear()
    estimate = estimate_run_seconds(cfg, len(user), classes=len(user.classes)) - run_overhead_s(cfg)  # in this process: no hand-off
    start = time.perf_counter()
    finished = run_to_end(user, cfg)
    seconds = time.perf_counter() - start
    assert finished.status == "completed", finished.reason
    score = finished.result.score
    truth = heldout_accuracy(finished, pool, pool_feats, test, cfg.backbone)
    lo, hi = score.interval
    return {"strategy": cfg.mode, "accuracy": score.accuracy, "n": score.n, "interval": [lo, hi],
            "heldout_accuracy": truth, "heldout_n": len(test), "covered": lo <= truth <= hi,
            "seconds": seconds, "estimate_seconds": estimate, "cold": cold}


def frozen_section(quick: bool, backbone: str, log) -> dict:
    """Zero-shot, few-shot and feature extraction, with the baseline, on every dataset, shot count and seed."""
    shots, seeds = ((3, 5), (0,)) if quick else ((3, 5, 10, 20), range(5))
    rows = []
    for name, pool in datasets(quick).items():
        labels = pool.labels()
        pool_feats = features_of(None, pool, backbone).float()
        for k in shots:
            for seed in seeds:
                [(train, test)] = shot_draws(labels, k, 1, seed)
                base = TrainConfig(backbone=backbone, seed=seed)
                common = {"dataset": name, "shots": k, "seed": seed}
                fe = one_run(pool, pool_feats, train, test, base, cold=True)  # features computed, as for a class
                lr = baseline(pool_feats, labels, train, test, pool.subset(train), backbone)
                if fe["heldout_accuracy"] < lr["accuracy"] - 0.01:
                    lr["converged_accuracy"] = converged_accuracy(pool_feats, labels, train, test)
                rows.append({**common, **fe, "baseline": lr})
                for mode in ("few-shot", "zero-shot"):
                    rows.append({**common, **one_run(pool, pool_feats, train, test,
                                                     dataclasses.replace(base, mode=mode), cold=False)})
        fe_rows = [r for r in rows if r["dataset"] == name and r["strategy"] == "feature-extraction"]
        for k in shots:
            at = [r for r in fe_rows if r["shots"] == k]
            gaps = [r["heldout_accuracy"] - r["baseline"]["accuracy"] for r in at]
            log(f"9. {name}, {k}/class, {len(at)} seeds: feature extraction held-out "
                f"{statistics.mean(r['heldout_accuracy'] for r in at):.1%} vs logistic baseline "
                f"{statistics.mean(r['baseline']['accuracy'] for r in at):.1%} (worst seed {min(gaps):+.1%}); "
                f"app's own score {statistics.mean(r['accuracy'] for r in at):.1%}; time "
                f"{statistics.mean(r['seconds'] for r in at):.2f} s vs baseline "
                f"{statistics.mean(r['baseline']['seconds'] for r in at):.2f} s")
    return {"rows": rows}


def trained_section(quick: bool, backbone: str, log) -> dict:
    """Fine-tune and from scratch the ladder's way (3-fold cross-validation, Compare page's epochs) on one
    dataset: fewer settings, each run is four trainings."""
    pool = photo_crops(12, ("cat", "coffee", "rocket")) if quick else photo_crops(40)
    shots, seeds, epochs = ((4,), (0,), 1) if quick else ((5, 10), (0, 1), 20)
    labels = pool.labels()
    pool_feats = features_of(None, pool, backbone).float()
    rows = []
    for k in shots:
        for seed in seeds:
            [(train, test)] = shot_draws(labels, k, 1, seed)
            for mode in ("fine-tune", "scratch"):
                cfg = TrainConfig(backbone=backbone, mode=mode, epochs=epochs, seed=seed, score_folds=3)
                row = one_run(pool, pool_feats, train, test, cfg, cold=False)
                rows.append({"dataset": "scikit-image photo crops", "shots": k, "seed": seed, **row})
                log(f"9. {mode}, photo crops, {k}/class, seed {seed}: app {row['accuracy']:.1%} of {row['n']} "
                    f"(likely {row['interval'][0]:.0%}-{row['interval'][1]:.0%}), held-out {row['heldout_accuracy']:.1%} "
                    f"of {row['heldout_n']}; {row['seconds']:.1f} s (estimate {row['estimate_seconds']:.1f} s)")
    return {"rows": rows}


def app_ladder(quick: bool, backbone: str, log, busy_only: bool = False) -> dict:
    """The Compare page's ladder and study on 3 classes x 7 photos, through the app's runner and projects:
    wall time against the page's estimate, alone and with a second project's ladder submitted at once;
    ``busy_only``: only the ladder and the study while two other students fine-tune."""
    from .core.settings import set_environment, settings
    from .jobs.runner import set_runner
    from .studio.project import Project

    old_home = str(settings().home)
    home = tempfile.mkdtemp(prefix="tls-bench-home-")
    set_environment(TLS_HOME=home)
    set_runner(None)
    out: dict = {}
    try:
        data = photo_crops(7, ("cat", "coffee", "rocket"), seed=3)
        strategies = ["zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch"]
        if quick:  # a frozen body's run and a trained one: the estimates' two paths, in a third of the time
            strategies = ["feature-extraction", "fine-tune"]
        epochs = 1 if quick else COMPARE_EPOCHS  # the Compare page's default

        def project() -> Project:
            p = Project.create()
            p.images.merge(data)
            p.backbone = backbone
            return p

        def wait(projects: list[Project], groups: list[str]) -> list[float]:
            start, ends = time.perf_counter(), [0.0] * len(projects)
            while not all(ends):
                for i, (p, g) in enumerate(zip(projects, groups)):
                    if not ends[i] and all(r.status not in ("queued", "running") for r in p.group_runs(g)):
                        ends[i] = time.perf_counter() - start
                time.sleep(0.2)
            return ends

        from .analysis.profile import CALIBRATION, measure_speed
        from .jobs.runner import get_runner

        getattr(get_runner(), "wait_ready", lambda _timeout: True)(300)  # Ray places its own workers
        measure_speed(backbone)  # as the app does at start-up, once the workers are ready
        CALIBRATION.reset()  # the sections above ran in this process: the first estimate is uncalibrated
        warm = project()  # workers started and the backbone exported, as on a server that has been up
        wait([warm], [warm.start_comparison(["feature-extraction"], epochs=epochs)])
        from .analysis.profile import estimate_run_seconds
        singles = {}
        for k, mode in enumerate(() if busy_only else ("feature-extraction", "fine-tune")):  # one run each, as the Train page starts it
            p = Project.create()
            p.images.merge(photo_crops(7, ("cat", "coffee", "rocket"), seed=20 + k))  # new images: nothing cached
            p.backbone = backbone
            cfg = TrainConfig(backbone=backbone, mode=mode, epochs=2 if quick else 10)
            [est] = get_runner().forecast([(p.name, short_run(cfg),
                                             estimate_run_seconds(cfg, len(data), classes=len(data.classes)))])[1]
            t0 = time.perf_counter()
            record = p.start_run(cfg, mode)
            while any(r.id == record.id for r in p.active_runs()):
                time.sleep(0.2)
            singles[mode] = {"seconds": time.perf_counter() - t0, "estimate_seconds": est}
            log(f"9. one {mode} run through the workers, 21 photos, {cfg.epochs} epochs: "
                f"{singles[mode]['seconds']:.1f} s (estimated {est:.1f} s)")
        out["single_runs"] = singles
        shots = [1, 5, None]
        if not busy_only:
            alone = project()
            estimate = alone.comparison_seconds(strategies, epochs=epochs)
            [seconds] = wait([alone], [alone.start_comparison(strategies, epochs=epochs)])
            rows = {r.label: (r.status, r.result.score.text() if r.result and r.result.score else None)
                    for r in alone.runs}
            out["ladder"] = {"seconds": seconds, "estimate_seconds": estimate, "runs": rows}
            log(f"9. the ladder on 3 classes x 7 photo crops, {epochs} epochs, alone: {seconds:.1f} s (the page "
                f"estimated {estimate:.1f} s)")
            a, b = project(), project()
            estimates = [a.comparison_seconds(strategies, epochs=epochs)]
            ga = a.start_comparison(strategies, epochs=epochs)
            estimates.append(b.comparison_seconds(strategies, epochs=epochs))
            gb = b.start_comparison(strategies, epochs=epochs)
            queued = [a.group_seconds_left(ga), b.group_seconds_left(gb)]  # both pages, once both are queued
            busy = wait([a, b], [ga, gb])
            out["ladder_busy"] = {"seconds": busy, "estimate_seconds": estimates,
                                  "estimate_seconds_both_queued": queued}
            log(f"9. two ladders submitted at once: {busy[0]:.1f} s and {busy[1]:.1f} s (estimated {estimates[0]:.1f} s "
                f"and {estimates[1]:.1f} s as each was started; {queued[0]:.1f} s and {queued[1]:.1f} s once both were "
                "queued, as both pages then show)")
            study = project()
            est = study.comparison_seconds(strategies, shots, epochs)
            [seconds] = wait([study], [study.start_comparison(strategies, shots, epochs)])
            out["study"] = {"seconds": seconds, "estimate_seconds": est}
            log(f"9. the study (1, 5, all per class) alone: {seconds:.1f} s (estimated {est:.1f} s)")

        def two_others_training(seed: int) -> list[Project]:
            """Two other students, each fine-tuning on photos of their own (long enough to outlast what is timed)."""
            others = []
            for j in range(2):
                o = Project.create()
                o.images.merge(photo_crops(7, ("cat", "coffee", "rocket"), seed=seed + j))
                o.backbone = backbone
                o.start_run(TrainConfig(backbone=backbone, mode="fine-tune", epochs=3 if quick else 40), "fine-tune")
                others.append(o)
            return others

        for what, shots_ in (("ladder", None), ("study", shots)):
            others = two_others_training(60 if what == "ladder" else 70)
            p = project()
            est = p.comparison_seconds(strategies, shots_, epochs)
            [seconds] = wait([p], [p.start_comparison(strategies, shots_, epochs)])
            for o in others:
                o.stop_all()
            wait(others, ["" for _ in others])  # their runs (no group) have stopped
            out[f"{what}_two_training"] = {"seconds": seconds, "estimate_seconds": est}
            log(f"9. the {what} while two other students fine-tune: {seconds:.1f} s (estimated {est:.1f} s, "
                f"{(est - seconds) / seconds:+.0%})")
    finally:
        set_runner(None)
        set_environment(TLS_HOME=old_home)
        shutil.rmtree(home, ignore_errors=True)
    return out


def summary(frozen: dict, trained: dict, log) -> dict:
    rows = frozen["rows"] + trained["rows"]
    covered = [r["covered"] for r in rows]
    fe = [r for r in frozen["rows"] if r["strategy"] == "feature-extraction"]
    worst = min(r["heldout_accuracy"] - r["baseline"]["accuracy"] for r in fe)
    worst_converged = min(r["heldout_accuracy"] - r["baseline"]["converged_accuracy"] for r in fe)
    ratios = [r["estimate_seconds"] / r["seconds"] for r in trained["rows"]]
    # Frozen-body runs take a fraction of a second here: their error is shown in seconds, not as a ratio.
    frozen_error = max(abs(r["estimate_seconds"] - r["seconds"]) for r in frozen["rows"] if r["cold"])
    out = {"coverage": sum(covered) / len(covered), "runs": len(covered),
           "fe_minus_baseline_worst": worst, "fe_minus_converged_baseline_worst": worst_converged,
           "fe_faster_than_baseline": sum(r["seconds"] < r["baseline"]["seconds"] for r in fe) / len(fe),
           "estimate_over_measured": [min(ratios), statistics.median(ratios), max(ratios)],
           "frozen_estimate_error_s": frozen_error}
    log(f"9. the app's 95 % intervals covered the large held-out accuracy in {out['coverage']:.0%} of {len(covered)} "
        f"runs (target 90-98 %); feature extraction minus the baseline, worst seed: {worst:+.1%} "
        f"(minus the same regression solved to convergence: {worst_converged:+.1%}); faster than the "
        f"baseline in {out['fe_faster_than_baseline']:.0%} of settings; estimate / measured per trained run: min "
        f"{min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}; frozen-body runs "
        f"within {frozen_error:.2f} s of their estimate")
    return out


def small_data(quick: bool, backbone: str = DEFAULT_BACKBONE, log=lambda m: print(m, file=sys.stderr, flush=True)
               ) -> dict:
    frozen = frozen_section(quick, backbone, log)
    trained = trained_section(quick, backbone, log)
    ladder = app_ladder(quick, backbone, log, busy_only=quick)  # --quick: only the busy server's estimates
    return {"summary": summary(frozen, trained, log), "ladder": ladder, "runs": frozen["rows"] + trained["rows"]}
