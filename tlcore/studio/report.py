"""A report to hand to a stakeholder: one self-contained HTML file about one run.

Everything is inside the file (plotly's script, every image as a data URL): it opens with no
network. Made by the Export page and by ``python -m tlcore report RUN_DIR [--data DATA] [--out F]``.
"""
from __future__ import annotations

import base64
import html
import io
import re
import time
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ..analysis.clean import review_summary
from ..core.errors import TLError
from ..data.images import ImageItem, ImageSet, load_data, thumbnail
from ..models.backbones import get_backbone_spec
from .charts import training_figures
from .project import Project
from .run_views import RunRecord, describe, model_card, validation_report

USAGE = '''import tlcore  # this app's engine: pip install -r requirements.txt

run = tlcore.load_run("{folder}")  # the unzipped run download
with open("photo.jpg", "rb") as f:
    image = tlcore.decode_image("photo.jpg", f.read())
prediction = tlcore.predict(run.model, [image], run.classes, run.preprocess)[0]
print(prediction.label, prediction.confidence)

# Without tlcore: TorchScript (or ONNX) takes [N, 3, {size}, {size}] floats in [0, 1], centre-cropped
import torch
model = torch.jit.load("model.torchscript.pt")
'''

WEB_USAGE = ("<p><b>With no install, in any browser (phones too):</b> the <i>Web app</i> export (Export page, or "
             "<code>python -m tlcore export RUN_DIR --format web</code>) is a folder with <code>index.html</code>: open it "
             "from disk or put it on any web server; pick, photograph or drop images, or use the camera, and see the "
             "confidence for every class. It runs the model with ONNX Runtime Web, offline, preprocesses images as the app "
             "does and is checked against the app's predictions. In a page or a p5.js sketch of your own, "
             "<code>await window.tlsClassify(dataUrl)</code> gives <code>{label, probabilities}</code>.</p>"
             "<p><b>In Python, or through TorchScript and ONNX:</b></p>")

STAGE_COLOURS = {"frozen": "#4c78a8", "learns": "#f58518", "random": "#9d9d9d", "head": "#54a24b"}
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:4px}section{margin:28px 0}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}th{background:#f5f5f5}td:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;text-align:center;font-size:12px;width:112px}
.grid img{width:104px;height:104px;object-fit:cover;border-radius:4px}.wrong figcaption{color:#b00020}
.stages{display:flex;gap:4px}.stages div{padding:10px 8px;color:#fff;border-radius:4px;font-size:12px}
.big{font-size:32px;font-weight:600}pre{background:#f5f5f5;padding:12px;overflow:auto}"""


def _img(item_or_image, size: int = 104) -> str:
    image = thumbnail(item_or_image, size) if isinstance(item_or_image, ImageItem) else item_or_image
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=85)
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fig(fig: go.Figure) -> str:
    # plotly's own white theme, whoever imported what: inside the app, streamlit's template is the default
    # and its placeholder colours (#000001, ...) draw every trace black outside streamlit
    fig.update_layout(template="plotly_white")
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)  # room for every tick label and class name
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False})


