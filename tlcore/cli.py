"""Command line: ``python -m tlcore {backbones,train,evaluate,predict,compare,check,stages,lr-find,report,export,cert}``.

Progress goes to stderr; results go to stdout as JSON (the last line of ``train``). A user
error prints one line, ``error: ...``, and exits with status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from .core.errors import TLError
from .core.settings import set_environment, settings
from .engine.config import MODES
from .models.backbones import DEFAULT_BACKBONE, list_backbones

EXIT_USER_ERROR = 2


def _emit(obj: dict) -> None:
    try:
        print(json.dumps(obj), flush=True)
    except BrokenPipeError:  # e.g. piped into `head`: stop writing, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class _Bar:
    """Turns training events into one tqdm bar on stderr."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.bar: tqdm | None = None
        self.what = ""

    def __call__(self, event) -> None:
        from .engine.events import BatchEnd, EpochEnd, Progress, RunFinished

        if isinstance(event, Progress):
            self._bar(f"{self.label}{event.what}", event.total).n = event.done
            self.bar.refresh()
        elif isinstance(event, BatchEnd):
            bar = self._bar(f"{self.label}training", 1000)
            bar.n = round(event.fraction * 1000)
            bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.3f}", refresh=True)
        elif isinstance(event, EpochEnd) and self.bar is not None:
            acc = "n/a" if event.val_acc is None else f"{event.val_acc:.3f}"
            self.bar.write(f"{self.label}epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.4f} "
                           f"acc {event.train_acc:.3f}, val acc {acc}", file=sys.stderr)
        elif isinstance(event, RunFinished) and self.bar is not None:
            self.bar.close()
            self.bar = None

    def _bar(self, what: str, total: int) -> tqdm:
        if self.bar is None or self.what != what:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=what, file=sys.stderr, leave=False, dynamic_ncols=True)
            self.what = what
        return self.bar


def _config(args: argparse.Namespace, mode: str | None = None):
    from .engine.config import TrainConfig

    return TrainConfig(backbone=args.backbone, mode=mode or args.mode, freeze_depth=args.freeze_depth,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                       seed=args.seed, patience=args.patience, augment=not args.no_augment,
                       augment_views=args.augment_views)


def _report_rejected(imageset) -> None:
    for r in imageset.rejected:
        print(f"skipped {r.file}: {r.reason}", file=sys.stderr)


def cmd_backbones(args: argparse.Namespace) -> int:
    for spec in list_backbones(include_test=args.all):
        _emit({"name": spec.name, "title": spec.title, "availability": spec.availability(),
               "params": spec.num_params, "input_size": spec.preprocess.input_size,
               "imagenet_top1": spec.imagenet_top1, "weights_mb": spec.weights_mb,
               "stages": list(spec.stage_names), "weights_url": spec.weights_url, "members": list(spec.members)})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data.images import load_data
    from .engine.checkpoint import save_run
    from .engine.train import run_to_end, set_threads

    set_threads()
    config = _config(args)
    config.validate()
    imageset = load_data(args.data)
    _report_rejected(imageset)
    if args.runner == "ray":
        from .analysis.compare import shared_split

        [(finished, r)] = _on_ray(imageset, [(args.out, config)], shared_split(imageset, config))
    else:
        finished = run_to_end(imageset, config, _Bar())
        if finished.result is None:
            raise TLError(f"Training {finished.status}: {finished.reason}")
        r = finished.result
        save_run(r, args.out, finished.status)
    score = {} if r.score is None else r.score.to_json()
    _emit({"runner": args.runner, "status": finished.status, "reason": finished.reason, **score,
           "val_accuracy": r.val_accuracy,
           "train_seconds": round(r.train_seconds, 3), "num_images": r.num_images, "classes": list(r.classes),
           "mode": config.mode, "backbone": config.backbone, "freeze_depth": r.freeze_depth,
           "best_epoch": r.best_epoch, "epochs_run": len(r.history), "trainable_params": r.trainable_params,
           "runtime": r.runtime, "how": r.how,
           "rejected": len(imageset.rejected), "run_dir": str(Path(args.out).resolve())})
    return 0 if finished.status != "failed" else 1


