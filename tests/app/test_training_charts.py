"""The Training view's live charts stay cheap to update (issue 11: the window never freezes).

A live update on a busy machine gets a third of a core: the charts must never re-lay-out their
plots (a re-layout regenerates all six axes with their grids), must spread many curve updates
over several event-loop turns, and must not grow without bound with the number of steps.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

import pyqtgraph as pg  # noqa: E402

from itkm_app.widgets.training_curves import Curves  # noqa: E402
from itkm_engine.progress import ProgressEvent  # noqa: E402


def step_event(epoch: int, step: int, steps: int, losses: dict, stage: str = "stage2") -> ProgressEvent:
    return ProgressEvent(job="train", stage=stage, round=1, epoch=epoch, epochs=4, step=step, steps=steps,
                         losses=losses)


def epoch_end(epoch: int, losses: dict, metrics: dict, stage: str = "stage2") -> ProgressEvent:
    return ProgressEvent(job="train", stage=stage, round=1, epoch=epoch, epochs=4, losses=losses, metrics=metrics)


@pytest.fixture
def resizes(monkeypatch):
    """Counts ViewBox resizes (each one regenerates the axes)."""
    seen = []
    original = pg.ViewBox.resizeEvent

    def counting(self, ev):
        seen.append(self)
        return original(self, ev)

    monkeypatch.setattr(pg.ViewBox, "resizeEvent", counting)
    return seen


@pytest.fixture
def curves(qtbot, resizes):
    """A chart as the Training view shows it (``resizes`` patched first: PySide binds the
    override when the widget is made)."""
    c = Curves()
    qtbot.addWidget(c)
    c.resize(640, 400)  # the Training view of a 1024x640 window
    c.show()
    qtbot.waitExposed(c)
    c.planned_epochs = 8
    c.redraw()
    c.flush()
    qtbot.wait(20)
    resizes.clear()  # the first layout
    return c


def test_new_curves_and_wider_tick_labels_never_resize_the_plots(curves, resizes, qtbot):
    names = ["homogeneous", "i2t", "t2i", "separation", "cross", "instance", "instance_centroid"]
    for i, name in enumerate(names):  # every loss term of the three stages, one after another
        curves.add_events([step_event(0, i + 1, 10, {name: 1.0 + i})])
        curves.flush()
        qtbot.wait(5)
    for n in (12, 150, 1234.5, 0.015):  # tick labels of growing width ("12" .. "1200", "0.005")
        curves.add_events([epoch_end(0, {"i2t": n}, {"n_clusters": n, "n_outliers": n / 10})])
        curves.flush()
        qtbot.wait(5)
    assert not resizes, f"{len(resizes)} plot resizes during a run"
    legend_names = {item.text for _s, item in curves.loss_plot.legend.items}
    assert legend_names == set(names)
    # the legend lists its entries from the top, one line each (not spread over the row)
    ys = sorted(label.mapToScene(0, 0).y() for _s, label in curves.loss_plot.legend.items)
    assert max(np.diff(ys)) < 30


def test_many_curves_are_updated_a_slice_per_event_loop_turn(curves, qtbot):
    events = [step_event(0, s, 20, {f"term{k}": float(k + s) for k in range(12)}) for s in range(1, 21)]
    curves.add_events(events)
    curves.SLICE_MS = 0.0  # one curve per turn, whatever this machine's speed
    curves.redraw()
    assert 0 < len(curves.items) < 12, "all twelve curves were built in one go"
    qtbot.waitUntil(lambda: len(curves.items) == 12 and not curves._queue, timeout=5_000)
    for k in range(12):
        xs, ys = curves.items[("loss", f"term{k}")].getData()
        assert len(xs) == 20 and ys[-1] == pytest.approx(k + 20)


def test_a_long_epoch_is_drawn_with_a_bounded_number_of_points(curves):
    steps = 3000  # a large dataset: 3000 steps an epoch, reported every 10
    curves.add_events([step_event(0, s, steps, {"i2t": 1.0 / s}) for s in range(10, steps + 1, 10)])
    curves.flush()
    xs, ys = curves.series[("loss", "i2t")]
    assert len(xs) <= Curves.STEP_POINTS + 1
    assert xs[-1] == pytest.approx(1.0) and ys[-1] == pytest.approx(1.0 / steps)  # the epoch's last value kept


def test_clearing_keeps_no_stale_curve_in_the_legend(curves):
    curves.add_events([step_event(0, 1, 10, {"old_term": 1.0})])
    curves.flush()
    curves.clear_all()
    curves.add_history([{"round": 1, "stage": "stage2", "values": {"i2t": 0.5}}])
    curves.flush()
    names = {item.text for _s, item in curves.loss_plot.legend.items}
    assert names == {"i2t"}
    assert ("loss", "old_term") not in curves.items