def _markdown(text: str) -> str:
    """The model card's small Markdown (headings, bullets, bold) as HTML."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
        if line.startswith("# "):
            out.append(f"<h3>{line[2:]}</h3>")
        elif line.startswith("- "):
            out.append(f"<li>{line[2:]}</li>")
        elif line:
            out.append(f"<p>{line}</p>")
    return "\n".join(out)


def _freeze_picture(record: RunRecord) -> str:
    cfg, r = record.config, record.result
    names = get_backbone_spec(cfg.backbone).stage_names
    boxes = []
    for k, name in enumerate(names):
        state = "random" if cfg.mode == "scratch" else ("frozen" if k < r.freeze_depth else "learns")
        boxes.append(f'<div style="background:{STAGE_COLOURS[state]}" title="{state}">{html.escape(name)}</div>')
    head = {"zero-shot": "ImageNet head", "few-shot": "prototypes"}.get(cfg.mode, "new head")
    boxes.append(f'<div style="background:{STAGE_COLOURS["head"]}">{head}</div>')
    legend = " · ".join(f'<span style="color:{c}">■</span> {k}' for k, c in STAGE_COLOURS.items())
    return f'<div class="stages">{"".join(boxes)}</div><p class="sub">{legend}</p>'


def _curve_figures(hist, val_images: int | None = None) -> tuple[go.Figure, go.Figure]:
    loss, acc = training_figures(hist, height=300, val_images=val_images)
    for fig in (loss, acc):
        fig.update_layout(template="plotly_white", width=520)  # two fit side by side in the page's 1100 px
    return loss, acc


def _curves(record: RunRecord) -> str:
    hist = record.result.history
    if len(hist) < 2:
        return "<p>No training curve: this strategy computes its classifier in one step, without epochs.</p>"
    loss, acc = _curve_figures(hist, len(record.val_digests))
    return f'<div style="display:flex;flex-wrap:wrap;gap:16px"><div>{_fig(loss)}</div><div>{_fig(acc)}</div></div>'


def _evaluation(project: Project, record: RunRecord) -> str:
    report = validation_report(project, record)
    if report is None:
        return "<p>This run has no validation images, so there is no held-out measurement.</p>"
    ev, items = report
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{'–' if p is None else f'{p:.0%}'}</td>"
                   f"<td>{'–' if r is None else f'{r:.0%}'}</td><td>{s}</td></tr>" for n, p, r, s in ev.precision_recall())
    classes = list(ev.classes)
    cm = go.Figure(go.Heatmap(z=ev.confusion_matrix, x=classes, y=classes, colorscale="Blues", showscale=False,
                              text=ev.confusion_matrix, texttemplate="%{text}"))
    cm.update_layout(title="Confusion matrix (rows: true class, columns: predicted)", xaxis_type="category",
                     yaxis_type="category", yaxis_autorange="reversed", height=120 + 40 * len(classes),
                     margin=dict(t=40, b=30, l=10, r=10))
    right, wrong = [], []
    for k, item in enumerate(items):
        pred, conf = ev.predictions[k], ev.probabilities[k][ev.predictions[k]]
        fig = (f'<figure>{_img(item)}<figcaption>{html.escape(classes[pred])} {conf:.0%}'
               f'{"" if pred == ev.labels[k] else " (is " + html.escape(classes[ev.labels[k]]) + ")"}</figcaption></figure>')
        (right if pred == ev.labels[k] else wrong).append(fig)
    score = record.result.score or ev.score()
    lo, hi = score.interval
    return (f'<p class="big">{score.right} of {score.n} right ({score.accuracy:.0%})</p><p>on photos it had not trained '
            f'on, each classified by a model that had not trained on it ({html.escape(score.method)}); likely between '
            f'{lo:.0%} and {hi:.0%} (95 % interval)</p><table><tr><th>class</th><th>precision</th><th>recall</th><th>images</th></tr>{rows}'
            f'</table>{_fig(cm)}<h3>Some it got right</h3><div class="grid">{"".join(right[:8]) or "none"}</div>'
            f'<h3>Some it got wrong</h3><div class="grid wrong">{"".join(wrong[:8]) or "none: every photo was right"}</div>')


def _error_bars(runs) -> dict:
    """Plotly error bars from each run's 95 % interval."""
    return dict(type="data", symmetric=False, array=[r.result.score.interval[1] - r.result.score.accuracy for r in runs],
                arrayminus=[r.result.score.accuracy - r.result.score.interval[0] for r in runs])


def _comparisons(project: Project) -> str:
    done = [r for r in project.finished_runs() if r.group and r.result.score is not None]
    if not done:
        return ""
    out = ["<section><h2>Strategies compared on the same data</h2>"]
    plain = [r for r in done if r.kind == "ladder"]
    if plain:
        fig = go.Figure(go.Bar(x=[r.label for r in plain], y=[r.result.score.accuracy for r in plain],
                               text=[r.result.score.text() for r in plain], error_y=_error_bars(plain)))
        fig.update_layout(title="Accuracy on held-out images by strategy (95 % intervals)", yaxis_tickformat=".0%", yaxis_range=[0, 1.02],
                          xaxis_type="category", height=340, margin=dict(t=40, b=30, l=10, r=10))
        out.append(_fig(fig))
    study = [r for r in done if r.kind == "study"]
    if study:
        fig = go.Figure()
        for mode in dict.fromkeys(r.config.mode for r in study):
            runs = [r for r in study if r.config.mode == mode]
            fig.add_scatter(x=[str(r.shots) if r.shots is not None else "all" for r in runs],
                            y=[r.result.score.accuracy for r in runs], name=mode, mode="lines+markers",
                            error_y=_error_bars(runs), text=[r.result.score.text() for r in runs])
        fig.update_layout(title="Accuracy on the images not trained on, against training images per class", xaxis_type="category",
                          yaxis_tickformat=".0%", yaxis_range=[0, 1.02], height=340, margin=dict(t=40, b=30, l=10, r=10))
        out.append(_fig(fig))
    return "".join(out) + "</section>"