def _on_ray(imageset, jobs: list[tuple[str, object]], split) -> list[tuple[object, object]]:
    """Run ``(out folder, config)`` jobs on Ray (``TLS_RAY_ADDRESS``, default a local instance), all
    submitted at once (they run side by side as far as the cluster has room); returns each job's
    ``(RunFinished, RunResult)``, the result loaded from the folder the run was copied into."""
    from .data.images import trainable_subset
    from .engine.checkpoint import lazy_result
    from .engine.train import run_split
    from .jobs.ray_runner import RayRunner
    from .jobs.spec import JobSpec, Training

    runner = RayRunner(settings().ray_address or "local")
    labels = trainable_subset(imageset).labels()
    handles = [runner.submit(JobSpec(Path(out).name, "cli", imageset, config,  # a study draws its own split
                                     Training(run_split(labels, config) if config.max_images_per_class else split),
                                     Path(out).resolve()))
               for out, config in jobs]
    bar = tqdm(total=len(handles), desc="runs on Ray", file=sys.stderr, leave=False)
    for h in handles:
        h.join()
        bar.update()
    bar.close()
    out = []
    for (folder, _), h in zip(jobs, handles):
        finished = h.snapshot().finished
        if finished is None or not (Path(folder) / "model.safetensors").exists():
            raise TLError(f"Training on Ray {finished.status if finished else 'ended'}: "
                          f"{finished.reason if finished else 'no result'}")
        out.append((finished, lazy_result(folder)))
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.images import load_data
    from .engine.checkpoint import load_run
    from .engine.evaluate import evaluate, inference_runtime

    saved = load_run(args.run_dir)
    imageset = load_data(args.data)
    _report_rejected(imageset)
    _emit({**evaluate(saved.model, imageset, saved.classes, saved.preprocess).to_json(),
           "runtime": inference_runtime(saved.model)})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.errors import BadImageError
    from .data.images import decode_image
    from .engine.checkpoint import load_run
    from .engine.evaluate import inference_runtime, predict

    saved = load_run(args.run_dir)
    status = 0
    for file in args.images:
        try:
            path = Path(file)
            if not path.is_file():
                raise BadImageError(file, "no such file")
            image = decode_image(file, path.read_bytes(), max_side=None)
        except BadImageError as e:
            _emit({"file": file, "error": e.reason})
            status = 1
            continue
        p = predict(saved.model, [image], saved.classes, saved.preprocess)[0]
        _emit({"file": file, "label": p.label, "confidence": p.confidence, "probabilities": p.probabilities,
               "runtime": inference_runtime(saved.model)})
    return status


