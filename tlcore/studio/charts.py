"""The training curves the Train page and the report both draw: one colour per series, everywhere.

Plotly colours traces by their order (the ``colorway``), so an extra trace first (the per-batch loss
while training) shifted every colour, and the live and finished charts disagreed. Here each series has
its own colour, by name; a student told to watch the validation curve finds it in every chart.
"""
from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

#: one colour per series, the same in every chart (blue and orange stay apart for colour-blind eyes)
SERIES_COLOURS = {"train": "#1f77b4", "train (per batch)": "rgba(31,119,180,0.3)", "validation": "#ff7f0e"}


def training_figures(epochs: Sequence, batch_losses: Sequence[tuple[float, float]] = (),
                     height: int = 320, val_images: int | None = None) -> tuple[go.Figure, go.Figure]:
    """Loss and accuracy per epoch (train and validation, each ``EpochEnd``-like), with per-batch loss
    (``(fractional epoch, loss)`` pairs) as a thin line. ``val_images``: how many validation photos the
    validation curve rests on, said in its legend (it is not the run's score, which rests on more)."""
    loss, acc = go.Figure(), go.Figure()
    xs = [e.epoch for e in epochs]

    def line(fig: go.Figure, name: str, x, y, **kw) -> None:
        shown = f"{name} ({val_images} photo{'s' * (val_images != 1)})" if name == "validation" and val_images else name
        fig.add_scatter(x=list(x), y=list(y), name=shown, line=dict(color=SERIES_COLOURS[name], **kw.pop("line", {})),
                        marker=dict(color=SERIES_COLOURS[name]), **kw)

    if batch_losses:
        line(loss, "train (per batch)", [b[0] for b in batch_losses], [b[1] for b in batch_losses], mode="lines",
             line=dict(width=1))
    line(loss, "train", xs, [e.train_loss for e in epochs], mode="lines+markers")
    line(acc, "train", xs, [e.train_acc for e in epochs], mode="lines+markers")
    if any(e.val_loss is not None for e in epochs):
        line(loss, "validation", xs, [e.val_loss for e in epochs], mode="lines+markers")
        line(acc, "validation", xs, [e.val_acc for e in epochs], mode="lines+markers")
    for fig, title in ((loss, "Loss"), (acc, "Accuracy per epoch")):
        fig.update_layout(title=title, xaxis_title="epoch", height=height, margin=dict(t=40, b=30, l=10, r=10))
        fig.update_yaxes(automargin=True)  # room for the tick labels ("100%", "0.25"), never clipped
        if len(xs) <= 20:
            fig.update_xaxes(tick0=1, dtick=1)  # epochs are whole: 1, 2, 3, never 1.5
    acc.update_layout(yaxis_range=[0, 1.02], yaxis_tickformat=".0%")
    return loss, acc
