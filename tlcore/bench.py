"""Benchmark: ``python -m tlcore.bench [--quick] [--fe | --small-data | --data-check | --race]``.

Prints a table on stderr and one JSON object on stdout. Every figure is a ratio of two timings
taken in the same run, so that a busy or slow machine still gives comparable numbers:

0. one plain batched forward pass of the pretrained body on each installed runtime (torch, ONNX
   Runtime, OpenVINO) over the same preprocessed images; the fastest is the floor;
1. feature extraction end to end (N images, 20 epochs) / the floor, and the old torch path vs the
   runtime path;
2. the textbook loop (frozen backbone run on every batch of every epoch, images decoded every
   epoch, as in the PyTorch transfer-learning tutorial) / ours, at 20 epochs;
3. a second feature-extraction run on the same images (cached features) vs the first;
4. fine-tuning: the real loop / raw forward+backward+step with nothing frozen; with half the
   stages frozen, seconds per epoch of the old loop (every stage every epoch, in torch) vs the
   new one (frozen stages once per image and view, on the runtime), and held-out accuracy of both
   on the bundled samples and scikit-learn's digits at 20 per class;
5. peak resident memory of feature extraction at several dataset sizes (separate processes);
6. app start-up time and the rerun time of the Data and Train pages with 500 images loaded
   (measured by ``benchmarks/app_pages.py`` in its own process);
7. evaluation of 500 images by a feature-extraction model, old torch path vs the runtime path;
8. a 4-run comparison (feature extraction, few-shot, fine-tune, from scratch on the bundled faces)
   submitted at once to the local pool of 2 workers vs a local Ray instance with 2 CPUs: the cost
   of Ray on one machine (skipped when Ray is not installed);
9. honest numbers on small data (``tlcore.bench_small``, alone with ``--small-data``): on four real
   datasets at 3-20 images per class over five seeds, each strategy's own score against its accuracy
   on a large held-out part, the coverage of its interval, a logistic-regression baseline, every
   run's time against its estimate, and the Compare page's ladder and study through the app's runner;
10. the data check (``tlcore.analysis.clean``, alone with ``--data-check``): on the bundled digits with 10 % of the labels
   flipped at random (five seeds), the share of flipped images among the top k flagged (k = the number flipped);
   the share of a clean set flagged; exact and resized copies planted across classes, how many found; the time
   of a check on 500 images once their features exist;
11. which backbone, which stage, which rate (``tlcore.bench_race``, alone with ``--race``): the race of every
   offline backbone on three real 200-image datasets, its time, each backbone's LogME against its accuracy
   (rank correlation), the stage probe and the learning-rate range test timed, the weight packages' install size.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .analysis.clean import check_data
from .analysis.compare import features_of
from .bench_race import race_figures, real_sets
from .bench_small import sklearn_digits, small_data
from .core.settings import environment, settings
from .data.images import ImageItem, ImageSet, load_folder, make_item, tensor_to_image
from .engine.config import TrainConfig
from .engine.evaluate import evaluate
from .engine.features import FEATURES
from .engine.train import run_to_end, set_threads
from .models.backbones import DEFAULT_BACKBONE, get_backbone_spec
from .models.model import build_model, freeze, set_train_mode
from .models.runtime import FrozenPart, _session, installed_runtimes, runtime_for

ROOT = Path(__file__).resolve().parent.parent


def generated_files(n: int, classes: int = 5, seed: int = 0, size: tuple[int, int] = (320, 240)
                    ) -> list[tuple[str, bytes, str]]:
    """JPEG photos of a coloured shape on noise (class = shape and colour), ``n`` in all."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for i in range(n):
        c = i % classes
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = (x, y, x + w // 3, y + h // 3)
        color = tuple(int(v) for v in np.roll([230, 60, 30], c))
        (draw.ellipse if c % 2 else draw.rectangle)(box, fill=color)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append((f"img{i:05d}.jpg", buf.getvalue(), f"class{c}"))
    return out


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


REPEATS = 5  # sections 0, 1 and 3: this many repeats (one with --quick); the median ratio, the best time
OLD_PATH = {"TLCORE_RUNTIME": "torch", "TLCORE_PREFIX_CACHE_MB": "0"}  # what tlcore did before the runtimes


def forward_floors(imageset: ImageSet, backbone: str, batch: int = 32, runtimes: list[str] | None = None
                   ) -> dict[str, float]:
    """Seconds of one plain batched forward pass over already-decoded, preprocessed images, per runtime (all
    installed, or ``runtimes``), the fastest (``installed_runtimes``' first) measured last."""
    pre = get_backbone_spec(backbone).preprocess
    pixels = imageset.stack(pre)
    out = {}
    for name in reversed(runtimes or installed_runtimes()):
        if name == "torch":
            x = pixels.float().div(255).contiguous(memory_format=torch.channels_last)
            model = FrozenPart(backbone, None).eval()
            run = lambda lo: model(x[lo:lo + batch])  # noqa: E731
        else:
            session = _session(backbone, None, name, torch.get_num_threads(),
                               settings().inference_precision)
            # uint8, as the image set keeps them (channels-last; the runtime scales them to [0, 1])
            run = lambda lo, session=session: session(pixels[lo:lo + batch])  # noqa: E731
        with torch.inference_mode():
            run(0)  # warm-up
            t = time.perf_counter()
            for lo in range(0, len(pixels), batch):
                run(lo)
        out[name] = time.perf_counter() - t
    return out


def textbook_epoch_seconds(files: list[tuple[str, bytes, str]], backbone: str, epochs: int) -> float:
    """Seconds per epoch of the tutorial loop: decode + transform every image every epoch, run the
    frozen backbone on every batch (autograd on, as written in the tutorial), train the new head."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    spec = get_backbone_spec(backbone)
    p = spec.preprocess
    tf = T.Compose([T.Resize(p.resize_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(p.input_size),
                    T.ToTensor(), T.Normalize(p.mean, p.std)])
    classes = sorted({f[2] for f in files})

    class Files(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            name, data, label = files[i]
            return tf(Image.open(io.BytesIO(data)).convert("RGB")), classes.index(label)

    model = build_model(backbone, len(classes))
    for param in model.body.parameters():
        param.requires_grad = False
    opt = torch.optim.SGD(model.head.parameters(), lr=1e-3, momentum=0.9)
    loader = DataLoader(Files(), batch_size=32, shuffle=True, num_workers=0)
    model.train()
    t = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model.head(model.body(x)), y)
            loss.backward()
            opt.step()
    return (time.perf_counter() - t) / epochs


def raw_train_throughput(backbone: str, depth: int, batch: int, steps: int) -> float:
    """Images/s of forward+backward+step on random tensors already in memory."""
    spec = get_backbone_spec(backbone)
    model = build_model(backbone, 5).to(memory_format=torch.channels_last)  # the fastest plain layout
    freeze(model, depth)
    set_train_mode(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    s = spec.preprocess.input_size
    x = torch.rand(batch, 3, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def loop_throughput(imageset: ImageSet, backbone: str, depth: int, batch: int, epochs: int) -> float:
    """Images/s of the real training loop (slicing the cached stack, augmentation, events), timed from the
    end of its first batch (warm-up, as for the raw figure) to the end of its last."""
    from .engine.events import BatchEnd
    from .engine.train import train

    cfg = TrainConfig(backbone=backbone, mode="fine-tune", freeze_depth=depth, epochs=epochs, batch_size=batch,
                      val_fraction=0.0, augment=True)
    t0, t1, images = 0.0, 0.0, 0
    for event in train(imageset, cfg):
        if isinstance(event, BatchEnd):
            now = time.perf_counter()
            if t0 == 0.0:
                t0 = now
            else:
                images += min(batch, len(imageset) - (event.batch - 1) * batch)
                t1 = now
    return images / (t1 - t0)


def memory_child(n: int, backbone: str) -> None:
    """(Run in a fresh process) feature extraction on ``n`` generated images; prints peak RSS in MB."""
    set_threads()
    s = ImageSet()
    for lo in range(0, n, 200):  # generate in chunks: the JPEG bytes are not kept
        s.add(generated_files(min(200, n - lo), seed=lo + 1))
    finished = run_to_end(s, TrainConfig(backbone=backbone, epochs=20))
    assert finished.status == "completed", finished.reason
    # VmHWM, not getrusage: on Linux ru_maxrss survives exec, so a child would report its parent's peak.
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:")) if Path("/proc/self/status").exists() else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "peak_rss_mb": hwm_kb / 1024}))


def peak_memory(n: int, backbone: str) -> float:
    out = subprocess.run([sys.executable, "-m", "tlcore.bench", "--memory-child", str(n), "--backbone", backbone],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def app_figures(n: int) -> dict:
    """App start-up and page rerun times, measured by ``benchmarks/app_pages.py`` in its own process (the
    engine never imports streamlit)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.app_pages", "--images", str(n)], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def finetune_old_vs_new(imageset: ImageSet, backbone: str, epochs: int, seed: int = 0) -> dict:
    """Fine-tune with half the stages frozen, the old way and the new, on the same split and seed:
    held-out accuracy, steady-state seconds per epoch, and seconds end to end."""
    depth = len(get_backbone_spec(backbone).stage_names) // 2
    cfg = TrainConfig(backbone=backbone, mode="fine-tune", freeze_depth=depth, epochs=epochs, batch_size=16,
                      seed=seed)
    out = {}
    for name, env in (("old", OLD_PATH), ("new", {})):
        with environment(**env):
            t, finished = _timed(lambda: run_to_end(imageset, cfg))
        assert finished.status == "completed", finished.reason
        r = finished.result
        ends = [0.0] + [e.seconds for e in r.history]
        steps = [b - a for a, b in zip(ends[1:], ends[2:])] or [ends[1]]
        out[name] = {"val_accuracy": r.val_accuracy, "epoch_seconds": sorted(steps)[len(steps) // 2],
                     "seconds": t, "how": r.how}
    return out


def runner_comparison(quick: bool) -> dict:
    """Seconds until a 4-run comparison submitted at once has finished, on each runner."""
    import importlib.util
    import tempfile

    from .analysis.compare import plan, shared_split
    from .jobs.runner import LocalRunner
    from .jobs.spec import JobSpec, Training

    data = load_folder(ROOT / "assets" / "samples" / "faces")
    base = TrainConfig(backbone="tiny-test" if quick else DEFAULT_BACKBONE, epochs=1 if quick else 2)
    runs = plan(["feature-extraction", "few-shot", "fine-tune", "scratch"], base)
    split = shared_split(data, base)

    def all_runs(runner) -> float:
        tmp = Path(tempfile.mkdtemp(prefix="tls-bench-"))
        start = time.perf_counter()
        jobs = [runner.submit(JobSpec(r.label, f"o{k}", data, r.config, Training(split), tmp / str(k)))
                for k, r in enumerate(runs)]
        for job in jobs:
            job.join()
        assert all(j.snapshot().state == "completed" for j in jobs), [j.snapshot().finished for j in jobs]
        took = time.perf_counter() - start
        shutil.rmtree(tmp, ignore_errors=True)
        return took

    out = {}
    local = LocalRunner(workers=2)
    local.start()
    all_runs(local)  # warm: workers started and the pretrained body exported
    out["local_pool_seconds"] = all_runs(local)
    local.shutdown()
    if quick:  # Ray's start alone takes a minute here; its runner has tests of its own (tests/engine/test_ray.py)
        return out
    if importlib.util.find_spec("ray") is not None:
        import ray

        from .jobs.ray_runner import RayRunner

        with environment(TLS_RAY_CPUS="2"):
            cluster = RayRunner("local")
            all_runs(cluster)
            out["ray_seconds"] = all_runs(cluster)
        ray.shutdown()
        out["ray_over_local"] = out["ray_seconds"] / out["local_pool_seconds"]
    return out


def flipped(imageset: ImageSet, share: float, seed: int) -> tuple[ImageSet, set[str]]:
    """The set with ``share`` of its labels changed to another class at random (seeded), and those images."""
    rng = random.Random(seed)
    items = list(imageset.items)
    chosen = rng.sample(range(len(items)), round(share * len(items)))
    for k in chosen:
        i = items[k]
        items[k] = ImageItem(i.name, rng.choice([c for c in imageset.classes if c != i.label]), i.digest, i.pixels)
    return ImageSet(items, (), imageset.classes), {items[k].digest for k in chosen}


def planted_copies(imageset: ImageSet, n: int, seed: int = 0) -> tuple[ImageSet, set[frozenset[str]]]:
    """The set with ``n`` exact copies (the same pixels in a new file) and ``n`` resized ones (x1.5 as PNG, x0.5
    as JPEG, alternately) of random images, each filed in another class; and the planted pairs."""
    rng = random.Random(seed)
    items, pairs = list(imageset.items), set()
    for k, i in enumerate(rng.sample(imageset.items, 2 * n)):
        img = tensor_to_image(i.pixels)
        buf = io.BytesIO()
        if k < n:
            img.save(buf, "PNG", compress_level=0)
        elif k % 2:
            img.resize((img.width * 3 // 2, img.height * 3 // 2), Image.BICUBIC).save(buf, "PNG")
        else:
            img.resize((img.width // 2, img.height // 2), Image.BICUBIC).save(buf, "JPEG", quality=90)
        copy = make_item(f"copy{k}.png", buf.getvalue(), rng.choice([c for c in imageset.classes if c != i.label]))
        items.append(copy)
        pairs.add(frozenset((i.digest, copy.digest)))
    return ImageSet(items, (), imageset.classes), pairs


def data_check_figures(quick: bool, backbone: str, log=lambda msg: None) -> dict:
    """Section 10: the data check against planted label flips, planted duplicates and clean sets."""
    samples = ROOT / "assets" / "samples"
    digits = load_folder(samples / "digits")
    sets = {"bundled digits": digits.subset(range(0, len(digits), 2)) if quick else digits}
    if not quick:
        sets["bundled faces"] = load_folder(samples / "faces")
    out: dict = {}
    for name, clean in sets.items():
        n = len(clean)
        features_of(None, clean, backbone)  # computed once; the check reads them from the cache
        precision = []
        for seed in range(1 if quick else 5):
            noisy, wrong = flipped(clean, 0.1, seed)
            top = check_data(noisy, backbone).label_errors[:len(wrong)]
            precision.append(sum(f.digest in wrong for f in top) / len(wrong))
        result = check_data(clean, backbone)
        copies, pairs = planted_copies(clean, 5 if quick else 10)
        found = {frozenset((f.digest, f.other)) for f in check_data(copies, backbone).duplicates}
        row = {"images": n, "flipped": round(0.1 * n), "top_k_precision": precision,
               "top_k_precision_mean": sum(precision) / len(precision),
               "clean_flagged_share": len(result.findings()) / n,
               "clean_flagged": {"label": len(result.label_errors), "duplicate": len(result.duplicates),
                                 "outlier": len(result.outliers)},
               "planted_duplicates": len(pairs), "planted_found": len(pairs & found),
               "other_duplicates": len(found - pairs)}
        out[name] = row
        log(f"10. data check, {name} ({n} images): 10 % flipped, top-{row['flipped']} precision "
            f"{', '.join(f'{p:.0%}' for p in precision)} (mean {row['top_k_precision_mean']:.0%}, target >= 80 %); "
            f"clean set flagged {row['clean_flagged_share']:.1%} (target <= 3 %); planted copies across classes "
            f"found {row['planted_found']}/{row['planted_duplicates']} (target all), {row['other_duplicates']} other pairs")
    big = sklearn_digits(10 if quick else 50)
    features_of(None, big, backbone)
    times = [check_data(big, backbone).seconds for _ in range(3)]
    out["seconds"] = {"images": len(big), "runs": times, "best": min(times)}
    log(f"10. data check of {len(big)} images once their features exist: {', '.join(f'{t:.2f}' for t in times)} s "
        f"(target <= 10 s)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tlcore.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke test")
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--small-data", action="store_true", help="only section 9: honest numbers on small data")
    ap.add_argument("--data-check", action="store_true", help="only section 10: the data check")
    ap.add_argument("--race", action="store_true", help="only section 11: the backbone race, probe and rate finder")
    ap.add_argument("--fe", action="store_true", help="only sections 0, 1 and 3: feature extraction against the floor")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.backbone)
        return 0
    set_threads()
    q = args.quick
    if args.small_data:
        print(json.dumps({"small_data": small_data(q, args.backbone)}))
        return 0
    if args.race:
        print(json.dumps({"race": race_figures(q, lambda m: print(m, file=sys.stderr, flush=True))}))
        return 0
    if args.data_check:
        print(json.dumps({"data_check": data_check_figures(q, args.backbone, lambda m: print(m, file=sys.stderr))}))
        return 0
    n, epochs, textbook_epochs = (40, 20, 1) if q else (300, 20, 3)
    backbone = args.backbone
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"tlcore benchmark: {backbone}, {torch.get_num_threads()} threads, {n} images{' (quick)' if q else ''}")
    files = generated_files(n)
    images = ImageSet()
    images.add(files)
    r: dict = {"backbone": backbone, "threads": torch.get_num_threads(), "images": n, "quick": q}

    # Sections 0 and 1 are measured side by side: each repeat times the forward passes (the fastest runtime's
    # last), then at once the run (features, head, its score) from a fresh upload, then the fastest runtime's pass
    # again. This machine's speed drifts by a third from minute to minute; the run against the mean of the two
    # passes around it sees the same drift, so the median of these ratios is the steady figure.
    repeats = 1 if q else REPEATS
    tries, afters, firsts, seconds = [], [], [], []
    for k in range(repeats):
        FEATURES.clear()
        fresh = ImageSet()
        fresh.add(files)  # decoded as an upload is; preprocessing is counted below
        tries.append(forward_floors(images, backbone))
        firsts.append(_timed(lambda: run_to_end(fresh, TrainConfig(backbone=backbone, epochs=epochs, seed=k))))
        afters.append(forward_floors(images, backbone, runtimes=installed_runtimes()[:1]))
        seconds.append(_timed(lambda: run_to_end(fresh, TrainConfig(backbone=backbone, epochs=epochs, seed=k + 1))))
    floors = {name: min(t[name] for t in tries) for name in tries[0]}
    best = min(floors, key=floors.get)
    floor = floors[best]
    around = [(t[best] + a.get(best, t[best])) / 2 for t, a in zip(tries, afters)]
    pair_ratios = sorted(f[0] / ar for f, ar in zip(firsts, around))
    r["forward_seconds"], r["runtime"] = floors, runtime_for("cpu")
    log(f"0. one forward pass over {n} images (best of {repeats}): " +
        ", ".join(f"{k} {v:.2f} s" for k, v in floors.items()) + f"; fastest: {best}; tlcore uses {r['runtime']}")
    t_first, f1 = min(firsts, key=lambda t: t[0])
    t_second, f2 = min(seconds, key=lambda t: t[0])
    FEATURES.clear()
    old = ImageSet()
    old.add(files)
    with environment(**OLD_PATH):
        t_old, _ = _timed(lambda: run_to_end(old, TrainConfig(backbone=backbone, epochs=epochs)))
    FEATURES.clear()
    r["fe_seconds"], r["floor_seconds"], r["fe_second_run_seconds"] = t_first, floor, t_second
    r["fe_old_torch_seconds"] = t_old
    r["fe_over_floor"] = pair_ratios[len(pair_ratios) // 2]
    r["fe_over_floor_pairs"] = pair_ratios
    r["fe_speedup_vs_old"] = t_old / t_first
    r["second_run_speedup"] = t_first / t_second
    log(f"1. feature extraction {epochs} epochs (best of {repeats}): {t_first:.2f} s; the {best} forward pass: {floor:.2f} s; "
        f"ratio to the passes around it, each repeat {', '.join(f'{x:.2f}' for x in pair_ratios)}, "
        f"median {r['fe_over_floor']:.2f} "
        f"(target <= 1.3); old torch path {t_old:.2f} s, "
        f"{r['fe_speedup_vs_old']:.1f}x slower")
    log(f"3. second run (cached features): {t_second:.3f} s; {r['second_run_speedup']:.0f}x faster (target >= 20x)")
    # What the first run adds to the forward pass: the head and its score (the second run's own time), and the
    # images' preprocessing (resize, crop), which the floor's images had already had; mostly hidden behind the pass.
    prep = []
    for _ in range(repeats):
        again = ImageSet()
        again.add(files)
        prep.append(_timed(lambda: again.stack(get_backbone_spec(backbone).preprocess))[0])
    r["preprocess_seconds"], r["head_over_floor"] = min(prep), t_second / floor
    log(f"   of which the head and its score: {t_second:.3f} s, {r['head_over_floor']:.2f} of the forward pass; the "
        f"images' preprocessing, one after another: {min(prep):.2f} s, {min(prep) / floor:.2f} of it")
    if args.fe:
        print(json.dumps(r))
        return 0

    per_epoch = textbook_epoch_seconds(files, backbone, textbook_epochs)
    r["textbook_seconds_20_epochs"] = per_epoch * epochs
    r["speedup_vs_textbook"] = per_epoch * epochs / t_first
    log(f"2. textbook loop: {per_epoch:.2f} s/epoch (measured over {textbook_epochs}), {epochs} epochs = "
        f"{per_epoch * epochs:.1f} s; ours is {r['speedup_vs_textbook']:.1f}x faster (target >= 10x)")

    tp_images = images.subset(range(min(len(images), 32 if q else 96)))
    batch, ft_epochs = (8, 1) if q else (16, 2)
    raw = raw_train_throughput(backbone, 0, batch, 2 if q else 6)
    real = loop_throughput(tp_images, backbone, 0, batch, ft_epochs)
    r["finetune_depth0_images_per_s"], r["finetune_depth0_raw_images_per_s"] = real, raw
    r["finetune_depth0_efficiency"] = real / raw
    log(f"4. fine-tune, nothing frozen: loop {real:.1f} img/s, raw {raw:.1f} img/s, ratio {real / raw:.2f} "
        f"(target >= 0.85)")
    datasets = real_sets(q)
    r["finetune_half_frozen"] = {}
    for name, make in datasets.items():
        res = finetune_old_vs_new(make(), backbone, 1 if q else 6)
        r["finetune_half_frozen"][name] = res
        o, w = res["old"], res["new"]
        log(f"4. fine-tune, half the stages frozen, {name}: {o['epoch_seconds']:.2f} -> {w['epoch_seconds']:.2f} "
            f"s/epoch ({o['epoch_seconds'] / w['epoch_seconds']:.1f}x, target >= 2x); end to end {o['seconds']:.1f} "
            f"-> {w['seconds']:.1f} s; held-out accuracy {o['val_accuracy']:.1%} -> {w['val_accuracy']:.1%}")

    if not q:  # one seed can mislead at 40 held-out images: the same comparison over five seeds (and splits)
        seeds = [finetune_old_vs_new(sklearn_digits(20), backbone, 6, seed) for seed in range(5)]
        old_acc = [s["old"]["val_accuracy"] for s in seeds]
        new_acc = [s["new"]["val_accuracy"] for s in seeds]
        r["finetune_half_frozen_5_seeds"] = {"old": old_acc, "new": new_acc}
        log(f"4. fine-tune, half frozen, scikit-learn digits at 20 per class, 5 seeds: held-out accuracy old "
            f"{np.mean(old_acc):.1%} (min {min(old_acc):.1%}), new {np.mean(new_acc):.1%} (min {min(new_acc):.1%})")

    eval_n = 60 if q else 500
    eval_set = ImageSet()
    eval_set.add(generated_files(eval_n, seed=7))
    model = run_to_end(eval_set, TrainConfig(backbone=backbone, epochs=2)).result
    pre = get_backbone_spec(backbone).preprocess
    eval_set.stack(pre)  # preprocessed once, as the app keeps it
    with environment(**OLD_PATH):
        t_eval_old, ev_old = _timed(lambda: evaluate(model.model, eval_set, model.classes, pre))
    t_eval_new, ev_new = _timed(lambda: evaluate(model.model, eval_set, model.classes, pre))
    r["eval_seconds"] = {"old": t_eval_old, "new": t_eval_new}
    r["eval_speedup"] = t_eval_old / t_eval_new
    r["eval_same_predictions"] = ev_old.predictions == ev_new.predictions
    log(f"7. evaluation of {eval_n} images: old {t_eval_old:.2f} s, new {t_eval_new:.2f} s, "
        f"{r['eval_speedup']:.1f}x faster (target >= 5x); same predictions: {r['eval_same_predictions']}")

    sizes = (50, 100) if q else (500, 1000, 2000)
    mem = {str(k): peak_memory(k, backbone) for k in sizes}
    r["peak_rss_mb"] = mem
    per_image = [(mem[str(b)] - mem[str(a)]) / (b - a) for a, b in zip(sizes, sizes[1:])]
    r["rss_mb_per_extra_image"] = per_image
    log(f"5. peak memory: {', '.join(f'{k} images {v:.0f} MB' for k, v in mem.items())} (target <= 3072 MB at "
        f"2000); growth {', '.join(f'{p:.2f}' for p in per_image)} MB/image")

    rc = runner_comparison(q)
    r["runners"] = rc
    log(f"8. 4-run comparison submitted at once: local pool of 2 workers {rc['local_pool_seconds']:.1f} s" +
        (f"; local Ray with 2 CPUs {rc['ray_seconds']:.1f} s ({rc['ray_over_local']:.2f}x)" if "ray_seconds" in rc
         else "; Ray not timed (--quick)" if q else "; Ray not installed"))

    app = app_figures(50 if q else 500)
    r["app_startup_seconds"], r["rerun_seconds"] = app["startup_seconds"], app["rerun_seconds"]
    reruns = r["rerun_seconds"]
    log(f"6. app start to first page: {r['app_startup_seconds']:.1f} s; rerun with {50 if q else 500} images: "
        f"Data {reruns['data'] * 1000:.0f} ms, Train {reruns['train'] * 1000:.0f} ms (target <= 300 ms)")
    r["small_data"] = small_data(q, backbone, log)
    r["data_check"] = data_check_figures(q, backbone, log)
    r["race"] = race_figures(q, log)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