def cmd_compare(args: argparse.Namespace) -> int:
    from .analysis.compare import available_shots, plan, race_facts, run_plan, shared_split, summary_row, top1_finding
    from .analysis.transfer import transfer_score
    from .analysis.verdict import headline, ladder_verdicts, names_worth, study_finding
    from .data.images import load_data
    from .engine.events import RunFinished
    from .engine.train import set_threads

    set_threads()
    base = _config(args, mode="feature-extraction")
    base.validate()
    imageset = load_data(args.data)
    _report_rejected(imageset)
    split = shared_split(imageset, base)
    shots: list[int | None] | None = None
    if args.shots:
        wanted = tuple(None if s == "all" else int(s) for s in args.shots.split(","))
        shots = available_shots(imageset, split, wanted)
    backbones = [b for b in args.backbones.split(",") if b] if args.backbones else None
    strategies = (args.strategies or ("feature-extraction" if backbones else ",".join(MODES))).split(",")
    runs = plan(strategies, base, shots, backbones)
    rows = []
    if args.runner == "ray":  # every run at once, each timed in its own worker
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="tls-compare-"))
        done = _on_ray(imageset, [(str(tmp / f"run{k}"), r.config) for k, r in enumerate(runs)], split)
        rows = [summary_row(run, RunFinished(f.status, f.reason, result)) for run, (f, result) in zip(runs, done)]
        results = [result for _f, result in done]
    else:
        bars = {r.label: _Bar(f"[{r.label}] ") for r in runs}
        results = []
        for run, event in run_plan(imageset, runs, split):
            bars[run.label](event)
            if isinstance(event, RunFinished):
                rows.append(summary_row(run, event))
                results.append(event.result)
    if backbones:  # the race: each backbone's size, speed and its transferability score beside its accuracy
        scores = {b: _drive(transfer_score(imageset, b), _Bar(f"[LogME {b}] ")) for b in dict.fromkeys(backbones)}
        for row in rows:
            row.update(race_facts(row["backbone"]), logme=round(scores[row["backbone"]].logme, 4),
                       imagenet_confidence=scores[row["backbone"]].imagenet_confidence)
    ladder = [r for run, r in zip(runs, results)  # the strategies on all the images (zero-shot uses none)
              if r is not None and r.score is not None and run.shots in (None, 0) and not backbones]
    _emit({"runner": args.runner, "backbone": base.backbone, "epochs": base.epochs, "seed": base.seed, "num_images": len(imageset),
           "classes": imageset.classes, "val_size": len(split[1]), "runs": rows,
           # photo by photo: each rung against the next, and the lesson's pair, in words (tlcore.analysis.verdict)
           "headline": headline(ladder), "names_worth": names_worth(ladder),
           "verdicts": [v.to_json() for v in ladder_verdicts(ladder)],
           "study_finding": None if not shots else study_finding([r for r in results if r is not None]),
           # the race: ImageNet top-1 against the accuracy here, in words
           "top1_finding": None if not backbones else top1_finding(
               [(r["title"], r["imagenet_top1"], r["accuracy"]) for r in rows if r["accuracy"] is not None])})
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .analysis.clean import check_data
    from .data.images import load_data
    from .engine.train import set_threads

    set_threads()
    imageset = load_data(args.data)
    _report_rejected(imageset)
    result = check_data(imageset, args.backbone, args.seed)
    # Files identical to one already loaded (in another class too) were not loaded; they are listed here.
    _emit({"data": args.data, "backbone": args.backbone, "classes": imageset.classes, **result.to_json(),
           "not_loaded": [{"file": r.file, "reason": r.reason} for r in imageset.rejected]})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .studio.report import report_for_folder

    out = Path(args.out or Path(args.run_dir) / "report.html")
    out.write_text(report_for_folder(Path(args.run_dir), Path(args.data) if args.data else None), encoding="utf-8")
    print(f"Wrote {out} (self-contained: open it in any browser, no network needed).", file=sys.stderr)
    _emit({"report": str(out), "bytes": out.stat().st_size})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.checkpoint import archive_run, export_onnx, export_torchscript
    from .models.model import to_float
    from .studio.report import open_run_folder
    from .studio.webexport import check_images, export_web

    project, record = open_run_folder(Path(args.run_dir), Path(args.data) if args.data else None)
    if args.format == "web":
        web = export_web(project, record, Path(args.out or Path(args.run_dir) / "web"), quantize=args.quantize)
        print(f"Wrote {web.folder} ({web.bytes / 1e6:.1f} MB) and {web.zip_path}: open index.html in any browser, "
              "or put the folder on any web server.", file=sys.stderr)
        _emit({"format": "web", **web.to_json()})
        return 0
    if args.quantize:
        raise TLError("--quantize is for --format web only.")
    names = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "zip": f"{Path(args.run_dir).name}.zip"}
    out = Path(args.out or Path(args.run_dir) / names[args.format])
    if args.format == "zip":
        data = archive_run(args.run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        _emit({"format": "zip", "file": str(out), "bytes": len(data)})
        return 0
    check = to_float(check_images(project, record)[0], channels_last=False)
    export = export_onnx if args.format == "onnx" else export_torchscript
    diff = export(record.result.model, out, check)
    print(f"Wrote {out}: checked against the app's model on {len(check)} images.", file=sys.stderr)
    _emit({"format": args.format, "file": str(out), "bytes": out.stat().st_size, "max_diff": diff,
           "checked_on": len(check)})
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    from .studio.certs import local_names, make_certificate

    hosts = args.host or local_names()
    cert, key = make_certificate(Path(args.out), hosts)
    print(f"Wrote {cert} and {key} for {', '.join(hosts)}.\nServe the app over HTTPS with:\n"
          f"  streamlit run app.py --server.sslCertFile {cert} --server.sslKeyFile {key}\n"
          "Each browser warns once about the self-signed certificate; accept it to continue.", file=sys.stderr)
    _emit({"cert": str(cert), "key": str(key), "hosts": hosts})
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    """How fast a backbone runs here (what the app's estimates use; the web server has a worker time it)."""
    from .analysis.profile import measure_speed

    _emit(measure_speed(args.backbone, args.batch, args.repeats).to_json())
    return 0


def _drive(gen, bar: _Bar):
    """Run an engine generator to its end, its ``Progress`` on a bar; returns its result."""
    from .engine.train import drive

    result = drive(gen, bar)
    if bar.bar is not None:
        bar.bar.close()
    return result


def cmd_stages(args: argparse.Namespace) -> int:
    """How general each stage of a backbone is for DATA: a cross-validated linear probe on every stage."""
    from .analysis.transfer import probe_stages
    from .data.images import load_data
    from .engine.train import set_threads

    set_threads()
    imageset = load_data(args.data)
    _report_rejected(imageset)
    probe = _drive(probe_stages(imageset, args.backbone, seed=args.seed), _Bar())
    _emit({"data": args.data, "num_images": len(imageset), "classes": imageset.classes, **probe.to_json()})
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """The learning-rate range test of a strategy on DATA: loss against rate, and the suggested rate."""
    from .analysis.lrfind import lr_find
    from .data.images import load_data
    from .engine.train import set_threads

    set_threads()
    config = _config(args)
    imageset = load_data(args.data)
    _report_rejected(imageset)
    found = _drive(lr_find(imageset, config, num_it=args.steps), _Bar())
    _emit({"data": args.data, "num_images": len(imageset), **found.to_json()})
    return 0


def cmd_class(args: argparse.Namespace) -> int:
    """The class's pooled results (every project's ladders, studies and challenge entries), as the Teacher page
    and the projector show them."""
    if args.home:
        set_environment(TLS_HOME=args.home)
    from .studio.challenge import current_challenge
    from .studio.classlab import class_summary

    _emit(class_summary(current_challenge()).to_json())
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tlcore", description="Transfer Learning Studio engine.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backbones", help="list backbones and whether their weights are on this machine")
    b.add_argument("--all", action="store_true", help="include test-only backbones")
    b.set_defaults(fn=cmd_backbones)
    sp = sub.add_parser("speed", help="time a backbone's forward pass on this machine (ms per image, by stage)")
    sp.add_argument("backbone")
    sp.add_argument("--batch", type=int, default=8)
    sp.add_argument("--repeats", type=int, default=3)
    sp.set_defaults(fn=cmd_speed)

    def training_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--backbone", default=DEFAULT_BACKBONE)
        q.add_argument("--freeze-depth", type=int, default=None, help="fine-tune: leading stages kept frozen")
        q.add_argument("--epochs", type=int, default=20)
        q.add_argument("--batch-size", type=int, default=32)
        q.add_argument("--lr", type=float, default=None, help="head learning rate (default: per mode)")
        q.add_argument("--val-fraction", type=float, default=0.2)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--patience", type=int, default=0, help="early stopping patience in epochs (0: off)")
        q.add_argument("--no-augment", action="store_true", help="no flips/crops/colour jitter")
        q.add_argument("--augment-views", type=int, default=4,
                       help="views per image (one unaugmented) the frozen part computes once: fine-tune, feature extraction")
        q.add_argument("--runner", choices=["local", "ray"], default="local",
                       help="ray: train on Ray (TLS_RAY_ADDRESS, default a local Ray instance)")

    t = sub.add_parser("train", help="train a classifier on DATA (a class-per-folder directory or a zip)")
    t.add_argument("data")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--mode", default="feature-extraction",
                   choices=list(MODES))
    training_args(t)
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("evaluate", help="accuracy and confusion matrix of a saved run on DATA")
    e.add_argument("run_dir")
    e.add_argument("data")
    e.set_defaults(fn=cmd_evaluate)
    pr = sub.add_parser("predict", help="predict the class of images with a saved run")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+")
    pr.set_defaults(fn=cmd_predict)
    c = sub.add_parser("compare", help="strategies (or backbones) side by side on one split (and per shot count)")
    c.add_argument("data")
    c.add_argument("--strategies", default=None, help="any of " + ", ".join(MODES) +
                   " (default: all; feature-extraction in a race)")
    c.add_argument("--backbones", default="", help="the backbone race: comma-separated backbones, each trained with "
                   "the same strategies on the same split, e.g. efficientnet_lite0,efficientnet_lite1,mobilenet_v2")
    c.add_argument("--shots", default="", help="comma-separated images per class, e.g. 1,5,10,all")
    training_args(c)
    c.set_defaults(fn=cmd_compare)
    ck = sub.add_parser("check", help="likely wrong labels, duplicates and outliers in DATA (changes nothing)")
    ck.add_argument("data")
    ck.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ck.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    ck.set_defaults(fn=cmd_check)
    rp = sub.add_parser("report", help="a self-contained HTML report of a run, to hand to a stakeholder")
    rp.add_argument("run_dir")
    rp.add_argument("--data", help="the DATA it was trained on (a run of an app project finds its own images)")
    rp.add_argument("--out", help="output file (default: RUN_DIR/report.html)")
    rp.set_defaults(fn=cmd_report)
    ex = sub.add_parser("export", help="a run's model to take away: a web app, ONNX, TorchScript or the run zip")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["web", "onnx", "torchscript", "zip"], default="web",
                    help="web: a folder (and zip) with index.html that runs in any browser, offline")
    ex.add_argument("--out", help="output folder (web) or file (default: inside RUN_DIR)")
    ex.add_argument("--data", help="the DATA it was trained on: the export is checked on its validation images "
                                   "(else on random pixels)")
    ex.add_argument("--quantize", action="store_true", help="web: int8 weights (smaller; the change is measured)")
    ex.set_defaults(fn=cmd_export)
    st = sub.add_parser("stages", help="how general each stage is for DATA: a linear probe on every stage (JSON)")
    st.add_argument("data")
    st.add_argument("--backbone", default=DEFAULT_BACKBONE)
    st.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    st.set_defaults(fn=cmd_stages)
    lf = sub.add_parser("lr-find", help="learning-rate range test of a strategy on DATA: the suggested rate (JSON)")
    lf.add_argument("data")
    lf.add_argument("--mode", default="fine-tune", choices=["fine-tune", "scratch"])
    lf.add_argument("--steps", type=int, default=40, help="mini-batches of the sweep")
    training_args(lf)
    lf.set_defaults(fn=cmd_lr_find)
    cl = sub.add_parser("class", help="the class's pooled results: every project's ladders, studies, challenge (JSON)")
    cl.add_argument("--home", default=None, help="the server's TLS_HOME (default: $TLS_HOME or ~/.transfer-learning-studio)")
    cl.set_defaults(fn=cmd_class)
    ce = sub.add_parser("cert", help="make a self-signed HTTPS certificate for this machine (cameras on a LAN)")
    ce.add_argument("--out", default=".", help="folder for tls-cert.pem and tls-key.pem")
    ce.add_argument("--host", action="append", help="a name or address students use (repeatable; default: all)")
    ce.set_defaults(fn=cmd_cert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except TLError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
