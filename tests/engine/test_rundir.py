"""The run directory's curves plot after a single epoch (issue 22 item 8)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="curves.png needs the plot extra")


def test_one_epoch_has_an_integer_axis_and_visible_points():
    from pcea.engine.rundir import curves_figure

    history = [{"epoch": 1, "lr": 0.01, "train_loss": 1.2, "train_acc": 0.5, "val_oa": 0.6, "val_macc": 0.55}]
    fig = curves_figure(history, selected_epoch=1, selected_key="val_oa")
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
        assert shown == [1.0], shown  # not 0.945, 0.960, ...
        for line in ax.get_lines():
            if len(line.get_xdata()) == 1 and line.get_label() != "_nolegend_":
                assert line.get_marker() not in (None, "None", ""), line.get_label()  # a point, not nothing