def _data_check(project: Project) -> str:
    """How many images the data check flagged and how many of them were fixed (nothing before a check)."""
    summary = review_summary(project.folder)
    return f"<p>{html.escape(summary)}</p>" if summary else ""


def report_html(project: Project, record: RunRecord) -> str:
    """The report of one finished run of ``project`` as a complete, self-contained HTML page."""
    r = record.result
    if r is None:
        raise TLError("This run has no trained model to report on.")
    spec = get_backbone_spec(r.config.backbone)
    images = record.images or project.images
    counts = images.counts()
    samples = "".join(
        f'<h3>{html.escape(c)} · {counts.get(c, 0)} images</h3><div class="grid">'
        + "".join(f"<figure>{_img(i)}</figure>" for i in [i for i in images.items if i.label == c][:8]) + "</div>"
        for c in r.classes) if images.items else "<p>The images are not with this run (pass --data to include them).</p>"
    n_val = len(r.val_indices)
    body = f"""<h1>{html.escape(record.label)}</h1>
<p class="sub">Transfer Learning Studio report · {time.strftime('%Y-%m-%d %H:%M')} · project {html.escape(project.name)}</p>
<section><h2>The task</h2><p>Tell apart {len(r.classes)} classes: <b>{html.escape(', '.join(r.classes))}</b>.
{r.num_images} labelled images: {r.num_images - n_val} to train on, {n_val} held out for validation (the same
share of every class; never trained on).</p>{_data_check(project)}{samples}</section>
<section><h2>How it was trained</h2><p><b>{html.escape(describe(r.config))}</b>: {r.trainable_params:,} of
{r.total_params:,} parameters trained, {len(r.history)} epoch(s), best epoch {r.best_epoch}, {r.train_seconds:.1f} s.
The backbone ({html.escape(spec.title)}) was pretrained on ImageNet-1k.</p>{_freeze_picture(record)}{_curves(record)}</section>
<section><h2>How well it does</h2>{_evaluation(project, record) if images.items else
 f"<p>Accuracy on held-out images: {'n/a' if r.score is None else html.escape(r.score.text() + ' (' + r.score.method + ')')}. The images are not with this "
 "run: pass --data to include the per-class figures and examples.</p>"}</section>
{_comparisons(project)}
<section>{_markdown(model_card(record))}</section>
<section><h2>Using the exported model</h2>{WEB_USAGE}<pre>{html.escape(USAGE.format(folder=record.id, size=spec.preprocess.input_size))}</pre></section>"""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(record.label)}</title>'
            f'<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>{body}</body></html>')


def report_for_folder(run_dir: Path, data: Path | None = None) -> str:
    """The report of a run folder (see ``open_run_folder``)."""
    return report_html(*open_run_folder(run_dir, data))


def open_run_folder(run_dir: Path, data: Path | None = None) -> tuple[Project, RunRecord]:
    """A run folder as a project and its run: one inside an app project (its images are found there), or one
    made by ``python -m tlcore train`` (pass the same ``data`` to include images and the validation measurement)."""
    from ..engine.checkpoint import RunMeta, lazy_result

    run_dir = Path(run_dir)
    project_dir = run_dir.parent.parent
    if run_dir.parent.name == "runs" and (project_dir / "project.json").exists() and data is None:
        project = Project.read(project_dir)
        record = project.run(run_dir.name)
        if record is None or record.result is None:
            raise TLError(f"{run_dir} is not a finished run of project {project.name}.")
        return project, record
    result = lazy_result(run_dir)
    project = Project(run_dir.name, load_data(data) if data is not None else ImageSet())
    record = RunRecord(run_dir.name, describe(result.config), result.config, RunMeta.read(run_dir).status,
                       result=result, images=project.images if data is not None else None)
    return project, record
