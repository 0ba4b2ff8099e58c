"""Training curves: one fixed colour per series, the same live (with the per-batch line) and finished,
in the Train page's charts and in the report."""
from __future__ import annotations

import pytest

from tlcore.engine.events import EpochEnd

EPOCHS = tuple(EpochEnd(k, 3, 1.0 / k, 0.5 + k / 10, 1.2 / k, 0.4 + k / 10, float(k), True) for k in (1, 2, 3))
BATCHES = tuple((k / 4, 1.0 / (1 + k)) for k in range(12))


def _colours(fig) -> dict[str, str]:
    return {t.name: t.line.color for t in fig.data}


def _figure_sets():
    from tlcore.studio.charts import training_figures

    return [training_figures(EPOCHS, BATCHES), training_figures(EPOCHS)]


@pytest.mark.parametrize("which", ["live", "finished"])
def test_each_series_has_one_colour_by_name(which):
    import streamlit  # noqa: F401  (its plotly template colours by trace order, as in the app)

    from tlcore.studio.charts import SERIES_COLOURS

    figs = _figure_sets()[0 if which == "live" else 1]
    for fig in figs:
        colours = _colours(fig)
        assert set(colours) >= {"train", "validation"}
        assert colours == {n: SERIES_COLOURS[n] for n in colours}
    assert SERIES_COLOURS["train"] != SERIES_COLOURS["validation"]


def test_the_report_draws_the_same_colours():
    from tlcore.studio.charts import SERIES_COLOURS
    from tlcore.studio.report import _curve_figures

    for fig in _curve_figures(EPOCHS):
        assert _colours(fig) == {"train": SERIES_COLOURS["train"], "validation": SERIES_COLOURS["validation"]}
        assert fig.layout.template.layout.colorway[0] != "#000001"  # never streamlit's placeholders (black)
